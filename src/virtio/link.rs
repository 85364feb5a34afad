//! Where the network card's frames go on the host: a TAP interface ([`super::tap`]) or a passt
//! process ([`super::passt`]). Both carry whole frames with the card's 12-byte virtio header in
//! front; the card's I/O thread polls either one's descriptor.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::passt::PasstLink;
use super::tap::Tap;

/// The host side of the network card.
#[derive(Debug)]
pub enum HostLink {
    /// A TAP interface (`--net tap:NAME`).
    Tap(Tap),
    /// passt (`--net user`, `--net passt:SOCKET`).
    Passt(PasstLink),
}

/// What one attempt to receive a frame found.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A frame of this many bytes, header included.
    Frame(usize),
    /// Nothing yet: poll the descriptor.
    Nothing,
    /// The host side is gone for good (passt ended); the reason, for the log.
    Gone(String),
}

impl HostLink {
    /// What the card is connected to, for messages.
    pub fn description(&self) -> String {
        match self {
            Self::Tap(tap) => format!("TAP interface {}", tap.name()),
            Self::Passt(passt) => passt.description().to_string(),
        }
    }

    /// Sends one frame (virtio header first).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        match self {
            Self::Tap(tap) => tap.send(frame),
            Self::Passt(passt) => passt.send(frame),
        }
    }

    /// Receives one frame (virtio header first) into `frame` without waiting.
    pub fn receive(&self, frame: &mut [u8]) -> Received {
        let result = match self {
            Self::Tap(tap) => tap.receive(frame),
            Self::Passt(passt) => passt.receive(frame),
        };
        match result {
            Ok(len) => Received::Frame(len),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Received::Nothing,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => Received::Nothing,
            // A TAP interface that went down or was deleted may come back; passt does not.
            Err(error) if matches!(self, Self::Tap(_)) => {
                log::warn!(
                    "network card: receiving from {}: {error}",
                    self.description()
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
                Received::Nothing
            }
            Err(error) => Received::Gone(error.to_string()),
        }
    }
}

impl AsRawFd for HostLink {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Self::Tap(tap) => tap.as_raw_fd(),
            Self::Passt(passt) => passt.as_raw_fd(),
        }
    }
}
