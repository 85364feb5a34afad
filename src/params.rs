//! The user's configuration of a VM, independent of how it was given (command line, environment
//! variables or the library API): memory size parsing, the guest environment list, output target.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;
use uhyve_interface::MAX_ARGC_ENVC;

use crate::output::OutputTarget;

/// Errors in user-supplied parameters.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParamsError {
    /// A memory size that cannot be parsed.
    #[error(
        "invalid memory size '{0}': expected a number with an optional unit, e.g. 64M, 512MiB, 1.5GiB, 1G"
    )]
    MemorySizeSyntax(String),
    /// A memory size that does not fit 64 bits.
    #[error("memory size '{0}' is too large to represent")]
    MemorySizeOverflow(String),
    /// An `-e` value without `=` (and not `host`).
    #[error("invalid environment entry '{0}': expected KEY=VALUE or 'host'")]
    EnvSyntax(String),
    /// A malformed `--affinity` list.
    #[error("invalid --affinity '{0}': expected host CPU numbers and ranges, e.g. 0-3,6")]
    CpuList(String),
    /// An invalid CPU count.
    #[error("invalid CPU count '{0}': expected a number from 1 upwards")]
    CpuCount(String),
    /// An unknown `--hermit-image-mode`.
    #[error("invalid Hermit image mode '{0}': expected 'external' or 'internal'")]
    ImageMode(String),
    /// An unknown `--file-isolation`.
    #[error("invalid file isolation '{0}': expected 'none', 'normal' or 'strict'")]
    FileIsolation(String),
    /// An unknown `--seccomp`.
    #[error("invalid seccomp mode '{0}': expected 'none' or 'strict'")]
    SeccompMode(String),
    /// A malformed `-n/--net`.
    #[error(
        "invalid network backend '{0}': expected tap:NAME (an interface name of 1 to 15 bytes), \
         user[,hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT]... or passt:SOCKET"
    )]
    NetSyntax(String),
    /// A `hostfwd=` rule of `--net user` that does not parse.
    #[error(
        "invalid port forwarding '{0}': expected hostfwd=PROTOCOL:[HOSTADDR]:HOSTPORT-:GUESTPORT \
         with PROTOCOL tcp or udp, e.g. hostfwd=tcp:127.0.0.1:8080-:80 (the guest address stays \
         empty: passt forwards to the guest's own address)"
    )]
    PortForwardSyntax(String),
    /// An unknown `--io-mode`.
    #[error(
        "invalid I/O mode '{0}': expected 'default', 'host=direct', 'host=sync' or 'host=direct,sync'"
    )]
    IoMode(String),
    /// A malformed `--gdb-port`.
    #[error(
        "invalid GDB address '{0}': expected a port (e.g. 6677) or ADDRESS:PORT (e.g. 0.0.0.0:6677)"
    )]
    GdbAddress(String),
}

/// Guest RAM size in bytes, parsed from strings like `64M`, `512MiB`, `1.5GiB`, `1G`, `65536`.
///
/// The rule ([`MemorySize::RULE`], also in `--help`): first as upstream uhyve reads it (the
/// `byte-unit` crate: `KiB`/`MiB`/`GiB`/`TiB` binary, `K`/`KB`/`M`/`MB`/`G`/`GB`/`T`/`TB` decimal,
/// case-insensitive, fractions allowed); if that gives a size upstream accepts (a whole number of
/// 2 MiB pages, at least 16 MiB), that is the size. Otherwise (upstream would refuse it) every
/// unit is read as binary, as this uhyve always has: `64M` = `64MB` = 64 MiB, `1.5G` = 1.5 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySize(pub u64);

impl MemorySize {
    /// The default guest RAM size: 64 MiB.
    pub const DEFAULT: MemorySize = MemorySize(64 << 20);

    /// How sizes are read, for the help text and the docs.
    pub const RULE: &'static str = "a byte count with an optional unit; KiB, MiB, GiB, TiB are \
        binary, K(B), M(B), G(B), T(B) decimal as in upstream uhyve, fractions allowed (1.5GiB); \
        where the decimal reading is not a whole number of 2 MiB pages of at least 16 MiB (which \
        upstream refuses), units are read as binary: 64M and 64MB mean 64 MiB, 1G means 1 GiB";

