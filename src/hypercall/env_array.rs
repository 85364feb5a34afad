//! Closing the environment array of Hermit kernels that leave it open.
//!
//! Hermit kernels that fetch their command line with Cmdsize/Cmdval (up to 0.8; the sample 0.6.9
//! images among them) build the environment array they hand to the program as a `Vec` of
//! `envc + 1` pointers, push the `envc` item pointers and never write the last slot, which should
//! be the terminating null. Rust's standard library and newlib read that array up to a null, so the
//! program reads whatever the kernel's allocator left in the slot: when it is not zero, the program
//! follows a stale pointer and faults while it starts (seen with the 0.6.9 images whenever they
//! had fewer than four environment entries and no arguments). Upstream uhyve never showed it
//! because it announced the host's whole environment, which happened to give a zeroed slot.
//!
//! The kernel passes only a copy of the array (`envp`, the same item pointers, guest-physical), so
//! the array itself is found by its `Vec` header near that copy: three words holding the capacity
//! `envc + 1`, the length `envc` and a pointer to an array whose first `envc` entries equal the
//! copy's. The item pointers were allocated by the kernel a moment earlier for this call, so no
//! other memory holds that sequence; a header is only trusted when exactly one array matches and
//! `envc` is at least one (the caller announces one empty item when there is no environment, which
//! programs skip). The spare slot of that array is set to zero: it lies inside the kernel's own
//! allocation, and a kernel that already wrote its terminator is left as it is.

use uhyve_interface::GuestPhysAddr;

use crate::mem::GuestMemory;

/// How far around the copy the header and the array are looked for, each way. The kernel
/// allocates the array, its header and the copy one after the other.
const SEARCH_RADIUS: u64 = 1 << 20;

/// What [`close_env_array`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EnvArrayClosing {
    /// The array at this address had a non-zero spare slot, now zero.
    Closed(GuestPhysAddr),
    /// The array at this address already ends with a null.
    AlreadyClosed(GuestPhysAddr),
    /// No header, or more than one, matched; nothing was written.
    NotFound,
}

/// Finds the environment array whose first entries are `items` (the copy the guest passed at
/// `copy`) and sets its spare slot `items.len()` to zero; see the module text.
pub(super) fn close_env_array(
    mem: &GuestMemory,
    copy: GuestPhysAddr,
    items: &[u64],
) -> EnvArrayClosing {
    if items.is_empty() {
        return EnvArrayClosing::NotFound;
    }
    let Some(array) = unique_array(mem, copy, items) else {
        return EnvArrayClosing::NotFound;
    };
    // The slot was read when the array matched, so the address is inside guest RAM.
    let slot = GuestPhysAddr::new(array.as_u64() + 8 * items.len() as u64);
    match mem.read_obj::<u64>(slot) {
        Ok(0) => EnvArrayClosing::AlreadyClosed(array),
        Ok(_) if mem.write_obj(slot, &0u64).is_ok() => EnvArrayClosing::Closed(array),
        _ => EnvArrayClosing::NotFound,
    }
}

/// The one array, other than the copy, that a `Vec` header near `copy` points to and whose first
/// entries are `items`; `None` if there is none or more than one.
fn unique_array(mem: &GuestMemory, copy: GuestPhysAddr, items: &[u64]) -> Option<GuestPhysAddr> {
    let ram_start = mem.base().as_u64();
    let ram_end = ram_start.checked_add(mem.size())?;
    let start = copy.as_u64().saturating_sub(SEARCH_RADIUS).max(ram_start) & !7;
    let end = copy.as_u64().saturating_add(SEARCH_RADIUS).min(ram_end);
    let mut window = vec![0u8; usize::try_from(end.checked_sub(start)?).ok()? & !7];
    mem.read(GuestPhysAddr::new(start), &mut window).ok()?;
    let words: Vec<u64> = window
        .chunks_exact(8)
        .map(|word| u64::from_le_bytes(word.try_into().expect("chunks of 8 bytes")))
        .collect();
    let (capacity, length) = (items.len() as u64 + 1, items.len() as u64);
    let mut found = None;
    for header in words.windows(3) {
        let Some(array) = header_pointer(header, capacity, length) else {
            continue;
        };
        if array == copy.as_u64() || array % 8 != 0 || Some(array) == found {
            continue;
        }
        if array_matches(mem, array, items) {
            if found.is_some() {
                return None;
            }
            found = Some(array);
        }
    }
    found.map(GuestPhysAddr::new)
}

/// The pointer of a `Vec` header with this capacity and length, in either field order Rust has
/// used for `Vec` (capacity, pointer, length, or pointer, capacity, length).
fn header_pointer(header: &[u64], capacity: u64, length: u64) -> Option<u64> {
    match *header {
        [cap, pointer, len] if cap == capacity && len == length => Some(pointer),
        [pointer, cap, len] if cap == capacity && len == length => Some(pointer),
        _ => None,
    }
}

