//! Landlock for uhyve's own process: once the image is read, the output file, `/dev/kvm` and the
//! file mappings opened, the thread that then spawns the vCPU threads restricts itself (and so
//! every thread it creates afterwards) to the mapped host trees — read-only or read-write — and
//! the private temp directory. Files opened before stay usable; any other path is refused by the
//! host kernel (`EACCES`), whatever uhyve's own path checks would have decided.
//!
//! Whether to restrict is a pure function of the mode and the probed Landlock ABI
//! ([`decide`]); the rules are added with the `landlock` crate's best-effort compatibility, so
//! every ABI from 1 upwards enforces what it can (e.g. truncation is only controlled from ABI 3).

use std::io;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    RestrictionStatus, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use thiserror::Error;

use super::TreeAccess;
use crate::params::FileIsolation;

/// The newest Landlock ABI whose access rights uhyve names; newer kernels enforce at least these.
const NEWEST_KNOWN_ABI: ABI = ABI::V10;

/// Failures of Landlock.
#[derive(Debug, Error)]
pub enum LandlockError {
    /// `--file-isolation strict` on a kernel without Landlock.
    #[error(
        "--file-isolation strict: this host kernel has no Landlock ({reason}); run with \
         --file-isolation normal or none, or enable Landlock (CONFIG_SECURITY_LANDLOCK, lsm=landlock)"
    )]
    Unavailable {
        /// What the probe found.
        reason: String,
    },
    /// The kernel refused the ruleset.
    #[error("Landlock: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    /// A tree to allow cannot be opened.
    #[error("Landlock: cannot allow a path: {0}")]
    Tree(#[from] landlock::PathFdError),
    /// Landlock was asked for but the kernel enforced nothing.
    #[error("Landlock: the host kernel enforced no restriction")]
    NotEnforced,
}

/// What the host kernel offers, as probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Landlock with this ABI version (1 or more).
    Abi(u32),
    /// No Landlock: not built, not enabled at boot (the `errno` the probe got).
    Missing(i32),
}

/// What to do about Landlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `--file-isolation none`.
    Off,
    /// `normal` on a kernel without Landlock: run unrestricted, say so once.
    Unavailable,
    /// Restrict the process.
    Enforce,
}

/// Asks the host kernel for its Landlock ABI version.
pub fn probe() -> Probe {
    // SAFETY: landlock_create_ruleset with a null attribute, size 0 and the VERSION flag only
    // returns the ABI version (or an error); it reads and writes no memory.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    match u32::try_from(version) {
        Ok(abi) if abi >= 1 => Probe::Abi(abi),
        _ => Probe::Missing(io::Error::last_os_error().raw_os_error().unwrap_or(0)),
    }
}

/// `LANDLOCK_CREATE_RULESET_VERSION`.
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

/// Whether to restrict, for `mode` on a kernel that `probe` describes.
pub fn decide(mode: FileIsolation, probe: Probe) -> Result<Decision, LandlockError> {
    match (mode, probe) {
        (FileIsolation::None, _) => Ok(Decision::Off),
        (_, Probe::Abi(_)) => Ok(Decision::Enforce),
        (FileIsolation::Normal, Probe::Missing(_)) => Ok(Decision::Unavailable),
        (FileIsolation::Strict, Probe::Missing(errno)) => Err(LandlockError::Unavailable {
            reason: missing_reason(errno),
        }),
    }
}

/// Why the probe found no Landlock, in words.
fn missing_reason(errno: i32) -> String {
    match errno {
        libc::ENOSYS => "the kernel was built without it".into(),
        libc::EOPNOTSUPP => "it is not enabled at boot".into(),
        errno => io::Error::from_raw_os_error(errno).to_string(),
    }
}

/// The rights on a tree: reading, and for a writable one creating, writing, truncating and
/// removing regular files and directories (no devices, sockets, FIFOs, symlinks, executing,
/// renaming across directories or device ioctls). A file gets only the rights a file can have.
pub fn rights(tree: &TreeAccess) -> BitFlags<AccessFs> {
    let mut rights = BitFlags::from(AccessFs::ReadFile);
    if tree.writable {
        rights |= AccessFs::WriteFile | AccessFs::Truncate;
    }
    if tree.directory {
        rights |= AccessFs::ReadDir;
        if tree.writable {
            rights |=
                AccessFs::MakeReg | AccessFs::MakeDir | AccessFs::RemoveFile | AccessFs::RemoveDir;
        }
    }
    rights
}

