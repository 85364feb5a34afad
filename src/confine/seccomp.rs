//! The seccomp allowlist of uhyve's run phase: once the VM is set up, every vCPU thread (after
//! creating its vCPU, before its first `KVM_RUN`), the network card's I/O thread (before it
//! serves anything) and the main thread (after spawning the vCPU threads, before waiting for
//! them) install the same filter. It allows only the system calls
//! the run phase makes — each entry of [`ALLOWLIST`] says why — with arguments checked where
//! that is cheap: `ioctl` only with the backend's run-time request numbers, `mmap`/`mprotect`
//! never executable, `fcntl` only with the commands std and the file sandbox use, `tgkill` only
//! within this process. Thread creation, `execve`, sockets, `ptrace`, `rt_sigaction` (so the
//! handler below cannot be replaced) and everything else are forbidden.
//!
//! A forbidden call raises `SIGSYS` (`SECCOMP_RET_TRAP`); its handler writes one line with
//! `write(2)` only — `uhyve: seccomp: forbidden system call N on a vCPU thread` (or the main
//! thread) — and ends the process with status 128 + SIGSYS through `exit_group`.
//!
//! A memory fault (SIGSEGV, SIGBUS) under the filter gets a handler of its own, installed with
//! the SIGSYS one: Rust's handler for these would re-arm itself with `rt_sigaction`, which the
//! filter forbids, and the fault would end as a puzzling "forbidden system call" (seen once on
//! aarch64). Ours writes `uhyve: fatal memory fault: SIGSEGV at 0x… on a vCPU thread (a stack
//! overflow or a bug in uhyve)` and ends the process with status 128 + the signal. It runs on
//! the thread's alternate signal stack (std gives every thread one), so it works on a stack
//! overflow too.
//!
//! Test hook: with `UHYVE_TEST_SECCOMP_VIOLATION=vcpu` (or `main`, or `net`) in its environment,
//! uhyve makes that thread call `socket(AF_UNIX, SOCK_DGRAM, 0)` right after installing its filter,
//! which the filter forbids. Harmless if the filter were missing: the socket would be closed at
//! once. With `vcpu-fault` the vCPU thread raises SIGSEGV instead. `tests/confine.rs` uses both
//! to check that uhyve ends with the message.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;

use super::ThreadRole;

/// Failures building or installing the filter.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// seccompiler cannot build a filter for this architecture.
    #[error("seccomp: no filter for this architecture: {0}")]
    Architecture(String),
    /// The rules do not compile.
    #[error("seccomp: cannot build the filter: {0}")]
    Build(seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("seccomp: cannot install the filter: {0}")]
    Install(seccompiler::Error),
    /// The SIGSYS handler could not be installed.
    #[error("seccomp: cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// What an allowed system call may be called with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arguments {
    /// Anything.
    Any,
    /// Protection flags (argument 2) without `PROT_EXEC`.
    NotExecutable,
    /// A request number (argument 1) from the backend's run-time list.
    BackendIoctl,
    /// A command (argument 1) from [`FCNTL_COMMANDS`].
    FcntlCommand,
    /// A thread group id (argument 0) that is this process.
    ThisProcess,
    /// No destination address (argument 4 is NULL): only a socket's own connected peer.
    ConnectedPeer,
}

/// One allowed system call.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    /// Its number on this architecture.
    pub number: libc::c_long,
    /// Its name.
    pub name: &'static str,
    /// What may be passed.
    pub arguments: Arguments,
    /// Why the run phase needs it.
    pub why: &'static str,
}

const fn allow(
    number: libc::c_long,
    name: &'static str,
    arguments: Arguments,
    why: &'static str,
) -> Allowed {
    Allowed {
        number,
        name,
        arguments,
        why,
    }
}

use Arguments::{Any, BackendIoctl, ConnectedPeer, FcntlCommand, NotExecutable, ThisProcess};

