//! Measurements 1–5: cold start, hypercall round trip, file throughput, host memory and the
//! real hello_world image (6, the network, is network.rs). Each runs `uhyve` (and the floor, where there is one) as child
//! processes, interleaved repetition by repetition so both see the same machine noise, and
//! returns a markdown table; the targets of the issue are collected as [`Check`]s.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::child::{self, ChildError, Sample, Spawn};
use crate::stats::{Check, Table, median, median_ms, ratio};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// The small RAM size of the cold-start measurement.
const SMALL_RAM: (&str, u64) = ("64M", 64 * MIB);
/// The large RAM size: the issue asks for 4 GiB, but v1 guests may have at most 3 GiB, so uhyve
/// (and, for a like-for-like comparison, the floor) run with 3 GiB.
const LARGE_RAM: (&str, u64) = ("3G", 3 * GIB);
/// Size of the file of the file-throughput measurement.
const FILE_BYTES: u64 = 64 * MIB;
/// Passes over that file per uhyve run (more bytes per run than one pass, so the start-up time
/// subtracted from each run is small against the transfer).
const FILE_PASSES: u64 = 8;
/// Environment variables uhyve reads that must not leak from the caller into a measurement.
pub const UHYVE_ENV: &[&str] = &[
    "RUST_LOG",
    "HERMIT_MEMORY_SIZE",
    "HERMIT_CPU_COUNT",
    "HERMIT_VERBOSE",
    "HERMIT_STATS",
    "HERMIT_OUTPUT",
    "HERMIT_TEMPDIR",
    "HERMIT_CONFIG",
    "HERMIT_GDB_PORT",
    "HERMIT_FILE_ISOLATION",
    "HERMIT_SECCOMP",
];

/// What can stop a measurement.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Child(#[from] ChildError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// Repetition counts and loop sizes.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub quick: bool,
    pub cold_reps: usize,
    pub hypercall_reps: usize,
    pub file_reps: usize,
    pub rss_reps: usize,
    pub image_reps: usize,
    pub iterations: u32,
    /// Bytes of one netbench transfer each way, transfers per direction, timed round trips.
    pub net_bytes: u64,
    pub net_reps: usize,
    pub net_pings: usize,
    /// Transfers per direction of the network floor.
    pub net_floor_reps: usize,
}

impl Settings {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                cold_reps: 5,
                hypercall_reps: 2,
                file_reps: 3,
                rss_reps: 1,
                image_reps: 2,
                iterations: 100_000,
                net_bytes: 64 * KIB,
                net_reps: 1,
                net_pings: 50,
                net_floor_reps: 3,
            }
        } else {
            Self {
                quick,
                cold_reps: 20,
                hypercall_reps: 7,
                file_reps: 9,
                rss_reps: 3,
                image_reps: 5,
                iterations: 100_000,
                net_bytes: 256 * KIB,
                net_reps: 3,
                net_pings: 200,
                net_floor_reps: 5,
            }
        }
    }
}

/// One command line to measure, rebuilt for every run.
struct Variant {
    name: String,
    command: Box<dyn Fn() -> Command>,
}

/// The benchmark: where its programs are, its settings, and what earlier measurements found.
pub struct Bench {
    uhyve: PathBuf,
    floor: PathBuf,
    guests: PathBuf,
    settings: Settings,
    /// Targets met or missed so far.
    pub checks: Vec<Check>,
    /// Floor: wall time of one `out; dec; jnz` iteration, in µs (from the hypercall measurement).
    floor_iteration_us: Option<f64>,
}

impl Bench {
    pub fn new(uhyve: PathBuf, floor: PathBuf, guests: PathBuf, settings: Settings) -> Self {
        Self {
            uhyve,
            floor,
            guests,
            settings,
            checks: Vec::new(),
            floor_iteration_us: None,
        }
    }

    /// The `uhyve` binary measured.
    pub fn uhyve_binary(&self) -> &Path {
        &self.uhyve
    }

