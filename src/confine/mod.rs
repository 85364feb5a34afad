//! Defence in depth for uhyve's own process (`docs/security.md`): should a hostile guest get
//! control of uhyve, what uhyve may still do is limited by the host kernel.
//!
//! * [`landlock`]: the file system. Once set up, the thread that spawns the vCPU threads
//!   restricts itself (and so them) to the mapped host trees and the private temp directory
//!   (`--file-isolation none|normal|strict`).
//! * [`seccomp`]: system calls. Each vCPU thread, after creating its vCPU, and the main thread,
//!   after spawning them, install an allowlist of what the run phase uses (`--seccomp
//!   none|strict`).
//!
//! Both are Linux-only. Elsewhere the options are accepted; `strict` fails at once with one line
//! and `--file-isolation normal` says (at info level) that nothing is restricted.
//! [`Confiner`] is the one interface [`crate::vm`] uses on every platform.

#[cfg(target_os = "linux")]
pub mod landlock;
#[cfg(target_os = "linux")]
pub mod seccomp;

use std::path::PathBuf;

use thiserror::Error;

use crate::params::{Confinement, FileIsolation, SeccompMode};

/// One host tree uhyve may reach while the guest runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeAccess {
    /// The host path (a directory and everything below it, or one file).
    pub path: PathBuf,
    /// Whether uhyve may create, write and remove below it, or only read.
    pub writable: bool,
    /// Whether it is a directory.
    pub directory: bool,
}

/// Failures of confinement: at start-up (strict modes without support) or while installing.
#[derive(Debug, Error)]
pub enum ConfineError {
    /// Landlock failed or is missing under `--file-isolation strict`.
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Landlock(#[from] landlock::LandlockError),
    /// The seccomp filter could not be built or installed.
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// A strict mode on a platform without the mechanism.
    #[error(
        "{option} strict: {mechanism} exists only on Linux; use {option} none on this platform"
    )]
    Unsupported {
        /// The option, e.g. `--seccomp`.
        option: &'static str,
        /// What is missing, e.g. `Landlock`.
        mechanism: &'static str,
    },
}

/// Which thread confines itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// The thread that spawns and supervises the vCPU threads.
    Main,
    /// A vCPU thread, after creating its vCPU and before its first run.
    Vcpu,
    /// The network card's I/O thread, before it serves anything.
    NetIo,
}

/// What one VM's confinement will do, decided at start-up.
#[derive(Debug)]
pub struct Confiner {
    #[cfg(target_os = "linux")]
    landlock: Option<LandlockPlan>,
    #[cfg(target_os = "linux")]
    seccomp: Option<seccompiler::BpfProgram>,
}

/// The Landlock part of a [`Confiner`]: the trees, once known.
#[cfg(target_os = "linux")]
#[derive(Debug, Default)]
struct LandlockPlan {
    trees: Vec<TreeAccess>,
    removable: Vec<PathBuf>,
    strict: bool,
}

#[cfg(target_os = "linux")]
impl Confiner {
    /// Decides what `confinement` means on this host, failing at once for a strict mode it
    /// cannot keep; builds the seccomp filter (with `run_ioctls`, the backend's run-time ioctl
    /// requests) and installs its SIGSYS handler.
    pub fn new(confinement: Confinement, run_ioctls: &[u64]) -> Result<Self, ConfineError> {
        let probe = landlock::probe();
        let landlock = match landlock::decide(confinement.file_isolation, probe)? {
            landlock::Decision::Off => None,
            landlock::Decision::Unavailable => {
                log::info!(
                    "this host kernel has no Landlock ({probe:?}): uhyve's file access is \
                     limited by its own path checks only"
                );
                None
            }
            landlock::Decision::Enforce => Some(LandlockPlan {
                strict: confinement.file_isolation == FileIsolation::Strict,
                ..LandlockPlan::default()
            }),
        };
        let seccomp = match confinement.seccomp {
            SeccompMode::None => None,
            SeccompMode::Strict => {
                let filter = seccomp::build_filter(run_ioctls, std::process::id())?;
                seccomp::install_violation_handler()?;
                Some(filter)
            }
        };
        Ok(Self { landlock, seccomp })
    }

    /// Whether [`Confiner::restrict_files`] will use the trees (so they are worth collecting).
    pub fn wants_trees(&self) -> bool {
        self.landlock.is_some()
    }

