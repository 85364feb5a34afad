//! Interrupting a vCPU thread that is blocked in the host kernel (in `KVM_RUN`, or in a `read(2)`
//! during a hypercall): a signal whose handler does nothing, installed without `SA_RESTART`, so
//! the blocking call returns `EINTR` and the thread notices the stop request. Each backend picks
//! its signal (KVM: SIGRTMIN; macOS, which has no real-time signals: SIGUSR2).

use std::io;

extern "C" fn ignore(_: libc::c_int) {}

/// Installs the empty handler for `signal`, without `SA_RESTART`. Idempotent.
pub fn install_empty_handler(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a zeroed `sigaction` is a valid empty action; it gets a handler that does nothing
    // (async-signal-safe by construction), an empty mask and no flags.
    let result = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut())
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` (whose handler [`install_empty_handler`] installed) to `thread`.
///
/// # Safety
///
/// `thread` must be a live thread of this process.
pub unsafe fn interrupt(thread: libc::pthread_t, signal: libc::c_int) {
    // SAFETY: the caller guarantees the thread is alive; the handler is empty, so delivery only
    // interrupts a blocking call.
    unsafe { libc::pthread_kill(thread, signal) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_blocked_read_returns_eintr() {
        let signal = libc::SIGUSR2;
        install_empty_handler(signal).unwrap();
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and are owned here.
        let (reader, _writer) = unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        };
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tx.send(unsafe { libc::pthread_self() }).unwrap();
            let mut byte = [0u8; 1];
            std::io::Read::read(&mut &reader, &mut byte)
        });
        let thread = rx.recv().unwrap();
        // Signal until the read gives up (the first signal may arrive before it blocks).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !handle.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the read was never interrupted"
            );
            // SAFETY: the thread is alive until `handle` reports it finished.
            unsafe { interrupt(thread, signal) };
            std::thread::sleep(Duration::from_millis(5));
        }
        let error = handle.join().unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::Interrupted);
    }
}