    /// The floor's wall time per `out` exit in µs: measurement 2's, or measured now (the floor
    /// loop alone) if measurement 2 did not run.
    pub fn floor_exit_us(&mut self) -> Result<f64, BenchError> {
        if let Some(us) = self.floor_iteration_us {
            return Ok(us);
        }
        let n = self.settings.iterations;
        let variants = [self.floor(SMALL_RAM.1, n), self.floor(SMALL_RAM.1, 0)];
        let samples = self.interleaved(&variants, self.settings.hypercall_reps, Spawn::Fast)?;
        let us = (wall_ms(&samples[0]) - wall_ms(&samples[1])) * 1e3 / f64::from(n);
        self.floor_iteration_us = Some(us);
        Ok(us)
    }

    /// 7. The emulation fallback: the `bench_sse` guest's float and memchr loops, whose SSE
    ///    instructions fail to emulate on a KVM that cannot execute SSE; the fallback executes
    ///    each uninterrupted sequence of them as one run (one exit). µs per run against the
    ///    floor's µs per `out` exit, and what each emulated instruction adds to a run.
    pub fn emulated_instructions(&mut self) -> Result<(Table, String), BenchError> {
        let n: u32 = if self.settings.quick { 500 } else { 2000 };
        let floor_exit = self.floor_exit_us()?;
        let args = |kernel: &str, count: u32| vec![kernel.to_owned(), count.to_string()];
        let mut table = Table::new(&[
            "loop (n iterations)",
            "emulated / iteration",
            "runs (exits) / iteration",
            &format!("wall ms, n = {n}"),
            "wall ms, n = 0",
            "µs / run",
            "run / floor exit",
            "µs / instruction beyond one exit",
        ]);
        for kernel in ["float", "memchr"] {
            let (instructions, runs) = self.emulation_per_iteration(kernel, n)?;
            let variants = [
                self.uhyve(SMALL_RAM.0, &[], "bench_sse", &args(kernel, n)),
                self.uhyve(SMALL_RAM.0, &[], "bench_sse", &args(kernel, 0)),
            ];
            let samples = self.interleaved(&variants, self.settings.hypercall_reps, Spawn::Fast)?;
            let (loaded, empty) = (wall_ms(&samples[0]), wall_ms(&samples[1]));
            let mut row = vec![
                format!("bench_sse {kernel}"),
                format!("{instructions:.2}"),
                format!("{runs:.2}"),
                format!("{loaded:.1}"),
                format!("{empty:.1}"),
            ];
            if runs == 0.0 {
                row.extend([
                    "none (the KVM executes SSE)".to_owned(),
                    "-".into(),
                    "-".into(),
                ]);
                table.row(row);
                continue;
            }
            let per_run = (loaded - empty) * 1e3 / (runs * f64::from(n));
            let relative = ratio(per_run, floor_exit);
            let per_instruction = (per_run - floor_exit) / (instructions / runs);
            row.extend([
                format!("{per_run:.2}"),
                format!("{relative:.2}"),
                format!("{per_instruction:.2}"),
            ]);
            table.row(row);
            self.checks.push(Check::at_most(
                &format!("emulated run ≤ 1.5× floor exit: bench_sse {kernel}"),
                relative,
                1.5,
                format!("{per_run:.2} / {floor_exit:.2} µs = {relative:.2}×"),
            ));
            self.checks.push(Check::at_most(
                &format!("≤ 0.5 µs per instruction in a run: bench_sse {kernel}"),
                per_instruction,
                0.5,
                format!(
                    "({per_run:.2} − {floor_exit:.2}) µs / {:.1}",
                    instructions / runs
                ),
            ));
        }
        let note = format!(
            "Instructions and runs per iteration: what `--stats` counts for n iterations less what \
             it counts for none (emulated instructions; `emulation failure` exits). µs / run = \
             (median wall with n iterations − with 0) / the runs. The floor's `out` exit takes \
             {floor_exit:.2} µs in this run; \"µs / instruction beyond one exit\" = (µs / run − \
             that) / instructions per run, an upper bound of what an instruction adds to its run."
        );
        Ok((table, note))
    }

