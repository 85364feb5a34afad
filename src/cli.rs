//! The `uhyve` command line: a drop-in for upstream uhyve's options, turned into a
//! [`VmConfig`]. Errors are printed as one line (a guest crash as one paragraph) and become a
//! non-zero exit status; the guest's own exit code becomes uhyve's.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;
use clap::builder::TypedValueParser;

use crate::output::OutputTarget;
use crate::params::{
    Confinement, CpuList, EnvOption, ExplicitSettings, FileIsolation, HermitImageMode, IoMode,
    MemorySize, SeccompMode, VmConfig, VmTuning, guest_environment,
};

/// Exit status of uhyve when it fails itself (bad options, bad image, guest crash).
pub const FAILURE_STATUS: i32 = 1;

/// uhyve: run a Hermit unikernel as a process.
#[derive(Debug, Parser)]
#[command(
    name = "uhyve",
    // The package version, with the git commit when built from a checkout (see build.rs).
    version = env!("UHYVE_VERSION"),
    override_usage = "uhyve [OPTIONS] <KERNEL> [KERNEL_ARGS]...",
    about = "A minimal, fast, secure hypervisor for Hermit unikernels",
    after_help = "Environment variables: HERMIT_MEMORY_SIZE (--memory-size), HERMIT_CPU_COUNT \
	              (--cpu-count), HERMIT_VERBOSE (--verbose), HERMIT_STATS (--stats), HERMIT_OUTPUT \
	              (--output), HERMIT_TEMPDIR (--tempdir), HERMIT_FILE_ISOLATION (--file-isolation), \
	              HERMIT_SECCOMP (--seccomp); RUST_LOG sets the log filter \
	              (e.g. RUST_LOG=debug adds register dumps to crash reports)."
)]
pub struct Args {
    /// Guest RAM size, e.g. 64M, 512MiB, 1G, 1GiB [default: 64M, or what a Hermit image
    /// archive requires]
    #[arg(short = 'm', long, env = "HERMIT_MEMORY_SIZE", value_parser = utf8(parse_memory_size))]
    pub memory_size: Option<MemorySize>,

    /// Number of guest CPUs [default: 1, or what a Hermit image archive requires]
    #[arg(short = 'c', long, env = "HERMIT_CPU_COUNT", value_parser = utf8(parse_cpu_count))]
    pub cpu_count: Option<u32>,

    /// Pin the vCPU threads to these host CPUs, one per vCPU in order, e.g. 0-3,6
    #[arg(short = 'a', long, value_name = "CPUS", value_parser = utf8(parse_affinity))]
    pub affinity: Option<CpuList>,

    /// Guest environment entry KEY=VALUE (repeatable; adds or overrides). The guest starts from
    /// the host environment; `-e host` is accepted for compatibility
    #[arg(short = 'e', long = "env", visible_alias = "env-vars", value_name = "KEY=VALUE", value_parser = utf8(parse_env_option))]
    pub env: Vec<EnvOption>,

    /// Start the guest environment empty instead of from the host environment (`-e` entries and
    /// `-e host` still apply)
    #[arg(long)]
    pub env_clear: bool,

    /// Where the guest's console output goes: a file, or `none` to discard it [default: stdout]
    #[arg(short = 'o', long, env = "HERMIT_OUTPUT", value_name = "FILE|none", value_parser = clap::builder::OsStringValueParser::new())]
    pub output: Option<OsString>,

    /// Expose a host file or directory to the guest (repeatable), e.g. ./data:/root/data; add
    /// `:ro` to make it read-only (writes, creates, unlink and mkdir fail with EROFS) or `:rw`
    /// (the default)
    #[arg(long, value_name = "HOST_PATH:GUEST_PATH[:ro|:rw]", value_parser = utf8(|text| Ok(text.to_owned())))]
    pub file_mapping: Vec<String>,

    /// Directory in which the private per-VM temporary directory is created
    #[arg(long, env = "HERMIT_TEMPDIR", value_name = "DIR")]
    pub tempdir: Option<PathBuf>,

    /// Print exit statistics when the guest stops
    #[arg(long, env = "HERMIT_STATS", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub stats: bool,

