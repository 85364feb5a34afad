//! The packed parameter structs of interface v1, with the open-flag and errno numbers.
//!
//! Every struct is `#[repr(C, packed)]`: the guest lays it out byte for byte as written here.
//! Pointer-sized fields of the original definition (`usize`/`isize`) are spelled `u64`/`i64`
//! because both ends of this ABI are 64-bit.

use crate::{GuestPhysAddr, GuestVirtAddr, MAX_ARGC_ENVC};

/// `Cmdsize` (0x740): the host reports the number and byte sizes (including the NUL) of the
/// argument and environment items.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy)]
pub struct CmdsizeParams {
    /// Number of argument items (the kernel path plus its arguments).
    pub argc: i32,
    /// Size of each argument item including its NUL terminator.
    pub argsz: [i32; MAX_ARGC_ENVC],
    /// Number of environment items.
    pub envc: i32,
    /// Size of each `KEY=VALUE` item including its NUL terminator.
    pub envsz: [i32; MAX_ARGC_ENVC],
}

impl Default for CmdsizeParams {
    fn default() -> Self {
        Self {
            argc: 0,
            argsz: [0; MAX_ARGC_ENVC],
            envc: 0,
            envsz: [0; MAX_ARGC_ENVC],
        }
    }
}

#[cfg(feature = "std")]
impl CmdsizeParams {
    /// Fills in the sizes for `path` followed by `args` and for the environment entries `env`
    /// (each rendered as `KEY=VALUE\0`). Items beyond [`MAX_ARGC_ENVC`] are not announced; the
    /// number of dropped items is returned as `(dropped_args, dropped_env)` so the caller can warn.
    pub fn update<K, V>(
        &mut self,
        path: &std::ffi::OsStr,
        args: &[std::ffi::OsString],
        env: &[(K, V)],
    ) -> (usize, usize)
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let arg_sizes = core::iter::once(path.len())
            .chain(args.iter().map(|arg| arg.len()))
            .map(|len| len.saturating_add(1));
        let (mut argsz, mut argc) = ([0; MAX_ARGC_ENVC], 0);
        let dropped_args = fill_sizes(&mut argsz, &mut argc, arg_sizes);
        let env_sizes = env.iter().map(|(key, value)| {
            key.as_ref()
                .len()
                .saturating_add(value.as_ref().len())
                .saturating_add(2)
        });
        let (mut envsz, mut envc) = ([0; MAX_ARGC_ENVC], 0);
        let dropped_env = fill_sizes(&mut envsz, &mut envc, env_sizes);
        *self = Self {
            argc,
            argsz,
            envc,
            envsz,
        };
        (dropped_args, dropped_env)
    }
}

#[cfg(feature = "std")]
fn fill_sizes(
    slots: &mut [i32; MAX_ARGC_ENVC],
    count: &mut i32,
    sizes: impl Iterator<Item = usize>,
) -> usize {
    let mut dropped = 0;
    let mut used = 0;
    for size in sizes {
        match (slots.get_mut(used), i32::try_from(size)) {
            (Some(slot), Ok(size)) => {
                *slot = size;
                used += 1;
            }
            _ => dropped += 1,
        }
    }
    // `used` never exceeds MAX_ARGC_ENVC (128), so it fits an i32.
    *count = used as i32;
    dropped
}

/// `Cmdval` (0x780): the guest passes two arrays of guest-physical addresses, one per item,
/// each pointing at a buffer of exactly the size announced by `Cmdsize`.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CmdvalParams {
    /// GPA of an array of `argc` GPAs, one per argument buffer.
    pub argv: GuestPhysAddr,
    /// GPA of an array of `envc` GPAs, one per environment buffer.
    pub envp: GuestPhysAddr,
}

/// `Exit` (0x540).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ExitParams {
    /// The guest's exit status.
    pub arg: i32,
}

/// `FileUnlink` (0x840).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UnlinkParams {
    /// GPA of the path (kernel 0.6.9 does not NUL-terminate it).
    pub name: GuestPhysAddr,
    /// 0 on success, a negative errno on failure.
    pub ret: i32,
}

