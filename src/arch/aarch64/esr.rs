//! Decoding of aarch64 exception syndromes (ESR_EL2) into backend-neutral values.
//!
//! A v1/v2 hypercall on aarch64 is a store to an address the hypervisor left without stage-2
//! access rights, so it reaches the host as a data abort. [`decode_data_abort`] turns the
//! syndrome of such an abort into a [`DataAbort`]: the faulting IPA, the access size, its
//! direction, the transfer register and — for stores — the value stored, read through a callback
//! so that any backend (Hypervisor.framework, KVM) can supply its registers. Nothing here touches
//! a hypervisor API; every field is taken from the 64-bit syndrome the caller passes in.

use thiserror::Error;

/// Exception class of a data abort taken from a lower exception level (the guest at EL0/EL1).
pub const EC_DATA_ABORT_LOWER_EL: u8 = 0x24;
/// Exception class of a data abort taken without a change in exception level.
pub const EC_DATA_ABORT_SAME_EL: u8 = 0x25;

/// Register number that encodes XZR (reads as zero, writes are discarded) in the SRT field.
pub const XZR: u8 = 31;

/// ISS.ISV: the instruction-syndrome fields below are valid.
const ISV: u64 = 1 << 24;
/// ISS.SSE: the load sign-extends its result.
const SSE: u64 = 1 << 21;
/// ISS.SF: the transfer register is 64 bits wide (X), otherwise 32 bits (W).
const SF: u64 = 1 << 15;
/// ISS.AR: the access has acquire/release semantics.
const AR: u64 = 1 << 14;
/// ISS.WnR: the access is a write.
const WNR: u64 = 1 << 6;

/// Failures of syndrome decoding.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EsrError {
    /// The exception class is not a data abort.
    #[error("exception class {ec:#04x} ({name}) is not a data abort (expected 0x24 or 0x25)")]
    NotADataAbort {
        /// The exception class, ESR bits 31:26.
        ec: u8,
        /// Its name, from [`exception_class_name`].
        name: &'static str,
    },
    /// The syndrome does not describe the access (ISV clear).
    #[error(
        "data abort at IPA {ipa:#x} (ESR {esr:#x}) carries no instruction syndrome (ISV = 0): \
         the access cannot be decoded from ESR — the guest used an instruction such as a load/store \
         pair, a register write-back form or a SIMD access, which the hypervisor cannot emulate"
    )]
    NoSyndrome {
        /// The full syndrome.
        esr: u64,
        /// The faulting intermediate physical address.
        ipa: u64,
    },
}

/// A decoded data abort: one load or store of 1, 2, 4 or 8 bytes at an IPA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataAbort {
    /// The faulting intermediate physical address (guest-physical address).
    pub address: u64,
    /// Access size in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// `true` for a store, `false` for a load.
    pub is_write: bool,
    /// Transfer register number (SRT): 0 … 30 for X0 … X30, [`XZR`] (31) for XZR.
    pub register: u8,
    /// For stores: the stored value (the register masked to `size`; XZR stores 0). For loads: 0.
    pub value: u64,
    /// Loads only: the result is sign-extended to the register width (SSE).
    pub sign_extend: bool,
    /// The transfer register is 64 bits wide (SF); otherwise the 32-bit W view.
    pub sixty_four_bit: bool,
    /// The access has acquire/release semantics (AR).
    pub acquire_release: bool,
}

impl DataAbort {
    /// Mask of the low `size` bytes.
    fn size_mask(&self) -> u64 {
        size_mask(self.size)
    }

    /// The register a load must write its result to, or `None` when the target is XZR (the
    /// result is discarded) or the access is a store.
    pub fn load_target(&self) -> Option<u8> {
        (!self.is_write && self.register != XZR).then_some(self.register)
    }

    /// The value a load of `data` (the bytes read, little-endian in the low bits) leaves in the
    /// transfer register: truncated to the access size, sign-extended if SSE is set, and cut to
    /// 32 bits (upper half zero) if the register is a W register.
    pub fn load_result(&self, data: u64) -> u64 {
        let masked = data & self.size_mask();
        let bits = u32::from(self.size) * 8;
        let extended = if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            // Arithmetic shift: moves the access's sign bit through the upper bits.
            (((masked << shift) as i64) >> shift) as u64
        } else {
            masked
        };
        if self.sixty_four_bit {
            extended
        } else {
            extended & 0xFFFF_FFFF
        }
    }
}