    /// Emulated instructions and runs (emulation-failure exits) per loop iteration of
    /// `bench_sse KERNEL`: what `--stats` counts for `n` iterations, less what it counts for none.
    fn emulation_per_iteration(&self, kernel: &str, n: u32) -> Result<(f64, f64), BenchError> {
        let count = |iterations: u32| -> Result<(u64, u64), BenchError> {
            let output = Command::new(&self.uhyve)
                .args(["-m", SMALL_RAM.0, "--stats"])
                .arg(self.guests.join("bench_sse"))
                .args([kernel.to_owned(), iterations.to_string()])
                .output()
                .map_err(io_error("running bench_sse with --stats"))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            let number = |prefix: &str| -> u64 {
                stdout
                    .lines()
                    .find_map(|line| line.trim_start().strip_prefix(prefix))
                    .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0)
            };
            Ok((
                number("Emulated in user space: "),
                number("emulation failure: "),
            ))
        };
        let ((instructions, runs), (base_instructions, base_runs)) = (count(n)?, count(0)?);
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / f64::from(n.max(1));
        Ok((per(instructions, base_instructions), per(runs, base_runs)))
    }

    /// `uhyve -m <ram> -o none <options> <guest> <args>` (the guest gets no host environment).
    fn uhyve(&self, ram: &str, options: &[OsString], guest: &str, args: &[String]) -> Variant {
        let (uhyve, image) = (self.uhyve.clone(), self.guests.join(guest));
        let (ram, options, args) = (ram.to_owned(), options.to_vec(), args.to_vec());
        Variant {
            name: format!("uhyve {guest} {}", args.join(" ")),
            command: Box::new(move || {
                let mut command = Command::new(&uhyve);
                for name in UHYVE_ENV {
                    command.env_remove(name);
                }
                command
                    .args(["-m", &ram, "-o", "none"])
                    .args(&options)
                    .arg(&image)
                    .args(&args);
                command
            }),
        }
    }

    /// The floor program with `ram` bytes of RAM and `iterations` loop exits.
    fn floor(&self, ram: u64, iterations: u32) -> Variant {
        let floor = self.floor.clone();
        Variant {
            name: format!("floor {ram} {iterations}"),
            command: Box::new(move || {
                let mut command = Command::new(&floor);
                command
                    .arg("--floor")
                    .arg(ram.to_string())
                    .arg(iterations.to_string());
                command
            }),
        }
    }

    /// One warm-up run of every variant, then `reps` rounds of one run each, the order rotated
    /// every round. Returns the samples per variant.
    fn interleaved(
        &self,
        variants: &[Variant],
        reps: usize,
        spawn: Spawn,
    ) -> Result<Vec<Vec<Sample>>, BenchError> {
        let mut samples = vec![Vec::with_capacity(reps); variants.len()];
        for variant in variants {
            child::run(&variant.name, &mut (variant.command)(), spawn)?;
        }
        for rep in 0..reps {
            for i in 0..variants.len() {
                let index = (i + rep) % variants.len();
                let (Some(variant), Some(list)) = (variants.get(index), samples.get_mut(index))
                else {
                    continue;
                };
                list.push(child::run(&variant.name, &mut (variant.command)(), spawn)?);
            }
        }
        Ok(samples)
    }

    /// 1. Process start to exit for a guest that exits at once, and the floor's single exit.
    pub fn cold_start(&mut self) -> Result<Table, BenchError> {
        let mut table = Table::new(&[
            "guest RAM",
            "uhyve wall ms",
            "floor wall ms",
            "wall ratio",
            "uhyve CPU ms",
            "floor CPU ms",
            "CPU ratio",
        ]);
        for (label, bytes) in [SMALL_RAM, LARGE_RAM] {
            let variants = [
                self.uhyve(label, &[], "bench_exit", &[]),
                self.floor(bytes, 0),
            ];
            let samples = self.interleaved(&variants, self.settings.cold_reps, Spawn::Fast)?;
            let (uhyve, floor) = (&samples[0], &samples[1]);
            let wall = (wall_ms(uhyve), wall_ms(floor));
            let cpu = (cpu_ms(uhyve), cpu_ms(floor));
            let (wall_ratio, cpu_ratio) = (ratio(wall.0, wall.1), ratio(cpu.0, cpu.1));
            table.row(vec![
                label.to_owned(),
                format!("{:.2}", wall.0),
                format!("{:.2}", wall.1),
                format!("{wall_ratio:.3}"),
                format!("{:.2}", cpu.0),
                format!("{:.2}", cpu.1),
                format!("{cpu_ratio:.3}"),
            ]);
            self.checks.push(Check::at_most(
                &format!("cold start wall ≤ 1.05× floor (-m {label})"),
                wall_ratio,
                1.05,
                format!("{:.2} / {:.2} ms = {wall_ratio:.3}×", wall.0, wall.1),
            ));
            self.checks.push(Check::at_most(
                &format!("cold start CPU ≤ 1.2× floor (-m {label})"),
                cpu_ratio,
                1.2,
                format!("{:.2} / {:.2} ms = {cpu_ratio:.3}×", cpu.0, cpu.1),
            ));
        }
        Ok(table)
    }

    /// 2. µs per hypercall round trip (Uart, FileClose on fd 0) against the floor's `out` loop.
    pub fn hypercalls(&mut self) -> Result<Table, BenchError> {
        let n = self.settings.iterations;
        let args = |mode: &str, count: u32| vec![mode.to_owned(), count.to_string()];
        let variants = [
            self.uhyve(SMALL_RAM.0, &[], "bench_hypercalls", &args("uart", n)),
            self.uhyve(SMALL_RAM.0, &[], "bench_hypercalls", &args("uart", 0)),
            self.uhyve(SMALL_RAM.0, &[], "bench_hypercalls", &args("close", n)),
            self.uhyve(SMALL_RAM.0, &[], "bench_hypercalls", &args("close", 0)),
            self.floor(SMALL_RAM.1, n),
            self.floor(SMALL_RAM.1, 0),
        ];
        let samples = self.interleaved(&variants, self.settings.hypercall_reps, Spawn::Fast)?;
        let per_iteration = |loaded: &[Sample], empty: &[Sample], of: fn(&[Sample]) -> f64| {
            (of(loaded) - of(empty)) * 1e3 / f64::from(n)
        };
        let floor_wall = per_iteration(&samples[4], &samples[5], wall_ms);
        self.floor_iteration_us = Some(floor_wall);
        let mut table = Table::new(&[
            "loop (n = iterations)",
            &format!("wall ms, n = {n}"),
            "wall ms, n = 0",
            "µs / iteration",
            "CPU µs / iteration",
            "ratio to floor",
        ]);
        for (label, loaded, empty) in [
            ("uhyve Uart (port 0x800, -o none)", 0, 1),
            ("uhyve FileClose fd 0 (port 0x480)", 2, 3),
            ("floor `out` exit", 4, 5),
        ] {
            let (loaded, empty) = (&samples[loaded], &samples[empty]);
            let wall = per_iteration(loaded, empty, wall_ms);
            let cpu = per_iteration(loaded, empty, cpu_ms);
            let relative = ratio(wall, floor_wall);
            table.row(vec![
                label.to_owned(),
                format!("{:.1}", wall_ms(loaded)),
                format!("{:.1}", wall_ms(empty)),
                format!("{wall:.2}"),
                format!("{cpu:.2}"),
                format!("{relative:.3}"),
            ]);
            if !label.starts_with("floor") {
                self.checks.push(Check::at_most(
                    &format!("hypercall ≤ 1.02× floor exit: {label}"),
                    relative,
                    1.02,
                    format!("{wall:.2} / {floor_wall:.2} µs = {relative:.3}×"),
                ));
            }
        }
        Ok(table)
    }

    /// 3. 8 passes over a 64 MiB file through FileRead and FileWrite (64 KiB and 1 MiB chunks),
    ///    against the host
    ///    doing the same I/O and against the floor model (one floor exit per chunk + memcpy).
    pub fn file_throughput(&mut self) -> Result<(Table, String), BenchError> {
        let reps = self.settings.file_reps.max(1);
        let dir = tempfile::tempdir().map_err(io_error("creating a temporary directory"))?;
        let input = dir.path().join("input.bin");
        let out_dir = dir.path().join("out");
        fs::create_dir(&out_dir).map_err(io_error(format!("creating {}", out_dir.display())))?;
        write_file(&input)?;

        let memcpy_mib_s = memcpy_bandwidth(reps)?;
        let chunks = [64 * KIB, MIB];
        let mut host_read = Vec::new();
        let mut host_write = Vec::new();
        for chunk in chunks {
            host_read.push(median_of(reps, || time_read(&input, chunk))?);
            let target = out_dir.join("host.bin");
            host_write.push(median_of(reps, || time_write(&target, chunk))?);
        }

        let mut mappings: Vec<OsString> = Vec::new();
        for (host, guest) in [(&input, "/bench/input.bin"), (&out_dir, "/out")] {
            let mut mapping = OsString::from("--file-mapping=");
            mapping.push(host.as_os_str());
            mapping.push(":");
            mapping.push(guest);
            mappings.push(mapping);
        }
        let file_args = |mode: &str, chunk: u64, passes: u64| {
            let path = if mode == "read" {
                "/bench/input.bin"
            } else {
                "/out/guest.bin"
            };
            vec![
                mode.to_owned(),
                path.to_owned(),
                chunk.to_string(),
                FILE_BYTES.to_string(),
                passes.to_string(),
            ]
        };
        let mut variants = Vec::new();
        for mode in ["read", "write"] {
            for chunk in chunks {
                let args = file_args(mode, chunk, FILE_PASSES);
                variants.push(self.uhyve(SMALL_RAM.0, &mappings, "bench_file", &args));
            }
            let args = file_args(mode, MIB, 0);
            variants.push(self.uhyve(SMALL_RAM.0, &mappings, "bench_file", &args));
        }
        let samples = self.interleaved(&variants, reps, Spawn::Fast)?;

        let floor_us = self.floor_exit_us()?;
        let mib = (FILE_BYTES * FILE_PASSES) as f64 / MIB as f64;
        let mut table = Table::new(&[
            "transfer (8 × 64 MiB)",
            "chunk",
            "uhyve MiB/s",
            "host MiB/s",
            "floor model MiB/s",
            "uhyve / floor model",
            "write model MiB/s",
            "uhyve / write model",
        ]);
        for (m, mode) in ["FileRead", "FileWrite"].into_iter().enumerate() {
            let empty = wall_ms(&samples[m * 3 + 2]);
            for (c, chunk) in chunks.into_iter().enumerate() {
                let seconds = (wall_ms(&samples[m * 3 + c]) - empty) / 1e3;
                let uhyve = mib / seconds;
                let exit_seconds = (FILE_BYTES * FILE_PASSES / chunk) as f64 * floor_us / 1e6;
                let floor = mib / (exit_seconds + mib / memcpy_mib_s);
                let relative = ratio(uhyve, floor);
                let mut row = vec![
                    mode.to_owned(),
                    format!("{} KiB", chunk / KIB),
                    format!("{uhyve:.0}"),
                    format!("{:.0}", if m == 0 { host_read[c] } else { host_write[c] }),
                    format!("{floor:.0}"),
                    format!("{relative:.3}"),
                ];
                if m == 0 {
                    row.extend(["–".to_owned(), "–".to_owned()]);
                    if chunk == MIB {
                        self.checks.push(Check::at_least(
                            "FileRead 1 MiB chunks ≥ 0.9× (floor exits + memcpy)",
                            relative,
                            0.9,
                            format!("{uhyve:.0} / {floor:.0} MiB/s = {relative:.3}×"),
                        ));
                    }
                } else {
                    // A write must go through the host's page cache, which memcpy does not
                    // model: the write model is floor exits + the host's own write bandwidth.
                    let model = mib / (exit_seconds + mib / host_write[c]);
                    let against_model = ratio(uhyve, model);
                    row.extend([format!("{model:.0}"), format!("{against_model:.3}")]);
                    if chunk == MIB {
                        self.checks.push(Check::at_least(
                            "FileWrite 1 MiB chunks ≥ 0.9× (floor exits + host write)",
                            against_model,
                            0.9,
                            format!("{uhyve:.0} / {model:.0} MiB/s = {against_model:.3}×"),
                        ));
                    }
                }
                table.row(row);
            }
        }
        let note = format!(
            "memcpy in the harness: {memcpy_mib_s:.0} MiB/s; floor exit (one `out; dec; jnz` \
             iteration): {floor_us:.2} µs; uhyve times are minus the same guest making 0 passes. \
             Host: the same open, 8 passes and close in the same chunk size."
        );
        Ok((table, note))
    }

    /// 4. Peak RSS of uhyve for a guest touching 1 MiB and 1 GiB of a 3 GiB guest.
    pub fn host_memory(&mut self) -> Result<(Table, String), BenchError> {
        let (label, bytes) = LARGE_RAM;
        let touches = [0, MIB, GIB];
        let mut variants: Vec<Variant> = touches
            .iter()
            .map(|t| self.uhyve(label, &[], "bench_touch", &[(t / KIB).to_string()]))
            .collect();
        variants.push(self.floor(bytes, 0));
        let harness_anon = own_rss_anon_kib();
        let samples = self.interleaved(&variants, self.settings.rss_reps, Spawn::Fork)?;
        let rss_mib = |s: &[Sample]| {
            median(&s.iter().map(|s| s.max_rss_kib as f64).collect::<Vec<_>>()) / 1024.0
        };
        let mut table = Table::new(&[
            "run (-m 3G)",
            "touched MiB",
            "peak RSS MiB",
            "RSS − touched MiB",
        ]);
        for (i, touched) in touches.into_iter().enumerate() {
            let rss = rss_mib(&samples[i]);
            let touched_mib = touched as f64 / MIB as f64;
            let overhead = rss - touched_mib;
            table.row(vec![
                format!("uhyve bench_touch {}", human(touched)),
                format!("{touched_mib:.0}"),
                format!("{rss:.1}"),
                format!("{overhead:.1}"),
            ]);
            if touched > 0 {
                self.checks.push(Check::at_most(
                    &format!("peak RSS ≤ 10 MiB + touched ({})", human(touched)),
                    overhead,
                    10.0,
                    format!("{rss:.1} MiB − {touched_mib:.0} MiB = {overhead:.1} MiB"),
                ));
            }
        }
        let floor = rss_mib(&samples[touches.len()]);
        table.row(vec![
            "floor, one exit".to_owned(),
            "0".to_owned(),
            format!("{floor:.1}"),
            format!("{floor:.1}"),
        ]);
        let note = format!(
            "-m 3G, not 4G: 3 GiB is the v1 maximum. Children are forked (not vforked) so that \
             ru_maxrss starts from the harness's anonymous RSS ({:.1} MiB) instead of its peak.",
            harness_anon as f64 / 1024.0
        );
        Ok((table, note))
    }

    /// 5. The real hello_world image end to end (default options), with the floor for scale.
    pub fn real_image(&mut self, image: &Path) -> Result<Table, BenchError> {
        let uhyve = self.uhyve.clone();
        let path = image.to_path_buf();
        let variants = [
            Variant {
                name: format!("uhyve {}", image.display()),
                command: Box::new(move || {
                    let mut command = Command::new(&uhyve);
                    for name in UHYVE_ENV {
                        command.env_remove(name);
                    }
                    command.arg(&path);
                    command
                }),
            },
            self.floor(SMALL_RAM.1, 0),
        ];
        let samples = self.interleaved(&variants, self.settings.image_reps, Spawn::Fast)?;
        let (uhyve, floor) = (&samples[0], &samples[1]);
        let mut table = Table::new(&[
            "image",
            "uhyve wall ms",
            "uhyve CPU ms",
            "floor (one exit) wall ms",
            "wall / floor",
        ]);
        table.row(vec![
            image
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            format!("{:.1}", wall_ms(uhyve)),
            format!("{:.1}", cpu_ms(uhyve)),
            format!("{:.2}", wall_ms(floor)),
            format!("{:.2}", ratio(wall_ms(uhyve), wall_ms(floor))),
        ]);
        Ok(table)
    }
}