/// `FileWrite` (0x400). There is no result field: the host lowers `len` on a short write.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteParams {
    /// Guest file descriptor.
    pub fd: i32,
    /// Guest-virtual address of the data.
    pub buf: GuestVirtAddr,
    /// Number of bytes to write; on return, the number written.
    pub len: u64,
}

/// `FileRead` (0x500).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadParams {
    /// Guest file descriptor.
    pub fd: i32,
    /// Guest-virtual address of the destination buffer.
    pub buf: GuestVirtAddr,
    /// Size of the destination buffer.
    pub len: u64,
    /// Bytes read, or a negative errno.
    pub ret: i64,
}

/// `FileClose` (0x480).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CloseParams {
    /// Guest file descriptor.
    pub fd: i32,
    /// 0 on success, a negative errno on failure.
    pub ret: i32,
}

/// `FileOpen` (0x440).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenParams {
    /// GPA of the NUL-terminated path.
    pub name: GuestPhysAddr,
    /// Open flags in Hermit (= Linux x86) numbering, masked with [`ALLOWED_OPEN_FLAGS`].
    pub flags: i32,
    /// Permission bits for a created file.
    pub mode: i32,
    /// The new guest file descriptor, or a negative errno.
    pub ret: i32,
}

/// `FileLseek` (0x580).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LseekParams {
    /// Guest file descriptor.
    pub fd: i32,
    /// Requested offset; on return the resulting offset or -1.
    pub offset: i64,
    /// [`SEEK_SET`], [`SEEK_CUR`] or [`SEEK_END`].
    pub whence: i32,
}

/// `SerialWriteBuffer` (0x880).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SerialWriteBufferParams {
    /// Guest-physical address of the bytes.
    pub buf: GuestPhysAddr,
    /// Number of bytes.
    pub len: u64,
}

/// Open for reading only.
pub const O_RDONLY: i32 = 0o0;
/// Open for writing only.
pub const O_WRONLY: i32 = 0o1;
/// Open for reading and writing.
pub const O_RDWR: i32 = 0o2;
/// Create the file if it does not exist.
pub const O_CREAT: i32 = 0o100;
/// With `O_CREAT`: fail if the file exists.
pub const O_EXCL: i32 = 0o200;
/// Truncate the file to length 0.
pub const O_TRUNC: i32 = 0o1000;
/// Append on each write.
pub const O_APPEND: i32 = 0o2000;
/// Bypass the host page cache where possible.
pub const O_DIRECT: i32 = 0o40000;
/// Fail unless the path is a directory.
pub const O_DIRECTORY: i32 = 0o200000;

/// The open flags a guest may pass; other bits are removed before the host sees them.
pub const ALLOWED_OPEN_FLAGS: i32 =
    O_RDONLY | O_WRONLY | O_RDWR | O_CREAT | O_EXCL | O_TRUNC | O_APPEND | O_DIRECT | O_DIRECTORY;

/// `whence`: absolute offset.
pub const SEEK_SET: i32 = 0;
/// `whence`: relative to the current offset.
pub const SEEK_CUR: i32 = 1;
/// `whence`: relative to the end of the file.
pub const SEEK_END: i32 = 2;

