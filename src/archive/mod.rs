//! Hermit image archives: a gzip-compressed tar holding `hermit.toml` (the image's configuration,
//! see [`config`]), the kernel ELF it names and any data files the application needs. uhyve
//! recognises one by its gzip magic (`1F 8B 08`), never by its file name, and unpacks it entirely
//! in memory: nothing in it is ever written to the host's file system.
//!
//! The archive is hostile input. [`HermitArchive::unpack`] stops at the first problem with one
//! [`ArchiveError`] naming it, and enforces hard [`ArchiveLimits`]: the unpacked (decompressed)
//! size, the number of entries and the length of each path, so that a gzip bomb, a tar with
//! millions of entries or gigantic names cannot exhaust the host. Only regular files and
//! directories may appear (plus PAX global headers, which carry no data): symbolic and hard links,
//! devices, FIFOs and sparse files are rejected, and so are absolute paths, paths with a `..`
//! component, paths that are not UTF-8, two entries for the same path and a file that another
//! entry treats as a directory. Paths are cleaned (`./a//b` is `a/b`), so every file has exactly
//! one name, relative to the archive's root.
//!
//! The result keeps the decompressed tar (the "internal" mode hands it to the kernel as its
//! initial RAM disk) and the position of each file in it; [`HermitArchive::files`] returns the
//! files for the "external" mode, in which uhyve serves them to the guest itself.

pub mod config;

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::Arc;

use flate2::read::MultiGzDecoder;
use tar::EntryType;
use thiserror::Error;

pub use config::{ConfigError, ImageConfig};

/// The first bytes of every gzip stream (RFC 1952: ID1, ID2 and the only defined compression
/// method, deflate). Hermit image archives are detected by them.
pub const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];

/// The name of the configuration file at the archive's root.
pub const CONFIG_FILE: &str = "hermit.toml";

/// Whether `bytes` start like a gzip stream, i.e. may be a Hermit image archive.
pub fn is_archive(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

/// Hard limits for unpacking one archive; exceeding any is an [`ArchiveError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Largest decompressed tar, in bytes (headers and padding included).
    pub max_unpacked_bytes: u64,
    /// Most tar entries (files, directories and extension headers the tar reader reports).
    pub max_entries: usize,
    /// Longest path of an entry, in bytes, as stored in the archive.
    pub max_path_bytes: usize,
    /// Longest single path component, in bytes.
    pub max_name_bytes: usize,
    /// Largest `hermit.toml`, in bytes.
    pub max_config_bytes: usize,
}