/// The system calls of the run phase (the same list in `docs/security.md`).
#[rustfmt::skip]
pub const ALLOWLIST: &[Allowed] = &[
    // The vCPU.
    allow(libc::SYS_ioctl, "ioctl", BackendIoctl, "KVM_RUN and the register ioctls of the emulation fallback and crash reports"),
    // File I/O on open descriptors: console, output file, guest files.
    allow(libc::SYS_read, "read", Any, "guest file reads, console input (stdin)"),
    allow(libc::SYS_write, "write", Any, "console output, guest file writes, messages on stderr"),
    allow(libc::SYS_pread64, "pread64", Any, "positioned guest file reads (not seen today)"),
    allow(libc::SYS_pwrite64, "pwrite64", Any, "positioned guest file writes (not seen today)"),
    allow(libc::SYS_readv, "readv", Any, "vectored reads (std)"),
    allow(libc::SYS_writev, "writev", Any, "vectored writes (std, stderr)"),
    allow(libc::SYS_lseek, "lseek", Any, "guest lseek"),
    allow(libc::SYS_close, "close", Any, "guest close, dropping files and the VM at exit"),
    allow(libc::SYS_fstat, "fstat", Any, "fstat on open descriptors"),
    allow(libc::SYS_newfstatat, "newfstatat", Any, "guest stat, the file sandbox's checks"),
    allow(libc::SYS_statx, "statx", Any, "std's metadata calls: guest stat and fstat, symlink checks"),
    allow(libc::SYS_getdents64, "getdents64", Any, "guest directory listings, removing the temp directory"),
    allow(libc::SYS_fcntl, "fcntl", FcntlCommand, "F_GETFL/F_SETFD (seen), F_DUPFD_CLOEXEC for try_clone (directory streams)"),
    allow(libc::SYS_ftruncate, "ftruncate", Any, "truncation through an open descriptor (not seen today)"),
    allow(libc::SYS_fsync, "fsync", Any, "guest fsync (no hypercall today)"),
    allow(libc::SYS_fdatasync, "fdatasync", Any, "guest fdatasync (no hypercall today)"),
    allow(libc::SYS_flock, "flock", Any, "the temp directory's lock (released at exit)"),
    // Path calls of the file sandbox; Landlock limits where they reach.
    allow(libc::SYS_openat, "openat", Any, "removing the temp directory at exit (std's remove_dir_all)"),
    allow(libc::SYS_openat2, "openat2", Any, "every guest path lookup: RESOLVE_BENEATH a mapping's descriptor"),
    allow(libc::SYS_unlinkat, "unlinkat", Any, "guest unlink in its resolved parent, removing the temp directory"),
    allow(libc::SYS_mkdirat, "mkdirat", Any, "guest mkdir"),
    // Threads and memory.
    allow(libc::SYS_futex, "futex", Any, "locks, channels, the start gate, joining threads"),
    allow(libc::SYS_mmap, "mmap", NotExecutable, "the allocator (never executable)"),
    allow(libc::SYS_mprotect, "mprotect", NotExecutable, "the allocator's arenas (never executable)"),
    allow(libc::SYS_munmap, "munmap", Any, "the allocator, thread stacks, guest RAM and kvm_run at exit"),
    allow(libc::SYS_mremap, "mremap", Any, "the allocator growing large buffers"),
    allow(libc::SYS_madvise, "madvise", Any, "the allocator and glibc returning thread stacks"),
    allow(libc::SYS_brk, "brk", Any, "the allocator's main heap"),
    allow(libc::SYS_sched_yield, "sched_yield", Any, "spinning locks"),
    allow(libc::SYS_exit, "exit", Any, "a vCPU thread ending"),
    allow(libc::SYS_exit_group, "exit_group", Any, "uhyve ending, also from the SIGSYS handler"),
    // Signals: the vCPU kick, stop signals, std's stack-overflow guard, this filter's handler.
    allow(libc::SYS_rt_sigreturn, "rt_sigreturn", Any, "returning from the kick and stop handlers"),
    allow(libc::SYS_rt_sigprocmask, "rt_sigprocmask", Any, "glibc masking signals around thread exit"),
    allow(libc::SYS_sigaltstack, "sigaltstack", Any, "std removing a thread's signal stack at its end"),
    allow(libc::SYS_tgkill, "tgkill", ThisProcess, "the vCPU kick (pthread_kill), only to this process"),
    allow(libc::SYS_getpid, "getpid", Any, "pthread_kill names this process"),
    allow(libc::SYS_gettid, "gettid", Any, "the SIGSYS handler telling the main thread apart"),
    // Time, waiting and randomness.
    allow(libc::SYS_clock_gettime, "clock_gettime", Any, "Instant/SystemTime where the vDSO falls back to the system call"),
    allow(libc::SYS_nanosleep, "nanosleep", Any, "thread::sleep"),
    allow(libc::SYS_clock_nanosleep, "clock_nanosleep", Any, "thread::sleep"),
    allow(libc::SYS_ppoll, "ppoll", Any, "waiting for a console reader (poll on aarch64)"),
    #[cfg(target_arch = "x86_64")]
    allow(libc::SYS_poll, "poll", Any, "waiting for a console reader that can block (pipe, terminal)"),
    allow(libc::SYS_getrandom, "getrandom", Any, "std's hash-map keys on a thread's first map"),
    // The network card.
    allow(libc::SYS_sendto, "sendto", ConnectedPeer, "the network card's frames to passt, from its I/O thread (std's send with MSG_NOSIGNAL on the connected socket pair)"),
    allow(libc::SYS_recvfrom, "recvfrom", ConnectedPeer, "the network card's I/O thread reading passt's frames (recv on the connected socket pair)"),
];

