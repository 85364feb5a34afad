//! The `uhyve` command line: a drop-in for upstream uhyve's options, turned into a
//! [`VmConfig`]. Errors are printed as one line (a guest crash as one paragraph) and become a
//! non-zero exit status; the guest's own exit code becomes uhyve's.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{CommandFactory, FromArgMatches, Parser};
use thiserror::Error;

use crate::output::OutputTarget;
use crate::params::{
    Confinement, CpuList, EnvOption, ExplicitSettings, FileIsolation, GdbAddress, HermitImageMode,
    IoMode, MemorySize, NetBackend, SeccompMode, VmConfig, VmTuning, guest_environment,
};

mod merge;

/// Exit status of uhyve when it fails itself (bad options, bad image, guest crash).
pub const FAILURE_STATUS: i32 = 1;

/// The environment variables uhyve reads, for `--help`.
const ENVIRONMENT_HELP: &str = "Environment variables (an option on the command line wins):
  HERMIT_MEMORY_SIZE, HERMIT_CPU_COUNT, HERMIT_GDB_PORT, HERMIT_CONFIG   as upstream uhyve
  HERMIT_OUTPUT, HERMIT_STATS, HERMIT_TEMPDIR, HERMIT_FILE_ISOLATION,
  HERMIT_SECCOMP, HERMIT_VERBOSE                                         this uhyve's own
  RUST_LOG   the log filter (e.g. RUST_LOG=debug adds register dumps to crash reports)

Configuration file (upstream uhyve's TOML schema; the command line and the environment win):
  --config FILE or HERMIT_CONFIG, else ./uhyve.toml, else $XDG_CONFIG_HOME/uhyve/uhyve.toml";

/// uhyve: run a Hermit unikernel as a process.
#[derive(Debug, Parser)]
#[command(
    name = "uhyve",
    // The package version, with the git commit when built from a checkout (see build.rs).
    version = env!("UHYVE_VERSION"),
    override_usage = "uhyve [OPTIONS] <KERNEL> [--] [KERNEL_ARGS]...",
    about = "A minimal, fast, secure hypervisor for Hermit unikernels",
    after_help = ENVIRONMENT_HELP,
)]
pub struct Args {
    /// Where the guest's console output goes: a file, or `none` to discard it [default: stdout]
    #[arg(short = 'o', long, env = "HERMIT_OUTPUT", value_name = "FILE|none", value_parser = clap::builder::OsStringValueParser::new())]
    pub output: Option<OsString>,

    /// Print statistics when the guest stops: exits per vCPU, vCPU run times, emulated
    /// instructions (on standard output)
    #[arg(long, env = "HERMIT_STATS", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub stats: bool,

    /// Expose a host file or directory to the guest (repeatable), e.g. ./data:/root/data; add
    /// `:ro` to make it read-only (writes, creates, unlink and mkdir fail with EROFS) or `:rw`
    /// (the default)
    #[arg(long, value_name = "HOST_PATH:GUEST_PATH[:ro|:rw]", value_parser = utf8(|text| Ok(text.to_owned())))]
    pub file_mapping: Vec<String>,

    /// Directory in which the private per-VM temporary directory is created [default: the
    /// system's temporary directory]
    #[arg(long, env = "HERMIT_TEMPDIR", value_name = "DIR")]
    pub tempdir: Option<PathBuf>,