    /// How the files of a Hermit image archive reach the guest: `external` (uhyve serves them
    /// as read-only files) or `internal` (the archive is placed into guest RAM for the kernel)
    #[arg(
        long,
        value_name = "MODE",
        default_value = "external",
        value_parser = clap::builder::PossibleValuesParser::new(["external", "internal"])
            .try_map(|text: String| text.parse::<HermitImageMode>())
    )]
    pub hermit_image_mode: HermitImageMode,

    /// Stop the guest when the hypervisor cannot execute an instruction, instead of executing
    /// it in user space
    #[arg(long)]
    pub no_emulation_fallback: bool,

    /// Restrict uhyve's own file-system access with Landlock to the mapped paths and its temp
    /// directory: `normal` where the host kernel has Landlock, `strict` refuses to start without
    /// it, `none` turns it off
    #[arg(
        long,
        env = "HERMIT_FILE_ISOLATION",
        value_name = "MODE",
        default_value = "normal",
        value_parser = clap::builder::PossibleValuesParser::new(["none", "normal", "strict"])
            .try_map(|text: String| text.parse::<FileIsolation>())
    )]
    pub file_isolation: FileIsolation,

    /// Run uhyve's threads under a system-call allowlist once the VM is set up (`strict`; a
    /// forbidden call ends uhyve), or not (`none`, for debugging) [default: strict on Linux,
    /// none elsewhere]
    #[arg(
        long,
        env = "HERMIT_SECCOMP",
        value_name = "MODE",
        value_parser = clap::builder::PossibleValuesParser::new(["none", "strict"])
            .try_map(|text: String| text.parse::<SeccompMode>())
    )]
    pub seccomp: Option<SeccompMode>,

    /// Load a relocatable (PIE) kernel at the lowest allowed address instead of a random
    /// 2 MiB-aligned one
    #[arg(long, help_heading = "Memory options")]
    pub no_aslr: bool,

    /// Advise the host kernel to back guest RAM with transparent huge pages
    /// (madvise MADV_HUGEPAGE; Linux)
    #[arg(long, help_heading = "Memory options")]
    pub thp: bool,

    /// Advise the host kernel to merge identical pages of guest RAM (kernel samepage merging,
    /// madvise MADV_MERGEABLE; Linux)
    #[arg(long, help_heading = "Memory options")]
    pub ksm: bool,

    /// Create an in-kernel i8254 PIT for the guest (KVM on x86_64)
    #[arg(long, help_heading = "CPU options")]
    pub pit: bool,

    /// Let the guest's HLT, MWAIT and PAUSE run without exits, where the host's KVM allows it
    /// (lower guest latency; the host CPU looks busy while the guest idles)
    #[arg(long, help_heading = "CPU options")]
    pub cpu_pm: bool,

    /// Extra flags on every host file the guest opens, for benchmarking: `default`,
    /// `host=direct` (O_DIRECT), `host=sync` (O_SYNC) or `host=direct,sync`
    #[arg(long, value_name = "MODE", value_parser = utf8(parse_io_mode))]
    pub io_mode: Option<IoMode>,

    /// Log what uhyve does (info level; RUST_LOG overrides)
    #[arg(short = 'v', long, env = "HERMIT_VERBOSE", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub verbose: bool,

    /// The Hermit image to run (a kernel ELF or a Hermit image archive, told apart by their
    /// first bytes), followed by the arguments passed to the guest application (they replace an
    /// archive's app_args). Everything after KERNEL belongs to the guest, even if it looks like an
    /// option.
    #[arg(
        value_name = "KERNEL [KERNEL_ARGS]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    pub command: Vec<OsString>,
}

/// A parser for an option whose value must be UTF-8, then `parse`: a value that is not UTF-8 is
/// an error naming the option (clap's own message names none).
fn utf8<T: Clone + Send + Sync + 'static>(
    parse: fn(&str) -> Result<T, String>,
) -> impl TypedValueParser<Value = T> {
    clap::builder::OsStringValueParser::new().try_map(move |value: OsString| {
        let text = value
            .into_string()
            .map_err(|value| format!("{} is not valid UTF-8", value.to_string_lossy()))?;
        parse(&text)
    })
}

fn parse_cpu_count(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("at least one CPU is needed".into()),
        Ok(count) => Ok(count),
        Err(error) => Err(format!("{text:?} is not a number of CPUs: {error}")),
    }
}

fn parse_memory_size(text: &str) -> Result<MemorySize, String> {
    text.parse()
        .map_err(|e: crate::params::ParamsError| e.to_string())
}

fn parse_affinity(text: &str) -> Result<CpuList, String> {
    text.parse()
        .map_err(|e: crate::params::ParamsError| e.to_string())
}