/// Operation not permitted.
pub const EPERM: i32 = 1;
/// No such file or directory.
pub const ENOENT: i32 = 2;
/// I/O error.
pub const EIO: i32 = 5;
/// Bad file descriptor.
pub const EBADF: i32 = 9;
/// Bad address.
pub const EFAULT: i32 = 14;
/// File exists.
pub const EEXIST: i32 = 17;
/// Not a directory.
pub const ENOTDIR: i32 = 20;
/// Is a directory.
pub const EISDIR: i32 = 21;
/// Invalid argument.
pub const EINVAL: i32 = 22;
/// Too many open files.
pub const EMFILE: i32 = 24;
/// No space left on device.
pub const ENOSPC: i32 = 28;
/// Read-only file system.
pub const EROFS: i32 = 30;
/// Value too large.
pub const EOVERFLOW: i32 = 75;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn struct_sizes_match_the_abi_sheet() {
        assert_eq!(size_of::<CmdsizeParams>(), 1032);
        assert_eq!(size_of::<CmdvalParams>(), 16);
        assert_eq!(size_of::<ExitParams>(), 4);
        assert_eq!(size_of::<OpenParams>(), 20);
        assert_eq!(size_of::<CloseParams>(), 8);
        assert_eq!(size_of::<ReadParams>(), 28);
        assert_eq!(size_of::<WriteParams>(), 20);
        assert_eq!(size_of::<LseekParams>(), 16);
        assert_eq!(size_of::<UnlinkParams>(), 12);
        assert_eq!(size_of::<SerialWriteBufferParams>(), 16);
    }

    #[test]
    fn field_offsets_match_the_abi_sheet() {
        assert_eq!(offset_of!(CmdsizeParams, argc), 0);
        assert_eq!(offset_of!(CmdsizeParams, argsz), 4);
        assert_eq!(offset_of!(CmdsizeParams, envc), 516);
        assert_eq!(offset_of!(CmdsizeParams, envsz), 520);
        assert_eq!(offset_of!(CmdvalParams, argv), 0);
        assert_eq!(offset_of!(CmdvalParams, envp), 8);
        assert_eq!(offset_of!(ExitParams, arg), 0);
        assert_eq!(offset_of!(OpenParams, name), 0);
        assert_eq!(offset_of!(OpenParams, flags), 8);
        assert_eq!(offset_of!(OpenParams, mode), 12);
        assert_eq!(offset_of!(OpenParams, ret), 16);
        assert_eq!(offset_of!(CloseParams, fd), 0);
        assert_eq!(offset_of!(CloseParams, ret), 4);
        assert_eq!(offset_of!(ReadParams, fd), 0);
        assert_eq!(offset_of!(ReadParams, buf), 4);
        assert_eq!(offset_of!(ReadParams, len), 12);
        assert_eq!(offset_of!(ReadParams, ret), 20);
        assert_eq!(offset_of!(WriteParams, fd), 0);
        assert_eq!(offset_of!(WriteParams, buf), 4);
        assert_eq!(offset_of!(WriteParams, len), 12);
        assert_eq!(offset_of!(LseekParams, fd), 0);
        assert_eq!(offset_of!(LseekParams, offset), 4);
        assert_eq!(offset_of!(LseekParams, whence), 12);
        assert_eq!(offset_of!(UnlinkParams, name), 0);
        assert_eq!(offset_of!(UnlinkParams, ret), 8);
        assert_eq!(offset_of!(SerialWriteBufferParams, buf), 0);
        assert_eq!(offset_of!(SerialWriteBufferParams, len), 8);
    }

    #[test]
    fn open_flag_whitelist_is_the_seed_value() {
        assert_eq!(ALLOWED_OPEN_FLAGS, 0o243303);
    }

    #[cfg(feature = "std")]
    #[test]
    fn cmdsize_update_counts_nul_terminators_and_caps_items() {
        use std::ffi::{OsStr, OsString};
        let mut params = CmdsizeParams::default();
        let args: Vec<OsString> = vec!["-v".into(), "hello".into()];
        let env = [("A", "1"), ("LONG", "value")];
        let dropped = params.update(OsStr::new("/bin/app"), &args, &env);
        assert_eq!(dropped, (0, 0));
        let (argc, argsz, envc, envsz) = (params.argc, params.argsz, params.envc, params.envsz);
        assert_eq!(argc, 3);
        assert_eq!(&argsz[..3], &[9, 3, 6]);
        assert_eq!(envc, 2);
        assert_eq!(&envsz[..2], &[4, 11]);

        let many: Vec<(String, String)> =
            (0..200).map(|i| (format!("K{i}"), String::new())).collect();
        let dropped = params.update(OsStr::new("x"), &[], &many);
        assert_eq!(dropped, (0, 72));
        let envc = params.envc;
        assert_eq!(envc, 128);
    }
}
