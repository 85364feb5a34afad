//! Fuzz target `loader`: the Hermit ELF loader on arbitrary bytes, for both guest machines.

use goblin::elf::header::{EM_AARCH64, EM_X86_64};

use crate::loader::KernelImage;

/// Largest image the target loads after a successful parse (bigger footprints are only parsed).
const MAX_LOADED_FOOTPRINT: u64 = 16 << 20;

/// Where a position-independent image is placed, as uhyve places kernels.
const PIE_BASE: u64 = 0x40000;

/// Parses `data` as a kernel for x86_64 and for aarch64; an accepted image is loaded, and what
/// the loader reports must lie inside the image it loaded.
pub fn loader(data: &[u8]) {
    for machine in [EM_X86_64, EM_AARCH64] {
        let Ok(image) = KernelImage::parse_for(data.to_vec(), machine) else {
            continue;
        };
        assert!([3, 4].contains(&image.entry_version()));
        assert!((1..=3).contains(&image.interface_version()));
        let _ = image.generation();
        let footprint = image.footprint();
        if footprint == 0 || footprint > MAX_LOADED_FOOTPRINT {
            continue;
        }
        let base = image.load_base(PIE_BASE);
        // At most MAX_LOADED_FOOTPRINT, which fits in usize.
        let mut buffer = vec![0u8; footprint as usize];
        let Ok(loaded) = image.load(base, &mut buffer) else {
            continue;
        };
        assert_eq!(loaded.image_range, base..base + footprint);
        assert!(loaded.image_range.contains(&loaded.entry_point));
        if let Some(tls) = loaded.tls {
            assert!(tls.start >= base && tls.start - base <= footprint);
            assert!(tls.filesz <= footprint - (tls.start - base));
        }
    }
}
