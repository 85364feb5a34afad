//! `hermit.toml`, the configuration at the root of a Hermit image archive, and how it combines
//! with the user's own settings.
//!
//! The schema is hermit-entry's [`hermit_entry::config::Config`] (the crate Hermit's tools and
//! upstream uhyve share), so an archive uhyve accepts is one they accept:
//!
//! ```toml
//! version = "1"
//! kernel = "hermit-app"            # path of the kernel ELF inside the archive
//!
//! [input]
//! kernel_args = []                 # arguments for the Hermit kernel (before `--`)
//! app_args = ["--port", "8080"]    # the application's argv[1..]
//! env_vars = ["RUST_LOG=info"]     # KEY=VALUE entries
//!
//! [requirements]                   # optional
//! memory = "256MiB"                # least guest RAM the application needs
//! cpus = 2                         # least number of vCPUs
//! ```
//!
//! Before the schema is applied the text is checked for valid TOML and a supported `version`, so
//! that the user gets a precise message ("unsupported version "2"") rather than a generic one;
//! keys the schema does not know are reported with a warning (they are most likely typos).
//!
//! **Merging** ([`ImageConfig::apply`]) follows upstream uhyve: what the user gives explicitly
//! wins, the archive fills the gaps. Arguments after the image path on the command line replace
//! `app_args` (given any, none of the archive's are used); `env_vars` are added to the guest
//! environment, overriding inherited host variables but never a `-e KEY=…` of the user; entries
//! without `=` (such as `host`) are ignored with a warning, so an archive cannot pull in the
//! host's environment. `[requirements]` are minimums: a memory size or CPU count the user gave
//! below them is an error; where the user gave none, the default is raised to the requirement.

use std::ffi::OsString;

use hermit_entry::config::Config;
use thiserror::Error;
use toml::Table;
use uhyve_interface::MAX_ARGC_ENVC;

use super::one_line;
use crate::params::{MemorySize, VmConfig};

/// The `version` values uhyve understands.
pub const SUPPORTED_VERSIONS: [&str; 1] = ["1"];

/// Guest RAM sizes are multiples of this (the layout's granule); a memory requirement is rounded
/// up to it when it raises the default.
const MEMORY_GRANULE: u64 = 2 << 20;

/// The keys `hermit.toml` may have, per table (`""` is the top level).
const KNOWN_KEYS: [(&str, &[&str]); 3] = [
    ("", &["version", "kernel", "input", "requirements"]),
    ("input", &["kernel_args", "app_args", "env_vars"]),
    ("requirements", &["memory", "cpus"]),
];

/// Everything that can be wrong with `hermit.toml` or with combining it with the user's
/// settings. Each message is one line.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Not UTF-8.
    #[error("hermit.toml is not valid UTF-8 text")]
    NotUtf8,
    /// Not TOML, or not the schema.
    #[error("hermit.toml{location}: {message}")]
    Invalid {
        /// ` line L, column C`, or empty when unknown.
        location: String,
        /// What is wrong, on one line.
        message: String,
    },
    /// No `version` key.
    #[error("hermit.toml has no `version`; this uhyve reads version \"1\"")]
    MissingVersion,
    /// A `version` this uhyve does not know.
    #[error("hermit.toml has the unsupported version {0}; this uhyve reads version \"1\"")]
    UnsupportedVersion(String),
    /// The kernel path is empty or leaves the archive.
    #[error("hermit.toml: the kernel path {0:?} does not name a file inside the archive")]
    InvalidKernelPath(String),
    /// A memory requirement that does not fit 64 bits.
    #[error("hermit.toml: the memory requirement is too large")]
    MemoryRequirementTooLarge,
    /// The user's memory size is below the image's requirement.
    #[error(
        "the image requires at least {required} of guest memory ([requirements] memory in \
         hermit.toml), but only {given} was given; raise --memory-size"
    )]
    NotEnoughMemory {
        /// What the image needs.
        required: MemorySize,
        /// What the user gave.
        given: MemorySize,
    },
    /// The user's CPU count is below the image's requirement.
    #[error(
        "the image requires at least {required} vCPUs ([requirements] cpus in hermit.toml), but \
         only {given} were given; raise --cpu-count"
    )]
    NotEnoughCpus {
        /// What the image needs.
        required: u32,
        /// What the user gave.
        given: u32,
    },
}

/// A validated `hermit.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    /// The kernel's cleaned path inside the archive (relative, `/`-separated).
    pub kernel: String,
    /// Arguments for the Hermit kernel (bootargs before the environment).
    pub kernel_args: Vec<String>,
    /// The application's arguments (argv\[1..\]).
    pub app_args: Vec<String>,
    /// Environment entries, in order.
    pub env_vars: Vec<(String, String)>,
    /// The least guest RAM, in bytes.
    pub min_memory: Option<u64>,
    /// The least number of vCPUs (0: no requirement).
    pub min_cpus: u32,
}

/// Where in `text` the byte `offset` lies, as ` line L, column C` (1-based).
fn location_of(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(" line {line}, column {column}")
}

/// A TOML error of `text` as a [`ConfigError::Invalid`].
fn invalid(text: &str, error: &toml::de::Error) -> ConfigError {
    ConfigError::Invalid {
        location: error
            .span()
            .map(|span| location_of(text, span.start))
            .unwrap_or_default(),
        message: one_line(error.message()),
    }
}