    /// Upstream uhyve's smallest guest RAM and its granule: sizes it accepts.
    const UPSTREAM_MINIMUM: u64 = 16 << 20;
    const UPSTREAM_GRANULE: u64 = 2 << 20;

    /// Upstream's reading of `text`, if upstream would accept the size it gives.
    fn upstream_reading(text: &str) -> Option<u64> {
        let bytes = byte_unit::Byte::parse_str(text, true).ok()?.as_u64();
        (bytes >= Self::UPSTREAM_MINIMUM && bytes.is_multiple_of(Self::UPSTREAM_GRANULE))
            .then_some(bytes)
    }

    /// This uhyve's reading: the same syntax with every unit binary.
    fn binary_reading(text: &str) -> Result<u64, ParamsError> {
        let trimmed = text.trim();
        let number_end = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(number_end);
        let binary_unit = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => "B",
            "k" | "kb" | "kib" => "KiB",
            "m" | "mb" | "mib" => "MiB",
            "g" | "gb" | "gib" => "GiB",
            "t" | "tb" | "tib" => "TiB",
            _ => return Err(ParamsError::MemorySizeSyntax(text.to_string())),
        };
        if !number.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(ParamsError::MemorySizeSyntax(text.to_string()));
        }
        match byte_unit::Byte::parse_str(format!("{number}{binary_unit}"), true) {
            Ok(bytes) => Ok(bytes.as_u64()),
            Err(byte_unit::ParseError::Value(byte_unit::ValueParseError::ExceededBounds(_))) => {
                Err(ParamsError::MemorySizeOverflow(text.to_string()))
            }
            Err(_) => Err(ParamsError::MemorySizeSyntax(text.to_string())),
        }
    }
}

impl Default for MemorySize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
        for (shift, unit) in units {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{} {unit}", self.0 >> shift);
            }
        }
        write!(f, "{} bytes", self.0)
    }
}

impl FromStr for MemorySize {
    type Err = ParamsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(bytes) = Self::upstream_reading(text) {
            return Ok(MemorySize(bytes));
        }
        Self::binary_reading(text).map(MemorySize)
    }
}

/// One `-e` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvOption {
    /// `-e host`: pass the host's whole environment.
    Host,
    /// `-e KEY=VALUE`: add or override one entry.
    Set(OsString, OsString),
}

impl FromStr for EnvOption {
    type Err = ParamsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "host" {
            return Ok(Self::Host);
        }
        match text.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok(Self::Set(key.into(), value.into())),
            _ => Err(ParamsError::EnvSyntax(text.to_string())),
        }
    }
}

/// The guest environment after applying the rules, which are upstream uhyve's: the guest starts
/// with no environment; `-e host` (anywhere in `options`) passes the host's whole environment;
/// each `-e KEY=VALUE` then adds or overrides one entry, in order (upstream discards them when
/// `-e host` is given; here they apply on top). Returns the list (at most [`MAX_ARGC_ENVC`]
/// entries) and the keys that were dropped because the list was full.
pub fn guest_environment(
    host: impl IntoIterator<Item = (OsString, OsString)>,
    options: &[EnvOption],
) -> (Vec<(OsString, OsString)>, Vec<OsString>) {
    let mut env: Vec<(OsString, OsString)> = if options.contains(&EnvOption::Host) {
        host.into_iter().collect()
    } else {
        Vec::new()
    };
    for option in options {
        if let EnvOption::Set(key, value) = option {
            match env.iter_mut().find(|(existing, _)| existing == key) {
                Some(entry) => entry.1 = value.clone(),
                None => env.push((key.clone(), value.clone())),
            }
        }
    }
    let dropped = if env.len() > MAX_ARGC_ENVC {
        env.split_off(MAX_ARGC_ENVC)
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    } else {
        Vec::new()
    };
    (env, dropped)
}

/// Parses a list of host CPU numbers such as `0-3,6` or `0 1 2` (ranges inclusive, items
/// separated by commas or spaces), keeping the order given.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, ParamsError> {
    let error = || ParamsError::CpuList(text.to_string());
    let mut cpus = Vec::new();
    for item in text.split([',', ' ']).filter(|item| !item.is_empty()) {
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => (first, last),
            None => (item, item),
        };
        let first: usize = first.trim().parse().map_err(|_| error())?;
        let last: usize = last.trim().parse().map_err(|_| error())?;
        if first > last || last - first >= 4096 {
            return Err(error());
        }
        cpus.extend(first..=last);
    }
    if cpus.is_empty() {
        return Err(error());
    }
    Ok(cpus)
}

