//! What the guest is told besides its image: its command line and environment (through the
//! Cmdsize/Cmdval hypercalls, or the device tree's `/chosen/bootargs`), and where the host files
//! it may reach are (the file map of `--file-mapping`s and an archive's virtual files, and how
//! its kernel generation learns the mount points: [`MountHandoff`]).

use std::ffi::OsString;
use std::sync::Arc;

use crate::boot;
use crate::hypercall::GuestCommandLine;
use crate::isolation::{FileMap, IsolationError};
use crate::loader::KernelGeneration;
use crate::params::VmConfig;

use super::image::GuestImage;

/// The guest's command line, environment and files, ready for the device tree and the
/// hypercall dispatcher.
pub(super) struct GuestInput {
    /// The guest's view of host files.
    pub files: FileMap,
    /// Arguments and environment for Cmdsize/Cmdval.
    pub cmdline: GuestCommandLine,
    /// `/chosen/bootargs`.
    pub bootargs: String,
    /// `/uhyve,mounts`.
    pub fdt_mounts: Vec<String>,
}

impl GuestInput {
    /// What the guest of `image`, run as `config` says, is told.
    pub fn new(config: &VmConfig, image: &GuestImage<'_>) -> Result<Self, IsolationError> {
        let generation = image.kernel.generation();
        let pre_0_10_kernel = generation == KernelGeneration::Legacy;
        if pre_0_10_kernel && !config.kernel_options.is_empty() {
            log::warn!(
                "kernels before Hermit 0.10 take no kernel arguments; ignoring {}",
                config.kernel_options.join(" ")
            );
        }
        let mut files = FileMap::new(&config.file_mappings, config.tempdir.clone())?;
        files.set_io_mode(config.tuning.io_mode);
        add_virtual_files(&mut files, image.virtual_files.clone())?;
        let mut args: Vec<OsString> = vec![config.kernel.clone().into_os_string()];
        args.extend(config.kernel_args.iter().cloned());
        let cmdline = GuestCommandLine {
            args,
            env: config.env.clone(),
        };
        // Kernels >= 0.10 read arguments and environment from `/chosen/bootargs`; older ones ask
        // with Cmdsize/Cmdval, so their device tree does not need to carry the environment.
        let bootargs_env = if pre_0_10_kernel {
            Vec::new()
        } else {
            lossy_pairs(&cmdline.env)
        };
        let handoff = MountHandoff::new(
            generation,
            &files,
            &bootargs_env,
            &config.kernel_options,
            &image.archive_own_files,
        );
        // The kernel splits bootargs with shell rules: each option stays one word.
        let kernel_words: Vec<String> = config
            .kernel_options
            .iter()
            .map(|option| boot::shell_word(option))
            .chain(handoff.kernel_args)
            .collect();
        let bootargs = boot::bootargs(
            &kernel_words,
            &bootargs_env,
            &lossy_list(&config.kernel_args),
        );
        Ok(Self {
            files,
            cmdline,
            bootargs,
            fdt_mounts: handoff.fdt_mounts,
        })
    }
}

/// How the guest kernel learns where to mount the host file system (the `--file-mapping`
/// directories and those holding the virtual files of a Hermit image archive), by kernel
/// generation: nothing for pre-0.10 kernels (their mount point is built in), `-mount DIR` on the
/// command line for 0.10–0.11 (one directory), the device tree's `/uhyve,mounts` for ≥ 0.12.
/// Mappings and virtual files the kernel cannot reach are reported with a warning, except the
/// `expected_unreachable` ones (an archive's `hermit.toml` and kernel, which usually sit at its
/// root, where no mount can reach).
pub(super) struct MountHandoff {
    /// Kernel arguments to put before the environment in bootargs.
    kernel_args: Vec<String>,
    /// Directories for `/uhyve,mounts`.
    fdt_mounts: Vec<String>,
}

impl MountHandoff {
    fn new(
        generation: KernelGeneration,
        files: &FileMap,
        env: &[(String, String)],
        kernel_options: &[String],
        expected_unreachable: &[String],
    ) -> Self {
        let mut handoff = Self {
            kernel_args: Vec::new(),
            fdt_mounts: Vec::new(),
        };
        let warn_unreachable = |paths: Vec<String>, why: &str| {
            let paths: Vec<String> = paths
                .into_iter()
                .filter(|path| !expected_unreachable.contains(path))
                .collect();
            if !paths.is_empty() {
                log::warn!("the guest cannot reach {} ({why})", paths.join(", "));
            }
        };
        match generation {
            KernelGeneration::Legacy => {}
            KernelGeneration::BootargsMount => {
                if env.iter().any(|(key, _)| key == "UHYVE_MOUNT")
                    || kernel_options.iter().any(|option| option == "-mount")
                {
                    // The user chose the mount point; `env=UHYVE_MOUNT=…` or the kernel's own
                    // `-mount` carries it.
                    return handoff;
                }
                let Some(mount) = files.legacy_mount_point() else {
                    let mut unreachable = files.unmountable_mappings();
                    unreachable.extend(files.unmountable_virtual_files());
                    warn_unreachable(unreachable, "no directory to mount");
                    return handoff;
                };
                warn_unreachable(
                    mount.unreachable,
                    &format!(
                        "this kernel (0.10/0.11) mounts host files at one directory only, {}",
                        mount.point
                    ),
                );
                handoff.kernel_args = vec!["-mount".to_owned(), boot::shell_word(&mount.point)];
            }
            KernelGeneration::FdtMounts => {
                let mut unreachable = files.unmountable_mappings();
                unreachable.extend(files.unmountable_virtual_files());
                warn_unreachable(
                    unreachable,
                    "a file directly under /, /tmp or /proc has no directory to mount",
                );
                handoff.fdt_mounts = files.mount_points();
            }
        }
        handoff
    }
}

/// Adds an archive's files to the file map as read-only virtual files under `/`. A file that a
/// `--file-mapping` covers is left out with a warning: what the user maps wins.
fn add_virtual_files(
    files: &mut FileMap,
    virtual_files: Vec<(String, Arc<[u8]>)>,
) -> Result<(), IsolationError> {
    let mut hidden = Vec::new();
    for (path, data) in virtual_files {
        let guest = format!("/{path}");
        match files.add_virtual_file(&guest, data) {
            Ok(()) => {}
            Err(IsolationError::VirtualFileConflict { .. }) => hidden.push(guest),
            Err(error) => return Err(error),
        }
    }
    if !hidden.is_empty() {
        log::warn!(
            "--file-mapping hides these files of the Hermit image archive: {}",
            hidden.join(", ")
        );
    }
    Ok(())
}

fn lossy_list(items: &[OsString]) -> Vec<String> {
    items
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect()
}

fn lossy_pairs(items: &[(OsString, OsString)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect()
}
