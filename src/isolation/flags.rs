//! Translation of open flags (guest → host) and errno values (host → guest).
//!
//! The ABI uses Hermit's numbering, which equals Linux x86's. The host may number differently
//! (macOS does), so nothing is passed through: every flag bit and every errno value is translated
//! explicitly.
//!
//! Decisions: guest `O_DIRECT` is accepted (it is in the seed whitelist) but *not* passed to the
//! host: uhyve copies file data through its own unaligned buffers, which `O_DIRECT` would reject
//! with `EINVAL` (uhyve ≥ 0.6 drops it from the whitelist for the same reason). Host errno values
//! that a file operation can produce reach the guest as themselves (in Hermit numbering, see
//! [`errno`]: `EACCES`, `ELOOP`, `ENAMETOOLONG`, `ENOSPC`, `EFBIG`, `EXDEV`, …); the few others
//! become `EIO` (upstream uses −1, indistinguishable from `−EPERM`; `EIO` is also what kernel 0.6.9
//! reports for every failed open).

use std::io;

use uhyve_interface as abi;

use super::IsolationError;

/// Translates guest open flags bit by bit into host `O_*` flags, always adding `O_CLOEXEC`.
///
/// Bits outside [`abi::ALLOWED_OPEN_FLAGS`] are ignored. The access mode 3 (invalid) is treated as
/// `O_RDWR`; [`checked_host_open_flags`] rejects it before it gets here.
pub fn host_open_flags(guest: i32) -> i32 {
    let guest = guest & abi::ALLOWED_OPEN_FLAGS;
    let mut host = match guest & 0o3 {
        abi::O_RDONLY => libc::O_RDONLY,
        abi::O_WRONLY => libc::O_WRONLY,
        _ => libc::O_RDWR,
    };
    const BITS: [(i32, i32); 5] = [
        (abi::O_CREAT, libc::O_CREAT),
        (abi::O_EXCL, libc::O_EXCL),
        (abi::O_TRUNC, libc::O_TRUNC),
        (abi::O_APPEND, libc::O_APPEND),
        (abi::O_DIRECTORY, libc::O_DIRECTORY),
    ];
    for (guest_bit, host_bit) in BITS {
        if guest & guest_bit != 0 {
            host |= host_bit;
        }
    }
    // abi::O_DIRECT is deliberately dropped (see the module documentation).
    host | libc::O_CLOEXEC
}

/// Masks the guest flags with the whitelist, rejects invalid combinations (`O_CREAT` with
/// `O_DIRECTORY`, access mode 3) and translates the rest with [`host_open_flags`].
pub fn checked_host_open_flags(guest: i32) -> Result<i32, IsolationError> {
    let masked = guest & abi::ALLOWED_OPEN_FLAGS;
    let creat_dir = abi::O_CREAT | abi::O_DIRECTORY;
    if masked & creat_dir == creat_dir || masked & 0o3 == 0o3 {
        return Err(IsolationError::InvalidFlags(guest));
    }
    Ok(host_open_flags(masked))
}

/// Hermit (= Linux x86) errno numbers the ABI crate does not name.
pub mod errno {
    /// Interrupted system call.
    pub const EINTR: i32 = 4;
    /// No such device or address (a FIFO or socket refused by open).
    pub const ENXIO: i32 = 6;
    /// Resource temporarily unavailable.
    pub const EAGAIN: i32 = 11;
    /// Out of memory.
    pub const ENOMEM: i32 = 12;
    /// Permission denied.
    pub const EACCES: i32 = 13;
    /// Device or resource busy (the file of a single-file mapping).
    pub const EBUSY: i32 = 16;
    /// Cross-device link.
    pub const EXDEV: i32 = 18;
    /// No such device.
    pub const ENODEV: i32 = 19;
    /// Too many open files in the system.
    pub const ENFILE: i32 = 23;
    /// Text file busy.
    pub const ETXTBSY: i32 = 26;
    /// File too large.
    pub const EFBIG: i32 = 27;
    /// Illegal seek.
    pub const ESPIPE: i32 = 29;
    /// Too many links.
    pub const EMLINK: i32 = 31;
    /// Broken pipe.
    pub const EPIPE: i32 = 32;
    /// File name too long.
    pub const ENAMETOOLONG: i32 = 36;
    /// Directory not empty.
    pub const ENOTEMPTY: i32 = 39;
    /// Too many levels of symbolic links.
    pub const ELOOP: i32 = 40;
    /// Operation not supported.
    pub const EOPNOTSUPP: i32 = 95;
    /// Disk quota exceeded.
    pub const EDQUOT: i32 = 122;
}

