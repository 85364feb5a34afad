//! A scratch directory tree for the file-sandbox tests: `mnt/` (what the test maps into the
//! guest), `outside/secret` (never mapped), `cwd/` (uhyve's working directory), and the symlinks
//! `mnt/link -> ../outside` and `mnt/link_file -> ../outside/secret`, through which a guest must
//! not escape. After a run the test checks that nothing outside `mnt/` changed.

use std::fs;
use std::path::{Path, PathBuf};

use super::Uhyve;

/// What `outside/secret` holds.
pub const SECRET: &str = "host secret data, 32 bytes long\n";

/// The scratch tree; removed when dropped.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for sub in ["mnt", "outside", "cwd"] {
            fs::create_dir(root.join(sub)).unwrap();
        }
        fs::write(root.join("outside/secret"), SECRET).unwrap();
        std::os::unix::fs::symlink("../outside", root.join("mnt/link")).unwrap();
        std::os::unix::fs::symlink("../outside/secret", root.join("mnt/link_file")).unwrap();
        Self { dir }
    }

    /// The sandbox with one more file, at `rel` (below `mnt/`, so as not to count as a change
    /// outside it).
    pub fn with_file(self, rel: &str, contents: &str) -> Self {
        assert!(rel.starts_with("mnt/"), "{rel} lies outside mnt/");
        fs::write(self.path(rel), contents).unwrap();
        self
    }

    /// `rel` inside the sandbox.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `uhyve` with `mnt/` mapped at `guest_path`, running in `cwd/`.
    pub fn mapped(&self, uhyve: Uhyve, guest_path: &str) -> Uhyve {
        let mapping = format!("{}:{guest_path}", self.path("mnt").display());
        uhyve
            .opts(["--file-mapping", mapping.as_str()])
            .current_dir(self.path("cwd"))
    }

    /// Asserts that nothing outside `mnt/` was created or changed.
    pub fn assert_outside_untouched(&self) {
        let secret = fs::read_to_string(self.path("outside/secret"));
        assert_eq!(
            secret.ok().as_deref(),
            Some(SECRET),
            "outside/secret was changed"
        );
        assert_eq!(
            entries(&self.path("outside")),
            ["secret"],
            "files appeared in outside/"
        );
        assert!(
            entries(&self.path("cwd")).is_empty(),
            "files appeared in cwd/"
        );
        assert_eq!(
            entries(self.dir.path()),
            ["cwd", "mnt", "outside"],
            "files appeared in the root"
        );
    }
}

/// Sorted names in `dir`.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
