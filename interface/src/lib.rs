//! The hypercall ABI spoken between uhyve and Hermit guests: interface versions 1, 2 and 3.
//!
//! This crate owns the wire format only: the hypercall port numbers, the packed parameter
//! structs a guest places in its memory before issuing a hypercall, the open-flag and errno
//! numbers that cross the boundary, and the address newtypes both sides use. It is `no_std`
//! so a guest kernel can depend on it; the `std` feature adds host-side conveniences.
//!
//! Transport on x86_64: the guest executes `out dx, eax` with `dx` = port and `eax` = the low
//! 32 bits of the guest-physical address of the parameter struct (for [`HypercallAddress::Uart`]
//! the byte itself). On aarch64 the port number is a guest address the guest stores to.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod parameters;
pub mod v2;

pub use parameters::*;

/// The v1 hypercall interface (the ports and packed structs at the top of this crate).
pub const UHYVE_INTERFACE_VERSION: u32 = 1;
/// The interface versions this crate describes: 1 (this module), 2 and 3 ([`v2`]).
pub const SUPPORTED_INTERFACE_VERSIONS: [u32; 3] = [1, 2, 3];

/// Maximum number of arguments and of environment entries passed by `Cmdsize`/`Cmdval`.
pub const MAX_ARGC_ENVC: usize = 128;

/// A guest-physical address.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GuestPhysAddr(u64);

/// A guest-virtual address (translated through the guest's page tables by the host).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GuestVirtAddr(u64);

macro_rules! address_newtype {
    ($name:ident) => {
        impl $name {
            /// Wraps a raw address.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }
            /// The raw address value.
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            /// `self + offset`, or `None` on overflow.
            pub const fn checked_add(self, offset: u64) -> Option<Self> {
                match self.0.checked_add(offset) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }
        impl core::fmt::LowerHex for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::LowerHex::fmt(&self.0, f)
            }
        }
        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
        impl From<u64> for $name {
            fn from(raw: u64) -> Self {
                Self(raw)
            }
        }
        impl From<$name> for u64 {
            fn from(addr: $name) -> u64 {
                addr.0
            }
        }
    };
}
address_newtype!(GuestPhysAddr);
address_newtype!(GuestVirtAddr);

/// The v1 hypercall ports (x86_64 I/O ports; guest addresses on aarch64).
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HypercallAddress {
    /// Write to a guest file descriptor ([`WriteParams`]).
    FileWrite = 0x400,
    /// Open a file ([`OpenParams`]).
    FileOpen = 0x440,
    /// Close a guest file descriptor ([`CloseParams`]).
    FileClose = 0x480,
    /// Read from a guest file descriptor ([`ReadParams`]).
    FileRead = 0x500,
    /// Stop the VM with an exit code ([`ExitParams`]).
    Exit = 0x540,
    /// Reposition a file offset ([`LseekParams`]).
    FileLseek = 0x580,
    /// Deprecated, never used by any kernel.
    Netwrite = 0x640,
    /// Deprecated, never used by any kernel.
    Netread = 0x680,
    /// Deprecated, never used by any kernel.
    Netstat = 0x700,
    /// Sizes of the argument and environment items ([`CmdsizeParams`]).
    Cmdsize = 0x740,
    /// Contents of the argument and environment items ([`CmdvalParams`]).
    Cmdval = 0x780,
    /// Write one byte to the serial output; the byte is the port data itself.
    Uart = 0x800,
    /// Remove a file ([`UnlinkParams`]).
    FileUnlink = 0x840,
    /// Write a buffer to the serial output ([`SerialWriteBufferParams`]).
    SerialWriteBuffer = 0x880,
}

impl HypercallAddress {
    /// Every v1 hypercall address, in port order.
    pub const ALL: [HypercallAddress; 14] = [
        Self::FileWrite,
        Self::FileOpen,
        Self::FileClose,
        Self::FileRead,
        Self::Exit,
        Self::FileLseek,
        Self::Netwrite,
        Self::Netread,
        Self::Netstat,
        Self::Cmdsize,
        Self::Cmdval,
        Self::Uart,
        Self::FileUnlink,
        Self::SerialWriteBuffer,
    ];

    /// The port number (x86_64) or guest address (aarch64) of this hypercall.
    pub const fn port(self) -> u16 {
        self as u16
    }