impl ArchiveLimits {
    /// The limits uhyve applies: 1 GiB unpacked, 16384 entries, paths of 1024 bytes with
    /// components of 255 bytes (Linux's `PATH_MAX`/`NAME_MAX` order of magnitude) and a
    /// `hermit.toml` of 64 KiB.
    pub const DEFAULT: ArchiveLimits = ArchiveLimits {
        max_unpacked_bytes: 1 << 30,
        max_entries: 16 * 1024,
        max_path_bytes: 1024,
        max_name_bytes: 255,
        max_config_bytes: 64 * 1024,
    };
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Everything that can be wrong with a Hermit image archive. Each message is one line; the
/// caller prefixes the archive's file name.
#[derive(Debug, Error)]
pub enum ArchiveError {
    /// The gzip stream is corrupt or truncated.
    #[error("Hermit image archive: the gzip stream is corrupt or truncated ({0})")]
    Gzip(String),
    /// The decompressed archive exceeds [`ArchiveLimits::max_unpacked_bytes`].
    #[error("Hermit image archive: unpacks to more than {limit} bytes, the most uhyve accepts")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The decompressed data is not a well-formed tar archive.
    #[error("Hermit image archive: the tar inside the gzip stream is malformed ({0})")]
    Tar(String),
    /// More entries than [`ArchiveLimits::max_entries`].
    #[error("Hermit image archive: more than {limit} entries, the most uhyve accepts")]
    TooManyEntries {
        /// The limit.
        limit: usize,
    },
    /// A path longer than [`ArchiveLimits::max_path_bytes`].
    #[error(
        "Hermit image archive: entry {path:?} has a path of {len} bytes; uhyve accepts at most \
         {max} bytes"
    )]
    PathTooLong {
        /// The path (lossy, cut at the limit).
        path: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A path component longer than [`ArchiveLimits::max_name_bytes`].
    #[error(
        "Hermit image archive: entry {path:?} has a name of {len} bytes; uhyve accepts names of \
         at most {max} bytes"
    )]
    NameTooLong {
        /// The path.
        path: String,
        /// Length of the long component in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A path that is not valid UTF-8.
    #[error("Hermit image archive: entry {0:?} has a path that is not valid UTF-8")]
    PathNotUtf8(String),
    /// An absolute path.
    #[error(
        "Hermit image archive: entry {0:?} has an absolute path; archive paths must be relative"
    )]
    AbsolutePath(String),
    /// A path with a `..` component.
    #[error(
        "Hermit image archive: entry {0:?} contains `..`; archive paths must stay inside the archive"
    )]
    ParentComponent(String),
    /// A file whose path is empty after cleaning (e.g. `./`).
    #[error("Hermit image archive: a file entry has the empty path {0:?}")]
    EmptyPath(String),
    /// An entry that is neither a regular file nor a directory.
    #[error(
        "Hermit image archive: entry {path:?} is a {kind}; only regular files and directories \
         are allowed"
    )]
    UnsupportedEntry {
        /// The entry's path.
        path: String,
        /// What it is (e.g. "symbolic link").
        kind: &'static str,
    },
    /// Two entries for one path.
    #[error("Hermit image archive: {0:?} appears more than once")]
    Duplicate(String),
    /// A path below a regular file (`a` is a file and `a/b` exists).
    #[error("Hermit image archive: entry {path:?} lies below {file:?}, which is a file")]
    BelowFile {
        /// The deeper entry.
        path: String,
        /// The file on its way.
        file: String,
    },
    /// An entry whose data runs past the end of the archive.
    #[error("Hermit image archive: entry {0:?} is truncated")]
    TruncatedEntry(String),
    /// No `hermit.toml` at the root.
    #[error("Hermit image archive: no hermit.toml at the archive's root")]
    MissingConfig,
    /// `hermit.toml` is a directory.
    #[error("Hermit image archive: hermit.toml is a directory, not a file")]
    ConfigIsDirectory,
    /// `hermit.toml` is larger than [`ArchiveLimits::max_config_bytes`].
    #[error("Hermit image archive: hermit.toml is {size} bytes, more than the {limit} uhyve reads")]
    ConfigTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// `hermit.toml` is unusable.
    #[error("Hermit image archive: {0}")]
    Config(#[from] ConfigError),
    /// The kernel named by `hermit.toml` is not a file in the archive.
    #[error("Hermit image archive: the kernel {0:?} named in hermit.toml is not in the archive")]
    KernelMissing(String),
    /// The kernel named by `hermit.toml` is a directory.
    #[error("Hermit image archive: the kernel {0:?} named in hermit.toml is a directory")]
    KernelIsDirectory(String),
}

/// One regular file of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileEntry {
    /// Where its data lies in the decompressed tar.
    data: Range<usize>,
}

/// What a cleaned path is in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File(FileEntry),
    Directory,
}

/// A checked, unpacked Hermit image archive.
pub struct HermitArchive {
    /// The decompressed tar.
    tar: Arc<[u8]>,
    /// Cleaned path (relative, `/`-separated) → file or directory, sorted by path.
    nodes: BTreeMap<String, Node>,
    /// The validated `hermit.toml`.
    config: ImageConfig,
}

