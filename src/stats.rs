//! Statistics for `--stats`: how many exits of each kind every vCPU took, how long each vCPU ran,
//! which instructions the emulation fallback executed, and how long the run lasted. Each vCPU
//! thread counts into its own [`ExitStats`] (no sharing on the exit path); [`RunStats`] puts them
//! together at the end and prints them as upstream uhyve does (a `Run statistics:` heading, a
//! table of exits with a total and one column per vCPU, the vCPU run times), followed by this
//! uhyve's own lines (all exits, emulated instructions per vCPU, the wall time).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::virtio::net::NetCounters;

/// Exit counts of one vCPU.
#[derive(Debug, Default, Clone)]
pub struct ExitStats {
    counts: BTreeMap<&'static str, u64>,
    emulated: BTreeMap<String, u64>,
    runtime: Option<Duration>,
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

    /// Records how long the vCPU ran (from its first entry into the guest to its end).
    pub fn set_runtime(&mut self, runtime: Duration) {
        self.runtime = Some(runtime);
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
    /// The network card's traffic, if the guest had a card: what it was connected to, and the
    /// counts.
    pub network: Option<(String, NetCounters)>,
}

/// Writes one table: a heading row (`title`, `total`, one column per vCPU), then one row per
/// key with its total and each vCPU's count (blank where a vCPU has none).
fn write_table<'a>(
    f: &mut fmt::Formatter<'_>,
    title: &str,
    per_cpu: &[(u32, &'a BTreeMap<impl AsRef<str> + Ord + 'a, u64>)],
) -> fmt::Result {
    let mut rows: BTreeMap<&str, Vec<Option<u64>>> = BTreeMap::new();
    for (column, (_, counts)) in per_cpu.iter().enumerate() {
        for (key, count) in counts.iter() {
            let row = rows
                .entry(key.as_ref())
                .or_insert_with(|| vec![None; per_cpu.len()]);
            row[column] = Some(*count);
        }
    }
    let width = rows.keys().map(|k| k.len() + 1).max().unwrap_or(0).max(28);
    write!(f, "{title:<w$}   total", w = width + 2)?;
    for (cpu, _) in per_cpu {
        write!(f, " {:>7}", format!("cpu{cpu}"))?;
    }
    writeln!(f)?;
    for (key, counts) in &rows {
        let total: u64 = counts.iter().flatten().sum();
        write!(f, "  {:<width$} {total:>7}", format!("{key}:"))?;
        for count in counts {
            match count {
                Some(count) => write!(f, " {count:>7}")?,
                None => write!(f, " {:>7}", "")?,
            }
        }
        writeln!(f)?;
    }
    Ok(())
}

impl fmt::Display for RunStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exits: Vec<_> = self
            .per_cpu
            .iter()
            .map(|(cpu, s)| (*cpu, &s.counts))
            .collect();
        let emulated: Vec<_> = self
            .per_cpu
            .iter()
            .map(|(cpu, s)| (*cpu, &s.emulated))
            .collect();
        writeln!(f, "Run statistics:")?;
        write_table(f, "VM exits:", &exits)?;
        writeln!(f, "CPU runtimes:")?;
        for (cpu, stats) in &self.per_cpu {
            if let Some(runtime) = stats.runtime {
                writeln!(f, "  cpu {cpu}: {runtime:?}")?;
            }
        }
        let all_exits: u64 = self.per_cpu.iter().map(|(_, s)| s.total()).sum();
        writeln!(f, "All VM exits: {all_exits}")?;
        let all_emulated: u64 = self.per_cpu.iter().map(|(_, s)| s.emulated_total()).sum();
        if all_emulated > 0 {
            writeln!(f, "Emulated in user space: {all_emulated}")?;
            write_table(f, "Emulated instructions:", &emulated)?;
        }
        if let Some((link, counters)) = &self.network {
            write_network(f, link, counters)?;
        }
        writeln!(f, "Wall time: {:?}", self.elapsed)
    }
}