    /// The trees the process may reach once restricted, and the paths (the private temp
    /// directory) it must be able to remove at exit.
    pub fn allow_trees(&mut self, trees: Vec<TreeAccess>, removable: Vec<PathBuf>) {
        if let Some(plan) = &mut self.landlock {
            plan.trees = trees;
            plan.removable = removable;
        }
    }

    /// Restricts the calling thread and every thread it creates later to the allowed trees.
    /// Call it on the thread that spawns the vCPU threads, before spawning them, with no other
    /// thread of uhyve's running. A failure ends the start under `strict` and is a warning
    /// under `normal`.
    pub fn restrict_files(&self) -> Result<(), ConfineError> {
        let Some(plan) = &self.landlock else {
            return Ok(());
        };
        match landlock::restrict(&plan.trees, &plan.removable) {
            Ok(status) => {
                log::info!(
                    "Landlock: file access restricted to {} tree(s) ({:?})",
                    plan.trees.len(),
                    status.ruleset
                );
                Ok(())
            }
            Err(error) if plan.strict => Err(error.into()),
            Err(error) => {
                log::warn!("{error}; continuing without Landlock");
                Ok(())
            }
        }
    }

    /// Installs the seccomp filter on the calling thread.
    pub fn restrict_syscalls(&self, role: ThreadRole) -> Result<(), ConfineError> {
        let Some(filter) = &self.seccomp else {
            return Ok(());
        };
        seccomp::install(filter, role)?;
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
impl Confiner {
    /// Decides what `confinement` means here: without Landlock and seccomp, a strict mode fails
    /// at once; `--file-isolation normal` says that nothing is restricted.
    pub fn new(confinement: Confinement, _run_ioctls: &[u64]) -> Result<Self, ConfineError> {
        match confinement.file_isolation {
            FileIsolation::Strict => {
                return Err(ConfineError::Unsupported {
                    option: "--file-isolation",
                    mechanism: "Landlock",
                });
            }
            FileIsolation::Normal => log::info!(
                "no Landlock on this platform: uhyve's file access is limited by its own path \
                 checks only"
            ),
            FileIsolation::None => {}
        }
        if confinement.seccomp == SeccompMode::Strict {
            return Err(ConfineError::Unsupported {
                option: "--seccomp",
                mechanism: "seccomp",
            });
        }
        Ok(Self {})
    }

    /// Never: there is nothing to restrict with.
    pub fn wants_trees(&self) -> bool {
        false
    }

    /// Nothing to remember.
    pub fn allow_trees(&mut self, _trees: Vec<TreeAccess>, _removable: Vec<PathBuf>) {}

    /// Nothing to restrict with.
    pub fn restrict_files(&self) -> Result<(), ConfineError> {
        Ok(())
    }

    /// Nothing to restrict with.
    pub fn restrict_syscalls(&self, _role: ThreadRole) -> Result<(), ConfineError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_confinement_restricts_nothing() {
        let confiner = Confiner::new(Confinement::NONE, &[]).unwrap();
        assert!(!confiner.wants_trees());
        // Safe to call in the test process: both are no-ops.
        confiner.restrict_files().unwrap();
        confiner.restrict_syscalls(ThreadRole::Main).unwrap();
    }

    #[cfg(not(target_os = "linux"))]
    #[test]
    fn strict_modes_fail_with_one_line_off_linux() {
        for confinement in [
            Confinement {
                file_isolation: FileIsolation::Strict,
                seccomp: SeccompMode::None,
            },
            Confinement {
                file_isolation: FileIsolation::None,
                seccomp: SeccompMode::Strict,
            },
        ] {
            let message = Confiner::new(confinement, &[]).unwrap_err().to_string();
            assert!(message.contains("exists only on Linux"), "{message}");
            assert!(!message.contains('\n'));
        }
        assert!(Confiner::new(Confinement::default(), &[]).is_ok());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn file_isolation_wants_trees_where_landlock_exists() {
        let confinement = Confinement {
            file_isolation: FileIsolation::Normal,
            seccomp: SeccompMode::None,
        };
        let confiner = Confiner::new(confinement, &[]).unwrap();
        let available = matches!(landlock::probe(), landlock::Probe::Abi(_));
        assert_eq!(confiner.wants_trees(), available);
    }
}