/// A parsed `--affinity` list (see [`parse_cpu_list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl FromStr for CpuList {
    type Err = ParamsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_cpu_list(text).map(CpuList)
    }
}

/// How the files of a Hermit image archive reach the guest (`--hermit-image-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HermitImageMode {
    /// uhyve serves every file of the archive to the guest as a read-only file under `/`
    /// (upstream's default).
    #[default]
    External,
    /// uhyve places the decompressed archive into guest RAM and tells the kernel where
    /// (`linux,initrd-start`/`-end` in the device tree); the kernel reads it itself.
    Internal,
}

impl FromStr for HermitImageMode {
    type Err = ParamsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "external" => Ok(Self::External),
            "internal" => Ok(Self::Internal),
            _ => Err(ParamsError::ImageMode(text.to_string())),
        }
    }
}

impl fmt::Display for HermitImageMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::External => "external",
            Self::Internal => "internal",
        })
    }
}

/// How uhyve restricts its own access to the host file system (`--file-isolation`, upstream
/// uhyve's meanings); see `docs/security.md`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FileIsolation {
    /// No restriction beyond uhyve's own path checks.
    None,
    /// Landlock where the host kernel has it; without it uhyve says so once (info) and runs.
    #[default]
    Normal,
    /// Landlock or no start.
    Strict,
}

impl FromStr for FileIsolation {
    type Err = ParamsError;

    /// Case-insensitive, as upstream reads it.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "normal" => Ok(Self::Normal),
            "strict" => Ok(Self::Strict),
            _ => Err(ParamsError::FileIsolation(text.to_string())),
        }
    }
}

impl fmt::Display for FileIsolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Normal => "normal",
            Self::Strict => "strict",
        })
    }
}

/// Whether uhyve's threads run under a seccomp system-call allowlist once set-up is done
/// (`--seccomp`); see `docs/security.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    /// No filter (for debugging).
    None,
    /// The allowlist; a forbidden system call ends uhyve.
    Strict,
}

impl SeccompMode {
    /// The default where the user chose nothing: `strict` where uhyve has a filter (Linux),
    /// `none` elsewhere.
    pub const fn platform_default() -> Self {
        if cfg!(target_os = "linux") {
            Self::Strict
        } else {
            Self::None
        }
    }
}

impl FromStr for SeccompMode {
    type Err = ParamsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "none" => Ok(Self::None),
            "strict" => Ok(Self::Strict),
            _ => Err(ParamsError::SeccompMode(text.to_string())),
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Strict => "strict",
        })
    }
}

/// How uhyve confines its own process while the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confinement {
    /// Landlock (`--file-isolation`).
    pub file_isolation: FileIsolation,
    /// The seccomp allowlist (`--seccomp`).
    pub seccomp: SeccompMode,
}

impl Confinement {
    /// No confinement: for embedding uhyve in a process that must stay unrestricted (e.g. a
    /// test harness running VMs in-process).
    pub const NONE: Self = Self {
        file_isolation: FileIsolation::None,
        seccomp: SeccompMode::None,
    };
}

impl Default for Confinement {
    /// The command line's defaults: `--file-isolation normal`, seccomp where the platform has it.
    fn default() -> Self {
        Self {
            file_isolation: FileIsolation::Normal,
            seccomp: SeccompMode::platform_default(),
        }
    }
}

/// Extra flags uhyve adds to every host file the guest opens (`--io-mode`, upstream's option, for
/// benchmarking guest file I/O).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoMode {
    /// `O_DIRECT`: bypass the host page cache.
    pub direct: bool,
    /// `O_SYNC`: a write returns once the data is on the device.
    pub sync: bool,
}

impl FromStr for IoMode {
    type Err = ParamsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParamsError::IoMode(text.to_string());
        if text == "default" {
            return Ok(Self::default());
        }
        let flags = text.strip_prefix("host=").ok_or_else(error)?;
        let mut mode = Self::default();
        for flag in flags.split(',') {
            match flag {
                "direct" if !mode.direct => mode.direct = true,
                "sync" if !mode.sync => mode.sync = true,
                _ => return Err(error()),
            }
        }
        Ok(mode)
    }
}

