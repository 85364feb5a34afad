//! Well-formed hypercall requests for the `hypercall` fuzz target: each request names its
//! hypercall, and its parameter block is laid out as the interface version's struct (v1 packed,
//! v2/v3 naturally aligned), with values from the target's pools (path slots, buffers, small
//! fds, open flags, lengths).

use arbitrary::Arbitrary;
use uhyve_interface::HypercallAddress as V1;
use uhyve_interface::v2::HypercallAddressV2 as V2;

use super::sandbox::OpenFlags;

/// A length: a small one, or anything.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Length {
    Small(u16),
    Raw(u64),
}

impl Length {
    fn value(self) -> u64 {
        match self {
            Length::Small(len) => u64::from(len),
            Length::Raw(len) => len,
        }
    }
}

/// One hypercall with meaningful parameters. Slots, buffers and fds are indices into the
/// target's pools (see [`Pools`]).
#[derive(Debug, Arbitrary)]
pub enum Request {
    Open {
        path: u8,
        flags: OpenFlags,
        mode: u16,
    },
    Close {
        fd: u8,
    },
    Read {
        fd: u8,
        buffer: u16,
        len: Length,
    },
    Write {
        fd: u8,
        buffer: u16,
        len: Length,
    },
    Lseek {
        fd: u8,
        offset: i64,
        whence: u8,
    },
    Unlink {
        path: u8,
    },
    Getdents {
        fd: u8,
        buffer: u16,
        len: Length,
    },
    Stat {
        path: u8,
        no_follow: bool,
        buffer: u16,
    },
    Fstat {
        fd: u8,
        buffer: u16,
    },
    Mkdir {
        path: u8,
        mode: Length,
    },
    Exit {
        code: i32,
    },
    Console {
        buffer: u16,
        len: Length,
    },
    Cmdsize,
    Cmdval {
        argv: u16,
        envp: u16,
    },
}

/// Turns pool indices into guest values.
pub struct Pools {
    /// Guest-physical address of path slot `n`.
    pub path: Box<dyn Fn(u8) -> u64>,
    /// Guest-physical address of the buffer at this offset.
    pub buffer: Box<dyn Fn(u16) -> u64>,
}

/// The fd a pool index names: 0 … 7 (0–2 the console, 3 … the files the guest opened).
fn fd(index: u8) -> u64 {
    u64::from(index % 8)
}

/// `(value, width in bytes)` of each field.
type Fields = Vec<(u64, usize)>;

impl Request {
    /// The hypercall address and parameter block of this request for interface `interface`,
    /// and the argument if it is not the block's address (the v2/v3 Exit code).
    pub fn encode(&self, interface: u32, pools: &Pools) -> (u16, Vec<u8>, Option<u64>) {
        let (address, fields) = if interface == 1 {
            self.v1(pools)
        } else {
            self.v2(pools)
        };
        let block = fields
            .into_iter()
            .flat_map(|(value, width)| value.to_le_bytes().into_iter().take(width))
            .collect();
        let argument = match *self {
            Request::Exit { code } if interface > 1 => Some(u64::from(code.cast_unsigned())),
            _ => None,
        };
        (address, block, argument)
    }

    /// Calls both tables share, with the same layout.
    fn shared(&self, pools: &Pools) -> Option<(V1, V2, Fields)> {
        let ret = u64::MAX;
        Some(match *self {
            Request::Open {
                path,
                ref flags,
                mode,
            } => {
                let flags = u64::from(flags.value().cast_unsigned());
                let fields = vec![
                    ((pools.path)(path), 8),
                    (flags, 4),
                    (u64::from(mode), 4),
                    (ret, 4),
                ];
                (V1::FileOpen, V2::FileOpen, fields)
            }
            Request::Close { fd: index } => {
                (V1::FileClose, V2::FileClose, vec![(fd(index), 4), (ret, 4)])
            }
            Request::Unlink { path } => (
                V1::FileUnlink,
                V2::FileUnlink,
                vec![((pools.path)(path), 8), (ret, 4)],
            ),
            _ => return None,
        })
    }

