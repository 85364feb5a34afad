//! Host signals that stop the VM in an orderly way: SIGINT, SIGTERM and SIGHUP set a flag that the
//! main thread polls while the vCPUs run; it then stops every vCPU (KVM: `immediate_exit` and a
//! signal; Hypervisor.framework: `hv_vcpus_exit` and a signal), so uhyve flushes the
//! guest's output, removes its temporary directory and exits with `128 + signal`. Each handler is
//! one-shot (`SA_RESETHAND`): a second signal of the same kind terminates uhyve at once.
//!
//! `SIGXFSZ` is ignored: a guest write beyond the file-size limit (`ulimit -f`) would otherwise
//! kill uhyve; ignored, the write fails with `EFBIG`, which the guest receives.

use std::sync::atomic::{AtomicI32, Ordering};

use thiserror::Error;

/// The signal that asked uhyve to stop, or 0.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The signals that stop a VM.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Failure to install the handlers.
#[derive(Debug, Error)]
#[error("cannot install a handler for signal {signal}: {source}")]
pub struct SignalError {
    signal: libc::c_int,
    source: std::io::Error,
}

extern "C" fn record_stop_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

/// Installs the stop handlers for SIGINT, SIGTERM and SIGHUP, and ignores SIGXFSZ.
pub fn install_stop_handlers() -> Result<(), SignalError> {
    ignore_file_size_signal()?;
    for signal in STOP_SIGNALS {
        // SAFETY: a zeroed `sigaction` is a valid empty action; it is then filled with a handler
        // that only performs an atomic store, an empty mask and flags that exist on every Unix.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = record_stop_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if result != 0 {
            return Err(SignalError {
                signal,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Ignores SIGXFSZ, so that writing beyond `RLIMIT_FSIZE` fails with `EFBIG` instead of killing
/// uhyve.
fn ignore_file_size_signal() -> Result<(), SignalError> {
    // SAFETY: SIG_IGN is a valid disposition for SIGXFSZ; no handler code runs.
    let previous = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    if previous == libc::SIG_ERR {
        return Err(SignalError {
            signal: libc::SIGXFSZ,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The signal that asked uhyve to stop, if any.
pub fn stop_requested() -> Option<i32> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// A short name for a stop signal, for messages.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a forked child (the limit is per process): with the handlers installed, a write
    /// beyond `RLIMIT_FSIZE` fails with EFBIG (the guest's EFBIG too) instead of killing it.
    #[test]
    fn writes_beyond_the_file_size_limit_fail_with_efbig() {
        let dir = tempfile::tempdir().unwrap();
        let path =
            std::ffi::CString::new(dir.path().join("big").into_os_string().into_encoded_bytes())
                .unwrap();
        let limit = libc::rlimit {
            rlim_cur: 16,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: the child only makes async-signal-safe calls (sigaction, setrlimit, open,
        // write, _exit) on data prepared before the fork, then exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: see above; every pointer is valid for the call.
            unsafe {
                let ok = install_stop_handlers().is_ok()
                    && libc::setrlimit(libc::RLIMIT_FSIZE, &limit) == 0;
                let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
                // The first write stops at the limit (16 bytes); the next one is refused.
                let first = libc::write(fd, [0u8; 64].as_ptr().cast(), 64);
                let second = libc::write(fd, [0u8; 64].as_ptr().cast(), 64);
                let efbig = first == 16
                    && second == -1
                    && std::io::Error::last_os_error().raw_os_error() == Some(libc::EFBIG);
                libc::_exit(if ok && fd >= 0 && efbig { 0 } else { 1 });
            }
        }
        assert!(child > 0, "fork failed");
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child: status {status:#x} (killed by SIGXFSZ: {})",
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGXFSZ
        );
        let error = std::io::Error::from_raw_os_error(libc::EFBIG);
        assert_eq!(crate::isolation::guest_errno(&error), 27);
    }

    #[test]
    fn names() {
        assert_eq!(signal_name(libc::SIGINT), "SIGINT");
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(0), "a signal");
    }
}
