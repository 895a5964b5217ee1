//! Records the commit this binary is built from as `RNNLAB_BUILD_COMMIT` (`<sha>`,
//! `<sha>-dirty` when tracked files of the crates or the manifests differ from it, `unknown` outside a git checkout), so
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
        // Only what the binary is built from: an edited README or result is not code.
        let dirty = git(&[
            "-C",
            "../..",
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "crates",
            "Cargo.toml",
            "Cargo.lock",
        ])
        .is_some_and(|changes| !changes.is_empty());
        if dirty { format!("{sha}-dirty") } else { sha }
    });
    println!(
        "cargo:rustc-env=RNNLAB_BUILD_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    // Again after a commit or checkout (HEAD, its branch, packed refs) and after an edit
    // of the sources, which makes the tree dirty; not on every index refresh, which would
    // rebuild this crate after each `git status`. Only paths that exist: cargo reruns the
    // script every time for one that does not.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        let watched = ["HEAD".to_owned(), "packed-refs".to_owned()]
            .into_iter()
            .chain(branch)
            .map(|name| format!("{dir}/{name}"))
            .filter(|path| std::path::Path::new(path).exists());
        for path in watched {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    for path in [
        "build.rs",
        "Cargo.toml",
        "src",
        "../cells",
        "../tasks",
        "../../Cargo.toml",
        "../../Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
