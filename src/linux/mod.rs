//! The KVM backend (Linux): the only module that names kvm-ioctls. `x86_64` runs x86_64 guests
//! (port-I/O hypercalls, in-kernel irqchip, CPUID), `aarch64` runs aarch64 guests (MMIO
//! hypercalls in the trapped window, vGICv3, PSCI in the host kernel); each builds only on its
//! own host architecture. Both turn KVM's exits into the backend-neutral
//! [`crate::hypervisor::VcpuExit`] and share what is here: opening `/dev/kvm`, the errors
//! ([`KvmError`]), the vCPU kick (`kick.rs`) and host memory reading as all-ones for
//! empty device space (`all_ones.rs`). The backend depends only on
//! `crate::hypervisor`, `crate::arch` and `crate::mem`.

#[cfg(target_arch = "aarch64")]
mod aarch64;
// Used by the aarch64 backend; its tests run on every host.
#[cfg(any(target_arch = "aarch64", test))]
mod all_ones;
mod kick;
#[cfg(target_arch = "x86_64")]
mod x86_64;

use std::io;

use kvm_ioctls::Kvm;
use thiserror::Error;

#[cfg(target_arch = "aarch64")]
pub use self::aarch64::{KvmArmCpu, KvmArmVm};
pub use self::kick::KvmKick;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::{KvmCpu, KvmVm, SimdExecution, probe_data_breakpoints};
use crate::hypervisor::HypervisorError;
use crate::mem::MemoryError;

/// What to do when `/dev/kvm` is missing, for this host architecture.
#[cfg(target_arch = "x86_64")]
const ENABLE_KVM: &str =
    "enable virtualization in the firmware and load the kvm_intel or kvm_amd module";
/// What to do when `/dev/kvm` is missing, for this host architecture.
#[cfg(not(target_arch = "x86_64"))]
const ENABLE_KVM: &str = "the kernel must be booted at EL2 with KVM built in or its module loaded";

/// Failures setting up or talking to KVM.
#[derive(Debug, Error)]
pub enum KvmError {
    /// `/dev/kvm` does not exist.
    #[error("/dev/kvm does not exist: KVM is not available on this host ({ENABLE_KVM})")]
    NoKvm,
    /// `/dev/kvm` exists but may not be opened.
    #[error(
        "/dev/kvm: permission denied — add your user to the kvm group (sudo usermod -aG kvm $USER) and log in again"
    )]
    PermissionDenied,
    /// The KVM API version or a required capability is missing.
    #[error("KVM lacks a required capability: {0}")]
    MissingCapability(&'static str),
    /// The vCPU kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickHandler(io::Error),
    /// The zero-filled low memory could not be allocated.
    #[error("cannot allocate the read-only low memory: {0}")]
    LowMemory(MemoryError),
    /// An ioctl failed.
    #[error("KVM {operation} failed: {source}")]
    Ioctl {
        /// What uhyve asked KVM to do.
        operation: &'static str,
        /// The error it returned.
        source: io::Error,
    },
}

pub(crate) fn ioctl_error(operation: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |e| KvmError::Ioctl {
        operation,
        source: io::Error::from_raw_os_error(e.errno()),
    }
}

/// Has KVM signal `eventfd` for every guest write to the guest-physical `address`
/// (KVM_IOEVENTFD on an MMIO address, any length, any value): both architectures' backends.
fn register_mmio_eventfd(
    vm: &kvm_ioctls::VmFd,
    address: u64,
    eventfd: &vmm_sys_util::eventfd::EventFd,
) -> Result<bool, HypervisorError> {
    vm.register_ioevent(
        eventfd,
        &kvm_ioctls::IoEventAddress::Mmio(address),
        kvm_ioctls::NoDatamatch,
    )
    .map(|()| true)
    .map_err(ioctl_error("KVM_IOEVENTFD"))
    .map_err(|e| HypervisorError::Backend(Box::new(e)))
}

/// Opens `/dev/kvm`, naming the usual causes when that fails.
fn open_kvm() -> Result<Kvm, KvmError> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::NoKvm,
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
        errno => KvmError::Ioctl {
            operation: "open /dev/kvm",
            source: io::Error::from_raw_os_error(errno),
        },
    })
}

impl From<KvmError> for HypervisorError {
    fn from(error: KvmError) -> Self {
        Self::Backend(Box::new(error))
    }
}
