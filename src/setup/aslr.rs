//! Address-space layout randomisation (ASLR): where guest RAM and a relocatable kernel go.
//!
//! Without ASLR, guest RAM starts where the image's interface version puts it (G: 0 for x86_64
//! v1, 0x1000_0000 for aarch64 v1, 4 GiB for v2/v3), the boot structures fill its first 256 KiB
//! and a relocatable (ET_DYN) kernel follows them at G + 0x40000. With ASLR the whole layout moves
//! to a random 2 MiB-aligned RAM base G + k × 2 MiB, drawn from a random value of the operating
//! system ([`os_random`]), such that RAM still ends within the address range the interface
//! allows (G + the layout's largest RAM: below the 32-bit hole at 3 GiB for x86_64 v1, below
//! 64 GiB otherwise). The kernel keeps its offset from the RAM base, so it fits wherever it fits
//! at the lowest base, and the guest keeps all of its memory: Hermit kernels count the RAM below
//! their image as used, so moving the kernel up inside RAM would take memory away from them.
//!
//! Not randomised: kernels linked at a fixed address (ET_EXEC) go there, and kernels before
//! Hermit 0.10 keep RAM at the lowest base, because they compare their image's absolute end
//! address with the size of their free memory (as if RAM started at 0) and run out of memory
//! once it is moved. The choice, [`place_guest`], is a pure function of its inputs, the random
//! value included.

use std::fmt;
use std::io;

use crate::arch::layout_rules::LayoutRules;

/// What the placement depends on besides the layout rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFacts {
    /// Whether the image can be loaded anywhere (ET_DYN) or only at its link address (ET_EXEC).
    pub relocatable: bool,
    /// A kernel before Hermit 0.10 (see the module documentation).
    pub pre_0_10_kernel: bool,
    /// The kernel base at the lowest RAM base: the link address of a fixed image, the lowest
    /// suitably aligned address above the boot structures for a relocatable one.
    pub lowest_base: u64,
    /// Bytes of guest memory the image occupies.
    pub footprint: u64,
    /// The alignment a base must have (the largest `PT_LOAD` `p_align`, a power of two).
    pub alignment: u64,
}

/// How the layout was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutChoice {
    /// The image is linked at a fixed address: RAM at the lowest base.
    Fixed,
    /// ASLR is off: the lowest base.
    Lowest,
    /// ASLR is on, but the kernel predates Hermit 0.10: the lowest base.
    PreHermit010,
    /// ASLR: RAM base number `slot` (counted from 0, the lowest) of `slots` 2 MiB-aligned ones.
    Random {
        /// The slot chosen.
        slot: u64,
        /// How many there were.
        slots: u64,
    },
    /// ASLR is on, but RAM cannot move (it is as large as the range allows, or the image does
    /// not fit into it at all): the lowest base.
    NoRoom,
}

/// Where guest RAM and the kernel go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestPlacement {
    /// The first guest-physical address of RAM (G).
    pub ram_base: u64,
    /// The kernel base (the first byte of the image).
    pub kernel_base: u64,
    /// How they were chosen.
    pub choice: LayoutChoice,
}

impl fmt::Display for GuestPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel base {:#x}, guest RAM from {:#x}",
            self.kernel_base, self.ram_base
        )?;
        match self.choice {
            LayoutChoice::Fixed => f.write_str(" (the image is linked at a fixed address)"),
            LayoutChoice::Lowest => f.write_str(" (ASLR off: the lowest base)"),
            LayoutChoice::PreHermit010 => f.write_str(
                " (ASLR not applied: kernels before Hermit 0.10 need their RAM at the lowest base)",
            ),
            LayoutChoice::Random { slot, slots } => {
                write!(f, " (ASLR: 2 MiB-aligned RAM base {} of {slots})", slot + 1)
            }
            LayoutChoice::NoRoom => f.write_str(
                " (ASLR: RAM this large cannot move within the address range the guest may use)",
            ),
        }
    }
}

