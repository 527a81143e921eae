//! Names the commit the binary is built from, for `locus --version`: `git describe`'s short id
//! (with `-dirty` for changes not committed when it was built; an edit alone, not staged,
//! does not rebuild it), or `LOCUS_COMMIT` where there is no git (an image
//! build from a source archive), else "unknown commit".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LOCUS_COMMIT");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // A checkout moves HEAD, a commit the ref HEAD names; staging changes the index.
    let mut watch = vec![".git/HEAD".to_string(), ".git/index".to_string()];
    if let Ok(head) = std::fs::read_to_string(root.join(".git/HEAD")) {
        if let Some(r) = head.strip_prefix("ref: ") {
            watch.push(format!(".git/{}", r.trim()));
        }
    }
    for f in watch {
        let p = root.join(f);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    let commit = std::env::var("LOCUS_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["describe", "--always", "--dirty", "--abbrev=12"])
                .current_dir(&root)
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
                .filter(|s| !s.is_empty())
        });
    let commit = commit.map_or_else(|| "unknown commit".to_string(), |c| format!("commit {c}"));
    println!("cargo:rustc-env=LOCUS_COMMIT={commit}");
}
