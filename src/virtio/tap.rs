//! The TAP backend of the network card (`--net tap:NAME`, issue 17): a Linux TAP interface opened
//! through `/dev/net/tun` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte virtio header,
//! so that a frame crosses between the guest's queues and the interface unchanged, header
//! included. An existing interface is attached to; a missing one is created where the process
//! may (`CAP_NET_ADMIN`). The descriptor is non-blocking: the I/O loop polls it.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use thiserror::Error;

use super::net::NET_HEADER_LEN;

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETVNETHDRSZ`: `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `ifr_flags`: a layer-2 device, no packet-information prefix, with a virtio header.
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `IFNAMSIZ`, the terminating NUL included.
const IFNAMSIZ: usize = 16;

/// Failures of opening a TAP interface; each names the interface and what to do.
#[derive(Debug, Error)]
pub enum TapError {
    /// The name does not fit an interface name.
    #[error("TAP interface name {name:?}: must be 1 to 15 bytes without NUL or '/'")]
    BadName {
        /// The name given.
        name: String,
    },
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun for TAP interface {name}: {source}")]
    Open {
        /// The interface.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// The kernel refused to attach to (or create) the interface.
    #[error(
        "cannot attach to TAP interface {name}: {source}{hint}",
        hint = permission_hint(source)
    )]
    Attach {
        /// The interface.
        name: String,
        /// Why.
        source: io::Error,
    },
}

fn permission_hint(error: &io::Error) -> &'static str {
    if error.raw_os_error() == Some(libc::EPERM) {
        " (create it first, owned by this user: `ip tuntap add NAME mode tap user $USER`, or \
         run with CAP_NET_ADMIN)"
    } else {
        ""
    }
}

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// `struct ifreq` as `TUNSETIFF` reads and writes it: the name, then the flags.
#[repr(C)]
struct InterfaceRequest {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

impl Tap {
    /// Attaches to TAP interface `name` (creating it where permitted).
    pub fn open(name: &str) -> Result<Self, TapError> {
        let bad_name = || TapError::BadName {
            name: name.to_string(),
        };
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['\0', '/']) {
            return Err(bad_name());
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::Open {
                name: name.to_string(),
                source,
            })?;
        let mut request = InterfaceRequest {
            name: [0; IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _rest: [0; 22],
        };
        request.name[..name.len()].copy_from_slice(name.as_bytes());
        let attach_error = |source| TapError::Attach {
            name: name.to_string(),
            source,
        };
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `request` is (40 bytes,
        // name first, flags at offset 16); it lives until the call returns.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) } < 0 {
            return Err(attach_error(io::Error::last_os_error()));
        }
        let header_len = NET_HEADER_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which is valid.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &header_len) } < 0 {
            return Err(attach_error(io::Error::last_os_error()));
        }
        // The kernel may have completed a pattern such as "tap%d": its name is the real one.
        let name = CStr::from_bytes_until_nul(&request.name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|_| name.to_string());
        Ok(Self { file, name })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one frame (its virtio header first); `WouldBlock` when the interface's queue is
    /// full.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        (&self.file).write(frame).map(|_| ())
    }

    /// Receives one frame (its virtio header first) into `buffer`; its length, or `WouldBlock`
    /// when none is waiting.
    pub fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buffer)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_the_kernel_sees_them() {
        for name in ["", "a-name-that-is-too-long", "a/b", "nul\0"] {
            let error = Tap::open(name).unwrap_err();
            assert!(
                matches!(error, TapError::BadName { .. }),
                "{name:?}: {error}"
            );
        }
    }

    #[test]
    fn a_missing_permission_says_how_to_get_one() {
        let error = TapError::Attach {
            name: "tap0".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        let text = error.to_string();
        assert!(text.contains("tap0"), "{text}");
        assert!(text.contains("ip tuntap add"), "{text}");
    }

    #[test]
    fn the_request_has_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<InterfaceRequest>(), 40);
        assert_eq!(std::mem::offset_of!(InterfaceRequest, flags), 16);
    }
}
