//! uhyve's configuration file: upstream uhyve's TOML schema (`[uhyve]`, `[memory]`, `[cpu]`,
//! `[guest]`), where the file is looked for, and how a bad one is reported.
//!
//! ```toml
//! [uhyve]
//! output = "guest.log"        # -o; "none" discards the console
//! stats = true                # --stats
//! tempdir = "/var/tmp"        # --tempdir
//! hermit_image_mode = "external"
//! file_isolation = "strict"   # --file-isolation
//! io_mode = "host=sync"       # --io-mode
//! gdb_port = 6677             # -s/--gdb-port
//! seccomp = "strict"          # --seccomp (this uhyve's own key)
//! net = "user,hostfwd=tcp:127.0.0.1:8080-:80"  # -n/--net (this uhyve's own key)
//!
//! [memory]
//! memory_size = "100MiB"      # -m (a string in the -m syntax, or a number of bytes)
//! no_aslr = true              # --no-aslr
//! thp = true                  # --thp
//! ksm = true                  # --ksm
//!
//! [cpu]
//! cpu_count = 4               # -c
//! cpu_pm = true               # --cpu-pm
//! pit = true                  # --pit
//! affinity = [0, 1, 2, 3]     # -a (or a string: "0-3")
//!
//! [guest]
//! env_vars = ["RUST_LOG=info"]  # -e (before the command line's, which win); "host" allowed
//! ```
//!
//! Where it comes from ([`locate`]), first match wins: `--config FILE` or `HERMIT_CONFIG`,
//! `./uhyve.toml`, `$XDG_CONFIG_HOME/uhyve/uhyve.toml`. Every key is optional. A value in the
//! file only fills what the command line and the environment left unset (the merge is
//! [`crate::cli`]'s). Unknown sections and keys, wrong types and values that do not parse are
//! errors of one line naming the file, the line and the key ([`ConfigFileError`]).

use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use thiserror::Error;

use crate::params::{
    CpuList, EnvOption, FileIsolation, HermitImageMode, IoMode, MemorySize, NetBackend, SeccompMode,
};

/// The file name looked for in the working directory and under `$XDG_CONFIG_HOME/uhyve/`.
pub const FILE_NAME: &str = "uhyve.toml";

/// What can be wrong with a configuration file; each message is one line.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    /// The file could not be read (for a default location: it exists but cannot be read).
    #[error("config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("config file {}, line {line}{}: {message}", path.display(), key_part(key))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// The `section.key` on that line, if there is one.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
}

fn key_part(key: &Option<String>) -> String {
    key.as_ref()
        .map(|key| format!(", {key}"))
        .unwrap_or_default()
}

/// The whole file: four optional sections.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// `[uhyve]`: uhyve's own behaviour.
    pub uhyve: UhyveSection,
    /// `[memory]`: guest RAM.
    pub memory: MemorySection,
    /// `[cpu]`: vCPUs.
    pub cpu: CpuSection,
    /// `[guest]`: what the guest sees.
    pub guest: GuestSection,
}

/// `[uhyve]`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UhyveSection {
    /// `-o/--output`: a file, or `none`.
    pub output: Option<String>,
    /// `--stats`.
    pub stats: Option<bool>,
    /// `--tempdir`.
    pub tempdir: Option<PathBuf>,
    /// `--hermit-image-mode`.
    #[serde(deserialize_with = "parsed")]
    pub hermit_image_mode: Option<HermitImageMode>,
    /// `--file-isolation`.
    #[serde(deserialize_with = "parsed")]
    pub file_isolation: Option<FileIsolation>,
    /// `--io-mode`.
    #[serde(deserialize_with = "parsed")]
    pub io_mode: Option<IoMode>,
    /// `-s/--gdb-port`.
    pub gdb_port: Option<u16>,
    /// `--seccomp` (not in upstream's schema).
    #[serde(deserialize_with = "parsed")]
    pub seccomp: Option<SeccompMode>,
    /// `-n/--net` (not in upstream's schema, where it is command line only).
    #[serde(deserialize_with = "parsed")]
    pub net: Option<NetBackend>,
}

/// `[memory]`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MemorySection {
    /// `-m/--memory-size`: a size string or a number of bytes.
    #[serde(deserialize_with = "memory_size")]
    pub memory_size: Option<MemorySize>,
    /// `--no-aslr`.
    pub no_aslr: Option<bool>,
    /// `--thp`.
    pub thp: Option<bool>,
    /// `--ksm`.
    pub ksm: Option<bool>,
}

/// `[cpu]`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CpuSection {
    /// `-c/--cpu-count`.
    pub cpu_count: Option<NonZeroU32>,
    /// `--cpu-pm`.
    pub cpu_pm: Option<bool>,
    /// `--pit`.
    pub pit: Option<bool>,
    /// `-a/--affinity`: a list string or an array of host CPU numbers.
    #[serde(deserialize_with = "affinity")]
    pub affinity: Option<CpuList>,
}

/// `[guest]`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GuestSection {
    /// `-e/--env-vars`: `KEY=VALUE` entries or `host`.
    #[serde(deserialize_with = "env_vars")]
    pub env_vars: Vec<EnvOption>,
}

