//! uhyve: a minimal hypervisor that runs Hermit unikernels as ordinary processes.
//!
//! Code map, in the direction the modules depend on each other (`docs/architecture.md`):
//! [`cli`] parses the command line into [`params`] and calls [`vm`], which reads the image
//! ([`loader`] for ELF kernels, [`archive`] for Hermit image archives), prepares guest RAM
//! ([`setup`], with [`boot`] for the boot info and device tree), creates the VM on a
//! [`hypervisor`] backend (`linux` for KVM, [`hvf`] for Hypervisor.framework, whose vCPU logic is
//! platform-neutral) and runs one thread per vCPU through [`exits`], which hands hypercalls to
//! the one dispatcher in [`hypercall`] (files through [`isolation`], console through [`output`]).
//! Below all of them: [`mem`] (guest RAM, its one checked door and the one guest-virtual reader)
//! and [`arch`] (per-architecture facts: layouts, page tables, registers, CPUID, the x86
//! instruction emulator). [`affinity`], [`signals`] and [`stats`] serve the VM threads. The
//! hidden `fuzzing` module holds the fuzzers' entry points (`fuzz/`, replayed by
//! `tests/fuzz_corpus.rs`).

pub mod affinity;
pub mod arch;
pub mod archive;
pub mod boot;
pub mod cli;
pub mod config_file;
pub mod confine;
pub mod debug;
pub mod exits;
#[doc(hidden)]
pub mod fuzzing;
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
pub mod virtio;
pub mod vm;

#[cfg(any(kvm, kvm_arm))]
pub mod linux;
