//! The guest's command line for the v1 Cmdsize/Cmdval calls (v2/v3 guests read theirs from the
//! device tree): [`GuestCommandLine`] as the VM was started with it, turned once, at start-up,
//! into the counts and sizes Cmdsize announces and the NUL-terminated items Cmdval copies into the
//! guest's slots. Cmdval never writes more, or other, items than Cmdsize announced.
//!
//! The kernels that make these calls leave their environment array without its terminating null
//! (`env_array.rs`). So that the array can be found and closed, an empty environment is announced
//! as one empty item, which Rust's standard library and newlib's `getenv` skip.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use uhyve_interface::{
    CmdsizeParams, CmdvalParams, GuestPhysAddr, HypercallAddress, MAX_ARGC_ENVC,
};

use super::env_array::{EnvArrayClosing, close_env_array};
use super::{HypercallError, HypercallOutcome, read_params, write_params};
use crate::mem::GuestMemory;

/// What the guest's program sees as its command line: item 0 and the arguments for Cmdval, and the
/// environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestCommandLine {
    /// `[kernel path as given, application arguments…]`.
    pub args: Vec<OsString>,
    /// `KEY`/`VALUE` pairs, at most 128 (already capped by the caller).
    pub env: Vec<(OsString, OsString)>,
}

/// What Cmdsize announces and Cmdval writes, fixed when the VM starts.
#[derive(Debug)]
pub(super) struct CommandLineItems {
    /// What Cmdsize announces.
    sizes: CmdsizeParams,
    /// The argument items Cmdval writes, NUL included, exactly `sizes.argsz[k]` bytes each.
    args: Vec<Vec<u8>>,
    /// The environment items (`KEY=VALUE\0`), exactly `sizes.envsz[k]` bytes each.
    env: Vec<Vec<u8>>,
    /// Cmdval already looked for the guest's environment array: kernels call it once, and a
    /// guest repeating it does not get the 2 MiB search again.
    env_array_searched: AtomicBool,
}

impl CommandLineItems {
    /// The items of `cmdline`: at most [`MAX_ARGC_ENVC`] arguments (the kernel path counts) and
    /// environment entries; dropping any is logged.
    pub(super) fn new(cmdline: &GuestCommandLine) -> Self {
        let (path, args) = match cmdline.args.split_first() {
            Some((path, args)) => (path.as_os_str(), args),
            None => (OsStr::new(""), &[][..]),
        };
        let mut sizes = CmdsizeParams::default();
        let (dropped_args, dropped_env) = sizes.update(path, args, &cmdline.env);
        if dropped_args > 0 || dropped_env > 0 {
            log::warn!(
                "the guest sees at most {MAX_ARGC_ENVC} arguments and environment entries: \
                 dropping {dropped_args} arguments and {dropped_env} environment entries"
            );
        }
        let (argsz, envsz) = (sizes.argsz, sizes.envsz);
        let argc = usize::try_from(sizes.argc).unwrap_or(0);
        let envc = usize::try_from(sizes.envc).unwrap_or(0);
        let args = announced_items(
            std::iter::once(path)
                .chain(args.iter().map(OsString::as_os_str))
                .map(|arg| nul_terminated(&[arg])),
            argsz.get(..argc).unwrap_or_default(),
        );
        let mut env = announced_items(
            cmdline
                .env
                .iter()
                .map(|(key, value)| nul_terminated(&[key, OsStr::new("="), value])),
            envsz.get(..envc).unwrap_or_default(),
        );
        if env.is_empty() {
            // One empty item instead of none, so that Cmdval can find and close the kernel's
            // environment array (see the module text).
            env.push(vec![0]);
            sizes.envc = 1;
            sizes.envsz[0] = 1;
        }
        Self {
            sizes,
            args,
            env,
            env_array_searched: AtomicBool::new(false),
        }
    }

    /// Cmdsize: the counts and sizes into the parameter block at `at`.
    pub(super) fn cmdsize(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        write_params(mem, HypercallAddress::Cmdsize, at, &self.sizes)
    }

    /// Cmdval: copies item k of the arguments and of the environment into the guest buffer
    /// whose guest-physical address is entry k of the argv or envp array. An entry or buffer
    /// outside guest RAM stops the VM (there is no error field).
    pub(super) fn cmdval(
        &self,
        mem: &GuestMemory,
        at: GuestPhysAddr,
    ) -> Result<HypercallOutcome, HypercallError> {
        let params: CmdvalParams = read_params(mem, HypercallAddress::Cmdval, at)?;
        let (argv, envp) = (params.argv, params.envp);
        fill_slots(mem, argv, &self.args, ("argv array entry", "argv slot"))?;
        let env_slots = fill_slots(mem, envp, &self.env, ("envp array entry", "envp slot"))?;
        if self.env_array_searched.swap(true, Ordering::Relaxed) {
            return Ok(HypercallOutcome::Continue);
        }
        match close_env_array(mem, envp, &env_slots) {
            EnvArrayClosing::Closed(array) => log::debug!(
                "Cmdval: wrote the missing null after the {} entries of the guest's environment \
                 array at {:#x}",
                env_slots.len(),
                array.as_u64()
            ),
            EnvArrayClosing::AlreadyClosed(_) => {}
            EnvArrayClosing::NotFound => log::debug!(
                "Cmdval: the guest's environment array was not found near {:#x}; if the guest \
                 faults while it starts, its kernel left the array without its null",
                envp.as_u64()
            ),
        }
        Ok(HypercallOutcome::Continue)
    }
}

/// The items `CmdsizeParams::update` keeps: those whose size fits an `i32`, at most 128.
fn announced_items(items: impl Iterator<Item = Vec<u8>>, sizes: &[i32]) -> Vec<Vec<u8>> {
    items
        .filter(|item| i32::try_from(item.len()).is_ok())
        .zip(sizes)
        .map(|(mut item, &size)| {
            // Equal by construction; truncating keeps "never more than announced" unconditional.
            item.truncate(usize::try_from(size).unwrap_or(0));
            item
        })
        .collect()
}

/// One item: `parts` one after the other, then a NUL.
fn nul_terminated(parts: &[&OsStr]) -> Vec<u8> {
    let mut item: Vec<u8> = parts.iter().flat_map(|p| p.as_bytes()).copied().collect();
    item.push(0);
    item
}

/// Writes item k into the buffer whose GPA is the k-th u64 of the array at `array`. Returns
/// those GPAs.
fn fill_slots(
    mem: &GuestMemory,
    array: GuestPhysAddr,
    items: &[Vec<u8>],
    (entry_what, slot_what): (&'static str, &'static str),
) -> Result<Vec<u64>, HypercallError> {
    let mut slots = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let entry_error = |address| HypercallError::SlotOutsideRam {
            hypercall: HypercallAddress::Cmdval.name(),
            what: entry_what,
            index,
            address,
        };
        // index < 128, so index * 8 cannot overflow.
        let entry = array
            .checked_add(index as u64 * 8)
            .ok_or_else(|| entry_error(array.as_u64()))?;
        let slot: u64 = mem
            .read_obj(entry)
            .map_err(|_| entry_error(entry.as_u64()))?;
        mem.write(GuestPhysAddr::new(slot), item)
            .map_err(|_| HypercallError::SlotOutsideRam {
                hypercall: HypercallAddress::Cmdval.name(),
                what: slot_what,
                index,
                address: slot,
            })?;
        slots.push(slot);
    }
    Ok(slots)
}
