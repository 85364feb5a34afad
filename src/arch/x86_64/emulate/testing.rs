//! Test support shared by the emulator's test modules: guest memory as one plain buffer.

use super::state::{EmulationError, GuestAccess};

/// Guest memory for tests: `bytes` seen at guest-virtual address `base`; anything else is a bad
/// address.
pub struct FakeMemory {
    /// Guest-virtual address of `bytes[0]`.
    pub base: u64,
    /// The memory contents.
    pub bytes: Vec<u8>,
}

impl FakeMemory {
    /// `len` bytes of `fill` at `base`.
    pub fn new(base: u64, len: usize, fill: u8) -> Self {
        Self {
            base,
            bytes: vec![fill; len],
        }
    }

    fn range(&self, address: u64, len: usize) -> Result<std::ops::Range<usize>, EmulationError> {
        let bad = EmulationError::BadAddress { address, len };
        let start = address.checked_sub(self.base).ok_or(bad.clone())?;
        let start = usize::try_from(start).map_err(|_| bad.clone())?;
        let end = start.checked_add(len).ok_or(bad.clone())?;
        if end > self.bytes.len() {
            return Err(bad);
        }
        Ok(start..end)
    }
}

impl GuestAccess for FakeMemory {
    fn read(&mut self, address: u64, buf: &mut [u8]) -> Result<(), EmulationError> {
        let range = self.range(address, buf.len())?;
        buf.copy_from_slice(&self.bytes[range]);
        Ok(())
    }

    fn write(&mut self, address: u64, data: &[u8]) -> Result<(), EmulationError> {
        let range = self.range(address, data.len())?;
        self.bytes[range].copy_from_slice(data);
        Ok(())
    }
}