impl fmt::Display for IoMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.direct, self.sync) {
            (false, false) => "default",
            (true, false) => "host=direct",
            (false, true) => "host=sync",
            (true, true) => "host=direct,sync",
        })
    }
}

/// Where the GDB server listens (`-s/--gdb-port`): a bare port means `127.0.0.1:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GdbAddress(pub std::net::SocketAddr);

impl GdbAddress {
    /// The port a bare `-s` means, as upstream.
    pub const DEFAULT_PORT: u16 = 6677;

    /// `127.0.0.1:port`.
    pub fn on_loopback(port: u16) -> Self {
        Self(std::net::SocketAddr::from((
            std::net::Ipv4Addr::LOCALHOST,
            port,
        )))
    }
}

impl FromStr for GdbAddress {
    type Err = ParamsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(port) = text.parse::<u16>() {
            return Ok(Self::on_loopback(port));
        }
        text.parse()
            .map(Self)
            .map_err(|_| ParamsError::GdbAddress(text.to_string()))
    }
}

impl fmt::Display for GdbAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How uhyve sets up the VM and its RAM beyond size and CPU count: upstream's `--no-aslr`,
/// `--thp`, `--ksm`, `--pit`, `--cpu-pm` and `--io-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmTuning {
    /// Place guest RAM, and with it a relocatable (PIE) kernel, at a random 2 MiB-aligned base
    /// (`--no-aslr` clears it; `crate::setup::aslr`); a kernel linked at a fixed address, or one
    /// before Hermit 0.10, stays at the lowest base.
    pub aslr: bool,
    /// `madvise(MADV_HUGEPAGE)` on guest RAM (`--thp`, Linux).
    pub transparent_huge_pages: bool,
    /// `madvise(MADV_MERGEABLE)` on guest RAM (`--ksm`, Linux).
    pub same_page_merging: bool,
    /// Create an in-kernel PIT (`--pit`, Linux x86_64).
    pub pit: bool,
    /// Let the guest's HLT/MWAIT/PAUSE run without exits (`--cpu-pm`, Linux x86_64).
    pub cpu_power_management: bool,
    /// Extra open flags for the guest's host files (`--io-mode`).
    pub io_mode: IoMode,
}

impl Default for VmTuning {
    /// Upstream's defaults: ASLR on, everything else off.
    fn default() -> Self {
        Self {
            aslr: true,
            transparent_huge_pages: false,
            same_page_merging: false,
            pit: false,
            cpu_power_management: false,
            io_mode: IoMode::default(),
        }
    }
}

/// Which settings the user gave explicitly (on the command line or through an environment
/// variable) rather than leaving them at their defaults: a Hermit image's `hermit.toml` only
/// fills gaps, so it may raise a default but not overrule the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExplicitSettings {
    /// `--memory-size` / `HERMIT_MEMORY_SIZE` was given.
    pub memory_size: bool,
    /// `--cpu-count` / `HERMIT_CPU_COUNT` was given.
    pub cpu_count: bool,
    /// The keys set with `-e KEY=VALUE`.
    pub env_keys: Vec<OsString>,
}

/// Everything needed to build and run one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The Hermit image.
    pub kernel: PathBuf,
    /// Arguments after the image path (argv[1..] of the guest).
    pub kernel_args: Vec<OsString>,
    /// Arguments for the Hermit kernel itself (kernels >= 0.10 read them from the start of
    /// `/chosen/bootargs`, e.g. `-freq 2000`); the command line sets none, a Hermit image's
    /// `kernel_args` go here.
    pub kernel_options: Vec<String>,
    /// The guest environment (already capped at 128 entries).
    pub env: Vec<(OsString, OsString)>,
    /// Guest RAM size.
    pub memory_size: MemorySize,
    /// Number of vCPUs.
    pub cpu_count: u32,
    /// Host CPU for each vCPU thread (`--affinity`), in vCPU order.
    pub affinity: Option<Vec<usize>>,
    /// Where serial output goes.
    pub output: OutputTarget,
    /// `HOST:GUEST` file mappings.
    pub file_mappings: Vec<String>,
    /// Directory for the private per-VM temporary directory (default: the system's).
    pub tempdir: Option<PathBuf>,
    /// Count exits and print them at the end.
    pub stats: bool,
    /// Execute instructions the hypervisor cannot emulate in user space.
    pub emulation_fallback: bool,
    /// How a Hermit image archive's files reach the guest.
    pub hermit_image_mode: HermitImageMode,
    /// Which of the settings above the user gave explicitly.
    pub explicit: ExplicitSettings,
    /// How uhyve confines its own process while the guest runs (applies to the whole calling
    /// process: [`Confinement::NONE`] when running VMs inside another program).
    pub confinement: Confinement,
    /// ASLR, RAM advice, PIT, CPU power management, I/O mode.
    pub tuning: VmTuning,
    /// Wait for GDB on this address before the first guest instruction (`-s/--gdb-port`).
    pub gdb: Option<GdbAddress>,
    /// The host side of the guest's network card (`-n/--net`), if it gets one.
    pub net: Option<NetBackend>,
}

