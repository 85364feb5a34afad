//! Reading the image the user named: a kernel ELF, or a Hermit image archive (told apart by the
//! gzip magic, not by the file name) whose `hermit.toml` is merged into the configuration and
//! whose files become read-only virtual files (external mode) or the kernel's initial RAM disk
//! (internal mode). Only regular files of at most [`MAX_IMAGE_FILE_SIZE`] bytes are read.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::arch::GuestArch;
use crate::archive::{self, ArchiveError, ArchiveLimits, HermitArchive};
use crate::boot::InitialRamdisk;
use crate::loader::{KernelImage, LoadError};
use crate::params::{HermitImageMode, VmConfig};

/// Largest kernel image or Hermit image archive file read (an archive unpacks to at most
/// [`ArchiveLimits::DEFAULT`], 1 GiB; kernels are a few MiB).
pub const MAX_IMAGE_FILE_SIZE: u64 = 1 << 30;

/// Why the image cannot be used. Each message names the file.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The kernel file cannot be read.
    #[error("cannot read kernel image {path}: {source}")]
    Read {
        /// The path as given.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The kernel path names no regular file (a directory, a device, a FIFO…).
    #[error("{path}: not a regular file (a kernel image or Hermit image archive is expected)")]
    NotAFile {
        /// The path as given.
        path: PathBuf,
    },
    /// The kernel file is larger than any image uhyve accepts.
    #[error("{path}: {size} bytes is too large for a kernel image (at most {limit} bytes)")]
    TooLarge {
        /// The path as given.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The largest size accepted.
        limit: u64,
    },
    /// The kernel file is not a usable Hermit image.
    #[error("{path}: {source}")]
    Load {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        source: LoadError,
    },
    /// The Hermit image archive is unusable.
    #[error("{path}: {source}")]
    Archive {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        source: ArchiveError,
    },
    /// The kernel inside a Hermit image archive is not a usable Hermit image.
    #[error("{path}: the kernel {kernel:?} in the Hermit image archive: {source}")]
    ArchiveKernel {
        /// The archive's path as given.
        path: PathBuf,
        /// The kernel's path inside the archive.
        kernel: String,
        /// What is wrong with it.
        source: LoadError,
    },
}

/// The guest's image as read from the file the user named: the kernel, the configuration to run
/// it with, and for a Hermit image archive what else goes to the guest.
pub struct GuestImage<'c> {
    /// The kernel.
    pub kernel: KernelImage,
    /// The user's configuration, with an archive's `hermit.toml` merged in.
    pub config: Cow<'c, VmConfig>,
    /// Read-only files for the file map (an archive in the external mode): path relative to
    /// the guest root, content.
    pub virtual_files: Vec<(String, Arc<[u8]>)>,
    /// Guest paths of an archive's configuration and kernel, which need no mount.
    pub archive_own_files: Vec<String>,
    /// The decompressed archive for the kernel (the internal mode).
    pub initrd: Option<InitialRamdisk>,
}

/// The first bytes of every ELF file.
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

