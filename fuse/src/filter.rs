//! A mount that shows only some of its files: `--include` / `--exclude` globs on each file's
//! path from the mount's root (the same rules as `locus warm`'s).

use locus_core::select::Selection;

use crate::{Backend, ChunkInfo, FsError, Listing};

/// `inner`'s files under `root` whose paths from the root match an include (any, when none is
/// given) and no exclude. Folders are shown as listed (one may turn out empty).
pub struct Filtered<B> {
    inner: B,
    root: String,
    selection: Selection,
}

impl<B: Backend> Filtered<B> {
    /// Filters `inner`, mounted at URI `root`.
    pub fn new(
        inner: B,
        root: &str,
        include: &[String],
        exclude: &[String],
    ) -> Result<Self, FsError> {
        Ok(Filtered {
            inner,
            root: root.trim_end_matches('/').to_string(),
            selection: Selection::new(include, exclude)
                .map_err(|e| FsError::Io(format!("bad glob {e}")))?,
        })
    }

    fn keep(&self, path: &str) -> bool {
        self.selection.keep(path)
    }

    /// Keeps the entries of `uri`'s listing `l` that the globs select.
    fn filter(&self, uri: &str, mut l: Listing) -> Result<Listing, FsError> {
        // Entries' paths are from the folder listed; the globs see them from the root.
        let folder = uri
            .trim_end_matches('/')
            .strip_prefix(&self.root)
            .map(|r| r.trim_start_matches('/'))
            .unwrap_or("");
        l.entries.retain(|e| match folder.is_empty() {
            true => self.keep(&e.path),
            false => self.keep(&format!("{folder}/{}", e.path)),
        });
        Ok(l)
    }
}

impl<B: Backend> Backend for Filtered<B> {
    fn list(&self, uri: &str) -> Result<Listing, FsError> {
        self.filter(uri, self.inner.list(uri)?)
    }

    fn list_within(&self, uri: &str, max_age: std::time::Duration) -> Result<Listing, FsError> {
        self.filter(uri, self.inner.list_within(uri, max_age)?)
    }

    fn chunks(
        &self,
        uri: &str,
        key: &str,
        first: u32,
        count: u32,
        recheck: bool,
    ) -> Result<(ChunkInfo, bool), FsError> {
        self.inner.chunks(uri, key, first, count, recheck)
    }

    fn prefetch(&self, uri: &str, key: &str, first: u32, count: u32) {
        self.inner.prefetch(uri, key, first, count)
    }

    fn cached(&self) -> Result<Vec<String>, FsError> {
        self.inner.cached()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Entry;

    /// A repo of `a.json`, `w.safetensors`, `sub/x.safetensors`, `sub/deep/y.bin`, listed one
    /// folder at a time as the daemon lists it.
    struct Repo;

    impl Backend for Repo {
        fn list_within(&self, uri: &str, _: std::time::Duration) -> Result<Listing, FsError> {
            self.list(uri)
        }

        fn list(&self, uri: &str) -> Result<Listing, FsError> {
            let names: &[&str] = match uri {
                "hf://a/b@c" => &["a.json", "w.safetensors"],
                "hf://a/b@c/sub" => &["x.safetensors"],
                "hf://a/b@c/sub/deep" => &["y.bin"],
                _ => &[],
            };
            Ok(Listing {
                entries: names
                    .iter()
                    .map(|n| Entry {
                        uri: format!("{uri}/{n}"),
                        key: n.to_string(),
                        path: n.to_string(),
                        size: 1,
                        cached: None,
                    })
                    .collect(),
                folders: vec![],
                ttl: None,
                age: std::time::Duration::ZERO,
            })
        }
        fn chunks(
            &self,
            _: &str,
            _: &str,
            _: u32,
            _: u32,
            _: bool,
        ) -> Result<(ChunkInfo, bool), FsError> {
            Err(FsError::Io("no bytes here".into()))
        }
        fn prefetch(&self, _: &str, _: &str, _: u32, _: u32) {}
        fn cached(&self) -> Result<Vec<String>, FsError> {
            Ok(vec![])
        }
    }

    fn names(f: &Filtered<Repo>, uri: &str) -> Vec<String> {
        f.list(uri)
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn globs_see_paths_from_the_mounts_root_in_every_folder() {
        let f = Filtered::new(
            Repo,
            "hf://a/b@c",
            &["*.safetensors".into()],
            &["sub/deep/**".into()],
        )
        .unwrap();
        assert_eq!(names(&f, "hf://a/b@c"), vec!["w.safetensors"]);
        assert_eq!(names(&f, "hf://a/b@c/sub"), vec!["x.safetensors"]);
        assert!(names(&f, "hf://a/b@c/sub/deep").is_empty());
        let g = Filtered::new(Repo, "hf://a/b@c/", &[], &["sub/*.safetensors".into()]).unwrap();
        assert_eq!(names(&g, "hf://a/b@c"), vec!["a.json", "w.safetensors"]);
        assert!(names(&g, "hf://a/b@c/sub").is_empty());
        assert_eq!(names(&g, "hf://a/b@c/sub/deep"), vec!["y.bin"]);
        assert!(Filtered::new(Repo, "hf://a/b@c", &["a[".into()], &[]).is_err());
    }
}