fn parse_io_mode(text: &str) -> Result<IoMode, String> {
    text.parse()
        .map_err(|e: crate::params::ParamsError| e.to_string())
}

fn parse_env_option(text: &str) -> Result<EnvOption, String> {
    text.parse()
        .map_err(|e: crate::params::ParamsError| e.to_string())
}

impl Args {
    /// Turns the parsed options into a VM configuration, warning about dropped environment entries.
    pub fn into_config(self) -> VmConfig {
        let mut command = self.command.into_iter();
        // clap guarantees at least one value (`required`, `num_args = 1..`).
        let kernel = PathBuf::from(command.next().unwrap_or_default());
        let kernel_args: Vec<OsString> = command.collect();
        let (env, dropped) = guest_environment(std::env::vars_os(), &self.env, self.env_clear);
        if !dropped.is_empty() {
            log::warn!(
                "the guest environment holds at most {} entries; not passed: {}",
                uhyve_interface::MAX_ARGC_ENVC,
                dropped
                    .iter()
                    .map(|k| k.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let output = match self.output {
            None => OutputTarget::Stdout,
            Some(value) if value == "-" => OutputTarget::Stdout,
            Some(value) if value == "none" => OutputTarget::None,
            Some(path) => OutputTarget::File(PathBuf::from(path)),
        };
        let explicit = ExplicitSettings {
            memory_size: self.memory_size.is_some(),
            cpu_count: self.cpu_count.is_some(),
            env_keys: self
                .env
                .iter()
                .filter_map(|option| match option {
                    EnvOption::Set(key, _) => Some(key.clone()),
                    EnvOption::Host => None,
                })
                .collect(),
        };
        VmConfig {
            kernel,
            kernel_args,
            kernel_options: Vec::new(),
            env,
            memory_size: self.memory_size.unwrap_or_default(),
            cpu_count: self.cpu_count.unwrap_or(1),
            affinity: self.affinity.map(|list| list.0),
            output,
            file_mappings: self.file_mapping,
            tempdir: self.tempdir,
            stats: self.stats,
            emulation_fallback: !self.no_emulation_fallback,
            hermit_image_mode: self.hermit_image_mode,
            explicit,
            confinement: Confinement {
                file_isolation: self.file_isolation,
                seccomp: self.seccomp.unwrap_or_else(SeccompMode::platform_default),
            },
            tuning: VmTuning {
                aslr: !self.no_aslr,
                transparent_huge_pages: self.thp,
                same_page_merging: self.ksm,
                pit: self.pit,
                cpu_power_management: self.cpu_pm,
                io_mode: self.io_mode.unwrap_or_default(),
            },
            gdb: None,
        }
    }
}

fn init_logging(verbose: bool) {
    let default = if verbose { "info" } else { "warn" };
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp(None)
        .try_init();
}

/// Runs uhyve with the given command line (including the program name) and returns the process
/// exit status: the guest's exit code, or [`FAILURE_STATUS`] after printing what went wrong.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    init_logging(args.verbose);
    let config = args.into_config();
    if let Err(e) = crate::signals::install_stop_handlers() {
        log::warn!("{e}; interrupting uhyve will not clean up");
    }
    run_guest(&config)
}

/// Runs the guest and turns the result into uhyve's exit status.
#[cfg(any(kvm, hvf))]
fn run_guest(config: &crate::params::VmConfig) -> i32 {
    match crate::vm::run(config) {
        Ok(code) => code,
        Err(crate::vm::VmError::Stopped(signal)) => {
            eprintln!("uhyve: stopped by {}", crate::signals::signal_name(signal));
            128 + signal
        }
        Err(e) => {
            eprintln!("uhyve: error: {e}");
            FAILURE_STATUS
        }
    }
}

/// There is no backend on this platform: one clear line.
#[cfg(not(any(kvm, hvf)))]
fn run_guest(_config: &crate::params::VmConfig) -> i32 {
    eprintln!(
        "uhyve: error: uhyve cannot run guests on this platform: it needs Linux on x86_64 (KVM) \
         or macOS on Apple silicon (Hypervisor.framework)"
    );
    FAILURE_STATUS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("uhyve").chain(args.iter().copied()))
    }

    /// Where no backend exists (e.g. Linux on aarch64, whose tests run under qemu-user in
    /// `.ci/aarch64-tests`), running a guest is one error line and a failure status.
    #[cfg(not(any(kvm, hvf)))]
    #[test]
    fn an_unsupported_platform_fails_with_a_status() {
        let config = parse(&["/nonexistent/kernel"]).unwrap().into_config();
        assert_eq!(run_guest(&config), FAILURE_STATUS);
    }