/// Mask of the low `size` bytes (size 8 or more: all bits).
fn size_mask(size: u8) -> u64 {
    match size {
        0..=7 => (1u64 << (u32::from(size) * 8)) - 1,
        _ => u64::MAX,
    }
}

/// The exception class, ESR bits 31:26.
pub fn exception_class(esr: u64) -> u8 {
    // Masked to 6 bits, always fits.
    ((esr >> 26) & 0x3F) as u8
}

/// Decodes the data abort with syndrome `esr` at intermediate physical address `ipa`.
///
/// `read_register(n)` must return Xn for n in 0 … 30; it is called at most once, only for stores
/// whose source is not XZR.
pub fn decode_data_abort(
    esr: u64,
    ipa: u64,
    mut read_register: impl FnMut(u8) -> u64,
) -> Result<DataAbort, EsrError> {
    let ec = exception_class(esr);
    if ec != EC_DATA_ABORT_LOWER_EL && ec != EC_DATA_ABORT_SAME_EL {
        return Err(EsrError::NotADataAbort {
            ec,
            name: exception_class_name(ec),
        });
    }
    if esr & ISV == 0 {
        return Err(EsrError::NoSyndrome { esr, ipa });
    }
    // SAS (bits 23:22) is the log2 of the size: 1, 2, 4 or 8 bytes.
    let size = 1u8 << ((esr >> 22) & 0x3);
    // Masked to 5 bits, always fits.
    let register = ((esr >> 16) & 0x1F) as u8;
    let is_write = esr & WNR != 0;
    let value = match (is_write, register) {
        (false, _) | (true, XZR) => 0,
        (true, n) => read_register(n) & size_mask(size),
    };
    Ok(DataAbort {
        address: ipa,
        size,
        is_write,
        register,
        value,
        sign_extend: esr & SSE != 0,
        sixty_four_bit: esr & SF != 0,
        acquire_release: esr & AR != 0,
    })
}

