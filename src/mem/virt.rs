//! The one guest-virtual door: guest memory as a guest's page tables map it.
//!
//! Whatever the host reads or writes at a guest-virtual address — v1 hypercall buffers, the
//! instruction and memory operands of the emulation fallback, the instruction in a crash report —
//! goes through [`GuestVirtMemory`]. It splits a range into pages of the walker's
//! [`PageWalk::PAGE_SIZE`], has every page translated on its own by a [`PageWalk`] (guest buffers
//! are never assumed to be physically contiguous), checks each resulting piece against guest RAM
//! with [`GuestMemory::checked_range`] and merges physically adjacent pages. A range is
//! translated up to its first page that does not translate, and that page's reason is kept
//! ([`VirtError`]); on top of that the door offers a prefix read (as much as is accessible) and
//! all-or-nothing reads and writes (every page is translated and checked before the first byte
//! moves). [`GuestVirtMemory::pieces`] is the only loop in uhyve that walks a guest-virtual range
//! page by page.
//!
//! The page-table formats are the walkers' business (`crate::arch` implements them); this module
//! knows no architecture.

use thiserror::Error;
use uhyve_interface::{GuestPhysAddr, GuestVirtAddr};

use super::{GuestMemory, MemoryError};

/// One page-table walk: the translation of a single guest-virtual address. The walker carries
/// everything the walk needs besides guest memory (the format, the root table, and for a checked
/// walk the kind of access and the CPU's paging controls).
pub trait PageWalk {
    /// Size of the smallest page, a power of two: every aligned block of this size translates as
    /// one (a larger page is a union of such blocks).
    const PAGE_SIZE: u64;
    /// Why an address does not translate.
    type Error;

    /// Translates `vaddr` through the page tables in `mem`.
    fn translate(
        &self,
        mem: &GuestMemory,
        vaddr: GuestVirtAddr,
    ) -> Result<GuestPhysAddr, Self::Error>;
}

/// A physically contiguous piece of guest RAM: `[address, address + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Its first guest-physical address.
    pub address: GuestPhysAddr,
    /// Its length in bytes.
    pub len: u64,
}

impl Piece {
    /// The piece `[address, address + len)`.
    pub fn new(address: GuestPhysAddr, len: u64) -> Self {
        Self { address, len }
    }
}

/// Why a guest-virtual range could not be translated (beyond some point).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VirtError<E> {
    /// The walker refused a page; its error names the address.
    #[error(transparent)]
    Walk(E),
    /// A page translated to guest-physical memory that is not (entirely) inside guest RAM.
    #[error("guest-virtual address {vaddr:#x} maps outside guest RAM: {source}")]
    OutsideRam {
        /// The guest-virtual address whose piece is outside RAM.
        vaddr: GuestVirtAddr,
        /// The failed bounds check.
        source: MemoryError,
    },
    /// The range runs past the end of the guest-virtual address space.
    #[error("guest-virtual range {start:#x}+{len:#x} wraps around the address space")]
    Wraps {
        /// The first address of the range.
        start: GuestVirtAddr,
        /// Its length.
        len: u64,
    },
}

/// The translation of a guest-virtual range's accessible prefix.
#[derive(Debug, PartialEq, Eq)]
pub struct Translation<E> {
    /// The guest-physical pieces of the prefix, in order, physically adjacent pages merged; each
    /// lies entirely inside guest RAM.
    pub pieces: Vec<Piece>,
    /// Why the prefix ends before the end of the range; `None` if it is the whole range.
    pub stop: Option<VirtError<E>>,
}

impl<E> Translation<E> {
    /// How many bytes the pieces cover.
    pub fn covered(&self) -> u64 {
        self.pieces.iter().map(|piece| piece.len).sum()
    }

    /// The pieces of the whole range, or why some page of it does not translate.
    pub fn complete(self) -> Result<Vec<Piece>, VirtError<E>> {
        match self.stop {
            None => Ok(self.pieces),
            Some(error) => Err(error),
        }
    }
}

/// What a prefix read got.
#[derive(Debug, PartialEq, Eq)]
pub struct Prefix<E> {
    /// How many bytes were read (into the start of the buffer).
    pub len: usize,
    /// Why the read ended before the end of the buffer; `None` if it filled it.
    pub stop: Option<VirtError<E>>,
}

/// Guest memory as the page tables of a [`PageWalk`] map it.
#[derive(Debug, Clone, Copy)]
pub struct GuestVirtMemory<'a, W> {
    mem: &'a GuestMemory,
    walk: W,
}