/// The network card's traffic per direction.
fn write_network(f: &mut fmt::Formatter<'_>, link: &str, counters: &NetCounters) -> fmt::Result {
    writeln!(f, "Network card (virtio-net on {link}):")?;
    let rows = [
        (
            "guest to host",
            counters.tx_frames,
            counters.tx_bytes,
            counters.tx_dropped,
        ),
        (
            "host to guest",
            counters.rx_frames,
            counters.rx_bytes,
            counters.rx_dropped,
        ),
    ];
    for (direction, frames, bytes, dropped) in rows {
        writeln!(
            f,
            "  {direction}: {frames} frames, {bytes} bytes, {dropped} dropped"
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of a table in the printed statistics: key → (total, per-vCPU cells).
    fn table(text: &str, title: &str) -> Vec<(String, Vec<String>)> {
        text.lines()
            .skip_while(|line| !line.starts_with(title))
            .skip(1)
            .take_while(|line| line.starts_with("  "))
            .map(|line| {
                let (key, cells) = line.trim().split_once(':').unwrap();
                (
                    key.to_owned(),
                    cells.split_whitespace().map(str::to_owned).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn counts_by_kind_and_vcpu() {
        let mut cpu0 = ExitStats::new();
        cpu0.record("SerialWriteByte");
        cpu0.record("SerialWriteByte");
        cpu0.record("Exit");
        cpu0.record_emulated("xorps");
        cpu0.record_emulated("xgetbv");
        cpu0.set_runtime(Duration::from_millis(3));
        let mut cpu1 = ExitStats::new();
        cpu1.record("SerialWriteByte");
        cpu1.record_emulated("xorps");
        cpu1.set_runtime(Duration::from_millis(2));
        assert_eq!(cpu0.count("SerialWriteByte"), 2);
        assert_eq!(cpu0.count("FileOpen"), 0);
        assert_eq!(cpu0.total(), 3);
        assert_eq!(cpu0.emulated_total(), 2);
        let run = RunStats {
            per_cpu: vec![(0, cpu0), (1, cpu1)],
            elapsed: Duration::from_millis(5),
            network: None,
        };
        let text = run.to_string();
        assert!(text.starts_with("Run statistics:\nVM exits:"), "{text}");
        let header = text.lines().nth(1).unwrap();
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            ["VM", "exits:", "total", "cpu0", "cpu1"],
            "{text}"
        );
        let exits = table(&text, "VM exits:");
        assert_eq!(exits.len(), 2, "{text}");
        assert_eq!(
            exits[0],
            ("Exit".to_owned(), vec!["1".to_owned(), "1".to_owned()])
        );
        assert_eq!(exits[1].0, "SerialWriteByte");
        assert_eq!(exits[1].1, ["3", "2", "1"]);
        assert!(
            text.contains("CPU runtimes:\n  cpu 0: 3ms\n  cpu 1: 2ms\n"),
            "{text}"
        );
        assert!(text.contains("All VM exits: 4\n"), "{text}");
        assert!(text.contains("Emulated in user space: 3\n"), "{text}");
        let emulated = table(&text, "Emulated instructions:");
        assert_eq!(
            emulated[1],
            (
                "xorps".to_owned(),
                vec!["2".to_owned(), "1".to_owned(), "1".to_owned()]
            ),
            "{text}"
        );
        assert!(text.ends_with("Wall time: 5ms\n"), "{text}");
        assert!(!text.contains("Network card"), "{text}");
    }

    #[test]
    fn the_network_cards_traffic_comes_per_direction() {
        let counters = NetCounters {
            tx_frames: 3,
            tx_bytes: 180,
            rx_frames: 2,
            rx_bytes: 3028,
            tx_dropped: 0,
            rx_dropped: 1,
        };
        let text = RunStats {
            per_cpu: vec![(0, ExitStats::new())],
            elapsed: Duration::from_millis(5),
            network: Some(("TAP interface tap0".into(), counters)),
        }
        .to_string();
        assert!(
            text.contains(
                "Network card (virtio-net on TAP interface tap0):\n  \
                 guest to host: 3 frames, 180 bytes, 0 dropped\n  \
                 host to guest: 2 frames, 3028 bytes, 1 dropped\nWall time: 5ms\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn nothing_emulated_has_no_emulation_lines() {
        let mut cpu0 = ExitStats::new();
        cpu0.record("Exit");
        let text = RunStats {
            per_cpu: vec![(0, cpu0)],
            elapsed: Duration::ZERO,
            network: None,
        }
        .to_string();
        assert!(!text.contains("Emulated"), "{text}");
        assert!(text.contains("All VM exits: 1"), "{text}");
    }
}