/// Cleans the kernel path of `hermit.toml` (relative to the archive root; a leading `/` is
/// allowed, `.` and empty components are dropped); `None` if it is empty or has `..`.
fn clean_kernel_path(path: &str) -> Option<String> {
    let mut components = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => return None,
            name => components.push(name),
        }
    }
    (!components.is_empty()).then(|| components.join("/"))
}

/// A short rendering of a TOML value for messages: strings quoted, numbers and booleans as
/// written, anything else by its type.
fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => format!("{text:?}"),
        toml::Value::Integer(number) => number.to_string(),
        toml::Value::Float(number) => number.to_string(),
        toml::Value::Boolean(flag) => flag.to_string(),
        other => format!("of type {}", other.type_str()),
    }
}

/// Warns about keys of `table` the schema does not know.
fn warn_unknown_keys(table: &Table) {
    for (section, known) in KNOWN_KEYS {
        let keys = if section.is_empty() {
            Some(table)
        } else {
            table.get(section).and_then(toml::Value::as_table)
        };
        for key in keys.into_iter().flat_map(Table::keys) {
            if !known.contains(&key.as_str()) {
                let name = if section.is_empty() {
                    key.clone()
                } else {
                    format!("{section}.{key}")
                };
                log::warn!("hermit.toml: ignoring unknown key `{name}`");
            }
        }
    }
}

impl ImageConfig {
    /// Parses and validates the bytes of `hermit.toml`.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ConfigError::NotUtf8)?;
        let table: Table = text.parse().map_err(|error| invalid(text, &error))?;
        match table.get("version") {
            None => return Err(ConfigError::MissingVersion),
            Some(toml::Value::String(version))
                if SUPPORTED_VERSIONS.contains(&version.as_str()) => {}
            Some(other) => return Err(ConfigError::UnsupportedVersion(describe(other))),
        }
        warn_unknown_keys(&table);
        let config: Config<'_> = toml::from_str(text).map_err(|error| invalid(text, &error))?;
        let Config::V1 {
            input,
            requirements,
            kernel,
        } = config;
        let cleaned = clean_kernel_path(&kernel)
            .ok_or_else(|| ConfigError::InvalidKernelPath(kernel.to_string()))?;
        let mut env_vars = Vec::new();
        for entry in &input.env_vars {
            match entry.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    env_vars.push((key.to_owned(), value.to_owned()));
                }
                _ => log::warn!(
                    "hermit.toml: ignoring env_vars entry {entry:?} (expected KEY=VALUE)"
                ),
            }
        }
        let min_memory = match requirements.memory {
            Some(bytes) => Some(
                bytes
                    .as_u64_checked()
                    .ok_or(ConfigError::MemoryRequirementTooLarge)?,
            ),
            None => None,
        };
        Ok(Self {
            kernel: cleaned,
            kernel_args: input.kernel_args.iter().map(|a| a.to_string()).collect(),
            app_args: input.app_args.iter().map(|a| a.to_string()).collect(),
            env_vars,
            min_memory: min_memory.filter(|&bytes| bytes > 0),
            min_cpus: requirements.cpus,
        })
    }

    /// The VM configuration `base` (the user's) with this image's settings merged in (see the
    /// module documentation for the rules).
    pub fn apply(&self, base: &VmConfig) -> Result<VmConfig, ConfigError> {
        let mut merged = base.clone();

        if base.kernel_args.is_empty() {
            merged.kernel_args = self.app_args.iter().map(OsString::from).collect();
        } else if !self.app_args.is_empty() {
            log::info!(
                "the arguments after the image replace the {} app_args of hermit.toml",
                self.app_args.len()
            );
        }
        if base.kernel_options.is_empty() {
            merged.kernel_options = self.kernel_args.clone();
        }

        for (key, value) in &self.env_vars {
            let key = OsString::from(key);
            if base.explicit.env_keys.contains(&key) {
                continue;
            }
            match merged.env.iter_mut().find(|(existing, _)| *existing == key) {
                Some(entry) => entry.1 = value.into(),
                None => merged.env.push((key, value.into())),
            }
        }
        if merged.env.len() > MAX_ARGC_ENVC {
            let dropped: Vec<String> = merged
                .env
                .split_off(MAX_ARGC_ENVC)
                .into_iter()
                .map(|(key, _)| key.to_string_lossy().into_owned())
                .collect();
            log::warn!(
                "the guest environment holds at most {MAX_ARGC_ENVC} entries; not passed: {}",
                dropped.join(", ")
            );
        }

        if let Some(required) = self.min_memory
            && base.memory_size.0 < required
        {
            if base.explicit.memory_size {
                return Err(ConfigError::NotEnoughMemory {
                    required: MemorySize(required),
                    given: base.memory_size,
                });
            }
            let raised = required
                .checked_next_multiple_of(MEMORY_GRANULE)
                .ok_or(ConfigError::MemoryRequirementTooLarge)?;
            log::info!(
                "guest memory raised to {} as hermit.toml requires",
                MemorySize(raised)
            );
            merged.memory_size = MemorySize(raised);
        }
        if base.cpu_count < self.min_cpus {
            if base.explicit.cpu_count {
                return Err(ConfigError::NotEnoughCpus {
                    required: self.min_cpus,
                    given: base.cpu_count,
                });
            }
            log::info!("{} vCPUs as hermit.toml requires", self.min_cpus);
            merged.cpu_count = self.min_cpus;
        }
        Ok(merged)
    }
}
