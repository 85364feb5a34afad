//! What both KVM backends share about running vCPUs: the encoding of KVM's ioctl numbers (for
//! the run phase's seccomp allowlists), and the kick that makes a vCPU thread leave `KVM_RUN` —
//! `immediate_exit` in the vCPU's `kvm_run` page plus an empty-handled real-time signal aimed at
//! the vCPU's thread.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::VcpuFd;

use super::KvmError;
use crate::hypervisor::VcpuKick;

/// `_IOC(direction, KVMIO, number, size)` of the Linux ioctl encoding (x86_64 and aarch64).
pub(super) const fn kvm_ioctl(direction: u64, number: u64, size: usize) -> u64 {
    /// The KVM ioctl type.
    const KVMIO: u64 = 0xae;
    (direction << 30) | ((size as u64) << 16) | (KVMIO << 8) | number
}
/// `_IOC_WRITE`: user space passes data in.
pub(super) const IOC_WRITE: u64 = 1;
/// `_IOC_READ`: the kernel passes data out.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) const IOC_READ: u64 = 2;

/// The signal that interrupts a vCPU thread in `KVM_RUN` (its handler does nothing).
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Installs the (empty) handler of the kick signal, without `SA_RESTART`, so that the signal
/// makes `KVM_RUN` return `EINTR`. Idempotent.
pub(super) fn install_kick_handler() -> Result<(), KvmError> {
    crate::hypervisor::thread_kick::install_empty_handler(kick_signal())
        .map_err(KvmError::KickHandler)
}

/// Interrupts one vCPU from another thread: sets `immediate_exit` in its `kvm_run` page (so a
/// `KVM_RUN` about to start returns at once) and signals its thread (so a running one returns).
/// Once the vCPU is gone a kick does nothing, so the handle may outlive it.
#[derive(Clone)]
pub struct KvmKick {
    pub(super) target: Arc<Mutex<Option<KickTarget>>>,
}

/// Where a kick goes while its vCPU exists.
pub(super) struct KickTarget {
    /// `immediate_exit` in the vCPU's `kvm_run` mapping.
    pub(super) immediate_exit: *const AtomicU8,
    /// The thread that created (and runs) the vCPU.
    pub(super) thread: libc::pthread_t,
}

// SAFETY: the pointer is only dereferenced by `KvmKick::kick`, under the mutex, while the target
// is present — and `KvmCpu`'s `Drop` clears it, under the same mutex, before the mapping goes.
// The pthread id is a plain value usable from any thread.
unsafe impl Send for KickTarget {}

impl KvmKick {
    /// Makes the vCPU leave `KVM_RUN` as soon as possible; nothing if it no longer exists.
    pub fn kick(&self) {
        let target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        let Some(target) = target.as_ref() else {
            return;
        };
        // SAFETY: while the target is present (we hold the lock) the vCPU exists, so the pointer
        // addresses `immediate_exit` in its live kvm_run mapping; KVM reads that byte, user space
        // may write it at any time.
        unsafe { (*target.immediate_exit).store(1, Ordering::SeqCst) };
        // SAFETY: the vCPU exists, so the thread that created it and drops it is alive; the
        // signal has an empty handler, so delivering it only interrupts KVM_RUN.
        unsafe { crate::hypervisor::thread_kick::interrupt(target.thread, kick_signal()) };
    }
}

impl KickTarget {
    /// The kick target of `fd`, a vCPU created on the calling thread (which also runs and drops
    /// it).
    pub(super) fn of_current_thread(fd: &mut VcpuFd) -> Arc<Mutex<Option<KickTarget>>> {
        let immediate_exit = std::ptr::addr_of_mut!(fd.get_kvm_run().immediate_exit);
        Arc::new(Mutex::new(Some(KickTarget {
            immediate_exit: immediate_exit.cast::<AtomicU8>(),
            // SAFETY: pthread_self has no preconditions. This is the thread that creates the
            // vCPU, which runs and drops it too.
            thread: unsafe { libc::pthread_self() },
        })))
    }
}

impl VcpuKick for KvmKick {
    fn kick(&self) {
        KvmKick::kick(self);
    }
}
