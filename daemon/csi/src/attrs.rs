//! What a volume asks for: its `volumeAttributes` (the CSI `volume_context`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use locus_core::LocusUri;

/// Keys kubelet adds (`podInfoOnMount`, inline volumes, service account tokens): not the
/// user's, never an error.
const KUBELET_PREFIX: &str = "csi.storage.k8s.io/";

/// How long `warm: "true"` waits by default before the volume is mounted anyway.
pub const WARM_TIMEOUT: Duration = Duration::from_secs(600);

/// A volume's attributes, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attrs {
    /// The repo, folder or prefix (with `@REV` if one is named there).
    pub uri: LocusUri,
    /// Which files the mount shows, and how it is mounted.
    pub mount: crate::MountWith,
    /// Fill the node's cache before the volume is published.
    pub warm: bool,
    /// How long that may take before the volume is mounted anyway.
    pub warm_timeout: Duration,
    /// The user's attributes as given (what a second publish must repeat to be the same).
    pub given: BTreeMap<String, String>,
}

/// The attributes this plugin reads.
pub const KEYS: [&str; 7] = [
    "uri",
    "revision",
    "include",
    "exclude",
    "warm",
    "warmTimeout",
    "noOpen",
];

fn list(v: Option<&String>) -> Vec<String> {
    v.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

/// A `"true"`/`"false"` attribute (absent: false).
fn flag(given: &BTreeMap<String, String>, key: &str) -> Result<bool, String> {
    match given.get(key).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(o) => Err(format!(
            "volume attribute {key}: {o:?} is not \"true\" or \"false\""
        )),
    }
}

impl Attrs {
    /// Reads `ctx`: `uri` (required), `revision`, `include`/`exclude` (comma-separated globs),
    /// `warm` (`"true"`/`"false"`), `warmTimeout` (seconds), `noOpen` (`"true"`: the mount
    /// is told of no open or close, for datasets of many small files, `locus mount
    /// --no-open`; `"false"`: of every one, `--open`; absent: the mount settles it by the
    /// first files opened). Any other key, but kubelet's, is an error naming the keys there are (a
    /// typo must not pass unnoticed).
    pub fn parse(ctx: &HashMap<String, String>) -> Result<Attrs, String> {
        let given: BTreeMap<String, String> = ctx
            .iter()
            .filter(|(k, _)| !k.starts_with(KUBELET_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(k) = given.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!(
                "unknown volume attribute {k:?} (known: {})",
                KEYS.join(", ")
            ));
        }
        let raw = given.get("uri").ok_or(
            "volume attribute \"uri\" is required (e.g. hf://ORG/NAME or s3://BUCKET/PREFIX)",
        )?;
        let mut uri = LocusUri::parse(raw).map_err(|e| format!("volume attribute uri: {e}"))?;
        if matches!(uri.namespace, locus_core::Namespace::Http { .. }) && raw.contains('?') {
            return Err("volume attribute uri: a URL with a query string (a signature) cannot be a volume: it would show in the node's mount table".into());
        }
        if let Some(rev) = given.get("revision") {
            if !uri.namespace.has_revisions() {
                return Err(format!(
                    "volume attribute revision: {} has no revisions",
                    uri.namespace
                ));
            }
            match &uri.revision {
                Some(r) if r != rev => {
                    return Err(format!(
                        "volume attributes: uri names revision {r:?} and revision says {rev:?}"
                    ))
                }
                _ => {
                    uri = LocusUri::parse(&format!(
                        "{}@{}{}",
                        uri.namespace,
                        rev.replace('/', "%2F"),
                        match uri.path.is_empty() {
                            true => String::new(),
                            false => format!("/{}", uri.path),
                        }
                    ))
                    .map_err(|e| format!("volume attribute revision: {e}"))?
                }
            }
        }
        let warm = flag(&given, "warm")?;
        let warm_timeout = match given.get("warmTimeout") {
            None => WARM_TIMEOUT,
            Some(s) => match s.parse::<u64>() {
                Ok(n) if (1..=86_400).contains(&n) => Duration::from_secs(n),
                _ => {
                    return Err(format!(
                        "volume attribute warmTimeout: {s:?} is not 1 to 86400 seconds"
                    ))
                }
            },
        };
        let include = list(given.get("include"));
        let exclude = list(given.get("exclude"));
        for (what, globs) in [("include", &include), ("exclude", &exclude)] {
            locus_core::select::Selection::new(globs, &[])
                .map_err(|e| format!("volume attribute {what}: bad glob {e}"))?;
        }
        Ok(Attrs {
            uri,
            mount: crate::MountWith {
                no_open: flag(&given, "noOpen")?,
                open: given.get("noOpen").map(String::as_str) == Some("false"),
                include,
                exclude,
            },
            warm,
            warm_timeout,
            given,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn attributes_read_as_documented_and_mistakes_are_named() {
        let a = Attrs::parse(&ctx(&[
            ("uri", "hf://acme/model"),
            ("revision", "refs/pr/1"),
            ("include", "*.safetensors, *.json"),
            ("warm", "true"),
            ("noOpen", "true"),
            ("csi.storage.k8s.io/pod.name", "p"),
            ("csi.storage.k8s.io/ephemeral", "true"),
        ]))
        .unwrap();
        assert_eq!(a.uri.revision.as_deref(), Some("refs/pr/1"));
        assert_eq!(a.mount.include, vec!["*.safetensors", "*.json"]);
        assert!(a.warm && a.mount.exclude.is_empty() && a.mount.no_open && !a.mount.open);
        assert_eq!(a.given.len(), 5, "kubelet's keys are not the user's");
        let auto = Attrs::parse(&ctx(&[("uri", "hf://a/b")])).unwrap().mount;
        assert!(!auto.no_open && !auto.open, "absent: the mount settles it");
        let open = Attrs::parse(&ctx(&[("uri", "hf://a/b"), ("noOpen", "false")]))
            .unwrap()
            .mount;
        assert!(!open.no_open && open.open);
        for (bad, want) in [
            (ctx(&[]), "required"),
            (ctx(&[("uri", "ftp://x")]), "uri"),
            (ctx(&[("uri", "hf://acme/model/../x")]), "uri"),
            (
                ctx(&[("uri", "hf://a/b"), ("revison", "main")]),
                "unknown volume attribute \"revison\"",
            ),
            (ctx(&[("uri", "hf://a/b"), ("warm", "yes")]), "warm"),
            (ctx(&[("uri", "hf://a/b"), ("noOpen", "1")]), "noOpen"),
            (
                ctx(&[("uri", "hf://a/b@main"), ("revision", "dev")]),
                "revision",
            ),
            (
                ctx(&[("uri", "s3://bucket/p"), ("revision", "dev")]),
                "no revisions",
            ),
            (
                ctx(&[("uri", "hf://a/b"), ("warmTimeout", "0")]),
                "warmTimeout",
            ),
            (ctx(&[("uri", "hf://a/b"), ("include", "a[")]), "include"),
            (
                ctx(&[("uri", "https://example.com/m.bin?X-Amz-Signature=abc")]),
                "query string",
            ),
        ] {
            let e = Attrs::parse(&bad).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }
}