    /// Restrict uhyve's own file-system access with Landlock to the mapped paths and its temp
    /// directory: `normal` where the host kernel has Landlock, `strict` refuses to start without
    /// it, `none` turns it off
    #[arg(
        long,
        env = "HERMIT_FILE_ISOLATION",
        value_name = "MODE",
        default_value = "normal",
        ignore_case = true,
        value_parser = clap::builder::PossibleValuesParser::new(["none", "normal", "strict"])
            .try_map(|text: String| text.parse::<FileIsolation>())
    )]
    pub file_isolation: FileIsolation,

    /// Extra flags on every host file the guest opens, for benchmarking: `default`,
    /// `host=direct` (O_DIRECT), `host=sync` (O_SYNC) or `host=direct,sync`
    #[arg(long, value_name = "MODE", value_parser = utf8(parse_io_mode))]
    pub io_mode: Option<IoMode>,

    /// Wait for GDB on this port (bare `-s`: 6677) of 127.0.0.1 before the guest starts; an
    /// ADDRESS:PORT such as 0.0.0.0:6677 listens there instead, which exposes guest memory to
    /// the network
    #[arg(
        short = 's',
        long,
        env = "HERMIT_GDB_PORT",
        value_name = "PORT|ADDRESS:PORT",
        num_args = 0..=1,
        default_missing_value = "6677",
        value_parser = utf8(parse_gdb_address)
    )]
    pub gdb_port: Option<GdbAddress>,

    /// Give the guest a virtio network card (guests on Linux KVM) connected to: a TAP
    /// interface (tap:NAME; an existing one is used, a missing one is created where uhyve may,
    /// CAP_NET_ADMIN), rootless user networking through passt, which uhyve starts
    /// (user[,hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT]..., udp too), or a running passt's
    /// socket (passt:SOCKET)
    #[arg(
        short = 'n',
        long,
        value_name = "tap:NAME|user[,hostfwd=…]|passt:SOCKET",
        value_parser = utf8(parse_net)
    )]
    pub net: Option<NetBackend>,

    /// Read settings from this TOML file (upstream uhyve's schema) instead of ./uhyve.toml or
    /// $XDG_CONFIG_HOME/uhyve/uhyve.toml
    #[arg(long, env = "HERMIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

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

    /// Stop the guest when the hypervisor cannot execute an instruction, instead of executing
    /// it in user space
    #[arg(long)]
    pub no_emulation_fallback: bool,

    /// Log what uhyve does (info level; RUST_LOG overrides)
    #[arg(short = 'v', long, env = "HERMIT_VERBOSE", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub verbose: bool,

    /// Guest RAM size [default: 64MiB, or what a Hermit image archive requires]. SIZE is a
    /// byte count with an optional unit; KiB, MiB, GiB, TiB are binary, K(B), M(B), G(B), T(B)
    /// decimal as in upstream uhyve, fractions allowed (1.5GiB); where the decimal reading is
    /// not a whole number of 2 MiB pages of at least 16 MiB (which upstream refuses), units are
    /// read as binary: 64M and 64MB mean 64 MiB, 1G means 1 GiB
    #[arg(short = 'm', long, env = "HERMIT_MEMORY_SIZE", value_name = "SIZE", value_parser = utf8(parse_memory_size), help_heading = "Memory options")]
    pub memory_size: Option<MemorySize>,

    /// Place guest RAM and a relocatable (PIE) kernel at the lowest allowed address instead of
    /// a random 2 MiB-aligned one (kernels before Hermit 0.10 always stay there)
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

    /// Number of guest CPUs [default: 1, or what a Hermit image archive requires]
    #[arg(short = 'c', long, env = "HERMIT_CPU_COUNT", value_parser = utf8(parse_cpu_count), help_heading = "CPU options")]
    pub cpu_count: Option<u32>,

    /// Let the guest's HLT, MWAIT and PAUSE run without exits, where the host's KVM allows it
    /// (lower guest latency; the host CPU looks busy while the guest idles)
    #[arg(long, help_heading = "CPU options")]
    pub cpu_pm: bool,

    /// Create an in-kernel i8254 PIT for the guest (KVM on x86_64)
    #[arg(long, help_heading = "CPU options")]
    pub pit: bool,

    /// Pin the vCPU threads to these host CPUs, one per vCPU in order, e.g. 0-3,6 or "0 1 2"
    #[arg(short = 'a', long, value_name = "CPUS", value_parser = utf8(parse_affinity), help_heading = "CPU options")]
    pub affinity: Option<CpuList>,

    /// Guest environment entry KEY=VALUE (repeatable; adds or overrides). The guest gets no
    /// host environment unless `-e host` is given, which passes all of it
    #[arg(short = 'e', long = "env-vars", visible_alias = "env", value_name = "KEY=VALUE|host", value_parser = utf8(parse_env_option), help_heading = "Guest options")]
    pub env: Vec<EnvOption>,

    /// The Hermit image to run (a kernel ELF or a Hermit image archive, told apart by their
    /// first bytes), followed by the arguments passed to the guest application (they replace an
    /// archive's app_args). Everything after KERNEL belongs to the guest, even if it looks like an
    /// option; a `--` right after KERNEL is dropped (`uhyve app -- -v` passes `-v`)
    #[arg(
        value_name = "KERNEL [KERNEL_ARGS]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        help_heading = "Guest options"
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