    #[test]
    fn kernel_and_trailing_arguments() {
        let config = parse(&["-m", "128M", "app", "-v", "--x", "-m", "1G"])
            .unwrap()
            .into_config();
        assert_eq!(config.memory_size, MemorySize(128 << 20));
        assert_eq!(config.kernel, PathBuf::from("app"));
        assert_eq!(
            config.kernel_args,
            vec![OsString::from("-v"), "--x".into(), "-m".into(), "1G".into()]
        );
        let config = parse(&["-v", "app", "--", "x"]).unwrap().into_config();
        assert_eq!(config.kernel_args, vec![OsString::from("--"), "x".into()]);
        assert!(parse(&["--bogus", "app"]).is_err());
    }

    #[test]
    fn options_and_defaults() {
        let config = parse(&["app"]).unwrap().into_config();
        assert_eq!(config.memory_size, MemorySize::DEFAULT);
        assert_eq!(config.cpu_count, 1);
        assert_eq!(config.hermit_image_mode, HermitImageMode::External);
        assert_eq!(config.explicit, ExplicitSettings::default());
        let args = parse(&["-e", "A=1", "--env", "host", "--env-vars", "B=2", "app"]).unwrap();
        assert_eq!(args.env.len(), 3);
        assert!(parse(&["-e", "novalue", "app"]).is_err());
        assert!(parse(&["-m", "lots", "app"]).is_err());
        assert!(parse(&["-c", "0", "app"]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn explicit_settings_and_image_mode() {
        let config = parse(&[
            "-m",
            "64M",
            "-c",
            "1",
            "-e",
            "A=1",
            "-e",
            "host",
            "--hermit-image-mode",
            "internal",
            "app",
        ])
        .unwrap()
        .into_config();
        assert_eq!(
            config.explicit,
            ExplicitSettings {
                memory_size: true,
                cpu_count: true,
                env_keys: vec!["A".into()],
            }
        );
        assert_eq!(config.hermit_image_mode, HermitImageMode::Internal);
        let error = parse(&["--hermit-image-mode", "inline", "app"]).unwrap_err();
        assert!(error.to_string().contains("external"), "{error}");
    }

    #[test]
    fn confinement_options() {
        let config = parse(&["app"]).unwrap().into_config();
        assert_eq!(config.confinement, Confinement::default());
        let config = parse(&["--file-isolation", "strict", "--seccomp", "none", "app"])
            .unwrap()
            .into_config();
        assert_eq!(
            config.confinement,
            Confinement {
                file_isolation: FileIsolation::Strict,
                seccomp: SeccompMode::None,
            }
        );
        assert!(parse(&["--file-isolation", "paranoid", "app"]).is_err());
        assert!(parse(&["--seccomp", "normal", "app"]).is_err());
    }

    #[test]
    fn output_targets() {
        let config = |o: &str| parse(&["-o", o, "app"]).unwrap().into_config().output;
        assert_eq!(config("none"), OutputTarget::None);
        assert_eq!(config("log.txt"), OutputTarget::File("log.txt".into()));
        assert_eq!(
            parse(&["app"]).unwrap().into_config().output,
            OutputTarget::Stdout
        );
    }

    #[test]
    fn values_that_are_not_utf8_name_their_option() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(b"x\xffy".to_vec());
        for (option, value) in [
            ("-m", bad()),
            ("-c", bad()),
            ("-a", bad()),
            ("-e", bad()),
            ("--file-mapping", bad()),
        ] {
            let args = ["uhyve".into(), option.into(), value, "app".into()];
            let error = Args::try_parse_from(args).unwrap_err().to_string();
            let long = match option {
                "-m" => "--memory-size",
                "-c" => "--cpu-count",
                "-a" => "--affinity",
                "-e" => "--env",
                other => other,
            };
            assert!(error.contains(long), "{option}: {error}");
            assert!(error.contains("not valid UTF-8"), "{option}: {error}");
        }
        // An output file is a host path: any bytes are fine.
        let args = ["uhyve".into(), "-o".into(), bad(), "app".into()];
        let config = Args::try_parse_from(args).unwrap().into_config();
        assert_eq!(config.output, OutputTarget::File(PathBuf::from(bad())));
    }
}
