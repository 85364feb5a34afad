//! Fuzz target `aarch64_abort`: the aarch64 data-abort syndrome decoder, checked field by field
//! against the ESR_EL2 layout (Arm ARM D17.2.37, ISS encoding for a data abort).

use arbitrary::{Arbitrary, Unstructured};

use crate::arch::aarch64::{
    DataAbort, EsrError, decode_data_abort, exception_class, exception_class_name,
};

/// One data abort as a backend would report it.
#[derive(Debug, Arbitrary)]
struct AbortInput {
    syndrome: u64,
    ipa: u64,
    registers: [u64; 31],
    /// The bytes a hypercall read returns, for a decoded load.
    loaded: u64,
}

/// Decodes an arbitrary syndrome and checks every decoded field against the raw bits.
pub fn aarch64_abort(data: &[u8]) {
    let Ok(input) = AbortInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut reads = 0;
    let decoded = decode_data_abort(input.syndrome, input.ipa, |number| {
        reads += 1;
        input.registers[usize::from(number)]
    });
    let class = exception_class(input.syndrome);
    assert!(class < 64);
    assert!(!exception_class_name(class).is_empty());
    match decoded {
        Ok(abort) => check_abort(&input, &abort, reads),
        Err(EsrError::NotADataAbort { ec, .. }) => {
            assert_eq!(ec, class);
            assert!(class != 0x24 && class != 0x25);
        }
        Err(EsrError::NoSyndrome { esr, ipa }) => {
            assert_eq!((esr, ipa), (input.syndrome, input.ipa));
            assert_eq!(input.syndrome & (1 << 24), 0);
        }
    }
}

/// The decoded abort against the syndrome bits it came from.
fn check_abort(input: &AbortInput, abort: &DataAbort, register_reads: u32) {
    let esr = input.syndrome;
    let bit = |n: u32| esr >> n & 1 == 1;
    assert!(matches!(exception_class(esr), 0x24 | 0x25) && bit(24));
    assert_eq!(abort.address, input.ipa);
    assert_eq!(u64::from(abort.size), 1 << (esr >> 22 & 3));
    assert_eq!(u64::from(abort.register), esr >> 16 & 31);
    assert_eq!(abort.is_write, bit(6));
    assert_eq!(abort.sign_extend, bit(21));
    assert_eq!(abort.sixty_four_bit, bit(15));
    assert_eq!(abort.acquire_release, bit(14));
    let bits = u32::from(abort.size) * 8;
    let mask = u64::MAX >> (64 - bits);
    let stores_a_register = abort.is_write && abort.register != 31;
    assert_eq!(register_reads, u32::from(stores_a_register));
    let expected_value = if stores_a_register {
        input.registers[usize::from(abort.register)] & mask
    } else {
        0
    };
    assert_eq!(abort.value, expected_value);
    assert_eq!(
        abort.load_target(),
        (!abort.is_write && abort.register != 31).then_some(abort.register)
    );
    let result = abort.load_result(input.loaded);
    let value = input.loaded & mask;
    let negative = value >> (bits - 1) & 1 == 1;
    let extended = if abort.sign_extend && negative {
        value | !mask
    } else {
        value
    };
    let expected = if abort.sixty_four_bit {
        extended
    } else {
        extended & 0xFFFF_FFFF
    };
    assert_eq!(result, expected, "{abort:?} loading {:#x}", input.loaded);
}
