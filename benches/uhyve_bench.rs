//! uhyve's benchmark: `cargo bench --bench uhyve_bench` (add `-- --quick`, or set
//! `UHYVE_BENCH_QUICK=1`, for fewer repetitions; `-- --only 2,6`, or `UHYVE_BENCH_ONLY=2,6`, for
//! some measurements only). See docs/performance.md.
//!
//! It runs the release `uhyve` binary on the `bench_*` test guests as child processes and
//! compares it with a *floor*: this same binary re-executed as `uhyve_bench --floor <ram bytes>
//! <iterations>`, the smallest KVM host that boots a vCPU in long mode and answers `out` exits
//! (`floor.rs`). Every figure is a median over repeated runs in which uhyve and the floor
//! alternate, and the ratios come from the same run, because on this project's KVM (KVM-PVM,
//! which emulates every guest instruction) only ratios are meaningful. It prints one markdown
//! table per measurement and a summary of the project's performance targets (PASS/MISS).

#[cfg(kvm)]
#[path = "uhyve_bench/child.rs"]
mod child;
#[cfg(kvm)]
#[path = "uhyve_bench/floor.rs"]
mod floor;
#[cfg(kvm)]
#[path = "uhyve_bench/network.rs"]
mod network;
#[cfg(kvm)]
#[path = "uhyve_bench/scenarios.rs"]
mod scenarios;
#[cfg(kvm)]
#[path = "uhyve_bench/stats.rs"]
mod stats;

use std::process::ExitCode;

#[cfg(not(kvm))]
fn main() -> ExitCode {
    println!("uhyve_bench: skipped (needs x86_64 Linux with KVM)");
    ExitCode::SUCCESS
}

