//! uhyve: a minimal hypervisor that runs Hermit unikernels as ordinary processes.
//!
//! Code map: [`params`] (user configuration), [`loader`] (Hermit ELF images), [`archive`]
//! (Hermit image archives and their `hermit.toml`), [`mem`] (guest RAM
//! and its single checked accessor), [`arch`] (per-architecture machine set-up: page tables, GDT,
//! registers, and the x86 instruction emulation fallback), [`boot`] (boot info and device tree),
//! [`vcpu`] (the backend-neutral CPU trait and exit value), [`exits`] (what each exit means),
//! [`hypercall`] (the one hypercall dispatcher), [`isolation`] (the guest's sandboxed view of host
//! files), [`output`] (serial console sink), [`vm`] (putting it together, one thread per vCPU),
//! [`affinity`] and [`signals`] (host CPU pinning, stop signals), [`thread_kick`] (interrupting a
//! blocked vCPU thread), [`stats`], [`cli`], [`hvf`]
//! (the Hypervisor.framework vCPU logic, platform-neutral), and the platform backends `linux`
//! (KVM) and `macos` (the Hypervisor.framework adapter).

pub mod affinity;
pub mod arch;
pub mod archive;
pub mod boot;
pub mod cli;
pub mod exits;
pub mod hvf;
pub mod hypercall;
pub mod hypervisor;
pub mod isolation;
pub mod loader;
pub mod mem;
pub mod output;
pub mod params;
pub mod setup;
pub mod signals;
pub mod stats;
pub mod vm;

#[cfg(kvm)]
pub mod linux;