/// Reads the image file at `path`: a regular file of at most [`MAX_IMAGE_FILE_SIZE`] bytes that
/// starts like an ELF file or a gzip archive, so that `/dev/zero`, a FIFO, a huge file or a large
/// file of something else gives an error instead of a hang, exhausted memory or a long read.
fn read_image_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read_error = |source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO must not wait for a writer (regular files ignore the flag).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Err(ImageError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let too_large = |size| ImageError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit: MAX_IMAGE_FILE_SIZE,
    };
    if metadata.len() > MAX_IMAGE_FILE_SIZE {
        return Err(too_large(metadata.len()));
    }
    let mut bytes = Vec::new();
    // The file may grow while it is read: never take more than the limit.
    let mut file = file.take(MAX_IMAGE_FILE_SIZE + 1);
    // The first bytes decide whether the rest is worth reading: neither an ELF file nor a
    // Hermit image archive is refused without reading a large file whole.
    (&mut file)
        .take(ELF_MAGIC.len() as u64)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if !bytes.starts_with(&ELF_MAGIC) && !archive::is_archive(&bytes) {
        return Err(ImageError::Load {
            path: path.to_path_buf(),
            source: LoadError::NotElf,
        });
    }
    bytes.reserve(usize::try_from(metadata.len()).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_SIZE {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads the image `config.kernel` for `arch`: a kernel ELF, or a Hermit image archive whose
/// configuration is merged into `config` and whose files are prepared for
/// `config.hermit_image_mode`.
pub fn read_image(config: &VmConfig, arch: GuestArch) -> Result<GuestImage<'_>, ImageError> {
    let path = &config.kernel;
    let bytes = read_image_file(path)?;
    if archive::is_archive(&bytes) {
        return read_archive(config, arch, &bytes);
    }
    let kernel =
        KernelImage::parse_for(bytes, arch.elf_machine()).map_err(|source| ImageError::Load {
            path: path.clone(),
            source,
        })?;
    Ok(GuestImage {
        kernel,
        config: Cow::Borrowed(config),
        virtual_files: Vec::new(),
        archive_own_files: Vec::new(),
        initrd: None,
    })
}

/// [`read_image`] for a Hermit image archive.
fn read_archive<'c>(
    config: &'c VmConfig,
    arch: GuestArch,
    bytes: &[u8],
) -> Result<GuestImage<'c>, ImageError> {
    let path = &config.kernel;
    let archive_error = |source| ImageError::Archive {
        path: path.clone(),
        source,
    };
    let unpacked = HermitArchive::unpack(bytes, &ArchiveLimits::DEFAULT).map_err(archive_error)?;
    let image_config = unpacked.config();
    let merged = image_config
        .apply(config)
        .map_err(|error| archive_error(error.into()))?;
    let kernel = KernelImage::parse_for(unpacked.kernel().to_vec(), arch.elf_machine()).map_err(
        |source| ImageError::ArchiveKernel {
            path: path.clone(),
            kernel: image_config.kernel.clone(),
            source,
        },
    )?;
    log::info!(
        "{}: Hermit image archive with {} files, kernel {}, {} mode",
        path.display(),
        unpacked.file_count(),
        image_config.kernel,
        config.hermit_image_mode
    );
    let archive_own_files = vec![
        format!("/{}", archive::CONFIG_FILE),
        format!("/{}", image_config.kernel),
    ];
    let (virtual_files, initrd) = match config.hermit_image_mode {
        HermitImageMode::External => (unpacked.files(), None),
        HermitImageMode::Internal => (Vec::new(), Some(InitialRamdisk(unpacked.tar()))),
    };
    Ok(GuestImage {
        kernel,
        config: Cow::Owned(merged),
        virtual_files,
        archive_own_files,
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peak resident memory of this process, in KiB.
    fn peak_rss_kib() -> i64 {
        // SAFETY: getrusage fills the zeroed struct it is given; no other precondition.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            usage.ru_maxrss
        }
    }

    #[test]
    fn a_large_file_that_is_no_image_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let file = std::fs::File::create(&path).unwrap();
        // 768 MiB of holes: below the size limit, not an ELF file.
        file.set_len(768 << 20).unwrap();
        let before = peak_rss_kib();
        let error = read_image_file(&path).unwrap_err();
        assert!(
            matches!(
                error,
                ImageError::Load {
                    source: LoadError::NotElf,
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            peak_rss_kib() - before < 256 << 10,
            "the file was read: peak RSS grew from {before} KiB to {} KiB",
            peak_rss_kib()
        );
    }

    #[test]
    fn images_start_like_elf_or_gzip() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes, ok) in [
            ("elf", b"\x7fELF rest".as_slice(), true),
            ("gzip", &[0x1f, 0x8b, 0x08, 0], true),
            ("empty", b"", false),
            ("short", b"\x7fEL", false),
            ("text", b"hello", false),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(read_image_file(&path).is_ok(), ok, "{name}");
            if ok {
                assert_eq!(read_image_file(&path).unwrap(), bytes, "{name}");
            }
        }
    }
}