fn parse_gdb_address(text: &str) -> Result<GdbAddress, String> {
    text.parse()
        .map_err(|e: crate::params::ParamsError| e.to_string())
}

fn parse_net(text: &str) -> Result<NetBackend, String> {
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
    /// Parses a command line (including the program name), then fills in from the
    /// configuration file what the command line and the environment left unset.
    pub fn parse_with_config_file(
        args: impl IntoIterator<Item = OsString>,
    ) -> Result<Self, CommandLineError> {
        let matches = Args::command().try_get_matches_from(args)?;
        let mut args = Args::from_arg_matches(&matches)?;
        merge::apply_config_file(&mut args, &matches)?;
        Ok(args)
    }

    /// Turns the parsed options into a VM configuration, warning about dropped environment
    /// entries.
    pub fn into_config(self) -> VmConfig {
        let mut command = self.command.into_iter();
        // clap guarantees at least one value (`required`, `num_args = 1..`).
        let kernel = PathBuf::from(command.next().unwrap_or_default());
        let mut kernel_args: Vec<OsString> = command.collect();
        // `uhyve app -- args`: the `--` separates uhyve's part from the guest's.
        if kernel_args.first().is_some_and(|first| first == "--") {
            kernel_args.remove(0);
        }
        let (env, dropped) = guest_environment(std::env::vars_os(), &self.env);
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
            Some(value) if value == "none" || value == "None" => OutputTarget::None,
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
            gdb: self.gdb_port,
            net: self.net,
        }
    }
}

/// Why a command line could not become a configuration.
#[derive(Debug, Error)]
pub enum CommandLineError {
    /// clap's usage error, or `--help`/`--version` (printed by clap itself).
    #[error(transparent)]
    Usage(#[from] clap::Error),
    /// A bad configuration file.
    #[error(transparent)]
    ConfigFile(#[from] crate::config_file::ConfigFileError),
}

fn init_logging(verbose: bool) {
    // virtio-queue logs the guest's ring mistakes as errors of its own; uhyve reports them once
    // per card (a guest could otherwise fill the terminal). RUST_LOG still shows them.
    let default = if verbose {
        "info,virtio_queue=off"
    } else {
        "warn,virtio_queue=off"
    };
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp(None)
        .try_init();
}

/// Runs uhyve with the given command line (including the program name) and returns the process
/// exit status: the guest's exit code, or [`FAILURE_STATUS`] after printing what went wrong.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> i32 {
    let parsed = Args::command()
        .try_get_matches_from(args)
        .and_then(|matches| Ok((Args::from_arg_matches(&matches)?, matches)));
    let (mut args, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    init_logging(args.verbose);
    if let Err(e) = merge::apply_config_file(&mut args, &matches) {
        eprintln!("uhyve: error: {e}");
        return FAILURE_STATUS;
    }
    let config = args.into_config();
    if let Err(e) = crate::signals::install_stop_handlers() {
        log::warn!("{e}; interrupting uhyve will not clean up");
    }
    run_guest(&config)
}

/// Runs the guest and turns the result into uhyve's exit status.
#[cfg(host_backend)]
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
#[cfg(not(host_backend))]
fn run_guest(_config: &crate::params::VmConfig) -> i32 {
    eprintln!(
        "uhyve: error: uhyve cannot run guests on this platform: it needs Linux with KVM on x86_64 \
         or aarch64, or macOS on Apple silicon (Hypervisor.framework)"
    );
    FAILURE_STATUS
}

#[cfg(test)]
mod tests;
