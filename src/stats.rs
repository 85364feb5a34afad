//! Exit statistics for `--stats`: how many exits of each kind every vCPU took, which instructions
//! the emulation fallback executed, and how long the run lasted. Each vCPU thread counts into its
//! own [`ExitStats`] (no sharing on the exit path); [`RunStats`] puts them together at the end.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Exit counts of one vCPU.
#[derive(Debug, Default, Clone)]
pub struct ExitStats {
    counts: BTreeMap<&'static str, u64>,
    emulated: BTreeMap<String, u64>,
}

impl ExitStats {
    /// No exits counted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one exit of the given kind.
    pub fn record(&mut self, kind: &'static str) {
        *self.counts.entry(kind).or_insert(0) += 1;
    }

    /// Counts one instruction executed by the user-space emulation fallback.
    pub fn record_emulated(&mut self, mnemonic: &str) {
        match self.emulated.get_mut(mnemonic) {
            Some(count) => *count += 1,
            None => {
                self.emulated.insert(mnemonic.to_owned(), 1);
            }
        }
    }

    /// How many exits of `kind` were counted.
    pub fn count(&self, kind: &str) -> u64 {
        self.counts.get(kind).copied().unwrap_or(0)
    }

    /// Total number of exits.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// How many instructions the emulation fallback executed.
    pub fn emulated_total(&self) -> u64 {
        self.emulated.values().sum()
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &ExitStats) {
        for (kind, count) in &other.counts {
            *self.counts.entry(kind).or_insert(0) += count;
        }
        for (mnemonic, count) in &other.emulated {
            match self.emulated.get_mut(mnemonic) {
                Some(total) => *total += count,
                None => {
                    self.emulated.insert(mnemonic.clone(), *count);
                }
            }
        }
    }
}

/// The statistics of a whole run: every vCPU's counts and the wall time.
#[derive(Debug, Default)]
pub struct RunStats {
    /// `(vCPU id, its counts)`, in id order.
    pub per_cpu: Vec<(u32, ExitStats)>,
    /// Wall time from the start of the vCPUs to the end of the run.
    pub elapsed: Duration,
}

fn write_counts<K: AsRef<str>>(
    f: &mut fmt::Formatter<'_>,
    counts: impl Iterator<Item = (K, u64)> + Clone,
) -> fmt::Result {
    let width = counts
        .clone()
        .map(|(k, _)| k.as_ref().len())
        .max()
        .unwrap_or(0);
    for (kind, count) in counts {
        writeln!(f, "    {:<width$}  {count}", kind.as_ref())?;
    }
    Ok(())
}

impl fmt::Display for RunStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut total = ExitStats::new();
        for (_, stats) in &self.per_cpu {
            total.merge(stats);
        }
        writeln!(f, "uhyve statistics:")?;
        writeln!(
            f,
            "  run time: {:.3} ms",
            self.elapsed.as_secs_f64() * 1000.0
        )?;
        writeln!(f, "  vCPU exits: {}", total.total())?;
        write_counts(f, total.counts.iter().map(|(k, v)| (*k, *v)))?;
        if self.per_cpu.len() > 1 {
            for (cpu, stats) in &self.per_cpu {
                writeln!(f, "  vCPU {cpu}: {} exits", stats.total())?;
            }
        }
        if total.emulated_total() > 0 {
            writeln!(f, "  emulated in user space: {}", total.emulated_total())?;
            write_counts(f, total.emulated.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_and_vcpu() {
        let mut cpu0 = ExitStats::new();
        cpu0.record("SerialWriteByte");
        cpu0.record("SerialWriteByte");
        cpu0.record("Exit");
        cpu0.record_emulated("xorps");
        cpu0.record_emulated("xgetbv");
        let mut cpu1 = ExitStats::new();
        cpu1.record("SerialWriteByte");
        cpu1.record_emulated("xorps");
        assert_eq!(cpu0.count("SerialWriteByte"), 2);
        assert_eq!(cpu0.count("FileOpen"), 0);
        assert_eq!(cpu0.total(), 3);
        assert_eq!(cpu0.emulated_total(), 2);
        let run = RunStats {
            per_cpu: vec![(0, cpu0), (1, cpu1)],
            elapsed: Duration::from_millis(5),
        };
        let text = run.to_string();
        assert!(text.contains("run time: 5.000 ms"), "{text}");
        assert!(text.contains("vCPU exits: 4"), "{text}");
        assert!(text.contains("SerialWriteByte  3"), "{text}");
        assert!(text.contains("vCPU 0: 3 exits"), "{text}");
        assert!(text.contains("vCPU 1: 1 exits"), "{text}");
        assert!(text.contains("emulated in user space: 3"), "{text}");
        assert!(text.contains("xorps   2"), "{text}");
    }

    #[test]
    fn one_vcpu_has_no_per_vcpu_lines() {
        let mut cpu0 = ExitStats::new();
        cpu0.record("Exit");
        let text = RunStats {
            per_cpu: vec![(0, cpu0)],
            elapsed: Duration::ZERO,
        }
        .to_string();
        assert!(!text.contains("vCPU 0:"), "{text}");
        assert!(!text.contains("emulated"), "{text}");
    }
}
