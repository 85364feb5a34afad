//! The rootless backend of the network card (`--net user`, `--net passt:SOCKET`, issue 17): a
//! `passt` process does the host side (DHCP, ARP, NAT onto the host's own sockets, port
//! forwarding), and uhyve exchanges Ethernet frames with it over a UNIX stream socket in the
//! framing QEMU's stream network backend uses: a 32-bit big-endian length, then the frame.
//!
//! With `user`, uhyve starts passt itself on one end of a socket pair (`passt --fd`) and lets it
//! go to the background: passt parses its options and binds the forwarded ports before the
//! launching process exits, so the launcher's exit status says whether the start worked (its
//! standard error, kept in an anonymous file, says why not). passt ends by itself when uhyve's
//! end of the socket closes (`--fd` implies `--one-off`), also when uhyve is killed; being
//! nobody's child then, it needs no reaping from the confined run phase.
//!
//! The card's frames carry a 12-byte virtio header in front; passt's do not: the header is
//! dropped on the way out (no offloads are negotiated, so it holds nothing) and a zero header
//! is put in front on the way in.

use std::ffi::OsString;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use thiserror::Error;

use super::net::{MAX_FRAME_LEN, NET_HEADER_LEN};
use crate::params::{ForwardProtocol, PortForward};

/// The program started for `--net user`, looked up in `PATH`.
const PASST: &str = "passt";
/// How long sending one frame may wait for room in passt's socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// The length prefix of a frame on the stream.
const LENGTH_PREFIX: usize = 4;
/// The longest Ethernet frame the card carries (its largest frame without the virtio header).
const MAX_ETHERNET_FRAME: usize = MAX_FRAME_LEN - NET_HEADER_LEN;

/// Failures of connecting the card to passt; each says what to do.
#[derive(Debug, Error)]
pub enum PasstError {
    /// The socket pair for passt could not be made or set up.
    #[error("--net user: cannot set up the socket to passt: {0}")]
    SocketPair(io::Error),
    /// passt is not installed (or not in `PATH`).
    #[error(
        "--net user needs the program passt, which is not installed or not in PATH \
         (Debian and Ubuntu: apt install passt; Fedora: dnf install passt)"
    )]
    Missing,
    /// passt could not be started.
    #[error("--net user: cannot start passt: {0}")]
    Spawn(io::Error),
    /// passt started but gave up during its set-up.
    #[error("--net user: passt failed to start ({status}): {reason}")]
    Failed {
        /// How the launcher ended.
        status: std::process::ExitStatus,
        /// The last line passt printed about it.
        reason: String,
    },
    /// A running passt's socket could not be reached.
    #[error("--net passt:{}: cannot connect to passt's socket: {source}", path.display())]
    Connect {
        /// The socket given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// A connection to passt carrying the card's frames.
#[derive(Debug)]
pub struct PasstLink {
    stream: UnixStream,
    /// What the link leads to, for messages.
    description: String,
    /// Bytes read from the stream and not yet handed out as frames (only the I/O thread
    /// reads).
    received: Mutex<StreamBuffer>,
    /// A send stopped in the middle of a frame: the stream is out of step.
    broken: AtomicBool,
}

impl PasstLink {
    /// Starts passt in the background, forwarding `forwards` to the guest, and connects to it.
    pub fn spawn(forwards: &[PortForward]) -> Result<Self, PasstError> {
        let (ours, theirs) = UnixStream::pair().map_err(PasstError::SocketPair)?;
        let mut errors = tempfile::tempfile().map_err(PasstError::Spawn)?;
        let fd = theirs.as_raw_fd();
        let mut command = Command::new(PASST);
        command
            .args(["--quiet", "--fd"])
            .arg(fd.to_string())
            .args(forwards.iter().flat_map(passt_forward_arguments))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(errors.try_clone().map_err(PasstError::Spawn)?);
        // SAFETY: between fork and exec the closure only calls fcntl on a descriptor it owns,
        // which is async-signal-safe.
        unsafe {
            command.pre_exec(move || keep_across_exec(fd));
        }
        let status = match command.status() {
            Ok(status) => status,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(PasstError::Missing);
            }
            Err(error) => return Err(PasstError::Spawn(error)),
        };
        drop(theirs);
        if !status.success() {
            let mut text = String::new();
            let _ = errors.rewind();
            let _ = errors.read_to_string(&mut text);
            return Err(PasstError::Failed {
                status,
                reason: failure_reason(&text),
            });
        }
        Self::over(ours, "passt (started by uhyve)".into())
    }

    /// Connects to a passt that listens on the UNIX socket `path`.
    pub fn connect(path: &Path) -> Result<Self, PasstError> {
        let stream = UnixStream::connect(path).map_err(|source| PasstError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Self::over(stream, format!("passt at {}", path.display()))
    }

    fn over(stream: UnixStream, description: String) -> Result<Self, PasstError> {
        stream
            .set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(PasstError::SocketPair)?;
        Ok(Self {
            stream,
            description,
            received: Mutex::new(StreamBuffer::default()),
            broken: AtomicBool::new(false),
        })
    }

    /// What the link leads to.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Sends one frame of the card (virtio header first), waiting while passt's socket is full,
    /// up to [`SEND_TIMEOUT`]. A frame that cannot be sent whole leaves the stream cut in the
    /// middle of a frame: the link is then broken for good (later sends fail at once, and the
    /// receive side reports it gone), so a stuck passt cannot hold the I/O thread for ever.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the link to passt is broken",
            ));
        }
        let ethernet = frame.get(NET_HEADER_LEN..).unwrap_or_default();
        let length = u32::try_from(ethernet.len()).map_err(io::Error::other)?;
        let mut message = Vec::with_capacity(LENGTH_PREFIX + ethernet.len());
        message.extend_from_slice(&length.to_be_bytes());
        message.extend_from_slice(ethernet);
        let sent = (&self.stream).write_all(&message);
        if sent.is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
        sent
    }

    /// Receives one frame for the card (a zero virtio header, then the Ethernet frame) into
    /// `frame`, which holds [`MAX_FRAME_LEN`] bytes; `WouldBlock` if no whole frame is there
    /// yet, `UnexpectedEof` once passt has gone.
    pub fn receive(&self, frame: &mut [u8]) -> io::Result<usize> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "a frame could not be sent whole within the send timeout",
            ));
        }
        let mut received = self.received.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(len) = received.take_frame(frame)? {
                return Ok(len);
            }
            received.fill_from(&self.stream)?;
        }
    }
}