/// A short name of exception class `ec` (ESR bits 31:26), for messages.
pub fn exception_class_name(ec: u8) -> &'static str {
    match ec {
        0x00 => "unknown reason",
        0x01 => "trapped WFI/WFE",
        0x03 | 0x04 | 0x05 | 0x06 | 0x0C => "trapped AArch32 coprocessor access",
        0x07 => "trapped SVE/SIMD/floating-point access",
        0x0E => "illegal execution state",
        0x11 => "SVC in AArch32",
        0x12 => "HVC in AArch32",
        0x13 => "SMC in AArch32",
        0x15 => "SVC (supervisor call)",
        0x16 => "HVC (hypervisor call)",
        0x17 => "SMC (secure monitor call)",
        0x18 => "trapped MSR/MRS/system instruction",
        0x19 => "trapped SVE access",
        0x1F => "implementation-defined exception to EL3",
        0x20 => "instruction abort from a lower exception level",
        0x21 => "instruction abort at the same exception level",
        0x22 => "PC alignment fault",
        0x24 => "data abort from a lower exception level",
        0x25 => "data abort at the same exception level",
        0x26 => "SP alignment fault",
        0x28 => "floating-point exception in AArch32",
        0x2C => "floating-point exception",
        0x2F => "SError interrupt",
        0x30 => "breakpoint from a lower exception level",
        0x31 => "breakpoint at the same exception level",
        0x32 => "software step from a lower exception level",
        0x33 => "software step at the same exception level",
        0x34 => "watchpoint from a lower exception level",
        0x35 => "watchpoint at the same exception level",
        0x38 => "BKPT in AArch32",
        0x3C => "BRK instruction",
        _ => "unallocated exception class",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Builds a data-abort syndrome (EC 0x24, IL set) from its fields.
    fn esr(sas: u64, srt: u64, write: bool) -> u64 {
        (0x24 << 26)
            | (1 << 25)
            | ISV
            | (sas << 22)
            | (srt << 16)
            | SF
            | if write { WNR } else { 0 }
    }

    /// X0 … X30 hold 0x1111_2222_3333_4400 + n.
    fn registers(n: u8) -> u64 {
        assert!(n < 31, "XZR must not be read through the callback");
        0x1111_2222_3333_4400 + u64::from(n)
    }

    #[test]
    fn every_size_of_store_is_masked() {
        let expected = [
            (0, 1, 0x08),
            (1, 2, 0x4408),
            (2, 4, 0x3333_4408),
            (3, 8, 0x1111_2222_3333_4408),
        ];
        for (sas, size, value) in expected {
            let abort = decode_data_abort(esr(sas, 8, true), 0x1000_0540, registers).unwrap();
            assert_eq!(
                abort,
                DataAbort {
                    address: 0x1000_0540,
                    size,
                    is_write: true,
                    register: 8,
                    value,
                    sign_extend: false,
                    sixty_four_bit: true,
                    acquire_release: false,
                },
                "SAS {sas}"
            );
        }
    }

    #[test]
    fn every_size_of_load_decodes_without_reading_registers() {
        let reads = Cell::new(0);
        let count = |n: u8| {
            reads.set(reads.get() + 1);
            registers(n)
        };
        for (sas, size) in [(0, 1), (1, 2), (2, 4), (3, 8)] {
            let abort = decode_data_abort(esr(sas, 3, false), 0x10, count).unwrap();
            assert_eq!((abort.size, abort.is_write, abort.value), (size, false, 0));
            assert_eq!(abort.register, 3);
            assert_eq!(abort.load_target(), Some(3));
        }
        assert_eq!(reads.get(), 0);
    }

    #[test]
    fn xzr_stores_zero_and_is_never_read() {
        let abort = decode_data_abort(esr(3, 31, true), 0x880, registers).unwrap();
        assert_eq!((abort.register, abort.value), (XZR, 0));
        let load = decode_data_abort(esr(3, 31, false), 0x880, registers).unwrap();
        assert_eq!(load.load_target(), None);
    }

    #[test]
    fn same_el_aborts_and_flags_are_decoded() {
        let raw = (0x25 << 26) | ISV | (1 << 22) | (30 << 16) | SSE | AR;
        let abort = decode_data_abort(raw, 0x42, registers).unwrap();
        assert_eq!(abort.size, 2);
        assert_eq!(abort.register, 30);
        assert!(abort.sign_extend && abort.acquire_release);
        assert!(!abort.sixty_four_bit && !abort.is_write);
    }

    #[test]
    fn load_results_are_truncated_and_extended() {
        let load = |sas: u64, sse: bool, sf: bool| {
            let mut raw = esr(sas, 1, false) & !SF;
            if sse {
                raw |= SSE;
            }
            if sf {
                raw |= SF;
            }
            decode_data_abort(raw, 0, registers).unwrap()
        };
        assert_eq!(load(0, false, true).load_result(0xFFFF_FF80), 0x80);
        assert_eq!(
            load(0, true, true).load_result(0xFFFF_FF80),
            0xFFFF_FFFF_FFFF_FF80
        );
        assert_eq!(load(0, true, false).load_result(0x80), 0xFFFF_FF80);
        assert_eq!(load(1, true, true).load_result(0x7FFF), 0x7FFF);
        assert_eq!(load(2, false, false).load_result(u64::MAX), 0xFFFF_FFFF);
        assert_eq!(load(3, true, true).load_result(u64::MAX), u64::MAX);
        assert_eq!(load(3, false, false).load_result(u64::MAX), 0xFFFF_FFFF);
    }

    #[test]
    fn missing_syndrome_is_an_error() {
        let raw = esr(3, 8, true) & !ISV;
        let err = decode_data_abort(raw, 0x1000_0400, registers).unwrap_err();
        assert_eq!(
            err,
            EsrError::NoSyndrome {
                esr: raw,
                ipa: 0x1000_0400
            }
        );
        let message = err.to_string();
        assert!(
            message.contains("ISV = 0") && message.contains("cannot be decoded"),
            "{message}"
        );
    }

    #[test]
    fn other_exception_classes_are_rejected() {
        for (ec, name) in [
            (0x16u8, "HVC"),
            (0x01, "WFI"),
            (0x3C, "BRK"),
            (0x18, "MSR"),
            (0x20, "instruction abort"),
        ] {
            let raw = (u64::from(ec) << 26) | ISV | WNR;
            let err = decode_data_abort(raw, 0, registers).unwrap_err();
            assert!(matches!(err, EsrError::NotADataAbort { ec: e, .. } if e == ec));
            assert!(err.to_string().contains(name), "{err}");
        }
        // Bits above 31 do not change the class.
        assert!(decode_data_abort(u64::MAX << 32, 0, registers).is_err());
    }

    #[test]
    fn class_names_cover_the_interesting_classes() {
        assert_eq!(exception_class_name(0x17), "SMC (secure monitor call)");
        assert!(exception_class_name(0x24).contains("data abort"));
        assert!(exception_class_name(0x25).contains("data abort"));
        assert_eq!(exception_class_name(0x3F), "unallocated exception class");
        assert_eq!(exception_class(0xFFFF_FFFF), 0x3F);
    }
}