/// Restricts the calling thread, and every thread it creates from now on, to `trees` (plus,
/// for each path in `removable`, the right to remove it: its parent gets `RemoveDir`, which
/// removing the private temp directory at exit needs). Threads that already exist are not
/// restricted: call it before spawning any thread that must be.
pub fn restrict(
    trees: &[TreeAccess],
    removable: &[PathBuf],
) -> Result<RestrictionStatus, LandlockError> {
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(NEWEST_KNOWN_ABI))?
        // From ABI 6: no signals to processes outside this domain, no abstract Unix sockets.
        .scope(Scope::AbstractUnixSocket | Scope::Signal)?
        .create()?;
    for tree in trees {
        ruleset = ruleset.add_rule(PathBeneath::new(open_tree(&tree.path)?, rights(tree)))?;
    }
    for path in removable {
        if let Some(parent) = path.parent() {
            ruleset =
                ruleset.add_rule(PathBeneath::new(open_tree(parent)?, AccessFs::RemoveDir))?;
        }
    }
    let status = ruleset.restrict_self()?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(LandlockError::NotEnforced);
    }
    Ok(status)
}

fn open_tree(path: &Path) -> Result<PathFd, LandlockError> {
    Ok(PathFd::new(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(writable: bool, directory: bool) -> TreeAccess {
        TreeAccess {
            path: PathBuf::from("/x"),
            writable,
            directory,
        }
    }

    #[test]
    fn none_is_off_whatever_the_kernel() {
        assert_eq!(
            decide(FileIsolation::None, Probe::Abi(7)).unwrap(),
            Decision::Off
        );
        assert_eq!(
            decide(FileIsolation::None, Probe::Missing(libc::ENOSYS)).unwrap(),
            Decision::Off
        );
    }

    #[test]
    fn normal_and_strict_enforce_on_every_abi() {
        for abi in 1..=10 {
            for mode in [FileIsolation::Normal, FileIsolation::Strict] {
                assert_eq!(decide(mode, Probe::Abi(abi)).unwrap(), Decision::Enforce);
            }
        }
    }

    #[test]
    fn normal_without_landlock_runs_unrestricted() {
        assert_eq!(
            decide(FileIsolation::Normal, Probe::Missing(libc::EOPNOTSUPP)).unwrap(),
            Decision::Unavailable
        );
    }

    #[test]
    fn strict_without_landlock_fails_with_one_line() {
        for errno in [libc::ENOSYS, libc::EOPNOTSUPP, libc::EPERM] {
            let error = decide(FileIsolation::Strict, Probe::Missing(errno)).unwrap_err();
            let message = error.to_string();
            assert!(message.starts_with("--file-isolation strict:"), "{message}");
            assert!(message.contains("no Landlock"), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn this_kernel_is_probed() {
        // Any answer is fine; the probe must not fail in some third way.
        match probe() {
            Probe::Abi(abi) => assert!(abi >= 1),
            Probe::Missing(errno) => assert!(errno > 0),
        }
    }

    #[test]
    fn read_only_trees_get_no_write_rights() {
        let writes = AccessFs::WriteFile
            | AccessFs::Truncate
            | AccessFs::MakeReg
            | AccessFs::MakeDir
            | AccessFs::RemoveFile
            | AccessFs::RemoveDir;
        assert!(!rights(&tree(false, true)).intersects(writes));
        assert!(!rights(&tree(false, false)).intersects(writes));
        assert!(rights(&tree(false, true)).contains(AccessFs::ReadFile | AccessFs::ReadDir));
    }

    #[test]
    fn writable_trees_get_only_plain_file_and_directory_rights() {
        let dir = rights(&tree(true, true));
        assert!(dir.contains(AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::RemoveDir));
        for never in [
            AccessFs::Execute,
            AccessFs::MakeSym,
            AccessFs::MakeChar,
            AccessFs::MakeBlock,
            AccessFs::MakeFifo,
            AccessFs::MakeSock,
            AccessFs::Refer,
            AccessFs::IoctlDev,
        ] {
            assert!(!dir.contains(never), "{never:?}");
        }
        // A file: no directory rights, which the kernel would refuse on a file.
        let file = rights(&tree(true, false));
        assert!(!file.intersects(AccessFs::ReadDir | AccessFs::MakeReg | AccessFs::RemoveDir));
        assert!(file.contains(AccessFs::WriteFile));
    }
}
