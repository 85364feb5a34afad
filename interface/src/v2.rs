//! Interface versions 2 and 3 (Hermit kernel `main`): hypercall addresses and the parameter
//! structs in their natural (`repr(C)`) layout.
//!
//! Transport: on x86_64 the guest executes `out dx, eax` with `dx` = the address (a 16-bit port
//! number), `eax` a dummy value and **RDI the full 64-bit argument**; on aarch64 it stores X8 to
//! the address (a data abort in the hypercall window at the start of guest RAM). The argument is
//! the guest-physical address of the parameter struct, except for [`HypercallAddressV2::Exit`]
//! (the exit code, an `i32` zero-extended) and [`HypercallAddressV2::SerialWriteByte`] (the
//! byte). Every buffer inside a parameter struct is guest-physical. Results are the value or a
//! negative errno. [`HypercallAddressV2::SerialReadByte`] is a *read* of its address (x86 `in`,
//! aarch64 load): the value read is the next input byte.
//!
//! FileOpen, FileClose and FileUnlink keep the packed v1 structs ([`crate::OpenParams`],
//! [`crate::CloseParams`], [`crate::UnlinkParams`]). Version 3 adds Getdents, FileStat, FileFstat
//! and Mkdir to version 2.
//!
//! Every struct here spells out its padding as explicit fields, so that it has no uninitialised
//! bytes and can be copied to and from guest memory as plain bytes; the offsets are those of the
//! natural layout (checked by the tests).

use crate::GuestPhysAddr;

/// The v2/v3 hypercall addresses (x86_64 I/O ports, aarch64 offsets into the hypercall window).
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HypercallAddressV2 {
    /// Stop the VM; the argument is the exit code.
    Exit = 0x1010,
    /// Write one byte to the serial output; the argument is the byte.
    SerialWriteByte = 0x1020,
    /// Write a buffer to the serial output ([`SerialWriteBufferParamsV2`]).
    SerialWriteBuffer = 0x1030,
    /// Read one byte of serial input: a read of this address.
    SerialReadByte = 0x1040,
    /// Read serial input into a buffer ([`SerialReadBufferParams`]).
    SerialReadBuffer = 0x1050,
    /// Write to a guest file descriptor ([`WriteParamsV2`]).
    FileWrite = 0x1100,
    /// Open a file ([`crate::OpenParams`], packed as in v1).
    FileOpen = 0x1110,
    /// Close a descriptor ([`crate::CloseParams`], packed as in v1).
    FileClose = 0x1120,
    /// Read from a guest file descriptor ([`ReadParamsV2`]).
    FileRead = 0x1130,
    /// Reposition a file offset ([`LseekParamsV2`]).
    FileLseek = 0x1140,
    /// Remove a file ([`crate::UnlinkParams`], packed as in v1).
    FileUnlink = 0x1150,
    /// List a directory ([`GetdentParams`]); version 3.
    Getdents = 0x1160,
    /// Metadata by path ([`StatParams`]); version 3.
    FileStat = 0x1170,
    /// Metadata by descriptor ([`FstatParams`]); version 3.
    FileFstat = 0x1180,
    /// Create a directory ([`MkdirParams`]); version 3.
    Mkdir = 0x1190,
    /// Reserved, not served.
    SharedMemOpen = 0x1200,
    /// Reserved, not served.
    SharedMemClose = 0x1210,
}

impl HypercallAddressV2 {
    /// Every address, in address order.
    pub const ALL: [HypercallAddressV2; 17] = [
        Self::Exit,
        Self::SerialWriteByte,
        Self::SerialWriteBuffer,
        Self::SerialReadByte,
        Self::SerialReadBuffer,
        Self::FileWrite,
        Self::FileOpen,
        Self::FileClose,
        Self::FileRead,
        Self::FileLseek,
        Self::FileUnlink,
        Self::Getdents,
        Self::FileStat,
        Self::FileFstat,
        Self::Mkdir,
        Self::SharedMemOpen,
        Self::SharedMemClose,
    ];

    /// The address as a port number / window offset.
    pub const fn address(self) -> u16 {
        self as u16
    }

    /// The first interface version that defines this address.
    pub const fn since_version(self) -> u32 {
        match self {
            Self::Getdents | Self::FileStat | Self::FileFstat | Self::Mkdir => 3,
            _ => 2,
        }
    }

    /// The hypercall's name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Exit => "Exit",
            Self::SerialWriteByte => "SerialWriteByte",
            Self::SerialWriteBuffer => "SerialWriteBuffer",
            Self::SerialReadByte => "SerialReadByte",
            Self::SerialReadBuffer => "SerialReadBuffer",
            Self::FileWrite => "FileWrite",
            Self::FileOpen => "FileOpen",
            Self::FileClose => "FileClose",
            Self::FileRead => "FileRead",
            Self::FileLseek => "FileLseek",
            Self::FileUnlink => "FileUnlink",
            Self::Getdents => "Getdents",
            Self::FileStat => "FileStat",
            Self::FileFstat => "FileFstat",
            Self::Mkdir => "Mkdir",
            Self::SharedMemOpen => "SharedMemOpen",
            Self::SharedMemClose => "SharedMemClose",
        }
    }
}