impl std::fmt::Debug for HermitArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HermitArchive")
            .field("tar_bytes", &self.tar.len())
            .field("entries", &self.nodes.len())
            .field("config", &self.config)
            .finish()
    }
}

/// The archive's path with `.` and empty components dropped, checked against `limits`; an error
/// for absolute paths, `..`, non-UTF-8 and over-long names. The empty string is the root.
fn clean_entry_path(raw: &[u8], limits: &ArchiveLimits) -> Result<String, ArchiveError> {
    let lossy = || {
        let mut text =
            String::from_utf8_lossy(&raw[..raw.len().min(limits.max_path_bytes)]).into_owned();
        if raw.len() > limits.max_path_bytes {
            text.push('…');
        }
        text
    };
    if raw.len() > limits.max_path_bytes {
        return Err(ArchiveError::PathTooLong {
            path: lossy(),
            len: raw.len(),
            max: limits.max_path_bytes,
        });
    }
    let text = std::str::from_utf8(raw).map_err(|_| ArchiveError::PathNotUtf8(lossy()))?;
    if text.starts_with('/') {
        return Err(ArchiveError::AbsolutePath(text.to_owned()));
    }
    let mut components = Vec::new();
    for component in text.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(ArchiveError::ParentComponent(text.to_owned())),
            name if name.len() > limits.max_name_bytes => {
                return Err(ArchiveError::NameTooLong {
                    path: text.to_owned(),
                    len: name.len(),
                    max: limits.max_name_bytes,
                });
            }
            name => components.push(name),
        }
    }
    Ok(components.join("/"))
}

/// What an unsupported tar entry type is, for the error message.
fn entry_kind_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Symlink => "symbolic link",
        EntryType::Link => "hard link",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "FIFO",
        EntryType::GNUSparse => "sparse file",
        _ => "special entry",
    }
}

/// Decompresses the gzip stream `compressed` (all members) into memory, failing as soon as it
/// unpacks to more than `limit` bytes.
fn gunzip(compressed: &[u8], limit: u64) -> Result<Vec<u8>, ArchiveError> {
    let mut decoder = MultiGzDecoder::new(compressed).take(limit.saturating_add(1));
    let mut tar = Vec::new();
    decoder
        .read_to_end(&mut tar)
        .map_err(|error| ArchiveError::Gzip(one_line(&error.to_string())))?;
    if tar.len() as u64 > limit {
        return Err(ArchiveError::TooLarge { limit });
    }
    Ok(tar)
}

