//! Names the commit the binary is built from, for `locus --version`: `git describe`'s short id
//! (with `-dirty` for uncommitted changes), or `LOCUS_COMMIT` where there is no git (an image
//! build from a source archive), else "unknown commit".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LOCUS_COMMIT");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // A new commit or a checkout moves HEAD (or the ref it names).
    for f in [".git/HEAD", ".git/index"] {
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
    let commit = commit.map_or("unknown commit".to_string(), |c| format!("commit {c}"));
    println!("cargo:rustc-env=LOCUS_COMMIT={commit}");
}