/// The `fcntl` commands allowed (std's descriptor flags and duplication, the sandbox's locks).
pub const FCNTL_COMMANDS: &[libc::c_int] = &[
    libc::F_GETFD,
    libc::F_SETFD,
    libc::F_GETFL,
    libc::F_SETFL,
    libc::F_DUPFD_CLOEXEC,
];

/// The exit status after a forbidden system call: 128 + SIGSYS, as if SIGSYS had killed uhyve.
pub const VIOLATION_STATUS: i32 = 128 + libc::SIGSYS;

/// The environment variable of the test hook (see the module documentation).
pub const TEST_VIOLATION_ENV: &str = "UHYVE_TEST_SECCOMP_VIOLATION";

/// The thread id of the main thread, for the SIGSYS handler's message (0 until known).
static MAIN_THREAD: AtomicI32 = AtomicI32::new(0);
/// The thread id of the network card's receive thread, once it has its filter (0: none).
static NET_THREAD: AtomicI32 = AtomicI32::new(0);

fn condition(
    index: u8,
    operator: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, operator, value)
        .map_err(SeccompError::Build)
}

/// The rules of one allowlist entry: none (any arguments) or alternatives.
fn rules_for(
    arguments: Arguments,
    ioctls: &[u64],
    pid: u32,
) -> Result<Vec<SeccompRule>, SeccompError> {
    let one_of = |index: u8, values: Vec<u64>| -> Result<Vec<SeccompRule>, SeccompError> {
        values
            .into_iter()
            .map(|value| {
                SeccompRule::new(vec![condition(index, SeccompCmpOp::Eq, value)?])
                    .map_err(SeccompError::Build)
            })
            .collect()
    };
    match arguments {
        Arguments::Any => Ok(Vec::new()),
        Arguments::NotExecutable => {
            let no_exec = condition(2, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0)?;
            Ok(vec![
                SeccompRule::new(vec![no_exec]).map_err(SeccompError::Build)?,
            ])
        }
        // The request number is an `unsigned long` whose KVM values fit 32 bits.
        Arguments::BackendIoctl => one_of(1, ioctls.iter().map(|&n| n & 0xffff_ffff).collect()),
        Arguments::FcntlCommand => one_of(1, FCNTL_COMMANDS.iter().map(|&c| c as u64).collect()),
        Arguments::ThisProcess => one_of(0, vec![u64::from(pid)]),
        Arguments::ConnectedPeer => one_of(4, vec![0]),
    }
}

/// Compiles the allowlist for this architecture, with `ioctls` as the allowed `ioctl` requests
/// and `pid` as this process. An entry whose argument rules come out empty (no ioctls) is left
/// out: it would otherwise allow any arguments.
pub fn build_filter(ioctls: &[u64], pid: u32) -> Result<BpfProgram, SeccompError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| SeccompError::Architecture(e.to_string()))?;
    let mut rules = BTreeMap::new();
    for entry in ALLOWLIST {
        let entry_rules = rules_for(entry.arguments, ioctls, pid)?;
        if entry_rules.is_empty() && entry.arguments != Arguments::Any {
            continue;
        }
        rules.insert(entry.number, entry_rules);
    }
    let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)
        .map_err(SeccompError::Build)?;
    filter.try_into().map_err(SeccompError::Build)
}

/// Installs the SIGSYS handler that reports a forbidden call (before any filter).
pub fn install_violation_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed `sigaction` is a valid empty action; it gets a handler that calls only
    // async-signal-safe system calls (gettid, write, exit_group), SA_SIGINFO for the syscall
    // number, and an empty mask.
    let result = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_violation as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
    };
    if result != 0 {
        return Err(SeccompError::Handler(std::io::Error::last_os_error()));
    }
    for signal in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: as above, for a handler that calls only gettid, write and exit_group; on the
        // alternate signal stack, so that a stack overflow can still be reported.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fault as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if result != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Installs `filter` on the calling thread (threads it creates later inherit it).