fn wall_ms(samples: &[Sample]) -> f64 {
    median_ms(&samples.iter().map(|s| s.wall).collect::<Vec<_>>())
}

fn cpu_ms(samples: &[Sample]) -> f64 {
    median_ms(&samples.iter().map(|s| s.cpu).collect::<Vec<_>>())
}

fn human(bytes: u64) -> String {
    match bytes {
        0 => "0".to_owned(),
        b if b >= GIB => format!("{} GiB", b / GIB),
        b => format!("{} MiB", b / MIB),
    }
}

/// This process's anonymous resident memory in KiB (`RssAnon` in /proc/self/status), 0 if unknown.
fn own_rss_anon_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("RssAnon:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A `chunk`-byte buffer of a fixed pattern.
fn pattern(chunk: u64) -> Vec<u8> {
    let len = usize::try_from(chunk).unwrap_or(1 << 20);
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Writes `passes` times `total` bytes from `buffer` to `file`, each pass from offset 0, in
/// writes of the buffer's size.
fn write_passes(file: &mut File, buffer: &[u8], total: u64, passes: u64) -> std::io::Result<()> {
    for _ in 0..passes {
        file.seek(SeekFrom::Start(0))?;
        let mut left = total;
        while left > 0 {
            let n = usize::try_from(left).map_or(buffer.len(), |l| l.min(buffer.len()));
            file.write_all(buffer.get(..n).unwrap_or(buffer))?;
            left = left.saturating_sub(n as u64);
        }
    }
    Ok(())
}

/// Creates `path` with [`FILE_BYTES`] of a fixed pattern.
fn write_file(path: &Path) -> Result<(), BenchError> {
    let what = || format!("writing {}", path.display());
    let mut file = File::create(path).map_err(io_error(what()))?;
    write_passes(&mut file, &pattern(MIB), FILE_BYTES, 1).map_err(io_error(what()))
}

/// MiB/s of what the guest does: open `path`, read it [`FILE_PASSES`] times from offset 0 in
/// `chunk`-byte reads (it is in the page cache), close it.
fn time_read(path: &Path, chunk: u64) -> Result<f64, BenchError> {
    let what = || format!("reading {}", path.display());
    let mut buffer = pattern(chunk);
    let start = Instant::now();
    let mut file = File::open(path).map_err(io_error(what()))?;
    let mut total = 0u64;
    for _ in 0..FILE_PASSES {
        file.seek(SeekFrom::Start(0)).map_err(io_error(what()))?;
        loop {
            let n = file.read(&mut buffer).map_err(io_error(what()))?;
            if n == 0 {
                break;
            }
            total = total.saturating_add(n as u64);
        }
    }
    drop(file);
    Ok(mib_per_s(total, start.elapsed()))
}

/// MiB/s of what the guest does: create or truncate `path`, write [`FILE_BYTES`] to it
/// [`FILE_PASSES`] times from offset 0 in `chunk`-byte writes, close it.
fn time_write(path: &Path, chunk: u64) -> Result<f64, BenchError> {
    let what = || format!("writing {}", path.display());
    let buffer = pattern(chunk);
    let start = Instant::now();
    let mut file = File::create(path).map_err(io_error(what()))?;
    write_passes(&mut file, &buffer, FILE_BYTES, FILE_PASSES).map_err(io_error(what()))?;
    drop(file);
    Ok(mib_per_s(FILE_BYTES * FILE_PASSES, start.elapsed()))
}

/// Median MiB/s of copying [`FILE_BYTES`] between two warm buffers.
fn memcpy_bandwidth(reps: usize) -> Result<f64, BenchError> {
    let len = usize::try_from(FILE_BYTES)
        .map_err(|_| io_error("memcpy buffer")(std::io::ErrorKind::InvalidInput.into()))?;
    let source = vec![0x5au8; len];
    let mut target = vec![0u8; len];
    target.copy_from_slice(&source);
    let mut rates = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        target.copy_from_slice(std::hint::black_box(&source));
        std::hint::black_box(&mut target);
        rates.push(mib_per_s(FILE_BYTES, start.elapsed()));
    }
    Ok(median(&rates))
}

/// The median of `reps` results of `measure`.
fn median_of(
    reps: usize,
    mut measure: impl FnMut() -> Result<f64, BenchError>,
) -> Result<f64, BenchError> {
    let mut values = Vec::with_capacity(reps);
    for _ in 0..reps {
        values.push(measure()?);
    }
    Ok(median(&values))
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64().max(1e-9)
}