/// `text` on one line (line breaks become spaces).
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl HermitArchive {
    /// Decompresses and checks the archive `compressed` (the whole file, starting with
    /// [`GZIP_MAGIC`]) under `limits`, reads and validates its `hermit.toml` and finds the kernel.
    pub fn unpack(compressed: &[u8], limits: &ArchiveLimits) -> Result<Self, ArchiveError> {
        let tar = gunzip(compressed, limits.max_unpacked_bytes)?;
        let nodes = Self::index(&tar, limits)?;

        let config_bytes = match nodes.get(CONFIG_FILE) {
            None => return Err(ArchiveError::MissingConfig),
            Some(Node::Directory) => return Err(ArchiveError::ConfigIsDirectory),
            Some(Node::File(file)) => &tar[file.data.clone()],
        };
        if config_bytes.len() > limits.max_config_bytes {
            return Err(ArchiveError::ConfigTooLarge {
                size: config_bytes.len() as u64,
                limit: limits.max_config_bytes,
            });
        }
        let config = ImageConfig::parse(config_bytes)?;
        match nodes.get(&config.kernel) {
            Some(Node::File(_)) => {}
            Some(Node::Directory) => {
                return Err(ArchiveError::KernelIsDirectory(config.kernel.clone()));
            }
            None => return Err(ArchiveError::KernelMissing(config.kernel.clone())),
        }
        Ok(Self {
            tar: tar.into(),
            nodes,
            config,
        })
    }

    /// Reads every tar entry of `tar` and returns the cleaned paths, checking entry types,
    /// limits, duplicates and file/directory conflicts.
    fn index(tar: &[u8], limits: &ArchiveLimits) -> Result<BTreeMap<String, Node>, ArchiveError> {
        let tar_error = |error: io::Error| ArchiveError::Tar(one_line(&error.to_string()));
        let mut archive = tar::Archive::new(tar);
        let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
        let mut count = 0usize;
        for entry in archive.entries().map_err(tar_error)? {
            let entry = entry.map_err(tar_error)?;
            count += 1;
            if count > limits.max_entries {
                return Err(ArchiveError::TooManyEntries {
                    limit: limits.max_entries,
                });
            }
            let kind = entry.header().entry_type();
            if kind == EntryType::XGlobalHeader {
                // PAX global headers (e.g. the commit id `git archive` records) carry no file.
                continue;
            }
            let raw_path = entry.path_bytes();
            let path = clean_entry_path(&raw_path, limits)?;
            let node = match kind {
                EntryType::Regular | EntryType::Continuous => {
                    if path.is_empty() {
                        return Err(ArchiveError::EmptyPath(
                            String::from_utf8_lossy(&raw_path).into_owned(),
                        ));
                    }
                    let start = usize::try_from(entry.raw_file_position()).ok();
                    let end = start
                        .zip(usize::try_from(entry.size()).ok())
                        .and_then(|(start, size)| start.checked_add(size));
                    match (start, end) {
                        (Some(start), Some(end)) if end <= tar.len() => {
                            Node::File(FileEntry { data: start..end })
                        }
                        _ => return Err(ArchiveError::TruncatedEntry(path)),
                    }
                }
                EntryType::Directory => Node::Directory,
                other => {
                    return Err(ArchiveError::UnsupportedEntry {
                        path,
                        kind: entry_kind_name(other),
                    });
                }
            };
            if path.is_empty() {
                // `./`: the root itself.
                continue;
            }
            if nodes.insert(path.clone(), node).is_some() {
                return Err(ArchiveError::Duplicate(path));
            }
        }
        // A file may not stand where another entry needs a directory.
        for path in nodes.keys() {
            let mut ancestor_end = 0;
            while let Some(slash) = path[ancestor_end..].find('/') {
                ancestor_end += slash;
                let ancestor = &path[..ancestor_end];
                if let Some(Node::File(_)) = nodes.get(ancestor) {
                    return Err(ArchiveError::BelowFile {
                        path: path.clone(),
                        file: ancestor.to_owned(),
                    });
                }
                ancestor_end += 1;
            }
        }
        Ok(nodes)
    }

    /// The validated `hermit.toml`.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// The kernel ELF named by `hermit.toml`.
    pub fn kernel(&self) -> &[u8] {
        match self.nodes.get(&self.config.kernel) {
            Some(Node::File(file)) => &self.tar[file.data.clone()],
            // `unpack` checked that the kernel is a file.
            _ => &[],
        }
    }

    /// The decompressed tar, as the kernel gets it in the internal mode.
    pub fn tar(&self) -> Arc<[u8]> {
        Arc::clone(&self.tar)
    }

    /// Every regular file (the configuration and the kernel included) with its cleaned path
    /// relative to the archive's root, sorted by path, each as its own read-only buffer.
    pub fn files(&self) -> Vec<(String, Arc<[u8]>)> {
        self.nodes
            .iter()
            .filter_map(|(path, node)| match node {
                Node::File(file) => Some((path.clone(), Arc::from(&self.tar[file.data.clone()]))),
                Node::Directory => None,
            })
            .collect()
    }

    /// Number of regular files.
    pub fn file_count(&self) -> usize {
        self.nodes
            .values()
            .filter(|node| matches!(node, Node::File(_)))
            .count()
    }
}

#[cfg(test)]
mod tests;