#[cfg(kvm)]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--floor") {
        return floor_main(args.get(2..).unwrap_or_default());
    }
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("UHYVE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--only=").map(str::to_owned))
        })
        .or_else(|| std::env::var("UHYVE_BENCH_ONLY").ok());
    let Some(selection) = harness::Selection::parse(only.as_deref()) else {
        eprintln!("uhyve_bench: --only takes measurement numbers 1–6, e.g. `--only 2,6`");
        return ExitCode::from(2);
    };
    match harness::run(scenarios::Settings::new(quick), selection) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uhyve_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--floor <ram bytes> <iterations>`: run the floor VM (exits the process on success).
#[cfg(kvm)]
fn floor_main(args: &[String]) -> ExitCode {
    let parsed = match args {
        [ram, iterations] => ram.parse::<u64>().ok().zip(iterations.parse::<u32>().ok()),
        _ => None,
    };
    let Some((ram, iterations)) = parsed else {
        eprintln!("usage: uhyve_bench --floor <ram bytes> <iterations>");
        return ExitCode::from(2);
    };
    match floor::run(ram, iterations) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The benchmark run: machine description, the seven measurements, the summary.
#[cfg(kvm)]
mod harness {
    use std::fs::OpenOptions;
    use std::path::PathBuf;
    use std::time::Instant;

    use crate::network;
    use crate::scenarios::{Bench, BenchError, Settings};
    use crate::stats;

    /// The number of measurements.
    const COUNT: u8 = 7;

    /// Which measurements run: bit n − 1 for measurement n.
    #[derive(Debug, Clone, Copy)]
    pub struct Selection(u8);

    impl Selection {
        /// All measurements without a list, else the comma-separated numbers (None if invalid).
        pub fn parse(list: Option<&str>) -> Option<Self> {
            let Some(list) = list.filter(|l| !l.trim().is_empty()) else {
                return Some(Self(u8::MAX));
            };
            let mut bits = 0u8;
            for item in list.split(',') {
                let n: u8 = item.trim().parse().ok()?;
                if !(1..=COUNT).contains(&n) {
                    return None;
                }
                bits |= 1 << (n - 1);
            }
            Some(Self(bits))
        }

        fn has(self, n: u8) -> bool {
            self.0 & (1 << (n - 1)) != 0
        }
    }

    /// The environment variable naming the directory of real Hermit images.
    const IMAGES_ENV: &str = "UHYVE_TEST_IMAGES";
    /// The real image of measurement 5.
    const HELLO_WORLD: &str = "x86_64-hello_world";

    fn section(title: &str, table: &stats::Table, note: Option<&str>) {
        println!("\n### {title}\n");
        print!("{}", table.render());
        if let Some(note) = note {
            println!("\n{note}");
        }
    }

    pub fn run(settings: Settings, selection: Selection) -> Result<(), BenchError> {
        if OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            println!("uhyve_bench: skipped (/dev/kvm cannot be opened read-write)");
            return Ok(());
        }
        let me = std::env::current_exe().map_err(|source| BenchError::Io {
            what: "locating the benchmark binary".to_owned(),
            source,
        })?;
        let mut bench = Bench::new(
            PathBuf::from(env!("CARGO_BIN_EXE_uhyve")),
            me,
            PathBuf::from(uhyve_test_guests::GUEST_DIR),
            settings,
        );
        let started = Instant::now();
        println!("## uhyve benchmark\n");
        println!("{}", machine_description(&settings));

        if selection.has(1) {
            eprintln!("uhyve_bench: 1/{COUNT} cold start");
            section(
                "1. Cold start (bench_exit guest vs floor, one exit)",
                &bench.cold_start()?,
                Some(
                    "Wall: spawn to wait4 return. CPU: user + system time of the child. -m 3G \
                     stands in for 4G (3 GiB is the v1 maximum); the floor uses the same RAM size.",
                ),
            );
        }
        if selection.has(2) {
            eprintln!("uhyve_bench: 2/{COUNT} hypercall round trip");
            section(
                "2. Hypercall round trip (bench_hypercalls vs floor `out` loop)",
                &bench.hypercalls()?,
                Some(
                    "µs / iteration = (median wall with n iterations − median wall with 0) / n; \
                     both loops are `out; dec; jnz`.",
                ),
            );
        }
        if selection.has(3) {
            eprintln!("uhyve_bench: 3/{COUNT} file throughput");
            let (table, note) = bench.file_throughput()?;
            section(
                "3. File throughput (bench_file, --file-mapping)",
                &table,
                Some(&note),
            );
        }
        if selection.has(4) {
            eprintln!("uhyve_bench: 4/{COUNT} host memory");
            let (table, note) = bench.host_memory()?;
            section(
                "4. Host memory (bench_touch, peak RSS)",
                &table,
                Some(&note),
            );
        }
        if selection.has(5) {
            eprintln!("uhyve_bench: 5/{COUNT} real image");
            match std::env::var_os(IMAGES_ENV) {
                Some(dir) if PathBuf::from(&dir).join(HELLO_WORLD).is_file() => {
                    let image = PathBuf::from(dir).join(HELLO_WORLD);
                    section(
                        "5. Real image end to end",
                        &bench.real_image(&image)?,
                        Some("Default options (64 MiB, output to stdout = /dev/null)."),
                    );
                }
                _ => println!(
                    "\n### 5. Real image end to end\n\nskipped: {IMAGES_ENV} is unset or holds \
                     no {HELLO_WORLD}"
                ),
            }
        }
        if selection.has(6) {
            eprintln!("uhyve_bench: 6/{COUNT} network");
            let title = "6. Network (netbench over TAP and passt vs host TCP)";
            let floor_exit_us = bench.floor_exit_us()?;
            let uhyve = bench.uhyve_binary().to_path_buf();
            match network::run(&uhyve, &settings, floor_exit_us, &mut bench.checks)? {
                network::Outcome::Done(tables, note) => {
                    println!("\n### {title}\n");
                    for table in &tables {
                        println!("{}", table.render());
                    }
                    println!("{note}");
                }
                network::Outcome::Skipped(why) => println!("\n### {title}\n\nskipped: {why}"),
            }
        }
        if selection.has(7) {
            eprintln!("uhyve_bench: 7/{COUNT} emulation fallback");
            let (table, note) = bench.emulated_instructions()?;
            section(
                "7. Emulation fallback (bench_sse: SSE loops on a KVM that cannot execute SSE)",
                &table,
                Some(&note),
            );
        }
        section("Summary", &stats::summary(&bench.checks), None);
        println!(
            "\nTotal benchmark time: {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Date, mode, CPUs, CPU model, kernel, and whether the KVM is KVM-PVM.
    fn machine_description(settings: &Settings) -> String {
        let now = time::OffsetDateTime::now_utc();
        let cpus = std::thread::available_parallelism().map_or(0, usize::from);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or("unknown", |(_, model)| model.trim());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
        format!(
            "- date: {:04}-{:02}-{:02} {:02}:{:02} UTC\n- mode: {}\n- CPUs (nproc): {cpus}\n\
             - CPU model: {model}\n- kernel: {}\n- KVM: {}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            if settings.quick {
                "quick (fewer repetitions)"
            } else {
                "full"
            },
            kernel.trim(),
            if pvm {
                "KVM-PVM (kvm_pvm loaded: every guest instruction is emulated, ~1 µs each)"
            } else {
                "kvm (kvm_pvm not loaded)"
            }
        )
    }
}
