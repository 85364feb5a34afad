//! Guest RAM and the one checked door into it.
//!
//! [`GuestMemory`] owns the anonymous, `MAP_NORESERVE` mapping that backs guest-physical RAM
//! (through vm-memory), so a large `--memory-size` costs nothing until the guest touches it.
//! Every access by the host — loader, boot structures, hypercall parameters, guest buffers — goes
//! through [`GuestMemory::checked_range`], which validates an address and a length with
//! overflow-safe arithmetic against the RAM range. Data is always *copied* in or out; the host
//! never holds a reference into guest RAM, so a guest writing concurrently cannot change a value
//! after it was checked.
//!
//! [`virt`] is the one door to guest memory by guest-virtual address: through the guest's page
//! tables, page by page, every piece checked here. [`advice`] asks the host kernel, on request,
//! to back guest RAM with huge pages or to merge its identical pages.

pub mod advice;
pub mod virt;

use std::mem::{MaybeUninit, size_of};

use thiserror::Error;
use uhyve_interface::GuestPhysAddr;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _, GuestMemoryMmap};

pub use self::advice::RamAdvice;

/// Failures of guest-memory accesses.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MemoryError {
    /// The range `[address, address + len)` is not inside guest RAM (or overflows).
    #[error(
        "guest range {address:#x}+{len:#x} lies outside guest RAM {ram_start:#x}..{ram_end:#x}"
    )]
    OutOfRange {
        /// First guest-physical address of the access.
        address: u64,
        /// Length of the access.
        len: u64,
        /// First byte of guest RAM.
        ram_start: u64,
        /// One past the last byte of guest RAM.
        ram_end: u64,
    },
    /// A string that should be NUL-terminated has no NUL within the allowed length.
    #[error("string at guest address {address:#x} is not NUL-terminated within {max_len} bytes")]
    Unterminated {
        /// Guest-physical address of the string.
        address: u64,
        /// How many bytes were searched.
        max_len: u64,
    },
    /// The host could not reserve the address space for guest RAM.
    #[error("cannot map {size} bytes of guest RAM: {reason}")]
    Allocation {
        /// Requested size.
        size: u64,
        /// What the allocator said.
        reason: String,
    },
}

/// Plain-old-data types that may be copied byte for byte out of and into guest memory.
///
/// # Safety
/// Implementors must be `Copy`, have **no padding bytes at all** (every one of the
/// `size_of::<T>()` bytes of a value is initialised: [`GuestMemory::write_obj`] copies them all
/// into guest memory), hold no pointers or references, and accept every bit pattern as a valid
/// value.
pub unsafe trait GuestPod: Copy + 'static {}

macro_rules! guest_pod {
	($($ty:ty),* $(,)?) => {
		$(
			// SAFETY: integers have no padding, hold no pointers and accept every bit pattern.
			unsafe impl GuestPod for $ty {}
		)*
	};
}
guest_pod!(u8, u16, u32, u64, i32, i64);

/// Implements [`GuestPod`] for interface structs, each listed with all its fields, and checks
/// (in the test `guest_pod_structs_have_no_padding`) that the sizes of those fields add up to
/// the size of the struct: no padding. Listing every field is enforced by the compiler (the
/// check destructures a value without `..`). `nested` lists structs that appear as fields of
/// the others: their bytes are copied too, so they must have no padding either.
macro_rules! guest_pod_structs {
	(
		$($ty:path { $($field:ident),* $(,)? }),* $(,)?
		; nested: $($nested:path { $($nested_field:ident),* $(,)? }),* $(,)?
	) => {
		$(
			// SAFETY: a packed or `repr(C)` struct made only of integers, integer arrays, address
			// newtypes (`repr(transparent)` over `u64`) and the `nested` structs, with its padding
			// spelled out as fields, so it has no padding bytes (checked by the test below), holds
			// no pointers and accepts every bit pattern.
			unsafe impl GuestPod for $ty {}
		)*

		#[cfg(test)]
		#[test]
		fn guest_pod_structs_have_no_padding() {
			$(guest_pod_structs!(@no_padding $ty { $($field),* });)*
			$(guest_pod_structs!(@no_padding $nested { $($nested_field),* });)*
		}
	};
	(@no_padding $ty:path { $($field:ident),* }) => {{
		let $ty { $($field),* } = <$ty>::default();
		let fields = 0 $(+ std::mem::size_of_val(&$field))*;
		assert_eq!(size_of::<$ty>(), fields, "{} has padding", stringify!($ty));
	}};
}