    /// A short human-readable name, used in diagnostics and statistics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::FileWrite => "FileWrite",
            Self::FileOpen => "FileOpen",
            Self::FileClose => "FileClose",
            Self::FileRead => "FileRead",
            Self::Exit => "Exit",
            Self::FileLseek => "FileLseek",
            Self::Netwrite => "Netwrite",
            Self::Netread => "Netread",
            Self::Netstat => "Netstat",
            Self::Cmdsize => "Cmdsize",
            Self::Cmdval => "Cmdval",
            Self::Uart => "SerialWriteByte",
            Self::FileUnlink => "FileUnlink",
            Self::SerialWriteBuffer => "SerialWriteBuffer",
        }
    }
}

/// Returned when a number is not a v1 hypercall port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownHypercallAddress(pub u16);

impl core::fmt::Display for UnknownHypercallAddress {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#x} is not a uhyve v1 hypercall address", self.0)
    }
}

impl TryFrom<u16> for HypercallAddress {
    type Error = UnknownHypercallAddress;

    fn try_from(port: u16) -> Result<Self, Self::Error> {
        // A match, not a search: this runs on every port exit.
        Ok(match port {
            0x400 => Self::FileWrite,
            0x440 => Self::FileOpen,
            0x480 => Self::FileClose,
            0x500 => Self::FileRead,
            0x540 => Self::Exit,
            0x580 => Self::FileLseek,
            0x640 => Self::Netwrite,
            0x680 => Self::Netread,
            0x700 => Self::Netstat,
            0x740 => Self::Cmdsize,
            0x780 => Self::Cmdval,
            0x800 => Self::Uart,
            0x840 => Self::FileUnlink,
            0x880 => Self::SerialWriteBuffer,
            _ => return Err(UnknownHypercallAddress(port)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_round_trip() {
        for address in HypercallAddress::ALL {
            assert_eq!(HypercallAddress::try_from(address.port()), Ok(address));
        }
        assert_eq!(
            HypercallAddress::try_from(0x401),
            Err(UnknownHypercallAddress(0x401))
        );
        assert!(HypercallAddress::try_from(0).is_err());
        assert!(HypercallAddress::try_from(0xcf8).is_err());
    }

    #[test]
    fn port_numbers_match_the_abi_sheet() {
        let expected: [(HypercallAddress, u16); 14] = [
            (HypercallAddress::FileWrite, 0x400),
            (HypercallAddress::FileOpen, 0x440),
            (HypercallAddress::FileClose, 0x480),
            (HypercallAddress::FileRead, 0x500),
            (HypercallAddress::Exit, 0x540),
            (HypercallAddress::FileLseek, 0x580),
            (HypercallAddress::Netwrite, 0x640),
            (HypercallAddress::Netread, 0x680),
            (HypercallAddress::Netstat, 0x700),
            (HypercallAddress::Cmdsize, 0x740),
            (HypercallAddress::Cmdval, 0x780),
            (HypercallAddress::Uart, 0x800),
            (HypercallAddress::FileUnlink, 0x840),
            (HypercallAddress::SerialWriteBuffer, 0x880),
        ];
        for (address, port) in expected {
            assert_eq!(address.port(), port, "{}", address.name());
        }
    }

    #[test]
    fn address_arithmetic_is_checked() {
        assert_eq!(GuestPhysAddr::new(u64::MAX).checked_add(1), None);
        assert_eq!(
            GuestVirtAddr::new(0x1000).checked_add(0x10),
            Some(GuestVirtAddr::new(0x1010))
        );
    }
}

/// The name of the hypercall at `address` in interface v1 or v2/v3 (the address ranges do not
/// overlap), or `None` if neither defines it.
pub fn hypercall_name(address: u16) -> Option<&'static str> {
    HypercallAddress::try_from(address)
        .map(HypercallAddress::name)
        .ok()
        .or_else(|| {
            v2::HypercallAddressV2::try_from(address)
                .ok()
                .map(v2::HypercallAddressV2::name)
        })
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn names_cover_both_address_tables() {
        assert_eq!(hypercall_name(0x540), Some("Exit"));
        assert_eq!(hypercall_name(0x1010), Some("Exit"));
        assert_eq!(hypercall_name(0x1160), Some("Getdents"));
        assert_eq!(hypercall_name(0x1234), None);
    }
}
