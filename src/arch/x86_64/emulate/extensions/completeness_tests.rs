//! Proof of [`complete_extensions`]: every in-scope instruction form iced-x86 knows for a
//! claimed extension is implemented. In scope are the legacy- and VEX-encoded forms that need
//! no AVX-family extension besides (so not the `vaes*`/`vpclmulqdq` forms, which need AVX or
//! VAES/VPCLMULQDQ and whose state the guest is told is off) and have no YMM operand; EVEX,
//! XOP and MVEX encodings are out of scope.

use iced_x86::{Code, CpuidFeature, EncodingKind, OpCodeOperandKind};

use super::*;

/// Every extension this module implements forms of.
const EXTENSIONS: [CpuidFeature; 9] = [
    CpuidFeature::AES,
    CpuidFeature::PCLMULQDQ,
    CpuidFeature::SHA,
    CpuidFeature::BMI1,
    CpuidFeature::BMI2,
    CpuidFeature::ADX,
    CpuidFeature::LZCNT,
    CpuidFeature::CLWB,
    CpuidFeature::CLFLUSHOPT,
];

/// Whether `feature` belongs to the AVX family (AVX, AVX2, AVX-512, VAES, VPCLMULQDQ, …).
fn avx_family(feature: CpuidFeature) -> bool {
    let name = format!("{feature:?}");
    name.starts_with("AVX") || matches!(feature, CpuidFeature::VAES | CpuidFeature::VPCLMULQDQ)
}

/// Whether `code` is outside the module's scope (see the module documentation).
fn out_of_scope(code: Code) -> bool {
    let op_code = code.op_code();
    let encoding = !matches!(op_code.encoding(), EncodingKind::Legacy | EncodingKind::VEX);
    let wide = op_code.op_kinds().iter().any(|kind| {
        matches!(
            kind,
            OpCodeOperandKind::ymm_reg
                | OpCodeOperandKind::ymm_rm
                | OpCodeOperandKind::ymm_vvvv
                | OpCodeOperandKind::ymm_or_mem
        )
    });
    encoding || wide || code.cpuid_features().iter().copied().any(avx_family)
}

/// The forms of `feature`, split into (in scope, out of scope).
fn forms_of(feature: CpuidFeature) -> (Vec<Code>, Vec<Code>) {
    Code::values()
        .filter(|code| code.cpuid_features().contains(&feature))
        .partition(|&code| !out_of_scope(code))
}

#[test]
fn every_form_of_a_claimed_extension_is_implemented() {
    let mut checked = 0;
    for &feature in complete_extensions() {
        let (in_scope, _) = forms_of(feature);
        assert!(!in_scope.is_empty(), "{feature:?}: no forms found");
        let missing: Vec<Code> = in_scope
            .iter()
            .copied()
            .filter(|&code| !supports_code(code))
            .collect();
        assert!(
            missing.is_empty(),
            "{feature:?} is claimed complete but lacks {missing:?}"
        );
        checked += in_scope.len();
    }
    println!("{checked} forms of the claimed extensions are implemented");
}

#[test]
fn the_forms_in_and_out_of_scope() {
    let mut implemented = 0;
    for feature in EXTENSIONS {
        let (in_scope, out) = forms_of(feature);
        println!("{feature:?}: in scope {in_scope:?}, out of scope {out:?}");
        implemented += in_scope.len();
        assert!(out.iter().all(|&code| !supports_code(code)), "{out:?}");
    }
    // AES 6, PCLMULQDQ 1, SHA 7, BMI1 13, BMI2 16, ADX 4, LZCNT 3, CLWB 1, CLFLUSHOPT 1.
    assert_eq!(implemented, 52);
}

/// Whether the host CPU has `feature` (what the host-executed forms need).
#[cfg(target_arch = "x86_64")]
fn host_has(feature: CpuidFeature) -> bool {
    match feature {
        CpuidFeature::BMI1 => std::arch::is_x86_feature_detected!("bmi1"),
        CpuidFeature::BMI2 => std::arch::is_x86_feature_detected!("bmi2"),
        CpuidFeature::LZCNT => std::arch::is_x86_feature_detected!("lzcnt"),
        _ => true,
    }
}

/// Other hosts execute nothing natively.
#[cfg(not(target_arch = "x86_64"))]
fn host_has(feature: CpuidFeature) -> bool {
    !matches!(
        feature,
        CpuidFeature::BMI1 | CpuidFeature::BMI2 | CpuidFeature::LZCNT
    )
}

#[test]
fn every_extension_is_complete_where_the_host_can_execute_it() {
    for feature in EXTENSIONS {
        let claimed = complete_extensions().contains(&feature);
        assert_eq!(claimed, host_has(feature), "{feature:?}");
    }
}