/// The host side of the guest's network card (`-n/--net`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// A TAP interface (`tap:NAME`), attached to if it exists, created where permitted.
    Tap(String),
    /// Rootless networking through a `passt` process that uhyve starts (`user`), with the
    /// host ports it forwards to the guest.
    User(Vec<PortForward>),
    /// A `passt` that is already running, reached through its UNIX socket (`passt:SOCKET`).
    Passt(PathBuf),
}

/// The transport protocol of a [`PortForward`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardProtocol {
    /// TCP connections.
    Tcp,
    /// UDP datagrams.
    Udp,
}

/// One host port forwarded to the guest by `--net user` (`hostfwd=tcp:127.0.0.1:8080-:80`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    /// TCP or UDP.
    pub protocol: ForwardProtocol,
    /// The host address the port is bound to; every address when `None`.
    pub host_address: Option<std::net::IpAddr>,
    /// The port on the host.
    pub host_port: u16,
    /// The port in the guest.
    pub guest_port: u16,
}

impl FromStr for PortForward {
    type Err = ParamsError;

    /// Parses QEMU's form `PROTOCOL:[HOSTADDR]:HOSTPORT-[:]GUESTPORT`; an IPv6 host address
    /// goes in brackets.
    fn from_str(rule: &str) -> Result<Self, Self::Err> {
        let bad = || ParamsError::PortForwardSyntax(rule.to_string());
        let (protocol, rest) = rule.split_once(':').ok_or_else(bad)?;
        let protocol = match protocol {
            "tcp" => ForwardProtocol::Tcp,
            "udp" => ForwardProtocol::Udp,
            _ => return Err(bad()),
        };
        let (host, guest) = rest.split_once('-').ok_or_else(bad)?;
        let (host_address, host_port) = host.rsplit_once(':').ok_or_else(bad)?;
        let host_address = match host_address {
            "" => None,
            text => {
                let text = text
                    .strip_prefix('[')
                    .and_then(|t| t.strip_suffix(']'))
                    .unwrap_or(text);
                Some(text.parse().map_err(|_| bad())?)
            }
        };
        let guest_port = guest.strip_prefix(':').unwrap_or(guest);
        let port = |text: &str| text.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad);
        Ok(Self {
            protocol,
            host_address,
            host_port: port(host_port)?,
            guest_port: port(guest_port)?,
        })
    }
}

