//! Records the commit this binary is built from as `RNNLAB_BUILD_COMMIT` (`<sha>`,
//! `<sha>-dirty` when tracked files differ from it, `unknown` outside a git checkout), so
//! that `rnnlab --version` and every `manifest.yaml` name the code that trained the runs,
//! not only the checkout they were started in (a binary kept in `/tmp` trains for hours
//! while the checkout moves on).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    let commit = git(&["rev-parse", "HEAD"]).map(|sha| {
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|changes| !changes.is_empty());
        if dirty { format!("{sha}-dirty") } else { sha }
    });
    println!(
        "cargo:rustc-env=RNNLAB_BUILD_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    // Again after a commit or checkout (HEAD, its branch, packed refs) and after an edit
    // of the sources, which makes the tree dirty; not on every index refresh, which would
    // rebuild this crate after each `git status`.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/packed-refs");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{branch}");
        }
    }
    for path in [
        "build.rs",
        "src",
        "../cells/src",
        "../tasks/src",
        "../../Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