// The v1 structs are packed; the v2/v3 structs spell out their padding as fields.
guest_pod_structs!(
    uhyve_interface::CmdsizeParams { argc, argsz, envc, envsz },
    uhyve_interface::CmdvalParams { argv, envp },
    uhyve_interface::ExitParams { arg },
    uhyve_interface::UnlinkParams { name, ret },
    uhyve_interface::WriteParams { fd, buf, len },
    uhyve_interface::ReadParams { fd, buf, len, ret },
    uhyve_interface::CloseParams { fd, ret },
    uhyve_interface::OpenParams { name, flags, mode, ret },
    uhyve_interface::LseekParams { fd, offset, whence },
    uhyve_interface::SerialWriteBufferParams { buf, len },
    uhyve_interface::v2::WriteParamsV2 { len, ret, buf, fd, _padding },
    uhyve_interface::v2::ReadParamsV2 { len, ret, buf, fd, _padding },
    uhyve_interface::v2::LseekParamsV2 { offset, whence, fd },
    uhyve_interface::v2::SerialWriteBufferParamsV2 { len, buf },
    uhyve_interface::v2::SerialReadBufferParams { maxlen, len, buf },
    uhyve_interface::v2::GetdentParams { fd, _padding, buf, len, ret },
    uhyve_interface::v2::MkdirParams { path, len, ret },
    uhyve_interface::v2::StatParams { name, kind, _padding, attr, ret },
    uhyve_interface::v2::FstatParams { fd, _padding, attr, ret },
    uhyve_interface::v2::FileAttr {
        st_dev, st_ino, st_nlink, st_mode, st_uid, st_gid, _padding, st_rdev, st_size,
        st_blksize, st_blocks, st_atim, st_mtim, st_ctim,
    };
    nested:
    uhyve_interface::v2::GetdentResult { tag, _padding, value },
    uhyve_interface::v2::StatusResult { tag, errno },
    uhyve_interface::v2::Timespec { tv_sec, tv_nsec, _padding },
);

/// Guest-physical RAM: one contiguous range `[base, base + size)`.
#[derive(Debug)]
pub struct GuestMemory {
    ram: GuestMemoryMmap,
    base: u64,
    size: u64,
}