impl<'a, W: PageWalk> GuestVirtMemory<'a, W> {
    /// Guest memory `mem` as seen through `walk`.
    pub fn new(mem: &'a GuestMemory, walk: W) -> Self {
        Self { mem, walk }
    }

    /// The guest-physical pieces of `[start, start + len)`, translated page by page up to the
    /// first page that does not translate, whose reason ends the translation.
    pub fn pieces(&self, start: GuestVirtAddr, len: u64) -> Translation<W::Error> {
        let mut pieces: Vec<Piece> = Vec::new();
        let mut done = 0u64;
        while done < len {
            let piece = match self.page_piece(start, done, len) {
                Ok(piece) => piece,
                Err(stop) => {
                    return Translation {
                        pieces,
                        stop: Some(stop),
                    };
                }
            };
            done += piece.len;
            match pieces.last_mut() {
                Some(last) if last.address.checked_add(last.len) == Some(piece.address) => {
                    last.len += piece.len;
                }
                _ => pieces.push(piece),
            }
        }
        Translation { pieces, stop: None }
    }

    /// The piece of the page holding `start + done`, up to the end of that page or of the range
    /// `[start, start + len)` (`done < len`).
    fn page_piece(
        &self,
        start: GuestVirtAddr,
        done: u64,
        len: u64,
    ) -> Result<Piece, VirtError<W::Error>> {
        const { assert!(W::PAGE_SIZE.is_power_of_two()) };
        let vaddr = start
            .checked_add(done)
            .ok_or(VirtError::Wraps { start, len })?;
        let in_page = (W::PAGE_SIZE - vaddr.as_u64() % W::PAGE_SIZE).min(len - done);
        let address = self
            .walk
            .translate(self.mem, vaddr)
            .map_err(VirtError::Walk)?;
        self.mem
            .checked_range(address, in_page)
            .map_err(|source| VirtError::OutsideRam { vaddr, source })?;
        Ok(Piece::new(address, in_page))
    }

    /// Reads as much of `buf.len()` bytes at `start` as is accessible: up to the first page that
    /// does not translate.
    pub fn read_prefix(&self, start: GuestVirtAddr, buf: &mut [u8]) -> Prefix<W::Error> {
        let Translation { pieces, stop } = self.pieces(start, buf.len() as u64);
        match read_pieces(self.mem, &pieces, buf) {
            Ok(len) => Prefix { len, stop },
            // Cannot happen: every piece was checked against RAM.
            Err(source) => Prefix {
                len: 0,
                stop: Some(VirtError::OutsideRam {
                    vaddr: start,
                    source,
                }),
            },
        }
    }

    /// Reads `buf.len()` bytes at `start`, or nothing if any page of them does not translate.
    pub fn read(&self, start: GuestVirtAddr, buf: &mut [u8]) -> Result<(), VirtError<W::Error>> {
        let pieces = self.pieces(start, buf.len() as u64).complete()?;
        read_pieces(self.mem, &pieces, buf)
            .map_err(|source| VirtError::OutsideRam {
                vaddr: start,
                source,
            })
            .map(drop)
    }

    /// Writes `data` at `start`, or nothing if any page of it does not translate: every page is
    /// translated and checked before the first byte is written.
    pub fn write(&self, start: GuestVirtAddr, data: &[u8]) -> Result<(), VirtError<W::Error>> {
        let pieces = self.pieces(start, data.len() as u64).complete()?;
        write_pieces(self.mem, &pieces, data)
            .map_err(|source| VirtError::OutsideRam {
                vaddr: start,
                source,
            })
            .map(drop)
    }

    /// Whether all of `[start, start + len)` translates (what [`Self::write`] checks first).
    pub fn check(&self, start: GuestVirtAddr, len: u64) -> Result<(), VirtError<W::Error>> {
        self.pieces(start, len).complete().map(drop)
    }
}

/// Fills `buf` from the guest-physical `pieces`, in order, until either runs out; the number of
/// bytes read.
pub fn read_pieces(
    mem: &GuestMemory,
    pieces: &[Piece],
    buf: &mut [u8],
) -> Result<usize, MemoryError> {
    let mut done = 0;
    for piece in pieces {
        let rest = &mut buf[done..];
        if rest.is_empty() {
            break;
        }
        let len = piece_len(piece, rest.len());
        let part = &mut rest[..len];
        mem.read(piece.address, part)?;
        done += part.len();
    }
    Ok(done)
}

/// Copies `data` into the guest-physical `pieces`, in order, until either runs out; the number of
/// bytes written.
pub fn write_pieces(
    mem: &GuestMemory,
    pieces: &[Piece],
    data: &[u8],
) -> Result<usize, MemoryError> {
    let mut done = 0;
    for piece in pieces {
        let rest = &data[done..];
        if rest.is_empty() {
            break;
        }
        let part = &rest[..piece_len(piece, rest.len())];
        mem.write(piece.address, part)?;
        done += part.len();
    }
    Ok(done)
}