impl TryFrom<u16> for HypercallAddressV2 {
    type Error = u16;

    fn try_from(address: u16) -> Result<Self, u16> {
        Self::ALL
            .iter()
            .copied()
            .find(|known| known.address() == address)
            .ok_or(address)
    }
}

/// `FileWrite` (0x1100).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteParamsV2 {
    /// Bytes to write.
    pub len: u64,
    /// Bytes written, or a negative errno.
    pub ret: i64,
    /// Guest-physical address of the data.
    pub buf: GuestPhysAddr,
    /// Guest file descriptor.
    pub fd: i32,
    /// Padding of the natural layout.
    pub _padding: u32,
}

/// `FileRead` (0x1130).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadParamsV2 {
    /// Bytes to read at most.
    pub len: u64,
    /// Bytes read, or a negative errno.
    pub ret: i64,
    /// Guest-physical address of the destination.
    pub buf: GuestPhysAddr,
    /// Guest file descriptor.
    pub fd: i32,
    /// Padding of the natural layout.
    pub _padding: u32,
}

/// `FileLseek` (0x1140).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LseekParamsV2 {
    /// Offset in; resulting offset or a negative errno out.
    pub offset: i64,
    /// `SEEK_SET`, `SEEK_CUR` or `SEEK_END`.
    pub whence: u32,
    /// Guest file descriptor.
    pub fd: i32,
}

/// `SerialWriteBuffer` (0x1030): note the order, `len` before `buf` (v1 has them the other way).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SerialWriteBufferParamsV2 {
    /// Bytes to write.
    pub len: u64,
    /// Guest-physical address of the data.
    pub buf: GuestPhysAddr,
}

/// `SerialReadBuffer` (0x1050).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SerialReadBufferParams {
    /// Size of the buffer.
    pub maxlen: u64,
    /// Bytes read (out); 0 at the end of the input.
    pub len: u64,
    /// Guest-physical address of the buffer.
    pub buf: GuestPhysAddr,
}

/// The result of a `Getdents` call: `tag` at offset 0, the value at offset 8.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GetdentResult {
    /// [`GETDENT_NONE`], [`GETDENT_SUCCESS`], [`GETDENT_END_OF_DIRECTORY`] or [`GETDENT_ERROR`].
    pub tag: u32,
    /// Padding of the natural layout.
    pub _padding: u32,
    /// Bytes written (success) or the errno (error, as an `i32` in the low half).
    pub value: u64,
}

/// No result yet (guests preset it).
pub const GETDENT_NONE: u32 = 0;
/// `value` bytes of `Dirent64` records were written.
pub const GETDENT_SUCCESS: u32 = 1;
/// Nothing is left to read.
pub const GETDENT_END_OF_DIRECTORY: u32 = 2;
/// The low 32 bits of `value` hold a (positive) errno.
pub const GETDENT_ERROR: u32 = 3;

/// `Getdents` (0x1160): `Dirent64` records (Linux `getdents64` format) into `buf`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GetdentParams {
    /// Guest file descriptor of a directory.
    pub fd: i32,
    /// Padding of the natural layout.
    pub _padding: u32,
    /// Guest-physical address of the buffer.
    pub buf: GuestPhysAddr,
    /// Size of the buffer.
    pub len: u64,
    /// The result.
    pub ret: GetdentResult,
}

/// The result of `Mkdir`, `FileStat` and `FileFstat`: `tag` at offset 0, the errno at offset 4.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusResult {
    /// [`STATUS_NONE`], [`STATUS_SUCCESS`] or [`STATUS_ERROR`].
    pub tag: u32,
    /// The (positive) errno when `tag` is [`STATUS_ERROR`].
    pub errno: i32,
}

/// No result yet (guests preset it).
pub const STATUS_NONE: u32 = 0;
/// Done.
pub const STATUS_SUCCESS: u32 = 1;
/// Failed with `errno`.
pub const STATUS_ERROR: u32 = 2;

/// `Mkdir` (0x1190).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MkdirParams {
    /// Guest-physical address of the NUL-terminated path.
    pub path: GuestPhysAddr,
    /// Length of the path, counted with or without its NUL: the NUL must come within the first
    /// `len + 1` bytes.
    pub len: u64,
    /// The result.
    pub ret: StatusResult,
}

/// `FileStat` follows symbolic links.
pub const STAT_FOLLOW: u32 = 0;
/// `FileStat` reports a symbolic link itself (`lstat`).
pub const STAT_NO_FOLLOW: u32 = 1;