impl GuestMemory {
    /// Maps `size` bytes of zeroed guest RAM starting at guest-physical `base`.
    pub fn new(base: GuestPhysAddr, size: u64) -> Result<Self, MemoryError> {
        let allocation_error = |reason: String| MemoryError::Allocation { size, reason };
        let host_size = usize::try_from(size).map_err(|e| allocation_error(e.to_string()))?;
        if size == 0 || base.as_u64().checked_add(size).is_none() {
            return Err(allocation_error("empty or overflowing range".into()));
        }
        let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(base.as_u64()), host_size)])
            .map_err(|e| allocation_error(e.to_string()))?;
        Ok(Self {
            ram,
            base: base.as_u64(),
            size,
        })
    }

    /// RAM as `vm-memory` sees it, for device models built on rust-vmm crates
    /// (`virtio-queue`): their accesses are bounds-checked by `vm-memory` itself.
    pub fn as_vm_memory(&self) -> &GuestMemoryMmap {
        &self.ram
    }

    /// First guest-physical address of RAM.
    pub fn base(&self) -> GuestPhysAddr {
        GuestPhysAddr::new(self.base)
    }

    /// Size of guest RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host virtual address of the first byte of guest RAM, for registering the memory slot
    /// with the hypervisor. The host never dereferences it outside this module.
    pub fn host_address(&self) -> *mut u8 {
        self.ram
            .get_host_address(GuestAddress(self.base))
            .expect("guest RAM base is always mapped")
    }

    /// Mutable access to `[address, address + len)` for loading the kernel before the VM runs.
    /// `&mut self` guarantees that nothing else in uhyve accesses guest RAM meanwhile; callers
    /// use it only before any vCPU exists, so the guest cannot either.
    pub fn slice_for_loading(
        &mut self,
        address: GuestPhysAddr,
        len: u64,
    ) -> Result<&mut [u8], MemoryError> {
        let offset = self.checked_range(address, len)?;
        // Both fit in usize: the RAM size does (checked in `new`), and they lie inside it.
        let (offset, len) = (offset as usize, len as usize);
        // SAFETY: `checked_range` proved the range lies inside the mapping, which lives as long
        // as `self`; `&mut self` makes the returned slice the only Rust access to it for its
        // lifetime, and no vCPU runs while the caller loads (see above).
        Ok(unsafe { std::slice::from_raw_parts_mut(self.host_address().add(offset), len) })
    }

    /// The single bounds check: `[address, address + len)` must lie inside RAM.
    /// Returns the offset of `address` from the RAM base.
    pub fn checked_range(&self, address: GuestPhysAddr, len: u64) -> Result<u64, MemoryError> {
        let address = address.as_u64();
        let out_of_range = || MemoryError::OutOfRange {
            address,
            len,
            ram_start: self.base,
            ram_end: self.base + self.size,
        };
        let offset = address.checked_sub(self.base).ok_or_else(out_of_range)?;
        let end = offset.checked_add(len).ok_or_else(out_of_range)?;
        if end > self.size {
            return Err(out_of_range());
        }
        Ok(offset)
    }

    /// Copies `buf.len()` bytes out of guest RAM.
    pub fn read(&self, address: GuestPhysAddr, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.checked_range(address, buf.len() as u64)?;
        self.ram
            .read_slice(buf, GuestAddress(address.as_u64()))
            .map_err(|_| self.out_of_range(address, buf.len() as u64))
    }

    /// Copies `data` into guest RAM.
    pub fn write(&self, address: GuestPhysAddr, data: &[u8]) -> Result<(), MemoryError> {
        self.checked_range(address, data.len() as u64)?;
        self.ram
            .write_slice(data, GuestAddress(address.as_u64()))
            .map_err(|_| self.out_of_range(address, data.len() as u64))
    }

    /// Fills `[address, address + len)` with zeros.
    pub fn zero(&self, address: GuestPhysAddr, len: u64) -> Result<(), MemoryError> {
        self.checked_range(address, len)?;
        const CHUNK: usize = 64 * 1024;
        let zeros = [0u8; CHUNK];
        let mut done = 0u64;
        while done < len {
            let step = (len - done).min(CHUNK as u64);
            // In range: checked above for the whole span.
            self.write(
                GuestPhysAddr::new(address.as_u64() + done),
                &zeros[..step as usize],
            )?;
            done += step;
        }
        Ok(())
    }

    /// Copies a value of type `T` out of guest RAM.
    pub fn read_obj<T: GuestPod>(&self, address: GuestPhysAddr) -> Result<T, MemoryError> {
        let mut value = MaybeUninit::<T>::zeroed();
        // SAFETY: the slice covers exactly the bytes of `value`, which is zero-initialised, so
        // viewing it as bytes is sound; `GuestPod` guarantees any bytes form a valid `T`.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(value.as_mut_ptr().cast::<u8>(), size_of::<T>())
        };
        self.read(address, bytes)?;
        // SAFETY: fully initialised by the zeroing and then the copy; any bit pattern is valid.
        Ok(unsafe { value.assume_init() })
    }

    /// Copies `value` into guest RAM.
    pub fn write_obj<T: GuestPod>(
        &self,
        address: GuestPhysAddr,
        value: &T,
    ) -> Result<(), MemoryError> {
        // SAFETY: `value` is a valid `T` borrowed for the duration of the call; a `GuestPod` has
        // no padding, so all its `size_of::<T>()` bytes are initialised and may be viewed as such.
        let bytes =
            unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) };
        self.write(address, bytes)
    }

    /// Reads a NUL-terminated string of at most `max_len` bytes (NUL excluded). Fails if no NUL
    /// occurs within `max_len + 1` bytes or before the end of RAM.
    pub fn read_c_string(
        &self,
        address: GuestPhysAddr,
        max_len: u64,
    ) -> Result<Vec<u8>, MemoryError> {
        let bytes = self.read_bounded(address, max_len.saturating_add(1))?;
        match bytes.iter().position(|&b| b == 0) {
            Some(nul) => Ok(bytes[..nul].to_vec()),
            None => Err(MemoryError::Unterminated {
                address: address.as_u64(),
                max_len,
            }),
        }
    }

    /// Reads bytes starting at `address` up to the first NUL, `max_len` bytes or the end of RAM,
    /// whichever comes first (for strings the guest does not terminate). The start must be in RAM.
    pub fn read_until_nul_or_end(
        &self,
        address: GuestPhysAddr,
        max_len: u64,
    ) -> Result<Vec<u8>, MemoryError> {
        let mut bytes = self.read_bounded(address, max_len)?;
        if let Some(nul) = bytes.iter().position(|&b| b == 0) {
            bytes.truncate(nul);
        }
        Ok(bytes)
    }

    /// Reads `min(max_len, bytes left in RAM)` bytes starting at `address` (which must be in RAM).
    fn read_bounded(&self, address: GuestPhysAddr, max_len: u64) -> Result<Vec<u8>, MemoryError> {
        let offset = self.checked_range(address, 1)?;
        let available = self.size - offset;
        let len = max_len.min(available);
        let mut bytes = vec![0u8; len as usize];
        self.read(address, &mut bytes)?;
        Ok(bytes)
    }

    fn out_of_range(&self, address: GuestPhysAddr, len: u64) -> MemoryError {
        MemoryError::OutOfRange {
            address: address.as_u64(),
            len,
            ram_start: self.base,
            ram_end: self.base + self.size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemory {
        GuestMemory::new(GuestPhysAddr::new(0x1000), 0x4000).unwrap()
    }

    #[test]
    fn bounds_are_checked_at_both_ends() {
        let mem = memory();
        assert_eq!(mem.checked_range(GuestPhysAddr::new(0x1000), 0x4000), Ok(0));
        assert_eq!(mem.checked_range(GuestPhysAddr::new(0x4fff), 1), Ok(0x3fff));
        assert!(mem.checked_range(GuestPhysAddr::new(0x4fff), 2).is_err());
        assert!(mem.checked_range(GuestPhysAddr::new(0xfff), 1).is_err());
        assert!(mem.checked_range(GuestPhysAddr::new(0x5000), 0).is_ok());
        assert!(mem.checked_range(GuestPhysAddr::new(0x5001), 0).is_err());
    }

    #[test]
    fn overflowing_ranges_are_rejected() {
        let mem = memory();
        assert!(
            mem.checked_range(GuestPhysAddr::new(0x2000), u64::MAX)
                .is_err()
        );
        assert!(mem.checked_range(GuestPhysAddr::new(u64::MAX), 1).is_err());
        assert!(
            mem.checked_range(GuestPhysAddr::new(u64::MAX), u64::MAX)
                .is_err()
        );
        let mut buf = [0u8; 4];
        assert!(
            mem.read(GuestPhysAddr::new(u64::MAX - 1), &mut buf)
                .is_err()
        );
        assert!(
            mem.zero(GuestPhysAddr::new(0x2000), u64::MAX - 0x1000)
                .is_err()
        );
    }

    #[test]
    fn objects_round_trip_and_packed_structs_work() {
        let mem = memory();
        let params = uhyve_interface::ReadParams {
            fd: 3,
            buf: uhyve_interface::GuestVirtAddr::new(0xdead_beef),
            len: 77,
            ret: -9,
        };
        mem.write_obj(GuestPhysAddr::new(0x1003), &params).unwrap();
        let back: uhyve_interface::ReadParams = mem.read_obj(GuestPhysAddr::new(0x1003)).unwrap();
        let (fd, buf, len, ret) = (back.fd, back.buf, back.len, back.ret);
        assert_eq!((fd, buf.as_u64(), len, ret), (3, 0xdead_beef, 77, -9));
        assert!(mem.read_obj::<u64>(GuestPhysAddr::new(0x4ffc)).is_err());
    }

    #[test]
    fn strings_stop_at_nul_and_at_the_end_of_ram() {
        let mem = memory();
        mem.write(GuestPhysAddr::new(0x2000), b"hello\0world")
            .unwrap();
        assert_eq!(
            mem.read_c_string(GuestPhysAddr::new(0x2000), 100).unwrap(),
            b"hello"
        );
        assert!(matches!(
            mem.read_c_string(GuestPhysAddr::new(0x2000), 3),
            Err(MemoryError::Unterminated { .. })
        ));
        // Unterminated string running into the end of RAM.
        mem.write(GuestPhysAddr::new(0x4ffc), b"abcd").unwrap();
        assert!(mem.read_c_string(GuestPhysAddr::new(0x4ffc), 4096).is_err());
        assert_eq!(
            mem.read_until_nul_or_end(GuestPhysAddr::new(0x4ffc), 4096)
                .unwrap(),
            b"abcd"
        );
        assert!(
            mem.read_until_nul_or_end(GuestPhysAddr::new(0x5000), 10)
                .is_err()
        );
    }

    #[test]
    fn loading_slices_are_bounds_checked_and_visible() {
        let mut mem = memory();
        assert!(
            mem.slice_for_loading(GuestPhysAddr::new(0x4ff0), 0x20)
                .is_err()
        );
        assert!(mem.slice_for_loading(GuestPhysAddr::new(0), 1).is_err());
        let slice = mem
            .slice_for_loading(GuestPhysAddr::new(0x2000), 4)
            .unwrap();
        slice.copy_from_slice(b"load");
        let mut back = [0u8; 4];
        mem.read(GuestPhysAddr::new(0x2000), &mut back).unwrap();
        assert_eq!(&back, b"load");
    }

    #[test]
    fn large_memory_is_reserved_lazily() {
        // 64 GiB of address space must not need 64 GiB of host memory.
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 64 << 30).unwrap();
        mem.write_obj(GuestPhysAddr::new((64 << 30) - 8), &0x1234u64)
            .unwrap();
        assert_eq!(
            mem.read_obj::<u64>(GuestPhysAddr::new((64 << 30) - 8)),
            Ok(0x1234)
        );
    }
}