pub fn install(filter: &BpfProgram, role: ThreadRole) -> Result<(), SeccompError> {
    match role {
        ThreadRole::Main => MAIN_THREAD.store(current_thread_id(), Ordering::SeqCst),
        ThreadRole::NetIo => NET_THREAD.store(current_thread_id(), Ordering::SeqCst),
        ThreadRole::Vcpu => {}
    }
    seccompiler::apply_filter(filter).map_err(SeccompError::Install)?;
    provoke_violation_if_asked(role);
    Ok(())
}

/// The role of the calling thread, for the handlers' messages.
fn current_role() -> ThreadRole {
    let me = current_thread_id();
    if me == MAIN_THREAD.load(Ordering::SeqCst) {
        ThreadRole::Main
    } else if me == NET_THREAD.load(Ordering::SeqCst) {
        ThreadRole::NetIo
    } else {
        ThreadRole::Vcpu
    }
}

fn current_thread_id() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// The test hook: a forbidden call on this thread if the environment asks for it.
fn provoke_violation_if_asked(role: ThreadRole) {
    let wanted = match role {
        ThreadRole::Main => "main",
        ThreadRole::Vcpu => "vcpu",
        ThreadRole::NetIo => "net",
    };
    let asked = std::env::var_os(TEST_VIOLATION_ENV);
    if role == ThreadRole::Vcpu && asked.as_ref().is_some_and(|value| value == "vcpu-fault") {
        // SAFETY: raise(3) sends SIGSEGV to this thread (tgkill, allowed); the fault handler
        // ends the process.
        unsafe { libc::raise(libc::SIGSEGV) };
    }
    if asked.is_some_and(|value| value == wanted) {
        // SAFETY: socket(2) with constant arguments touches no memory; if it were allowed, the
        // descriptor it returns is closed at once.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0);
            if fd >= 0 {
                libc::close(fd);
            }
        }
    }
}

/// The part of `siginfo_t` the kernel fills for SIGSYS on 64-bit Linux (`_sigsys`).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _padding: libc::c_int,
    call_address: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// The SIGSYS handler: one line on stderr, then the process ends. Only async-signal-safe
/// system calls, no allocation, no locks.
extern "C" fn on_violation(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler; for SIGSYS it is laid
    // out as `SigsysInfo`, which is smaller than `siginfo_t`.
    let number = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    let role = current_role();
    let mut line = [0u8; 96];
    let len = violation_message(number, role, &mut line);
    // SAFETY: write(2) from a buffer on this stack, then exit_group; both async-signal-safe.
    unsafe {
        libc::syscall(libc::SYS_write, 2, line.as_ptr(), len);
        libc::syscall(libc::SYS_exit_group, VIOLATION_STATUS);
    }
}

/// The SIGSEGV/SIGBUS handler under the filter: one line on stderr, then the process ends with
/// 128 + the signal. Only async-signal-safe system calls, no allocation, no locks.
extern "C" fn on_fault(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler; for SIGSEGV and SIGBUS
    // it holds the faulting address.
    let address = unsafe { (*info).si_addr() } as u64;
    let role = current_role();
    let mut line = [0u8; 160];
    let len = fault_message(signal, address, role, &mut line);
    // SAFETY: write(2) from a buffer on this stack, then exit_group; both async-signal-safe.
    unsafe {
        libc::syscall(libc::SYS_write, 2, line.as_ptr(), len);
        libc::syscall(libc::SYS_exit_group, 128 + signal);
    }
}

/// Writes `uhyve: fatal memory fault: SIGSEGV at 0x… on …\n` into `out` without allocating;
/// returns its length (cut at `out`'s end).
pub fn fault_message(signal: i32, address: u64, role: ThreadRole, out: &mut [u8]) -> usize {
    let name: &[u8] = if signal == libc::SIGBUS {
        b"SIGBUS"
    } else {
        b"SIGSEGV"
    };
    let mut hex = [0u8; 16];
    for (i, slot) in hex.iter_mut().enumerate() {
        let nibble = (address >> (60 - 4 * i)) & 0xF;
        *slot = b"0123456789abcdef"[nibble as usize];
    }
    let first = hex.iter().position(|&digit| digit != b'0').unwrap_or(15);
    let thread: &[u8] = match role {
        ThreadRole::Main => b" on the main thread",
        ThreadRole::Vcpu => b" on a vCPU thread",
        ThreadRole::NetIo => b" on the network I/O thread",
    };
    let parts: [&[u8]; 6] = [
        b"uhyve: fatal memory fault: ",
        name,
        b" at 0x",
        &hex[first..],
        thread,
        b" (a stack overflow or a bug in uhyve)\n",
    ];
    let mut len = 0;
    for byte in parts.iter().flat_map(|part| part.iter()) {
        let Some(slot) = out.get_mut(len) else { break };
        *slot = *byte;
        len += 1;
    }
    len
}

