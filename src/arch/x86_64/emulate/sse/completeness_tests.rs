//! Proof of [`complete_extensions`]: every legacy-encoded instruction form iced-x86 knows for a
//! claimed extension is implemented, except the out-of-scope MMX-register and x87 forms. Runs
//! on every host architecture (what is complete depends on host floating point).

use iced_x86::{Code, CpuidFeature, EncodingKind, OpCodeOperandKind};

use super::*;

/// Whether `code` is outside the module's scope: it has an MMX-register operand (`mm`,
/// `mm/m64`) or needs the x87 FPU (`fisttp`).
fn out_of_scope(code: Code) -> bool {
    let mmx_operand = code.op_code().op_kinds().iter().any(|kind| {
        matches!(
            kind,
            OpCodeOperandKind::mm_reg | OpCodeOperandKind::mm_rm | OpCodeOperandKind::mm_or_mem
        )
    });
    mmx_operand || code.cpuid_features().contains(&CpuidFeature::FPU)
}

/// The legacy-encoded forms of `feature`, split into (in scope, out of scope).
fn forms_of(feature: CpuidFeature) -> (Vec<Code>, Vec<Code>) {
    Code::values()
        .filter(|code| {
            code.op_code().encoding() == EncodingKind::Legacy
                && code.cpuid_features().contains(&feature)
        })
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
            .filter(|&code| semantics(code).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "{feature:?} is claimed complete but lacks {missing:?}"
        );
        checked += in_scope.len();
    }
    println!("{checked} forms of the claimed extensions are implemented");
    #[cfg(target_arch = "x86_64")]
    assert!(checked > 300, "only {checked} forms checked");
}

#[test]
fn only_mmx_and_x87_forms_are_left_out() {
    let mut left_out = Vec::new();
    for feature in [
        CpuidFeature::SSE,
        CpuidFeature::SSE2,
        CpuidFeature::SSE3,
        CpuidFeature::SSSE3,
        CpuidFeature::SSE4_1,
        CpuidFeature::SSE4_2,
        CpuidFeature::POPCNT,
    ] {
        let (_, out) = forms_of(feature);
        left_out.extend(out);
    }
    // MMX-register forms: 19 of SSE, 8 of SSE2, 16 of SSSE3; and SSE3's three fisttp.
    assert_eq!(left_out.len(), 46, "{left_out:?}");
    assert!(left_out.iter().all(|code| !supports_code(*code)));
    assert!(left_out.contains(&Code::Fisttp_m64int));
    assert!(left_out.contains(&Code::Pshufb_mm_mmm64));
    assert!(left_out.contains(&Code::Cvtpi2ps_xmm_mmm64));
}

/// Whether [`semantics`] knows `code`.
fn supports_code(code: Code) -> bool {
    semantics(code).is_some()
}