/// Whether the `items.len() + 1` words at `array` are in guest RAM and start with `items`.
fn array_matches(mem: &GuestMemory, array: u64, items: &[u64]) -> bool {
    let mut words = vec![0u8; 8 * (items.len() + 1)];
    if mem.read(GuestPhysAddr::new(array), &mut words).is_err() {
        return false;
    }
    words
        .chunks_exact(8)
        .zip(items)
        .all(|(word, &item)| u64::from_le_bytes(word.try_into().expect("8 bytes")) == item)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 0x40_0000;
    const COPY: u64 = 0x20_5700;
    const ITEMS: [u64; 2] = [0x20_5800, 0x20_5900];

    fn ram() -> GuestMemory {
        GuestMemory::new(GuestPhysAddr::new(0), RAM).unwrap()
    }

    fn put(mem: &GuestMemory, at: u64, words: &[u64]) {
        for (k, word) in words.iter().enumerate() {
            mem.write_obj(GuestPhysAddr::new(at + 8 * k as u64), word)
                .unwrap();
        }
    }

    /// The layout kernel 0.6.9 leaves: the array, its header, then the copy.
    fn kernel_layout(stale: u64) -> GuestMemory {
        let mem = ram();
        put(&mem, 0x20_5500, &[ITEMS[0], ITEMS[1], stale]);
        put(&mem, 0x20_5600, &[3, 0x20_5500, 2]);
        put(&mem, COPY, &[ITEMS[0], ITEMS[1], 0xdead_beef]);
        mem
    }

    fn slot(mem: &GuestMemory, at: u64) -> u64 {
        mem.read_obj(GuestPhysAddr::new(at)).unwrap()
    }

    #[test]
    fn the_spare_slot_of_the_kernels_array_becomes_null() {
        let mem = kernel_layout(0x6e6f_6973_7265_7620);
        assert_eq!(
            close_env_array(&mem, GuestPhysAddr::new(COPY), &ITEMS),
            EnvArrayClosing::Closed(GuestPhysAddr::new(0x20_5500))
        );
        assert_eq!(slot(&mem, 0x20_5510), 0);
        // The copy and the header are left alone.
        assert_eq!(slot(&mem, COPY + 16), 0xdead_beef);
        assert_eq!(slot(&mem, 0x20_5600), 3);
    }

    #[test]
    fn the_older_vec_field_order_is_recognised() {
        let mem = kernel_layout(1);
        put(&mem, 0x20_5600, &[0x20_5500, 3, 2]);
        assert!(matches!(
            close_env_array(&mem, GuestPhysAddr::new(COPY), &ITEMS),
            EnvArrayClosing::Closed(_)
        ));
        assert_eq!(slot(&mem, 0x20_5510), 0);
    }

    #[test]
    fn an_array_that_ends_with_null_is_not_written() {
        let mem = kernel_layout(0);
        assert_eq!(
            close_env_array(&mem, GuestPhysAddr::new(COPY), &ITEMS),
            EnvArrayClosing::AlreadyClosed(GuestPhysAddr::new(0x20_5500))
        );
    }

    #[test]
    fn nothing_is_written_without_a_matching_header() {
        // No header at all.
        let mem = ram();
        put(&mem, 0x20_5500, &[ITEMS[0], ITEMS[1], 7]);
        put(&mem, COPY, &ITEMS);
        assert_eq!(
            close_env_array(&mem, GuestPhysAddr::new(COPY), &ITEMS),
            EnvArrayClosing::NotFound
        );
        assert_eq!(slot(&mem, 0x20_5510), 7);
        // A header with the wrong length, or pointing at other items.
        for header in [[3, 0x20_5500, 1], [3, 0x20_4000, 2]] {
            let mem = kernel_layout(7);
            put(&mem, 0x20_5600, &header);
            assert_eq!(
                close_env_array(&mem, GuestPhysAddr::new(COPY), &ITEMS),
                EnvArrayClosing::NotFound
            );
            assert_eq!(slot(&mem, 0x20_5510), 7);
        }
        // No items: every {1, P, 0} would match, so nothing is trusted.
        let mem = kernel_layout(7);
        assert_eq!(
            close_env_array(&mem, GuestPhysAddr::new(COPY), &[]),
            EnvArrayClosing::NotFound
        );
    }

    #[test]
    fn two_matching_arrays_are_ambiguous_and_left_alone() {
        let mem = kernel_layout(7);
        put(&mem, 0x20_4000, &[ITEMS[0], ITEMS[1], 9]);
        put(&mem, 0x20_4100, &[3, 0x20_4000, 2]);
        assert_eq!(
            close_env_array(&mem, GuestPhysAddr::new(COPY), &ITEMS),
            EnvArrayClosing::NotFound
        );
        assert_eq!(slot(&mem, 0x20_5510), 7);
        assert_eq!(slot(&mem, 0x20_4010), 9);
    }

    #[test]
    fn hostile_headers_stay_inside_guest_ram() {
        // The copy at the very end of RAM, a header pointing past it, and one at u64::MAX.
        let mem = ram();
        put(&mem, RAM - 0x40, &[3, RAM - 8, 2, 3, u64::MAX - 7, 2]);
        put(&mem, RAM - 0x10, &ITEMS);
        assert_eq!(
            close_env_array(&mem, GuestPhysAddr::new(RAM - 0x10), &ITEMS),
            EnvArrayClosing::NotFound
        );
        // A copy address beyond RAM or near u64::MAX.
        for copy in [RAM + 0x1000, u64::MAX - 3] {
            assert_eq!(
                close_env_array(&mem, GuestPhysAddr::new(copy), &ITEMS),
                EnvArrayClosing::NotFound
            );
        }
    }
}
