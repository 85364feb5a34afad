//! Pinning vCPU threads to host CPUs (`--affinity`): checking the list against the vCPU count and
//! the CPUs this process may run on, and binding the calling thread to one CPU.

use thiserror::Error;

/// Problems with an `--affinity` list.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AffinityError {
    /// The list does not name one host CPU per vCPU.
    #[error("--affinity names {given} host CPUs, but there are {vcpus} vCPUs: give one per vCPU")]
    WrongCount {
        /// CPUs in the list.
        given: usize,
        /// vCPUs requested.
        vcpus: u32,
    },
    /// A CPU the process cannot run on (absent, offline or excluded).
    #[error(
        "--affinity: host CPU {cpu} does not exist or is not available (available: {available})"
    )]
    NoSuchCpu {
        /// The CPU named.
        cpu: usize,
        /// The CPUs that are available, as a list.
        available: String,
    },
    /// The operating system refused to pin a thread.
    #[error("cannot pin a vCPU thread to host CPU {cpu}: {reason}")]
    Pin {
        /// The CPU.
        cpu: usize,
        /// What the operating system said.
        reason: String,
    },
    /// The platform cannot pin threads.
    #[error("--affinity is not supported on this platform")]
    Unsupported,
}

/// Checks that `list` names exactly one available host CPU per vCPU.
pub fn check(list: &[usize], vcpus: u32) -> Result<(), AffinityError> {
    if list.len() != vcpus as usize {
        return Err(AffinityError::WrongCount {
            given: list.len(),
            vcpus,
        });
    }
    let available = available_cpus()?;
    match list.iter().find(|cpu| !available.contains(cpu)) {
        Some(&cpu) => Err(AffinityError::NoSuchCpu {
            cpu,
            available: describe(&available),
        }),
        None => Ok(()),
    }
}

/// `0-3,6` style description of a sorted CPU list.
fn describe(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = cpus.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    parts.join(",")
}

/// The host CPUs this process may run on, sorted.
#[cfg(target_os = "linux")]
pub fn available_cpus() -> Result<Vec<usize>, AffinityError> {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity fills it for this thread.
    let (result, set) = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let result = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        (result, set)
    };
    if result != 0 {
        return Err(AffinityError::Pin {
            cpu: 0,
            reason: std::io::Error::last_os_error().to_string(),
        });
    }
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET only reads the set for indices below its capacity.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// The host CPUs this process may run on, sorted.
#[cfg(not(target_os = "linux"))]
pub fn available_cpus() -> Result<Vec<usize>, AffinityError> {
    Err(AffinityError::Unsupported)
}

/// Binds the calling thread to host CPU `cpu`.
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpu: usize) -> Result<(), AffinityError> {
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(AffinityError::NoSuchCpu {
            cpu,
            available: describe(&available_cpus()?),
        });
    }
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes an index below its capacity
    // (checked above); sched_setaffinity reads the set for the calling thread.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        return Err(AffinityError::Pin {
            cpu,
            reason: std::io::Error::last_os_error().to_string(),
        });
    }
    Ok(())
}

/// Binds the calling thread to host CPU `cpu`.
#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(_cpu: usize) -> Result<(), AffinityError> {
    Err(AffinityError::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_cpu_lists_compactly() {
        assert_eq!(describe(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(describe(&[]), "");
        assert_eq!(describe(&[5]), "5");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn lists_must_match_the_vcpus_and_the_host() {
        assert_eq!(
            check(&[0], 2),
            Err(AffinityError::WrongCount { given: 1, vcpus: 2 })
        );
        let available = available_cpus().unwrap();
        assert!(!available.is_empty());
        assert_eq!(check(&available[..1], 1), Ok(()));
        assert!(matches!(
            check(&[100_000], 1),
            Err(AffinityError::NoSuchCpu { cpu: 100_000, .. })
        ));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pinning_the_current_thread() {
        let cpu = available_cpus().unwrap()[0];
        std::thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            assert_eq!(available_cpus().unwrap(), vec![cpu]);
            assert!(pin_current_thread(1 << 20).is_err());
        })
        .join()
        .unwrap();
    }
}