/// Chooses where RAM of `ram_size` bytes (already checked against `rules`) and the kernel go:
/// at the lowest base for a fixed image, a kernel before Hermit 0.10, or if `random` is `None`
/// (ASLR off); else at the 2 MiB-aligned RAM base that `random` selects among those that keep RAM
/// within the allowed range, with the kernel at the same offset from it (see the module
/// documentation). If RAM cannot move, the lowest base; whether the image fits there is checked
/// by the layout afterwards.
pub fn place_guest(
    rules: &LayoutRules,
    ram_size: u64,
    image: &ImageFacts,
    random: Option<u64>,
) -> GuestPlacement {
    let at_lowest = |choice| GuestPlacement {
        ram_base: rules.ram_base,
        kernel_base: image.lowest_base,
        choice,
    };
    let random = match (image.relocatable, image.pre_0_10_kernel, random) {
        (false, _, _) => return at_lowest(LayoutChoice::Fixed),
        (true, _, None) => return at_lowest(LayoutChoice::Lowest),
        (true, true, Some(_)) => return at_lowest(LayoutChoice::PreHermit010),
        (true, false, Some(random)) => random,
    };
    let Some(slots) = RamSlots::new(rules, ram_size, image) else {
        return at_lowest(LayoutChoice::NoRoom);
    };
    // Uniform up to a bias below 2^-40: there are far fewer than 2^24 slots. A slot that
    // would put the image across a 1 GiB boundary gives way to the next one that does not.
    let drawn = random % slots.count;
    let slot = (0..slots.count)
        .map(|k| (drawn + k) % slots.count)
        .find(|&slot| {
            let kernel_base = image.lowest_base + slot * slots.step;
            !straddles_gib(
                kernel_base,
                image.footprint.saturating_add(KERNEL_ZEROED_AFTER_IMAGE),
            )
        })
        .unwrap_or(drawn);
    // Cannot overflow: the last slot's RAM ends within the range (`RamSlots::new`).
    let shift = slot * slots.step;
    GuestPlacement {
        ram_base: rules.ram_base + shift,
        kernel_base: image.lowest_base + shift,
        choice: LayoutChoice::Random {
            slot,
            slots: slots.count,
        },
    }
}

/// One gibibyte.
const GIB: u64 = 1 << 30;

/// How far past its image a kernel's early zeroing may reach: Hermit rounds its image end up to
/// 2 MiB.
const KERNEL_ZEROED_AFTER_IMAGE: u64 = 2 << 20;

/// Whether `len` bytes from `start` cross a 1 GiB boundary of guest-physical memory. ASLR keeps
/// the kernel image and the 2 MiB after it off those: on KVM-PVM, where the host kernel
/// emulates every guest instruction, a Hermit 0.11 kernel whose image ends just below such a
/// boundary stops at boot with a triple fault in a `rep stosq` (seen with RAM at 0x3fc0_0000
/// and 0x7fc0_0000, where the 0x3b_f968-byte image of the demo application ends 0x698 bytes
/// below the boundary; the bases 2 MiB lower boot, and so do images that cross it).
fn straddles_gib(start: u64, len: u64) -> bool {
    len > 0 && start / GIB != start.saturating_add(len - 1) / GIB
}

/// The RAM bases ASLR may choose: `G + i × step` for `i` in `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RamSlots {
    step: u64,
    count: u64,
}

impl RamSlots {
    /// The RAM bases, 2 MiB apart (or the image's alignment, if larger), at which RAM of
    /// `ram_size` bytes ends within the range of `rules`; `None` if RAM cannot move or the image
    /// does not fit into it.
    fn new(rules: &LayoutRules, ram_size: u64, image: &ImageFacts) -> Option<Self> {
        if !image.alignment.is_power_of_two() || !rules.granule.is_power_of_two() {
            return None;
        }
        // Both powers of two: the larger is a multiple of the smaller.
        let step = rules.granule.max(image.alignment);
        // The image keeps its offset from the RAM base: it fits at every base if at the lowest.
        let lowest_end = image.lowest_base.checked_add(image.footprint)?;
        rules
            .check_kernel_placement(image.lowest_base..lowest_end, ram_size)
            .ok()?;
        // G + shift + ram_size <= G + max_memory, and RAM ends where the rules allow.
        let mut moves = rules.max_memory.checked_sub(ram_size)? / step;
        if let Some(limit) = rules.aslr_ram_end {
            let lowest_ram_end = rules.ram_base.checked_add(ram_size)?;
            moves = moves.min(limit.checked_sub(lowest_ram_end)? / step);
        }
        (moves > 0).then_some(Self {
            step,
            count: moves.checked_add(1)?,
        })
    }
}