    /// The v1 port and packed block.
    fn v1(&self, pools: &Pools) -> (u16, Fields) {
        if let Some((address, _, fields)) = self.shared(pools) {
            return (address.port(), fields);
        }
        let (address, fields) = match *self {
            Request::Read {
                fd: index,
                buffer,
                len,
            }
            | Request::Write {
                fd: index,
                buffer,
                len,
            } => {
                let address = if matches!(self, Request::Read { .. }) {
                    V1::FileRead
                } else {
                    V1::FileWrite
                };
                (
                    address,
                    vec![
                        (fd(index), 4),
                        ((pools.buffer)(buffer), 8),
                        (len.value(), 8),
                        (u64::MAX, 8),
                    ],
                )
            }
            Request::Lseek {
                fd: index,
                offset,
                whence,
            } => (
                V1::FileLseek,
                vec![
                    (fd(index), 4),
                    (offset.cast_unsigned(), 8),
                    (u64::from(whence % 4), 4),
                ],
            ),
            Request::Exit { code } => (V1::Exit, vec![(u64::from(code.cast_unsigned()), 4)]),
            Request::Console { buffer, len } => (
                V1::SerialWriteBuffer,
                vec![((pools.buffer)(buffer), 8), (len.value(), 8)],
            ),
            Request::Cmdsize => (V1::Cmdsize, Vec::new()),
            Request::Cmdval { argv, envp } => (
                V1::Cmdval,
                vec![((pools.buffer)(argv), 8), ((pools.buffer)(envp), 8)],
            ),
            // v2/v3 only: the v1 guest writes its Getdents block to a port that is no hypercall.
            _ => (V1::Netstat, Vec::new()),
        };
        (address.port(), fields)
    }

    /// The v3 calls (a v2 guest's write to their addresses is no hypercall).
    fn v3(&self, pools: &Pools) -> Option<(V2, Fields)> {
        let status = [(u64::MAX, 8)];
        Some(match *self {
            Request::Getdents {
                fd: index,
                buffer,
                len,
            } => (
                V2::Getdents,
                vec![
                    (fd(index), 8),
                    ((pools.buffer)(buffer), 8),
                    (len.value(), 8),
                    (0, 8),
                    (0, 8),
                ],
            ),
            Request::Stat {
                path,
                no_follow,
                buffer,
            } => {
                let mut fields = vec![
                    ((pools.path)(path), 8),
                    (u64::from(no_follow), 8),
                    ((pools.buffer)(buffer), 8),
                ];
                fields.extend(status);
                (V2::FileStat, fields)
            }
            Request::Fstat { fd: index, buffer } => {
                let mut fields = vec![(fd(index), 8), ((pools.buffer)(buffer), 8)];
                fields.extend(status);
                (V2::FileFstat, fields)
            }
            Request::Mkdir { path, mode } => {
                let mut fields = vec![((pools.path)(path), 8), (mode.value(), 8)];
                fields.extend(status);
                (V2::Mkdir, fields)
            }
            _ => return None,
        })
    }

    /// The v2/v3 address and naturally aligned block.
    fn v2(&self, pools: &Pools) -> (u16, Fields) {
        if let Some((_, address, fields)) = self.shared(pools) {
            return (address as u16, fields);
        }
        if let Some((address, fields)) = self.v3(pools) {
            return (address as u16, fields);
        }
        let (address, fields): (V2, Fields) = match *self {
            Request::Read {
                fd: index,
                buffer,
                len,
            }
            | Request::Write {
                fd: index,
                buffer,
                len,
            } => {
                let address = if matches!(self, Request::Read { .. }) {
                    V2::FileRead
                } else {
                    V2::FileWrite
                };
                (
                    address,
                    vec![
                        (len.value(), 8),
                        (u64::MAX, 8),
                        ((pools.buffer)(buffer), 8),
                        (fd(index), 8),
                    ],
                )
            }
            Request::Lseek {
                fd: index,
                offset,
                whence,
            } => (
                V2::FileLseek,
                vec![
                    (offset.cast_unsigned(), 8),
                    (u64::from(whence % 4), 4),
                    (fd(index), 4),
                ],
            ),
            // The code is the argument itself (see `encode`).
            Request::Exit { .. } => (V2::Exit, Vec::new()),
            Request::Console { buffer, len } => (
                V2::SerialWriteBuffer,
                vec![(len.value(), 8), ((pools.buffer)(buffer), 8)],
            ),
            // v1 only: a v2 guest's write to the v1 port is no hypercall.
            _ => return (V1::Cmdsize.port(), Vec::new()),
        };
        (address as u16, fields)
    }
}