/// `FileStat` (0x1170).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct StatParams {
    /// Guest-physical address of the NUL-terminated path.
    pub name: GuestPhysAddr,
    /// [`STAT_FOLLOW`] or [`STAT_NO_FOLLOW`].
    pub kind: u32,
    /// Padding of the natural layout.
    pub _padding: u32,
    /// Guest-physical address where the [`FileAttr`] goes.
    pub attr: GuestPhysAddr,
    /// The result.
    pub ret: StatusResult,
}

/// `FileFstat` (0x1180).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FstatParams {
    /// Guest file descriptor.
    pub fd: i32,
    /// Padding of the natural layout.
    pub _padding: u32,
    /// Guest-physical address where the [`FileAttr`] goes.
    pub attr: GuestPhysAddr,
    /// The result.
    pub ret: StatusResult,
}

/// A time stamp of [`FileAttr`] (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timespec {
    /// Seconds since the Unix epoch.
    pub tv_sec: i64,
    /// Nanoseconds.
    pub tv_nsec: i32,
    /// Padding of the natural layout.
    pub _padding: u32,
}

/// File metadata (120 bytes), as Hermit's `FileAttr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileAttr {
    /// Device.
    pub st_dev: u64,
    /// Inode number.
    pub st_ino: u64,
    /// Hard links.
    pub st_nlink: u64,
    /// File type (`S_IFMT`) and permission bits.
    pub st_mode: u32,
    /// Owner.
    pub st_uid: u32,
    /// Group.
    pub st_gid: u32,
    /// Padding of the natural layout.
    pub _padding: u32,
    /// Device of a special file.
    pub st_rdev: u64,
    /// Size in bytes.
    pub st_size: i64,
    /// Preferred I/O block size.
    pub st_blksize: i64,
    /// 512-byte blocks allocated.
    pub st_blocks: i64,
    /// Last access.
    pub st_atim: Timespec,
    /// Last modification.
    pub st_mtim: Timespec,
    /// Last status change.
    pub st_ctim: Timespec,
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn layouts_match_the_abi_sheet() {
        assert_eq!(size_of::<WriteParamsV2>(), 32);
        assert_eq!(
            (
                offset_of!(WriteParamsV2, len),
                offset_of!(WriteParamsV2, ret),
                offset_of!(WriteParamsV2, buf),
                offset_of!(WriteParamsV2, fd)
            ),
            (0, 8, 16, 24)
        );
        assert_eq!(size_of::<ReadParamsV2>(), 32);
        assert_eq!(offset_of!(ReadParamsV2, fd), 24);
        assert_eq!(size_of::<LseekParamsV2>(), 16);
        assert_eq!(
            (
                offset_of!(LseekParamsV2, whence),
                offset_of!(LseekParamsV2, fd)
            ),
            (8, 12)
        );
        assert_eq!(size_of::<SerialWriteBufferParamsV2>(), 16);
        assert_eq!(offset_of!(SerialWriteBufferParamsV2, buf), 8);
        assert_eq!(size_of::<SerialReadBufferParams>(), 24);
        assert_eq!(offset_of!(SerialReadBufferParams, buf), 16);
        assert_eq!(size_of::<GetdentResult>(), 16);
        assert_eq!(size_of::<GetdentParams>(), 40);
        assert_eq!(
            (
                offset_of!(GetdentParams, buf),
                offset_of!(GetdentParams, len),
                offset_of!(GetdentParams, ret)
            ),
            (8, 16, 24)
        );
        assert_eq!(size_of::<StatusResult>(), 8);
        assert_eq!(size_of::<MkdirParams>(), 24);
        assert_eq!(offset_of!(MkdirParams, ret), 16);
        assert_eq!(size_of::<StatParams>(), 32);
        assert_eq!(
            (
                offset_of!(StatParams, kind),
                offset_of!(StatParams, attr),
                offset_of!(StatParams, ret)
            ),
            (8, 16, 24)
        );
        assert_eq!(size_of::<FstatParams>(), 24);
        assert_eq!(offset_of!(FstatParams, ret), 16);
        assert_eq!(size_of::<FileAttr>(), 120);
        assert_eq!(
            (
                offset_of!(FileAttr, st_mode),
                offset_of!(FileAttr, st_rdev),
                offset_of!(FileAttr, st_size),
                offset_of!(FileAttr, st_atim),
                offset_of!(FileAttr, st_mtim),
                offset_of!(FileAttr, st_ctim)
            ),
            (24, 40, 48, 72, 88, 104)
        );
    }

    #[test]
    fn addresses_decode_and_know_their_version() {
        for address in HypercallAddressV2::ALL {
            assert_eq!(HypercallAddressV2::try_from(address.address()), Ok(address));
        }
        assert_eq!(HypercallAddressV2::try_from(0x1011), Err(0x1011));
        assert_eq!(HypercallAddressV2::try_from(0x400), Err(0x400));
        assert_eq!(HypercallAddressV2::Getdents.since_version(), 3);
        assert_eq!(HypercallAddressV2::FileRead.since_version(), 2);
    }
}
