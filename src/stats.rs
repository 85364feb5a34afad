//! Exit statistics for `--stats`: how many exits of each kind a vCPU took, and how long the run
//! lasted. Counting is a map lookup per exit and only happens when statistics were requested.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Exit counts of one run.
#[derive(Debug)]
pub struct ExitStats {
    counts: BTreeMap<&'static str, u64>,
    emulated: BTreeMap<String, u64>,
    started: Instant,
    finished: Option<Duration>,
}

impl Default for ExitStats {
    fn default() -> Self {
        Self::new()
    }
}

impl ExitStats {
    /// Starts counting now.
    pub fn new() -> Self {
        Self {
            counts: BTreeMap::new(),
            emulated: BTreeMap::new(),
            started: Instant::now(),
            finished: None,
        }
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

    /// How many instructions the emulation fallback executed.
    pub fn emulated_total(&self) -> u64 {
        self.emulated.values().sum()
    }

    /// Marks the end of the run.
    pub fn finish(&mut self) {
        self.finished = Some(self.started.elapsed());
    }

    /// How many exits of `kind` were counted.
    pub fn count(&self, kind: &str) -> u64 {
        self.counts.get(kind).copied().unwrap_or(0)
    }

    /// Total number of exits.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

impl fmt::Display for ExitStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "uhyve statistics:")?;
        let elapsed = self.finished.unwrap_or_else(|| self.started.elapsed());
        writeln!(f, "  run time: {:.3} ms", elapsed.as_secs_f64() * 1000.0)?;
        writeln!(f, "  vCPU exits: {}", self.total())?;
        let width = self.counts.keys().map(|k| k.len()).max().unwrap_or(0);
        for (kind, count) in &self.counts {
            writeln!(f, "    {kind:<width$}  {count}")?;
        }
        if !self.emulated.is_empty() {
            writeln!(f, "  emulated in user space: {}", self.emulated_total())?;
            let width = self.emulated.keys().map(|k| k.len()).max().unwrap_or(0);
            for (mnemonic, count) in &self.emulated {
                writeln!(f, "    {mnemonic:<width$}  {count}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind() {
        let mut stats = ExitStats::new();
        stats.record("SerialWriteByte");
        stats.record("SerialWriteByte");
        stats.record("Exit");
        stats.record_emulated("xorps");
        stats.record_emulated("xorps");
        stats.record_emulated("xgetbv");
        stats.finish();
        assert_eq!(stats.emulated_total(), 3);
        assert_eq!(stats.count("SerialWriteByte"), 2);
        assert_eq!(stats.count("FileOpen"), 0);
        assert_eq!(stats.total(), 3);
        let text = stats.to_string();
        assert!(text.contains("vCPU exits: 3"), "{text}");
        assert!(text.contains("SerialWriteByte  2"), "{text}");
        assert!(text.contains("emulated in user space: 3"), "{text}");
        assert!(text.contains("xorps   2"), "{text}");
    }
}