/// A random value from the operating system's random source (`getentropy`), for
/// [`place_guest`].
pub fn os_random() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    // SAFETY: the pointer and length describe `bytes`, a live, writable 8-byte buffer;
    // getentropy writes at most that many bytes (it accepts up to 256).
    let result = unsafe { libc::getentropy(bytes.as_mut_ptr().cast(), bytes.len()) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{aarch64, x86_64};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    /// A relocatable Hermit ≥ 0.10 image of `footprint` bytes at the lowest base of `rules`.
    fn pie(rules: &LayoutRules, footprint: u64) -> ImageFacts {
        ImageFacts {
            relocatable: true,
            pre_0_10_kernel: false,
            lowest_base: rules.pie_kernel_base,
            footprint,
            alignment: 0x1000,
        }
    }

    /// The placements the random values `0..tries` give.
    fn placements(
        rules: &LayoutRules,
        ram: u64,
        image: &ImageFacts,
        tries: u64,
    ) -> Vec<GuestPlacement> {
        (0..tries)
            .map(|random| place_guest(rules, ram, image, Some(random)))
            .collect()
    }

    /// The invariants of a randomised placement.
    fn assert_sound(rules: &LayoutRules, ram: u64, image: &ImageFacts, placed: GuestPlacement) {
        let LayoutChoice::Random { slot, slots } = placed.choice else {
            panic!("not randomised: {placed:?}");
        };
        assert!(slot < slots, "{placed:?}");
        // 2 MiB-aligned RAM, at or above the lowest base, ending within the allowed range.
        assert_eq!(placed.ram_base % (2 * MIB), 0, "{placed:?}");
        assert!(placed.ram_base >= rules.ram_base, "{placed:?}");
        assert!(placed.ram_base + ram <= rules.ram_base + rules.max_memory);
        // The kernel at the same offset, aligned, and the whole layout valid there.
        let offset = placed.kernel_base - placed.ram_base;
        assert_eq!(offset, image.lowest_base - rules.ram_base, "{placed:?}");
        assert_eq!(placed.kernel_base % image.alignment, 0, "{placed:?}");
        let moved = rules.moved_to(placed.ram_base).expect("a valid RAM base");
        assert_eq!(moved.check_memory_size(ram), Ok(()));
        let kernel = placed.kernel_base..placed.kernel_base + image.footprint;
        assert_eq!(moved.check_kernel_placement(kernel, ram), Ok(()));
    }

    #[test]
    fn without_aslr_everything_goes_to_the_lowest_base() {
        let rules = &x86_64::layout::RULES;
        let placed = place_guest(rules, 64 * MIB, &pie(rules, 3 * MIB), None);
        assert_eq!(
            placed,
            GuestPlacement {
                ram_base: 0,
                kernel_base: 0x40000,
                choice: LayoutChoice::Lowest
            }
        );
    }

    #[test]
    fn a_fixed_image_and_an_old_kernel_are_not_moved() {
        let rules = &x86_64::layout::RULES;
        let fixed = ImageFacts {
            relocatable: false,
            lowest_base: 0x80_0000,
            ..pie(rules, MIB)
        };
        let old = ImageFacts {
            pre_0_10_kernel: true,
            ..pie(rules, MIB)
        };
        for random in [Some(0), Some(12345), Some(u64::MAX)] {
            let placed = place_guest(rules, 64 * MIB, &fixed, random);
            assert_eq!((placed.ram_base, placed.kernel_base), (0, 0x80_0000));
            assert_eq!(placed.choice, LayoutChoice::Fixed);
            let placed = place_guest(rules, 64 * MIB, &old, random);
            assert_eq!((placed.ram_base, placed.kernel_base), (0, 0x40000));
            assert_eq!(placed.choice, LayoutChoice::PreHermit010);
        }
        assert_eq!(
            place_guest(rules, 64 * MIB, &fixed, None).choice,
            LayoutChoice::Fixed
        );
    }

    #[test]
    fn x86_64_v1_ram_moves_in_2_mib_steps_below_the_32_bit_hole() {
        let rules = &x86_64::layout::RULES;
        let image = pie(rules, 3 * MIB + 0x1234);
        let ram = 64 * MIB;
        let all = placements(rules, ram, &image, 3000);
        for placed in &all {
            assert_sound(rules, ram, &image, *placed);
            assert!(placed.ram_base + ram <= 0xC000_0000);
        }
        let LayoutChoice::Random { slots, .. } = all[0].choice else {
            unreachable!()
        };
        // RAM bases 0, 2 MiB, …, 3 GiB − 64 MiB.
        assert_eq!(slots, (3 * GIB - ram) / (2 * MIB) + 1);
        assert_eq!((all[0].ram_base, all[0].kernel_base), (0, 0x40000));
        assert_eq!(all[1].kernel_base, 2 * MIB + 0x40000);
        let last = all[slots as usize - 1];
        assert_eq!(last.ram_base, 3 * GIB - ram);
        // Then round again.
        assert_eq!(all[slots as usize].ram_base, 0);
    }

    #[test]
    fn no_random_base_puts_the_kernel_across_a_gib_boundary() {
        let rules = &x86_64::layout::RULES;
        // Hermit 0.11's x86_64 demo: 0x3b_f968 bytes from RAM base + 0x40000.
        let image = pie(rules, 0x3b_f968);
        let ram = 64 * MIB;
        let all = placements(rules, ram, &image, 1600);
        for placed in &all {
            assert_sound(rules, ram, &image, *placed);
            let end = placed.kernel_base + image.footprint + KERNEL_ZEROED_AFTER_IMAGE - 1;
            assert_eq!(placed.kernel_base / GIB, end / GIB, "{placed}");
        }
        // The draws that gave RAM at 0x3fc0_0000 (the image ending just below 1 GiB) and
        // 0x3fe0_0000 (the image across it) take the next slot that keeps it clear.
        let at = |random| place_guest(rules, ram, &image, Some(random)).ram_base;
        assert_eq!(at(509), 0x3fa0_0000);
        assert_eq!(at(510), 0x4000_0000);
        assert_eq!(at(511), 0x4000_0000);
        let bases: std::collections::BTreeSet<u64> = all.iter().map(|p| p.ram_base).collect();
        assert!(bases.len() > 1400, "{} bases", bases.len());
    }

    #[test]
    fn v2_ram_moves_between_4_and_64_gib() {
        for rules in [&x86_64::layout::HIGH_RULES, &aarch64::layout::HIGH_RULES] {
            let image = pie(rules, 5 * MIB);
            let ram = 256 * MIB;
            for placed in placements(rules, ram, &image, 500) {
                assert_sound(rules, ram, &image, placed);
                assert!(placed.ram_base >= 4 * GIB);
                assert!(placed.ram_base + ram <= 64 * GIB);
            }
            let placed = place_guest(rules, ram, &image, Some(u64::MAX));
            assert_sound(rules, ram, &image, placed);
        }
    }

    #[test]
    fn aarch64_v1_ram_moves_above_the_gic_and_stays_below_4_gib() {
        let rules = &aarch64::layout::RULES;
        let image = ImageFacts {
            alignment: 0x10000,
            ..pie(rules, 2 * MIB + 0x4000)
        };
        for ram in [64 * MIB, 2 * GIB] {
            let placed = placements(rules, ram, &image, 500);
            for placed in &placed {
                assert_sound(rules, ram, &image, *placed);
                assert!(placed.ram_base >= 0x1000_0000);
                // Hermit's aarch64 kernels need kernel and heap below 4 GiB.
                assert!(placed.ram_base + ram <= 4 * GIB, "{placed:?}");
            }
            // Every base up to that limit is possible: 2 MiB steps from 256 MiB.
            let LayoutChoice::Random { slots, .. } = placed[0].choice else {
                panic!("{:?}", placed[0]);
            };
            assert_eq!(slots, (4 * GIB - 0x1000_0000 - ram) / (2 * MIB) + 1);
        }
        // RAM that fills the first 4 GiB, or goes beyond, stays at the lowest base.
        for ram in [4 * GIB - 0x1000_0000, 8 * GIB] {
            let placed = place_guest(rules, ram, &image, Some(7));
            assert_eq!(placed.choice, LayoutChoice::NoRoom, "{ram:#x}");
            assert_eq!(placed.ram_base, 0x1000_0000);
        }
    }

    #[test]
    fn tiny_ram_moves_and_huge_ram_cannot() {
        let rules = &x86_64::layout::RULES;
        let image = pie(rules, 3 * MIB);
        for placed in placements(rules, 16 * MIB, &image, 100) {
            assert_sound(rules, 16 * MIB, &image, placed);
        }
        // The largest v1 RAM fills the range: the lowest base.
        let placed = place_guest(rules, 3 * GIB, &image, Some(7));
        assert_eq!(placed.choice, LayoutChoice::NoRoom);
        assert_eq!((placed.ram_base, placed.kernel_base), (0, 0x40000));
        // 2 MiB less: two RAM bases, 0 and 2 MiB.
        let ram = 3 * GIB - 2 * MIB;
        let bases: Vec<u64> = placements(rules, ram, &image, 4)
            .iter()
            .map(|placed| placed.ram_base)
            .collect();
        assert_eq!(bases, [0, 2 * MIB, 0, 2 * MIB]);
    }

    #[test]
    fn an_image_that_barely_fits_moves_and_one_that_does_not_fit_stays() {
        let rules = &x86_64::layout::RULES;
        let ram = 16 * MIB;
        // At the lowest base it ends at 14 MiB: rounded 14 MiB plus 2 MiB of heap = 16 MiB.
        let barely = pie(rules, 14 * MIB - 0x40000);
        assert_eq!(rules.check_kernel_placement(0x40000..14 * MIB, ram), Ok(()));
        for placed in placements(rules, ram, &barely, 50) {
            assert_sound(rules, ram, &barely, placed);
        }
        // One byte more fits nowhere: the lowest base, for the layout to reject.
        let too_big = pie(rules, 14 * MIB - 0x40000 + 1);
        let placed = place_guest(rules, ram, &too_big, Some(3));
        assert_eq!(placed.choice, LayoutChoice::NoRoom);
        assert_eq!(placed.kernel_base, 0x40000);
    }

    #[test]
    fn a_large_image_alignment_is_kept() {
        let rules = &x86_64::layout::RULES;
        let image = ImageFacts {
            alignment: 8 * MIB,
            lowest_base: 8 * MIB,
            ..pie(rules, 3 * MIB)
        };
        for placed in placements(rules, 64 * MIB, &image, 100) {
            assert_sound(rules, 64 * MIB, &image, placed);
            assert_eq!(placed.kernel_base % (8 * MIB), 0);
        }
    }

    #[test]
    fn placements_explain_themselves() {
        let rules = &x86_64::layout::RULES;
        let image = pie(rules, 3 * MIB);
        let text = place_guest(rules, 64 * MIB, &image, Some(2)).to_string();
        assert!(
            text.starts_with(
                "kernel base 0x440000, guest RAM from 0x400000 (ASLR: 2 MiB-aligned RAM base 3 of "
            ),
            "{text}"
        );
        let text = place_guest(rules, 64 * MIB, &image, None).to_string();
        assert_eq!(
            text,
            "kernel base 0x40000, guest RAM from 0x0 (ASLR off: the lowest base)"
        );
    }

    #[test]
    fn the_os_gives_random_values() {
        let values: std::collections::BTreeSet<u64> =
            (0..4).map(|_| os_random().unwrap()).collect();
        assert!(values.len() > 1, "{values:?}");
    }
}