impl AsRawFd for PasstLink {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// Clears close-on-exec on `fd` in the child about to run passt.
fn keep_across_exec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD on a descriptor this process owns; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// passt's options for one forwarded port: `-t [ADDRESS/]HOSTPORT:GUESTPORT` (`-u` for UDP).
fn passt_forward_arguments(forward: &PortForward) -> [OsString; 2] {
    let option = match forward.protocol {
        ForwardProtocol::Tcp => "--tcp-ports",
        ForwardProtocol::Udp => "--udp-ports",
    };
    let address = forward
        .host_address
        .map(|address| format!("{address}/"))
        .unwrap_or_default();
    let spec = format!("{address}{}:{}", forward.host_port, forward.guest_port);
    [option.into(), spec.into()]
}

/// The line of passt's standard error that explains a failed start: the last one that is not
/// about syslog or dropping root.
fn failure_reason(stderr: &str) -> String {
    let noise = |line: &str| {
        line.is_empty()
            || line.starts_with("Don't run as root")
            || (line.starts_with("Failed to send") && line.ends_with("to syslog"))
    };
    stderr
        .lines()
        .map(str::trim)
        .rfind(|line| !noise(line))
        .unwrap_or("no message")
        .to_string()
}

/// The bytes read from passt's stream and not handed out yet.
#[derive(Debug)]
struct StreamBuffer {
    bytes: Vec<u8>,
    /// Where the first unconsumed byte is.
    start: usize,
    /// Where the unread space begins.
    end: usize,
}

impl Default for StreamBuffer {
    fn default() -> Self {
        Self {
            // Room for the largest frame with its prefix, and a few more frames.
            bytes: vec![0; 4 * (LENGTH_PREFIX + MAX_ETHERNET_FRAME)],
            start: 0,
            end: 0,
        }
    }
}

impl StreamBuffer {
    /// The next whole frame, written into `frame` behind a zero virtio header, if the buffer
    /// holds one; an error for a length no Ethernet frame has.
    fn take_frame(&mut self, frame: &mut [u8]) -> io::Result<Option<usize>> {
        let pending = &self.bytes[self.start..self.end];
        let Some((prefix, rest)) = pending.split_first_chunk::<LENGTH_PREFIX>() else {
            return Ok(None);
        };
        let length = u32::from_be_bytes(*prefix) as usize;
        if length > MAX_ETHERNET_FRAME || NET_HEADER_LEN + length > frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("passt sent a frame of {length} bytes"),
            ));
        }
        let Some(ethernet) = rest.get(..length) else {
            return Ok(None);
        };
        frame[..NET_HEADER_LEN].fill(0);
        frame[NET_HEADER_LEN..NET_HEADER_LEN + length].copy_from_slice(ethernet);
        self.start += LENGTH_PREFIX + length;
        Ok(Some(NET_HEADER_LEN + length))
    }

    /// Reads what `stream` has without waiting: `WouldBlock` if nothing, `UnexpectedEof` when
    /// it has ended.
    fn fill_from(&mut self, stream: &UnixStream) -> io::Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.bytes.len() {
            self.bytes.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let space = &mut self.bytes[self.end..];
        // SAFETY: `space` is a writable buffer of `space.len()` bytes for the whole call.
        let read = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                space.as_mut_ptr().cast(),
                space.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match read {
            -1 => Err(io::Error::last_os_error()),
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "passt closed the connection",
            )),
            read => {
                self.end += read as usize;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
