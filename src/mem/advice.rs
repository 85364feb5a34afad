//! How the host kernel backs guest RAM, on request: with transparent huge pages (`--thp`,
//! `madvise(MADV_HUGEPAGE)`) and with kernel samepage merging (`--ksm`, `madvise(MADV_MERGEABLE)`).
//! Both are Linux features and neither is needed: guest RAM works the same without them, so
//! whatever the host cannot do is one warning per option, never an error. The advice is given
//! while uhyve sets the guest up, before its process is confined (`crate::confine`).

use super::GuestMemory;

/// What the host kernel is asked to do with guest RAM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RamAdvice {
    /// Back it with transparent huge pages (`--thp`).
    pub huge_pages: bool,
    /// Let kernel samepage merging share its identical pages (`--ksm`).
    pub mergeable: bool,
}

/// One piece of advice: the option asking for it and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    option: &'static str,
    feature: &'static str,
    #[cfg(target_os = "linux")]
    advice: libc::c_int,
    #[cfg(target_os = "linux")]
    name: &'static str,
    /// The sysfs file that says whether the host uses the feature at all, and the value
    /// (bracketed for a choice) that means it does not.
    #[cfg(target_os = "linux")]
    switch: (&'static str, &'static str),
}

const HUGE_PAGES: Piece = Piece {
    option: "--thp",
    feature: "transparent huge pages",
    #[cfg(target_os = "linux")]
    advice: libc::MADV_HUGEPAGE,
    #[cfg(target_os = "linux")]
    name: "MADV_HUGEPAGE",
    #[cfg(target_os = "linux")]
    switch: ("/sys/kernel/mm/transparent_hugepage/enabled", "[never]"),
};

const MERGEABLE: Piece = Piece {
    option: "--ksm",
    feature: "kernel samepage merging",
    #[cfg(target_os = "linux")]
    advice: libc::MADV_MERGEABLE,
    #[cfg(target_os = "linux")]
    name: "MADV_MERGEABLE",
    #[cfg(target_os = "linux")]
    switch: ("/sys/kernel/mm/ksm/run", "0"),
};

impl GuestMemory {
    /// Passes `advice` to the host kernel; each piece it cannot follow is one warning.
    pub fn advise(&self, advice: RamAdvice) {
        for (wanted, piece) in [
            (advice.huge_pages, HUGE_PAGES),
            (advice.mergeable, MERGEABLE),
        ] {
            if wanted && let Err(why) = self.advise_one(piece) {
                log::warn!("{} has no effect: {why}", piece.option);
            }
        }
    }

    /// Gives one piece of advice, or says why it has no effect.
    #[cfg(target_os = "linux")]
    fn advise_one(&self, piece: Piece) -> Result<(), String> {
        let len = usize::try_from(self.size()).map_err(|e| e.to_string())?;
        // SAFETY: the range is exactly the anonymous mapping this `GuestMemory` owns (page
        // aligned by mmap) and lives as long as `self`; MADV_HUGEPAGE and MADV_MERGEABLE only
        // change how the kernel backs it, never what it holds.
        let result = unsafe { libc::madvise(self.host_address().cast(), len, piece.advice) };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            return Err(format!(
                "the host kernel refused {} for guest RAM (madvise {}: {error}; a kernel built \
                 without {} refuses it)",
                piece.feature, piece.name, piece.feature
            ));
        }
        let (path, off) = piece.switch;
        match std::fs::read_to_string(path) {
            Ok(state) if state.split_whitespace().any(|word| word == off) => Err(format!(
                "guest RAM is marked for {}, but this host has it switched off ({path} is {:?})",
                piece.feature,
                state.trim()
            )),
            _ => {
                log::info!(
                    "{}: guest RAM is marked for {}",
                    piece.option,
                    piece.feature
                );
                Ok(())
            }
        }
    }

    /// Gives one piece of advice, or says why it has no effect.
    #[cfg(not(target_os = "linux"))]
    fn advise_one(&self, piece: Piece) -> Result<(), String> {
        Err(format!(
            "{} are a Linux feature (madvise), which this host does not offer",
            piece.feature
        ))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use uhyve_interface::GuestPhysAddr;

    use super::*;

    /// The `VmFlags` of the mapping that contains `address`, from this process's smaps.
    fn vm_flags(address: usize) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let contains = |line: &str| {
            let range = line.split(' ').next().unwrap_or_default();
            let Some((start, end)) = range.split_once('-') else {
                return false;
            };
            match (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                (Ok(start), Ok(end)) => (start..end).contains(&address),
                _ => false,
            }
        };
        smaps
            .lines()
            .skip_while(|line| !contains(line))
            .find_map(|line| line.strip_prefix("VmFlags:"))
            .unwrap_or_else(|| panic!("no mapping contains {address:#x}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// The host kernel takes both pieces of advice (a feature the host switched off is the one
    /// accepted refusal). Whether the mark shows in smaps is checked on a uhyve process of its
    /// own (`tests/tuning.rs`): read here, inside the test process whose other tests map and
    /// unmap memory at the same time, it was once seen without the mark under load.
    #[test]
    fn the_host_kernel_takes_the_advice() {
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 4 << 20).unwrap();
        let flags = vm_flags(mem.host_address() as usize);
        assert!(!flags.iter().any(|f| f == "hg" || f == "mg"), "{flags:?}");
        for piece in [HUGE_PAGES, MERGEABLE] {
            match mem.advise_one(piece) {
                Ok(()) => {}
                Err(why) => assert!(why.contains("switched off"), "{}: {why}", piece.option),
            }
        }
    }

    #[test]
    fn no_advice_changes_nothing() {
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 4 << 20).unwrap();
        mem.advise(RamAdvice::default());
        let flags = vm_flags(mem.host_address() as usize);
        assert!(!flags.iter().any(|f| f == "hg" || f == "mg"), "{flags:?}");
    }
}