/// How many of `available` host bytes go to or come from `piece`.
fn piece_len(piece: &Piece, available: usize) -> usize {
    usize::try_from(piece.len).map_or(available, |len| len.min(available))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Page tables of a test: virtual page → physical page, everything else unmapped.
    struct Tables(BTreeMap<u64, u64>);

    /// The address a [`Tables`] walk could not translate.
    #[derive(Debug, PartialEq, Eq)]
    struct Unmapped(u64);

    impl PageWalk for Tables {
        const PAGE_SIZE: u64 = 0x1000;
        type Error = Unmapped;

        fn translate(
            &self,
            _: &GuestMemory,
            vaddr: GuestVirtAddr,
        ) -> Result<GuestPhysAddr, Unmapped> {
            let va = vaddr.as_u64();
            let frame = self.0.get(&(va & !0xfff)).ok_or(Unmapped(va))?;
            Ok(GuestPhysAddr::new(frame | (va & 0xfff)))
        }
    }

    const TOP_PAGE: u64 = 0xffff_ffff_ffff_f000;

    /// RAM 0x10000 .. 0x20800 (the last page only half of it). Virtual 0x1000 and 0x2000 map
    /// adjacent frames 0x11000 and 0x12000, 0x3000 maps 0x18000, 0x4000 is unmapped, 0x5000 maps
    /// a frame outside RAM, 0x6000 the half page at the end of RAM, the top page 0x13000.
    fn setup() -> (GuestMemory, Tables) {
        let mem = GuestMemory::new(GuestPhysAddr::new(0x10000), 0x10800).unwrap();
        let tables = Tables(BTreeMap::from([
            (0x1000, 0x11000),
            (0x2000, 0x12000),
            (0x3000, 0x18000),
            (0x5000, 0x40000),
            (0x6000, 0x20000),
            (TOP_PAGE, 0x13000),
        ]));
        (mem, tables)
    }

    fn va(address: u64) -> GuestVirtAddr {
        GuestVirtAddr::new(address)
    }

    fn piece(address: u64, len: u64) -> Piece {
        Piece::new(GuestPhysAddr::new(address), len)
    }

    fn physical(mem: &GuestMemory, address: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        mem.read(GuestPhysAddr::new(address), &mut bytes).unwrap();
        bytes
    }

    #[test]
    fn pages_are_translated_one_by_one_and_adjacent_frames_merged() {
        let (mem, tables) = setup();
        let door = GuestVirtMemory::new(&mem, tables);
        let translation = door.pieces(va(0x1ff0), 0x1020);
        assert_eq!(
            translation,
            Translation {
                pieces: vec![piece(0x11ff0, 0x1010), piece(0x18000, 0x10)],
                stop: None
            }
        );
        assert_eq!(translation.covered(), 0x1020);
        assert_eq!(
            door.pieces(va(0x1100), 0x10).complete(),
            Ok(vec![piece(0x11100, 0x10)])
        );
        // An empty range translates at any address.
        assert_eq!(door.pieces(va(0x4000), 0).complete(), Ok(vec![]));
        assert_eq!(door.read(va(0x4000), &mut []), Ok(()));
    }

    #[test]
    fn prefix_reads_stop_at_an_unmapped_page() {
        let (mem, tables) = setup();
        let door = GuestVirtMemory::new(&mem, tables);
        mem.write(GuestPhysAddr::new(0x18ff0), &[7; 0x10]).unwrap();
        let mut buf = [0xee; 0x20];
        let prefix = door.read_prefix(va(0x3ff0), &mut buf);
        assert_eq!(
            prefix,
            Prefix {
                len: 0x10,
                stop: Some(VirtError::Walk(Unmapped(0x4000)))
            }
        );
        assert_eq!(buf[..0x10], [7; 0x10]);
        assert_eq!(buf[0x10..], [0xee; 0x10], "the rest is untouched");
        // Nothing accessible at all, and the all-or-nothing read of the same range.
        let prefix = door.read_prefix(va(0x4010), &mut buf);
        assert_eq!(prefix.len, 0);
        assert_eq!(prefix.stop, Some(VirtError::Walk(Unmapped(0x4010))));
        assert_eq!(
            door.read(va(0x3ff0), &mut buf),
            Err(VirtError::Walk(Unmapped(0x4000)))
        );
        let translation = door.pieces(va(0x3ff0), 0x2000);
        assert_eq!(translation.pieces, vec![piece(0x18ff0, 0x10)]);
        assert_eq!(translation.stop, Some(VirtError::Walk(Unmapped(0x4000))));
    }

    #[test]
    fn all_or_nothing_writes_touch_nothing_when_a_later_page_fails() {
        let (mem, tables) = setup();
        let door = GuestVirtMemory::new(&mem, tables);
        assert_eq!(
            door.write(va(0x3ff0), &[0xaa; 0x20]),
            Err(VirtError::Walk(Unmapped(0x4000)))
        );
        assert_eq!(physical(&mem, 0x18ff0, 0x10), [0; 0x10]);
        assert_eq!(
            door.check(va(0x3ff0), 0x20),
            Err(VirtError::Walk(Unmapped(0x4000)))
        );
        // A write across two frames that are not adjacent lands in both.
        door.write(va(0x2ff8), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
            .unwrap();
        assert_eq!(physical(&mem, 0x12ff8, 8), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(physical(&mem, 0x18000, 2), [9, 10]);
        let mut back = [0; 10];
        door.read(va(0x2ff8), &mut back).unwrap();
        assert_eq!(back, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    }

    #[test]
    fn ranges_wrapping_the_address_space_stop_at_its_end() {
        let (mem, tables) = setup();
        let door = GuestVirtMemory::new(&mem, tables);
        let start = va(u64::MAX - 0xf);
        // Up to the very last byte is fine.
        assert_eq!(
            door.pieces(start, 0x10).complete(),
            Ok(vec![piece(0x13ff0, 0x10)])
        );
        let translation = door.pieces(start, 0x20);
        assert_eq!(translation.pieces, vec![piece(0x13ff0, 0x10)]);
        assert_eq!(
            translation.stop,
            Some(VirtError::Wraps { start, len: 0x20 })
        );
        assert_eq!(
            door.write(start, &[0xaa; 0x20]),
            Err(VirtError::Wraps { start, len: 0x20 })
        );
        assert_eq!(physical(&mem, 0x13ff0, 0x10), [0; 0x10]);
        let translation = door.pieces(va(TOP_PAGE), u64::MAX);
        assert_eq!(translation.covered(), 0x1000);
        assert!(matches!(translation.stop, Some(VirtError::Wraps { .. })));
    }

    #[test]
    fn pieces_outside_ram_end_the_range() {
        let (mem, tables) = setup();
        let door = GuestVirtMemory::new(&mem, tables);
        let translation = door.pieces(va(0x4ff0), 0x20);
        assert_eq!(translation.stop, Some(VirtError::Walk(Unmapped(0x4ff0))));
        assert!(matches!(
            door.pieces(va(0x5000), 1).stop,
            Some(VirtError::OutsideRam { vaddr, .. }) if vaddr == va(0x5000)
        ));
        // The frame of 0x6000 is only half inside RAM: a piece is checked for its whole length.
        assert_eq!(
            door.pieces(va(0x6000), 0x800).complete(),
            Ok(vec![piece(0x20000, 0x800)])
        );
        let translation = door.pieces(va(0x67f0), 0x20);
        assert!(translation.pieces.is_empty());
        assert!(matches!(
            translation.stop,
            Some(VirtError::OutsideRam { vaddr, source: MemoryError::OutOfRange { address: 0x207f0, len: 0x20, .. } })
                if vaddr == va(0x67f0)
        ));
        let mut buf = [0; 0x20];
        assert_eq!(door.read_prefix(va(0x67f0), &mut buf).len, 0);
    }

    #[test]
    fn pieces_fill_and_drain_host_buffers_in_order() {
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 0x4000).unwrap();
        let pieces = [piece(0x3000, 2), piece(0x1000, 3)];
        assert_eq!(write_pieces(&mem, &pieces, b"abcdefg"), Ok(5));
        assert_eq!(physical(&mem, 0x3000, 3), b"ab\0");
        assert_eq!(physical(&mem, 0x1000, 4), b"cde\0");
        assert_eq!(write_pieces(&mem, &pieces, b"xyz"), Ok(3));
        assert_eq!(physical(&mem, 0x1000, 4), b"zde\0");
        let mut buf = [0; 4];
        assert_eq!(read_pieces(&mem, &pieces, &mut buf), Ok(4));
        assert_eq!(&buf, b"xyzd");
        let mut buf = [0; 8];
        assert_eq!(read_pieces(&mem, &pieces, &mut buf), Ok(5));
        assert_eq!(&buf, b"xyzde\0\0\0");
        assert!(read_pieces(&mem, &[piece(0x4000, 1)], &mut buf).is_err());
    }
}