/// A string value read with the type's `FromStr` (its error message becomes the file's).
fn parsed<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map(Some).map_err(de::Error::custom)
}

fn env_vars<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<EnvOption>, D::Error> {
    let entries = Vec::<String>::deserialize(deserializer)?;
    entries
        .iter()
        .map(|entry| entry.parse().map_err(de::Error::custom))
        .collect()
}

/// `memory_size`: `"100MiB"` or `104857600`.
fn memory_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<MemorySize>, D::Error> {
    struct SizeVisitor;
    impl Visitor<'_> for SizeVisitor {
        type Value = MemorySize;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size such as \"100MiB\" or a number of bytes")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<MemorySize, E> {
            text.parse().map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<MemorySize, E> {
            u64::try_from(bytes)
                .map(MemorySize)
                .map_err(|_| E::custom("a memory size cannot be negative"))
        }
    }
    deserializer.deserialize_any(SizeVisitor).map(Some)
}

/// `affinity`: `"0-3,6"` or `[0, 1, 2, 3, 6]`.
fn affinity<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<CpuList>, D::Error> {
    struct ListVisitor(PhantomData<CpuList>);
    impl<'de> Visitor<'de> for ListVisitor {
        type Value = CpuList;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("host CPUs as a string such as \"0-3,6\" or an array such as [0, 1, 2]")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<CpuList, E> {
            text.parse().map_err(E::custom)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CpuList, A::Error> {
            let mut cpus = Vec::new();
            while let Some(cpu) = seq.next_element::<usize>()? {
                cpus.push(cpu);
            }
            if cpus.is_empty() {
                return Err(de::Error::custom("the list of host CPUs is empty"));
            }
            Ok(CpuList(cpus))
        }
    }
    deserializer
        .deserialize_any(ListVisitor(PhantomData))
        .map(Some)
}

/// Where the file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config FILE` or `HERMIT_CONFIG`: it must exist.
    Given(PathBuf),
    /// `./uhyve.toml` or `$XDG_CONFIG_HOME/uhyve/uhyve.toml`, found to exist.
    Default(PathBuf),
}

impl ConfigSource {
    /// The file's path.
    pub fn path(&self) -> &Path {
        match self {
            Self::Given(path) | Self::Default(path) => path,
        }
    }
}

/// Finds the configuration file: `given` (from `--config`/`HERMIT_CONFIG`) if set, else
/// `uhyve.toml` in `working_dir`, else `uhyve/uhyve.toml` under `config_home`
/// (`$XDG_CONFIG_HOME`, ignored when empty). `None` when there is none.
pub fn locate(
    given: Option<&Path>,
    working_dir: Option<&Path>,
    config_home: Option<&Path>,
) -> Option<ConfigSource> {
    if let Some(path) = given {
        return Some(ConfigSource::Given(path.to_path_buf()));
    }
    let local = working_dir.map(|dir| dir.join(FILE_NAME));
    let user = config_home
        .filter(|home| !home.as_os_str().is_empty())
        .map(|home| home.join("uhyve").join(FILE_NAME));
    [local, user]
        .into_iter()
        .flatten()
        .find(|path| path.exists())
        .map(ConfigSource::Default)
}

/// Reads and checks the file at `path`.
pub fn load(path: &Path) -> Result<ConfigFile, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|problem| ConfigFileError::Invalid {
        path: path.to_path_buf(),
        line: problem.line,
        key: problem.key,
        message: problem.message,
    })
}

/// A problem in a file's text: where and what.
#[derive(Debug, PartialEq, Eq)]
pub struct TextProblem {
    /// 1-based line.
    pub line: usize,
    /// The `section.key` (or `[section]`) on that line.
    pub key: Option<String>,
    /// What is wrong, in one line.
    pub message: String,
}

/// Parses a file's text.
pub fn parse(text: &str) -> Result<ConfigFile, TextProblem> {
    toml::from_str(text).map_err(|error| {
        let offset = error.span().map_or(0, |span| span.start);
        let (line, key) = key_at(text, offset);
        TextProblem {
            line,
            key,
            message: crate::archive::one_line(error.message()),
        }
    })
}

/// The 1-based line holding byte `offset` of `text`, and the key written on it, qualified by
/// the section it is in (`memory.thp`), or the section header on it (`[bogus]`).
fn key_at(text: &str, offset: usize) -> (usize, Option<String>) {
    let before = text.get(..offset).unwrap_or(text);
    let line_index = before.matches('\n').count();
    let mut section = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        let header = line
            .strip_prefix('[')
            .and_then(|rest| rest.split(']').next())
            .map(str::trim);
        if index == line_index {
            if let Some(header) = header {
                return (index + 1, Some(format!("[{header}]")));
            }
            let key = line
                .split_once('=')
                .map(|(key, _)| key.trim().trim_matches(['"', '\'']))
                .filter(|key| !key.is_empty())
                .map(|key| match &section {
                    Some(section) => format!("{section}.{key}"),
                    None => key.to_owned(),
                });
            return (index + 1, key);
        }
        if let Some(header) = header {
            section = Some(header.to_owned());
        }
    }
    (line_index + 1, None)
}

#[cfg(test)]
mod tests;
