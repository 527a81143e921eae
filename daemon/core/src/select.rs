//! Which files `--include` / `--exclude` globs (or a volume's attributes) select: one rule
//! for warms, mounts and CSI volumes.

use globset::{Glob, GlobSet, GlobSetBuilder};

/// Include and exclude globs, compiled.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

fn set(patterns: &[String]) -> Result<Option<GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| format!("{p:?}: {e}"))?);
    }
    b.build().map(Some).map_err(|e| e.to_string())
}

impl Selection {
    /// The selection of `include` (any path, when empty) less `exclude`; a bad pattern is an
    /// error naming it (`"PATTERN": why`).
    pub fn new(include: &[String], exclude: &[String]) -> Result<Selection, String> {
        Ok(Selection {
            include: set(include)?,
            exclude: set(exclude)?,
        })
    }

    /// Whether `path` is selected.
    pub fn keep(&self, path: &str) -> bool {
        self.include.as_ref().is_none_or(|g| g.is_match(path))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_then_excludes() {
        let s = Selection::new(&["*.json".into()], &["x/*".into()]).unwrap();
        assert!(s.keep("a.json") && !s.keep("x/a.json") && !s.keep("a.bin"));
        assert!(Selection::default().keep("anything"));
        assert!(Selection::new(&["a[".into()], &[])
            .unwrap_err()
            .contains("\"a[\""));
    }
}