/// Host errno → Hermit errno, for every value a file operation can produce.
const HOST_TO_GUEST: [(i32, i32); 32] = [
    (libc::EPERM, abi::EPERM),
    (libc::ENOENT, abi::ENOENT),
    (libc::EINTR, errno::EINTR),
    (libc::EIO, abi::EIO),
    (libc::ENXIO, errno::ENXIO),
    (libc::EBADF, abi::EBADF),
    (libc::EAGAIN, errno::EAGAIN),
    (libc::ENOMEM, errno::ENOMEM),
    (libc::EACCES, errno::EACCES),
    (libc::EFAULT, abi::EFAULT),
    (libc::EBUSY, errno::EBUSY),
    (libc::EEXIST, abi::EEXIST),
    (libc::EXDEV, errno::EXDEV),
    (libc::ENODEV, errno::ENODEV),
    (libc::ENOTDIR, abi::ENOTDIR),
    (libc::EISDIR, abi::EISDIR),
    (libc::EINVAL, abi::EINVAL),
    (libc::ENFILE, errno::ENFILE),
    (libc::EMFILE, abi::EMFILE),
    (libc::ETXTBSY, errno::ETXTBSY),
    (libc::EFBIG, errno::EFBIG),
    (libc::ENOSPC, abi::ENOSPC),
    (libc::ESPIPE, errno::ESPIPE),
    (libc::EROFS, abi::EROFS),
    (libc::EMLINK, errno::EMLINK),
    (libc::EPIPE, errno::EPIPE),
    (libc::ENAMETOOLONG, errno::ENAMETOOLONG),
    (libc::ENOTEMPTY, errno::ENOTEMPTY),
    (libc::ELOOP, errno::ELOOP),
    (libc::EOVERFLOW, abi::EOVERFLOW),
    (libc::EOPNOTSUPP, errno::EOPNOTSUPP),
    (libc::EDQUOT, errno::EDQUOT),
];