/// Writes `uhyve: seccomp: forbidden system call N on …\n` into `out` without allocating;
/// returns its length (cut at `out`'s end).
pub fn violation_message(number: i32, role: ThreadRole, out: &mut [u8]) -> usize {
    let mut digits = [0u8; 12];
    let mut value = i64::from(number).unsigned_abs();
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    if number < 0 {
        start -= 1;
        digits[start] = b'-';
    }
    let suffix: &[u8] = match role {
        ThreadRole::Main => b" on the main thread\n",
        ThreadRole::Vcpu => b" on a vCPU thread\n",
        ThreadRole::NetIo => b" on the network I/O thread\n",
    };
    let parts: [&[u8]; 3] = [
        b"uhyve: seccomp: forbidden system call ",
        &digits[start..],
        suffix,
    ];
    let mut len = 0;
    for byte in parts.iter().flat_map(|part| part.iter()) {
        let Some(slot) = out.get_mut(len) else { break };
        *slot = *byte;
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_fault_is_named_with_its_address() {
        let message = |signal, address, role| {
            let mut out = [0u8; 160];
            let len = fault_message(signal, address, role, &mut out);
            String::from_utf8(out[..len].to_vec()).unwrap()
        };
        assert_eq!(
            message(libc::SIGSEGV, 0xdead_beef, ThreadRole::Vcpu),
            "uhyve: fatal memory fault: SIGSEGV at 0xdeadbeef on a vCPU thread (a stack \
             overflow or a bug in uhyve)\n"
        );
        assert!(
            message(libc::SIGBUS, 0, ThreadRole::Main)
                .starts_with("uhyve: fatal memory fault: SIGBUS at 0x0 on the main thread")
        );
        assert!(message(libc::SIGSEGV, u64::MAX, ThreadRole::Main).contains("0xffffffffffffffff"));
        // A short buffer cuts the line, nothing more.
        assert_eq!(
            fault_message(libc::SIGSEGV, 1, ThreadRole::Main, &mut [0u8; 10]),
            10
        );
    }

    fn message(number: i32, role: ThreadRole) -> String {
        let mut out = [0u8; 96];
        let len = violation_message(number, role, &mut out);
        String::from_utf8(out[..len].to_vec()).unwrap()
    }

    #[test]
    fn the_violation_message_names_the_call_and_the_thread() {
        assert_eq!(
            message(41, ThreadRole::Vcpu),
            "uhyve: seccomp: forbidden system call 41 on a vCPU thread\n"
        );
        assert_eq!(
            message(0, ThreadRole::Main),
            "uhyve: seccomp: forbidden system call 0 on the main thread\n"
        );
        assert_eq!(
            message(i32::MIN, ThreadRole::Vcpu),
            "uhyve: seccomp: forbidden system call -2147483648 on a vCPU thread\n"
        );
    }

    #[test]
    fn a_short_buffer_cuts_the_message() {
        let mut out = [0u8; 10];
        assert_eq!(violation_message(41, ThreadRole::Vcpu, &mut out), 10);
        assert_eq!(&out, b"uhyve: sec");
    }

    #[test]
    fn the_filter_builds_for_this_architecture() {
        let filter = build_filter(&[0xae80], std::process::id()).unwrap();
        assert!(!filter.is_empty());
    }

    #[test]
    fn without_ioctls_no_ioctl_is_allowed() {
        // An ioctl entry without request numbers must not turn into "any ioctl".
        let with = build_filter(&[0xae80], 1).unwrap();
        let without = build_filter(&[], 1).unwrap();
        assert!(without.len() < with.len());
    }

    #[test]
    fn the_allowlist_has_no_duplicates_and_no_dangerous_calls() {
        let mut numbers: Vec<_> = ALLOWLIST.iter().map(|entry| entry.number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), ALLOWLIST.len());
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_socket,
            libc::SYS_ptrace,
            libc::SYS_rt_sigaction,
            libc::SYS_kill,
            libc::SYS_process_vm_writev,
            libc::SYS_seccomp,
            libc::SYS_prctl,
        ] {
            assert!(!numbers.contains(&forbidden), "{forbidden}");
        }
        assert!(ALLOWLIST.iter().all(|entry| !entry.why.is_empty()));
    }
}
