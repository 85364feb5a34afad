//! Running one measured child process: wall time from just before the spawn to the return of
//! `wait4`, and the child's own CPU time (user + system) and peak RSS from the `rusage` that
//! `wait4` returns. The child's stdout goes to `/dev/null`; its stderr to an unnamed temporary
//! file that is shown when the child fails.

use std::io::{Read, Seek};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One run of a child.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub wall: Duration,
    /// User + system time of the child (all its threads).
    pub cpu: Duration,
    /// Peak resident set size of the child in KiB (`ru_maxrss`).
    pub max_rss_kib: u64,
}

/// How the child is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spawn {
    /// The standard library's fast path (`posix_spawn`, a vfork): the least overhead, but Linux
    /// counts the *parent's* peak RSS into the child's `ru_maxrss`.
    Fast,
    /// A real `fork` (forced by an empty `pre_exec` hook): the child's `ru_maxrss` then starts
    /// from the parent's current anonymous RSS only, which the harness keeps small.
    Fork,
}

/// What can go wrong running a child.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("{what}: cannot create a file for its stderr: {source}")]
    Stderr {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: cannot start it: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: wait4 failed: {source}")]
    Wait {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: exited with wait status {status:#x}; stderr:\n{stderr}")]
    Failed {
        what: String,
        status: i32,
        stderr: String,
    },
}

fn timeval(tv: libc::timeval) -> Duration {
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u32::try_from(tv.tv_usec).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(u64::from(micros))
}

/// Runs `command` to completion; fails unless it exits with status 0.
pub fn run(what: &str, command: &mut Command, spawn: Spawn) -> Result<Sample, ChildError> {
    let mut stderr = tempfile::tempfile().map_err(|source| ChildError::Stderr {
        what: what.to_owned(),
        source,
    })?;
    let stderr_handle = stderr.try_clone().map_err(|source| ChildError::Stderr {
        what: what.to_owned(),
        source,
    })?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_handle);
    if spawn == Spawn::Fork {
        // SAFETY: the hook does nothing at all, so it is trivially async-signal-safe; it only
        // makes the standard library use fork + exec instead of posix_spawn.
        unsafe { command.pre_exec(|| Ok(())) };
    }
    let start = Instant::now();
    let child = command.spawn().map_err(|source| ChildError::Spawn {
        what: what.to_owned(),
        source,
    })?;
    let pid = libc::pid_t::try_from(child.id()).unwrap_or(libc::pid_t::MAX);
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = loop {
        // SAFETY: `pid` is our own un-reaped child; status and usage point at live locals.
        let result = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if result == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        }
        break result;
    };
    let wall = start.elapsed();
    // The child is reaped; dropping `child` does not wait again.
    drop(child);
    if waited != pid {
        return Err(ChildError::Wait {
            what: what.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let mut text = String::new();
        if stderr.rewind().is_ok() && stderr.read_to_string(&mut text).is_err() {
            text = "(unreadable)".to_owned();
        }
        return Err(ChildError::Failed {
            what: what.to_owned(),
            status,
            stderr: text,
        });
    }
    Ok(Sample {
        wall,
        cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    })
}