/// The (positive) Hermit errno for a host I/O error: every value in `HOST_TO_GUEST` is
/// translated; everything else becomes EIO.
pub fn guest_errno(error: &io::Error) -> i32 {
    if let Some(code) = error.raw_os_error() {
        return HOST_TO_GUEST
            .iter()
            .find(|(host, _)| *host == code)
            .map_or(abi::EIO, |(_, guest)| *guest);
    }
    match error.kind() {
        io::ErrorKind::NotFound => abi::ENOENT,
        io::ErrorKind::PermissionDenied => abi::EPERM,
        io::ErrorKind::AlreadyExists => abi::EEXIST,
        io::ErrorKind::NotADirectory => abi::ENOTDIR,
        io::ErrorKind::IsADirectory => abi::EISDIR,
        io::ErrorKind::InvalidInput => abi::EINVAL,
        _ => abi::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_translated_bit_by_bit() {
        assert_eq!(
            host_open_flags(abi::O_RDONLY),
            libc::O_RDONLY | libc::O_CLOEXEC
        );
        assert_eq!(
            host_open_flags(abi::O_WRONLY),
            libc::O_WRONLY | libc::O_CLOEXEC
        );
        assert_eq!(host_open_flags(abi::O_RDWR), libc::O_RDWR | libc::O_CLOEXEC);
        assert_eq!(
            host_open_flags(abi::O_WRONLY | abi::O_CREAT | abi::O_TRUNC),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC
        );
        assert_eq!(
            host_open_flags(abi::O_RDWR | abi::O_CREAT | abi::O_EXCL | abi::O_APPEND),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_APPEND | libc::O_CLOEXEC
        );
        assert_eq!(
            host_open_flags(abi::O_DIRECTORY),
            libc::O_DIRECTORY | libc::O_CLOEXEC
        );
        // O_DIRECT is dropped, bits outside the whitelist (O_NONBLOCK 0o4000, O_SYNC 0o4010000,
        // O_NOFOLLOW 0o400000, O_PATH 0o10000000) are ignored.
        assert_eq!(
            host_open_flags(abi::O_RDONLY | abi::O_DIRECT),
            libc::O_RDONLY | libc::O_CLOEXEC
        );
        assert_eq!(
            host_open_flags(0o4000 | 0o4010000 | 0o400000 | 0o10000000 | abi::O_WRONLY),
            libc::O_WRONLY | libc::O_CLOEXEC
        );
        assert_eq!(host_open_flags(-1) & libc::O_CLOEXEC, libc::O_CLOEXEC);
    }

    /// The numbers of macOS's `<sys/fcntl.h>` and `<sys/errno.h>`, written out so that the
    /// translation is checked against them and not only against the libc crate.
    #[cfg(target_os = "macos")]
    #[test]
    fn linux_numbered_guest_flags_become_macos_flags() {
        const O_APPEND: i32 = 0x8;
        const O_CREAT: i32 = 0x200;
        const O_TRUNC: i32 = 0x400;
        const O_EXCL: i32 = 0x800;
        const O_DIRECTORY: i32 = 0x10_0000;
        const O_CLOEXEC: i32 = 0x100_0000;
        // Guest (Linux) O_WRONLY|O_CREAT|O_TRUNC = 0o1101; macOS 0x601 plus O_CLOEXEC.
        assert_eq!(host_open_flags(0o1101), 1 | O_CREAT | O_TRUNC | O_CLOEXEC);
        assert_eq!(
            host_open_flags(abi::O_RDWR | abi::O_EXCL | abi::O_APPEND | abi::O_CREAT),
            2 | O_EXCL | O_APPEND | O_CREAT | O_CLOEXEC
        );
        assert_eq!(host_open_flags(abi::O_DIRECTORY), O_DIRECTORY | O_CLOEXEC);
        // macOS numbers EOVERFLOW 84 and EROFS 30 (Linux: 75 and 30).
        assert_eq!(
            guest_errno(&io::Error::from_raw_os_error(84)),
            abi::EOVERFLOW
        );
        assert_eq!(guest_errno(&io::Error::from_raw_os_error(30)), abi::EROFS);
    }

    #[test]
    fn invalid_combinations_are_rejected() {
        assert!(matches!(
            checked_host_open_flags(abi::O_CREAT | abi::O_DIRECTORY),
            Err(IsolationError::InvalidFlags(_))
        ));
        assert!(matches!(
            checked_host_open_flags(abi::O_RDWR | abi::O_CREAT | abi::O_DIRECTORY),
            Err(IsolationError::InvalidFlags(_))
        ));
        assert!(matches!(
            checked_host_open_flags(0o3),
            Err(IsolationError::InvalidFlags(3))
        ));
        assert_eq!(
            checked_host_open_flags(abi::O_RDONLY | abi::O_DIRECTORY).unwrap(),
            libc::O_DIRECTORY | libc::O_CLOEXEC
        );
        // Non-whitelisted bits cannot smuggle in O_CREAT|O_DIRECTORY or anything else.
        assert_eq!(
            checked_host_open_flags(0o10000000 | abi::O_CREAT | abi::O_WRONLY).unwrap(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC
        );
    }

    #[test]
    fn errno_values_are_translated() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(guest_errno(&os(libc::EPERM)), 1);
        assert_eq!(guest_errno(&os(libc::ENOENT)), 2);
        assert_eq!(guest_errno(&os(libc::EIO)), 5);
        assert_eq!(guest_errno(&os(libc::EBADF)), 9);
        assert_eq!(guest_errno(&os(libc::EFAULT)), 14);
        assert_eq!(guest_errno(&os(libc::EEXIST)), 17);
        assert_eq!(guest_errno(&os(libc::ENOTDIR)), 20);
        assert_eq!(guest_errno(&os(libc::EISDIR)), 21);
        assert_eq!(guest_errno(&os(libc::EINVAL)), 22);
        assert_eq!(guest_errno(&os(libc::EROFS)), 30);
        assert_eq!(guest_errno(&os(libc::EOVERFLOW)), 75);
        assert_eq!(guest_errno(&os(libc::EACCES)), 13);
        assert_eq!(guest_errno(&os(libc::EBUSY)), 16);
        assert_eq!(guest_errno(&os(libc::EXDEV)), 18);
        assert_eq!(guest_errno(&os(libc::EFBIG)), 27);
        assert_eq!(guest_errno(&os(libc::ENOSPC)), 28);
        assert_eq!(guest_errno(&os(libc::ENAMETOOLONG)), 36);
        assert_eq!(guest_errno(&os(libc::ELOOP)), 40);
        assert_eq!(guest_errno(&os(libc::EDQUOT)), 122);
        // Values no file operation produces stay EIO.
        assert_eq!(guest_errno(&os(libc::ECHILD)), abi::EIO);
        assert_eq!(guest_errno(&os(libc::ESRCH)), abi::EIO);
        // Every translated value is distinct.
        let guests: std::collections::BTreeSet<i32> =
            HOST_TO_GUEST.iter().map(|(_, guest)| *guest).collect();
        assert_eq!(guests.len(), HOST_TO_GUEST.len());
        assert_eq!(
            guest_errno(&io::Error::from(io::ErrorKind::NotFound)),
            abi::ENOENT
        );
        assert_eq!(
            guest_errno(&io::Error::from(io::ErrorKind::WriteZero)),
            abi::EIO
        );
    }
}