impl FromStr for NetBackend {
    type Err = ParamsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ParamsError::NetSyntax(text.to_string());
        if let Some(options) = text.strip_prefix("user") {
            if !options.is_empty() && !options.starts_with(',') {
                return Err(bad());
            }
            return options
                .split(',')
                .skip(1)
                .map(|option| match option.split_once('=') {
                    Some(("hostfwd", rule)) => rule.parse(),
                    _ => Err(bad()),
                })
                .collect::<Result<_, _>>()
                .map(Self::User);
        }
        match text.split_once(':') {
            Some(("tap", name))
                if !name.is_empty() && name.len() < 16 && !name.contains(['/', '\0']) =>
            {
                Ok(Self::Tap(name.to_string()))
            }
            Some(("passt", path)) if !path.is_empty() => Ok(Self::Passt(PathBuf::from(path))),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_backends_parse_upstreams_form() {
        assert_eq!("tap:tap0".parse(), Ok(NetBackend::Tap("tap0".into())));
        assert_eq!("user".parse(), Ok(NetBackend::User(Vec::new())));
        assert_eq!(
            "passt:/tmp/passt_1.socket".parse(),
            Ok(NetBackend::Passt("/tmp/passt_1.socket".into()))
        );
        for bad in [
            "tap:",
            "tap",
            "passt:",
            "users",
            "user,",
            "user,restrict=on",
            "tap:a/b",
            "tap:a-name-far-too-long",
            "vde:x",
        ] {
            assert_eq!(
                bad.parse::<NetBackend>(),
                Err(ParamsError::NetSyntax(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn user_networking_takes_qemus_hostfwd_rules() {
        let forward = |protocol, host_address: Option<&str>, host_port, guest_port| PortForward {
            protocol,
            host_address: host_address.map(|a| a.parse().unwrap()),
            host_port,
            guest_port,
        };
        assert_eq!(
            "user,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp::5353-53,hostfwd=tcp:[::1]:2222-:22"
                .parse(),
            Ok(NetBackend::User(vec![
                forward(ForwardProtocol::Tcp, Some("127.0.0.1"), 8080, 80),
                forward(ForwardProtocol::Udp, None, 5353, 53),
                forward(ForwardProtocol::Tcp, Some("::1"), 2222, 22),
            ]))
        );
        for bad in [
            "tcp:127.0.0.1:8080",
            "sctp::80-:80",
            "tcp::0-:80",
            "tcp::80-:0",
            "tcp::65536-:80",
            "tcp:localhost:80-:80",
            "tcp::80-10.0.2.15:80",
            "tcp:80-:80",
        ] {
            assert_eq!(
                format!("user,hostfwd={bad}").parse::<NetBackend>(),
                Err(ParamsError::PortForwardSyntax(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn memory_sizes_parse_with_units() {
        let mib = |n: u64| MemorySize(n << 20);
        assert_eq!("64M".parse(), Ok(mib(64)));
        assert_eq!("512MiB".parse(), Ok(mib(512)));
        assert_eq!("512MB".parse(), Ok(mib(512)));
        assert_eq!("1G".parse(), Ok(mib(1024)));
        assert_eq!("1GiB".parse(), Ok(mib(1024)));
        assert_eq!("2 gib".parse(), Ok(mib(2048)));
        assert_eq!("4096K".parse(), Ok(mib(4)));
        assert_eq!("16777216".parse(), Ok(mib(16)));
    }

    /// Where upstream's reading gives a size upstream accepts, it wins (decimal units and
    /// fractions); where upstream would refuse the size, units are binary.
    #[test]
    fn memory_sizes_follow_upstream_where_upstream_accepts_them() {
        let mib = |n: u64| MemorySize(n << 20);
        assert_eq!("1.5GiB".parse(), Ok(mib(1536)));
        assert_eq!("100MiB".parse(), Ok(mib(100)));
        assert_eq!("0.5 TiB".parse(), Ok(mib(512 << 10)));
        // 32768 MB = 15625 pages of 2 MiB: upstream takes it as decimal, so do we.
        assert_eq!("32768MB".parse(), Ok(MemorySize(32_768_000_000)));
        assert_eq!("32768m".parse(), Ok(MemorySize(32_768_000_000)));
        // Upstream refuses these (not a whole number of 2 MiB pages, or under 16 MiB).
        assert_eq!("1.5G".parse(), Ok(mib(1536)));
        assert_eq!("1000MB".parse(), Ok(mib(1000)));
        assert_eq!("8MiB".parse(), Ok(mib(8)));
        assert_eq!("2.5m".parse(), Ok(MemorySize(5 << 19)));
    }

    #[test]
    fn bad_memory_sizes_are_errors() {
        assert!(matches!(
            "".parse::<MemorySize>(),
            Err(ParamsError::MemorySizeSyntax(_))
        ));
        assert!(matches!(
            "M".parse::<MemorySize>(),
            Err(ParamsError::MemorySizeSyntax(_))
        ));
        assert!(matches!(
            "12Q".parse::<MemorySize>(),
            Err(ParamsError::MemorySizeSyntax(_))
        ));
        assert!(matches!(
            "-5M".parse::<MemorySize>(),
            Err(ParamsError::MemorySizeSyntax(_))
        ));
        for bad in ["1.2.3M", ".5G", "1e9", "0x100M", "64 M B", "64Mbit"] {
            assert!(
                matches!(
                    bad.parse::<MemorySize>(),
                    Err(ParamsError::MemorySizeSyntax(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            "99999999999999999999".parse::<MemorySize>(),
            Err(ParamsError::MemorySizeOverflow(_))
        ));
        assert!(matches!(
            "17179869184T".parse::<MemorySize>(),
            Err(ParamsError::MemorySizeOverflow(_))
        ));
    }

    #[test]
    fn memory_sizes_display_readably() {
        assert_eq!(MemorySize(64 << 20).to_string(), "64 MiB");
        assert_eq!(MemorySize(3 << 30).to_string(), "3 GiB");
        assert_eq!(MemorySize(1000).to_string(), "1000 bytes");
    }

    #[test]
    fn confinement_modes_parse_and_display() {
        for mode in [
            FileIsolation::None,
            FileIsolation::Normal,
            FileIsolation::Strict,
        ] {
            assert_eq!(mode.to_string().parse(), Ok(mode));
        }
        for mode in [SeccompMode::None, SeccompMode::Strict] {
            assert_eq!(mode.to_string().parse(), Ok(mode));
        }
        assert_eq!(FileIsolation::default(), FileIsolation::Normal);
        assert_eq!(Confinement::default().file_isolation, FileIsolation::Normal);
        #[cfg(target_os = "linux")]
        assert_eq!(Confinement::default().seccomp, SeccompMode::Strict);
    }

    #[test]
    fn unknown_confinement_modes_are_errors() {
        assert!(matches!(
            "loose".parse::<FileIsolation>(),
            Err(ParamsError::FileIsolation(_))
        ));
        // Case does not matter, as in upstream.
        assert_eq!("Strict".parse(), Ok(FileIsolation::Strict));
        assert!(matches!(
            "strictest".parse::<FileIsolation>(),
            Err(ParamsError::FileIsolation(_))
        ));
        assert!(matches!(
            "normal".parse::<SeccompMode>(),
            Err(ParamsError::SeccompMode(_))
        ));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6"), Ok(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpu_list("1 0"), Ok(vec![1, 0]));
        assert_eq!(parse_cpu_list("5"), Ok(vec![5]));
        for bad in ["", "a", "3-1", "1-", "-1", "0-99999", ",", "1.5"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn environment_options() {
        assert_eq!("host".parse(), Ok(EnvOption::Host));
        assert_eq!(
            "A=b=c".parse(),
            Ok(EnvOption::Set("A".into(), "b=c".into()))
        );
        assert_eq!("A=".parse(), Ok(EnvOption::Set("A".into(), "".into())));
        assert!("=x".parse::<EnvOption>().is_err());
        assert!("novalue".parse::<EnvOption>().is_err());
    }

    #[test]
    fn environment_is_empty_unless_the_host_one_is_asked_for() {
        let host = || vec![("HOME".into(), "/h".into()), ("A".into(), "1".into())];
        let set = |k: &str, v: &str| EnvOption::Set(k.into(), v.into());
        let (env, dropped) = guest_environment(host(), &[]);
        assert!(env.is_empty() && dropped.is_empty());
        let (env, _) = guest_environment(host(), &[set("B", "3"), set("B", "4")]);
        assert_eq!(env, vec![("B".into(), "4".into())]);
        let (env, _) = guest_environment(host(), &[EnvOption::Host]);
        assert_eq!(env, host());
        // `-e host` anywhere passes the host's; KEY=VALUE entries apply on top, in order.
        let (env, dropped) =
            guest_environment(host(), &[set("A", "2"), EnvOption::Host, set("B", "3")]);
        assert!(dropped.is_empty());
        assert_eq!(
            env,
            vec![
                ("HOME".into(), "/h".into()),
                ("A".into(), "2".into()),
                ("B".into(), "3".into())
            ]
        );
    }

    #[test]
    fn environment_is_capped_at_128_entries() {
        let host: Vec<(OsString, OsString)> = (0..140)
            .map(|i| (format!("K{i}").into(), "v".into()))
            .collect();
        let (env, dropped) = guest_environment(host, &[EnvOption::Host]);
        assert_eq!(env.len(), 128);
        assert_eq!(dropped.len(), 12);
        assert_eq!(dropped[0], OsString::from("K128"));
    }
}
