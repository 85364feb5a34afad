//! The host directory tree the file-system fuzz targets work in, shared by `hypercall` and
//! `sandbox_paths`: created once per process, reset to the same contents before every input, and
//! checked after it, so that a file touched outside the mapped directories is a crash.
//!
//! ```text
//! <root>/outside/canary      must stay unchanged, and nothing may appear beside it
//! <root>/mapped/             mapped as guest /root (and mapped/dir as guest /data)
//!        file, dir/inner, link -> file, escape -> ../outside/canary,
//!        escape_abs -> <root>/outside, loop -> loop
//! <root>/private/            the parent of the FileMap's private temp directory
//! ```
//!
//! The root is a fresh temp directory per process, removed when the process exits normally (a
//! crashed or killed fuzzer leaves it behind).

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// What the canary file holds.
const CANARY: &[u8] = b"a file outside every mapping: the guest must never change it\n";

/// The tree; one per process, used by one input at a time.
pub struct SandboxTree {
    root: PathBuf,
    /// The canary's mode as created.
    canary_mode: u32,
}

/// The process's tree, reset for the caller's input; the guard keeps inputs of parallel test
/// threads apart.
pub fn sandbox_tree() -> MutexGuard<'static, SandboxTree> {
    static TREE: OnceLock<Mutex<SandboxTree>> = OnceLock::new();
    let tree = TREE.get_or_init(|| {
        let root = tempfile::Builder::new()
            .prefix("uhyve-fuzz-")
            .tempdir()
            .expect("create the fuzzing temp directory")
            .keep();
        let root = root.canonicalize().expect("canonical fuzzing root");
        remove_at_exit(&root);
        fs::create_dir(root.join("outside")).expect("create outside/");
        fs::write(root.join("outside/canary"), CANARY).expect("write the canary");
        fs::create_dir(root.join("private")).expect("create private/");
        let canary = fs::metadata(root.join("outside/canary")).expect("stat the canary");
        let canary_mode = canary.permissions().mode();
        Mutex::new(SandboxTree { root, canary_mode })
    });
    let guard = tree.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    guard.reset();
    guard
}

impl SandboxTree {
    /// The mapped host directory.
    pub fn mapped(&self) -> PathBuf {
        self.root.join("mapped")
    }

    /// The parent of the FileMap's private temp directory.
    pub fn private(&self) -> PathBuf {
        self.root.join("private")
    }

    /// The mapping options of the hypercall target: `/root` and `/data`.
    pub fn default_mappings(&self) -> Vec<String> {
        let mapped = self.mapped();
        vec![
            format!("{}:/root", mapped.display()),
            format!("{}:/data", mapped.join("dir").display()),
        ]
    }

    /// Host paths a mapping may name (the first ones exist, the last does not). Not the
    /// symlinks that lead out of the tree: a mapping is the user's choice, and one of them
    /// would rightly expose `outside/`.
    pub fn host_candidates(&self) -> [PathBuf; 6] {
        let mapped = self.mapped();
        [
            mapped.clone(),
            mapped.join("dir"),
            mapped.join("file"),
            mapped.join("link"),
            mapped.join("dir/inner"),
            mapped.join("missing"),
        ]
    }

    /// Rebuilds `mapped/` from scratch.
    fn reset(&self) {
        let mapped = self.mapped();
        if mapped.symlink_metadata().is_ok() {
            make_removable(&mapped);
            fs::remove_dir_all(&mapped).expect("remove the previous mapped tree");
        }
        fs::create_dir(&mapped).expect("create mapped/");
        fs::write(mapped.join("file"), b"hello from the mapped file\n").expect("write file");
        fs::create_dir(mapped.join("dir")).expect("create dir/");
        fs::write(mapped.join("dir/inner"), b"inner\n").expect("write dir/inner");
        symlink("file", mapped.join("link")).expect("symlink link");
        symlink("../outside/canary", mapped.join("escape")).expect("symlink escape");
        symlink(self.root.join("outside"), mapped.join("escape_abs")).expect("symlink escape_abs");
        symlink("loop", mapped.join("loop")).expect("symlink loop");
    }

    /// Panics if anything outside `mapped/` and `private/` changed: the canary's contents, the
    /// entries of the root and of `outside/`, and leftovers in `private/` once the FileMap is
    /// gone (`filemap_dropped`).
    pub fn assert_untouched(&self, filemap_dropped: bool) {
        let names = |dir: &Path| {
            let mut names: Vec<String> = fs::read_dir(dir)
                .unwrap_or_else(|error| panic!("list {}: {error}", dir.display()))
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(&self.root), ["mapped", "outside", "private"]);
        assert_eq!(names(&self.root.join("outside")), ["canary"]);
        let canary = fs::read(self.root.join("outside/canary")).expect("read the canary");
        assert_eq!(canary, CANARY, "the canary outside the mappings changed");
        let mode = fs::metadata(self.root.join("outside/canary")).expect("stat the canary");
        assert_eq!(
            mode.permissions().mode(),
            self.canary_mode,
            "the canary's mode changed"
        );
        if filemap_dropped {
            assert!(
                names(&self.private()).is_empty(),
                "the private temp directory stayed"
            );
        }
    }
}

/// The tree's root, for [`remove_tree`].
static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Removes `root` when the process exits normally (the replay test, a fuzzer at the end of its
/// run); a crashed or killed fuzzer leaves it behind.
fn remove_at_exit(root: &Path) {
    if ROOT.set(root.to_owned()).is_ok() {
        // SAFETY: registers a plain `extern "C"` function without arguments, which only touches
        // the file system and a static that is set before and never changed after.
        unsafe { libc::atexit(remove_tree) };
    }
}

/// The exit handler: removes the tree.
extern "C" fn remove_tree() {
    if let Some(root) = ROOT.get() {
        make_removable(root);
        let _ = fs::remove_dir_all(root);
    }
}

/// Gives the owner rwx on every directory below `dir` (the guest may create one with mode 0),
/// so that it can be removed.
fn make_removable(dir: &Path) {
    let Ok(metadata) = dir.symlink_metadata() else {
        return;
    };
    if !metadata.is_dir() {
        return;
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_removable(&entry.path());
        }
    }
}
