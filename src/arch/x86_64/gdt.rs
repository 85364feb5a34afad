//! The boot GDT of x86_64 guests and the segment-register descriptors derived from it.
//!
//! The guest starts in 64-bit mode with a three-entry GDT (null, kernel code, kernel data) at
//! [`GDT_ADDRESS`](super::layout::GDT_ADDRESS); the kernel loads its own GDT early. The segment
//! registers are set to match these entries. [`SegmentDescriptor`] is backend-neutral: the KVM
//! backend converts it into its own segment type.

use thiserror::Error;
use uhyve_interface::GuestPhysAddr;

use crate::mem::{GuestMemory, MemoryError};

/// Null descriptor (selector 0x00).
pub const GDT_NULL: u64 = 0;
/// 64-bit kernel code: base 0, limit 0xFFFFF, G=1, L=1, D=0, P=1, DPL 0, type 0xB (selector 0x08).
pub const GDT_KERNEL_CODE: u64 = 0x00AF_9B00_0000_FFFF;
/// Kernel data: base 0, limit 0xFFFFF, G=1, D/B=1, P=1, DPL 0, type 0x3 (selector 0x10).
pub const GDT_KERNEL_DATA: u64 = 0x00CF_9300_0000_FFFF;
/// The boot GDT in table order.
pub const GDT: [u64; 3] = [GDT_NULL, GDT_KERNEL_CODE, GDT_KERNEL_DATA];
/// Selector of the code segment (index 1, RPL 0).
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment (index 2, RPL 0).
pub const DATA_SELECTOR: u16 = 0x10;
/// GDTR limit: size of the table minus one (23).
pub const GDT_LIMIT: u16 = (GDT.len() * 8 - 1) as u16;

/// Failures writing the GDT.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GdtError {
    /// The GDT does not fit at the requested guest address.
    #[error("cannot write the boot GDT at guest address {address:#x}: {source}")]
    Write {
        /// Where the GDT was to go.
        address: u64,
        /// The failed access.
        source: MemoryError,
    },
}

/// A segment register's hidden state, as the hardware loads it from a GDT entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentDescriptor {
    /// Selector (index × 8 | TI | RPL).
    pub selector: u16,
    /// Segment base.
    pub base: u64,
    /// Byte-granular limit (already scaled by the G bit).
    pub limit: u32,
    /// Type field (bits 40..44 of the entry): 0xB = execute/read accessed, 0x3 = read/write
    /// accessed.
    pub type_: u8,
    /// S: code or data segment (as opposed to a system segment).
    pub s: bool,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// P: present.
    pub present: bool,
    /// AVL: available for software.
    pub avl: bool,
    /// L: 64-bit code segment.
    pub l: bool,
    /// D/B: default operation size 32 bit.
    pub db: bool,
    /// G: limit granularity 4 KiB.
    pub g: bool,
}

impl SegmentDescriptor {
    /// Decodes the raw GDT `entry` loaded through `selector`.
    pub const fn from_gdt_entry(selector: u16, entry: u64) -> Self {
        let base = ((entry >> 16) & 0xFF_FFFF) | (((entry >> 56) & 0xFF) << 24);
        let raw_limit = ((entry & 0xFFFF) | (((entry >> 48) & 0xF) << 16)) as u32;
        let g = (entry >> 55) & 1 == 1;
        // With G set, the 20-bit limit counts 4 KiB units and the low 12 bits read as ones.
        let limit = if g {
            (raw_limit << 12) | 0xFFF
        } else {
            raw_limit
        };
        Self {
            selector,
            base,
            limit,
            type_: ((entry >> 40) & 0xF) as u8,
            s: (entry >> 44) & 1 == 1,
            dpl: ((entry >> 45) & 0x3) as u8,
            present: (entry >> 47) & 1 == 1,
            avl: (entry >> 52) & 1 == 1,
            l: (entry >> 53) & 1 == 1,
            db: (entry >> 54) & 1 == 1,
            g,
        }
    }
}

/// The code segment (CS) matching [`GDT_KERNEL_CODE`].
pub const fn code_segment() -> SegmentDescriptor {
    SegmentDescriptor::from_gdt_entry(CODE_SELECTOR, GDT_KERNEL_CODE)
}

/// The data segment (DS, ES, SS) matching [`GDT_KERNEL_DATA`].
pub const fn data_segment() -> SegmentDescriptor {
    SegmentDescriptor::from_gdt_entry(DATA_SELECTOR, GDT_KERNEL_DATA)
}

/// Writes the boot GDT ([`GDT`], 24 bytes) to guest memory at `at`.
pub fn write_gdt(mem: &GuestMemory, at: GuestPhysAddr) -> Result<(), GdtError> {
    let mut bytes = [0u8; GDT.len() * 8];
    for (chunk, entry) in bytes.chunks_exact_mut(8).zip(GDT) {
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    mem.write(at, &bytes).map_err(|source| GdtError::Write {
        address: at.as_u64(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_ring_0() {
        let cs = code_segment();
        assert_eq!(
            cs,
            SegmentDescriptor {
                selector: 0x08,
                base: 0,
                limit: 0xFFFF_FFFF,
                type_: 0xB,
                s: true,
                dpl: 0,
                present: true,
                avl: false,
                l: true,
                db: false,
                g: true,
            }
        );
    }

    #[test]
    fn data_segment_is_flat_ring_0() {
        let ds = data_segment();
        assert_eq!(
            ds,
            SegmentDescriptor {
                selector: 0x10,
                base: 0,
                limit: 0xFFFF_FFFF,
                type_: 0x3,
                s: true,
                dpl: 0,
                present: true,
                avl: false,
                l: false,
                db: true,
                g: true,
            }
        );
    }

    #[test]
    fn decoding_handles_base_and_byte_granularity() {
        // Base 0x12345678, limit 0x54321 (byte granular), type 0x2, DPL 3, not present.
        // Access byte 0x62 = type 0x2 | S=0 | DPL 3 | P=0; flags nibble 0.
        let entry: u64 = (0x12 << 56) | (0x5 << 48) | (0x62 << 40) | (0x34_5678 << 16) | 0x4321;
        let d = SegmentDescriptor::from_gdt_entry(0x1b, entry);
        assert_eq!(d.base, 0x1234_5678);
        assert_eq!(d.limit, 0x5_4321);
        assert_eq!(d.type_, 0x2);
        assert!(!d.s);
        assert_eq!(d.dpl, 3);
        assert!(!d.present && !d.g && !d.l && !d.db && !d.avl);
    }

    #[test]
    fn gdt_is_written_little_endian() {
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 0x4000).unwrap();
        write_gdt(&mem, GuestPhysAddr::new(0x1000)).unwrap();
        let mut back = [0u8; 24];
        mem.read(GuestPhysAddr::new(0x1000), &mut back).unwrap();
        assert_eq!(&back[..8], &[0; 8]);
        assert_eq!(&back[8..16], &GDT_KERNEL_CODE.to_le_bytes());
        assert_eq!(&back[16..], &GDT_KERNEL_DATA.to_le_bytes());
        assert_eq!(GDT_LIMIT, 23);
    }

    #[test]
    fn gdt_outside_ram_is_an_error() {
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 0x4000).unwrap();
        assert!(matches!(
            write_gdt(&mem, GuestPhysAddr::new(0x3ff0)),
            Err(GdtError::Write {
                address: 0x3ff0,
                ..
            })
        ));
    }
}
