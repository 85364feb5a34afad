//! System instructions the hypervisor may fail to emulate: XGETBV/XSETBV, RDTSCP, RDRAND and
//! RDSEED, using the host services of `services` ([`SystemServices`]). The XSAVE
//! family itself (XSAVE, XSAVEOPT, XSAVEC, XRSTOR, FXSAVE, FXRSTOR) lives in
//! [`xsave`] and is dispatched from here; LDMXCSR/STMXCSR belong to the SSE module.
//!
//! XGETBV reads XCR0 (ECX = 0) or, if CPUID.(EAX=0xD,ECX=1):EAX\[2\] says the CPU can,
//! `XCR0 & XINUSE` (ECX = 1), with XINUSE as [`xsave::in_use`] tracks it; XSETBV writes XCR0
//! only with a value the virtual CPU supports.

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::operands::gpr_number;
use super::state::{EmulationError, GuestAccess, X86State};
use super::xsave;

pub use super::services::SystemServices;
use super::services::edx_eax;

/// RFLAGS bits RDRAND/RDSEED define: CF set, OF/SF/ZF/AF/PF cleared.
const ARITHMETIC_FLAGS: u64 = 0x8d5;
/// RFLAGS carry flag.
const CF: u64 = 1;

/// The instructions of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SystemInstruction {
    Xgetbv,
    Xsetbv,
    Rdtscp,
    Random,
}

fn classify(instruction: &Instruction) -> Option<SystemInstruction> {
    use SystemInstruction as S;
    Some(match instruction.mnemonic() {
        Mnemonic::Xgetbv => S::Xgetbv,
        Mnemonic::Xsetbv => S::Xsetbv,
        Mnemonic::Rdtscp => S::Rdtscp,
        Mnemonic::Rdrand | Mnemonic::Rdseed => S::Random,
        _ => return None,
    })
}

/// Executes `instruction` if it is one of this module's or of the XSAVE family; `Ok(false)`
/// otherwise.
pub fn execute(
    instruction: &Instruction,
    state: &mut X86State,
    memory: &mut dyn GuestAccess,
    services: &mut dyn SystemServices,
) -> Result<bool, EmulationError> {
    use SystemInstruction as S;
    let Some(kind) = classify(instruction) else {
        return xsave::execute(instruction, state, memory, services);
    };
    match kind {
        S::Xgetbv => xgetbv(instruction, state, services)?,
        S::Xsetbv => xsetbv(instruction, state, services)?,
        S::Rdtscp => {
            let (tsc, aux) = services.read_tsc()?;
            state.set_gpr(0, tsc & 0xffff_ffff);
            state.set_gpr(2, tsc >> 32);
            state.set_gpr(1, u64::from(aux));
        }
        S::Random => random_into_register(instruction, state, services)?,
    }
    Ok(true)
}

/// Whether [`execute`] implements `instruction`.
pub fn supports(instruction: &Instruction) -> bool {
    classify(instruction).is_some() || xsave::supports(instruction)
}

fn xgetbv(
    instruction: &Instruction,
    state: &mut X86State,
    services: &dyn SystemServices,
) -> Result<(), EmulationError> {
    // Components the fallback cannot execute instructions for are reported as disabled.
    let visible = !services.withheld_xcr0();
    let value = match state.gpr(1) & 0xffff_ffff {
        0 => state.xcr0 & visible,
        1 if services.xsave_extensions().xgetbv_in_use => {
            state.xcr0 & xsave::in_use(state) & visible
        }
        other => {
            return Err(EmulationError::guest_exception(
                instruction,
                "#GP",
                format!("XCR{other} cannot be read"),
            ));
        }
    };
    state.set_gpr(0, value & 0xffff_ffff);
    state.set_gpr(2, value >> 32);
    Ok(())
}

fn xsetbv(
    instruction: &Instruction,
    state: &mut X86State,
    services: &mut dyn SystemServices,
) -> Result<(), EmulationError> {
    let register = state.gpr(1) & 0xffff_ffff;
    if register != 0 {
        return Err(EmulationError::guest_exception(
            instruction,
            "#GP",
            format!("XCR{register} cannot be written"),
        ));
    }
    let value = edx_eax(state);
    let supported = services.supported_xcr0();
    if !xcr0_is_architecturally_valid(value) || value & !supported != 0 {
        return Err(EmulationError::guest_exception(
            instruction,
            "#GP",
            format!("XCR0 value {value:#x} is invalid (supported: {supported:#x})"),
        ));
    }
    state.xcr0 = value;
    Ok(())
}

/// The architecture's rules for XCR0 (SDM vol. 1, 13.3): x87 always on; AVX needs SSE; the two
/// MPX components together; the three AVX-512 components together and only with AVX; the two
/// AMX components together.
fn xcr0_is_architecturally_valid(value: u64) -> bool {
    let all_or_none = |mask: u64| value & mask == 0 || value & mask == mask;
    value & 1 == 1
        && (value & 0b100 == 0 || value & 0b10 != 0)
        && all_or_none(0b1_1000)
        && all_or_none(0b1110_0000)
        && (value & 0b1110_0000 == 0 || value & 0b100 != 0)
        && all_or_none(0b11 << 17)
}

fn random_into_register(
    instruction: &Instruction,
    state: &mut X86State,
    services: &mut dyn SystemServices,
) -> Result<(), EmulationError> {
    if instruction.op0_kind() != OpKind::Register {
        return Err(EmulationError::Unsupported(instruction.to_string()));
    }
    let register = instruction.op0_register();
    let Some(number) = gpr_number(register) else {
        return Err(EmulationError::Unsupported(instruction.to_string()));
    };
    let mut bytes = [0u8; 8];
    let size = register.size();
    services.random(&mut bytes[..size])?;
    let value = u64::from_le_bytes(bytes);
    let old = state.gpr(number);
    let new = match size {
        2 => (old & !0xffff) | (value & 0xffff),
        4 => value & 0xffff_ffff,
        _ => value,
    };
    state.set_gpr(number, new);
    state.rflags = (state.rflags & !ARITHMETIC_FLAGS) | CF;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::emulate;
    use super::super::testing::{CODE, FakeMemory, FakeServices, assemble, run, run_with};
    use super::*;
    use iced_x86::code_asm::*;

    const DATA: u64 = 0x10_0000;

    fn is_gp(result: Result<Instruction, EmulationError>) -> bool {
        matches!(
            result,
            Err(EmulationError::GuestException {
                exception: "#GP",
                ..
            })
        )
    }

    #[test]
    fn xgetbv_reads_xcr0_and_xinuse() {
        let bytes = assemble(|a| a.xgetbv());
        let mut state = X86State {
            xcr0: 0x7,
            ..Default::default()
        };
        state.xsave[512] = 0b011; // XSTATE_BV: x87 and SSE in use
        let mut memory = FakeMemory::new(DATA, 0, 0xaa);
        state.set_gpr(1, 0);
        run(&bytes, &mut state, &mut memory).unwrap();
        assert_eq!((state.gpr(0), state.gpr(2)), (7, 0));
        assert_eq!(state.rip, CODE + 3);
        state.set_gpr(1, 1);
        run(&bytes, &mut state, &mut memory).unwrap();
        assert_eq!(state.gpr(0), 0b011);
        // XINUSE is limited to XCR0.
        state.xcr0 = 0x1;
        run(&bytes, &mut state, &mut memory).unwrap();
        assert_eq!(state.gpr(0), 0b001);
        // SSE counts as in use while MXCSR is not 1F80H, even if XSTATE_BV says otherwise.
        state.xcr0 = 0x7;
        state.xsave[512] = 0;
        state.set_mxcsr(0x1fc0);
        run(&bytes, &mut state, &mut memory).unwrap();
        assert_eq!(state.gpr(0), 0b010);

        state.rip = CODE;
        let before = state.clone();
        state.set_gpr(1, 2);
        let before_ecx2 = state.clone();
        assert!(is_gp(run(&bytes, &mut state, &mut memory)));
        assert_eq!(state, before_ecx2, "a failed instruction changes nothing");
        // ECX = 1 needs CPUID.(EAX=0DH,ECX=1):EAX\[2\].
        let mut state = before;
        state.set_gpr(1, 1);
        let mut services = FakeServices::new();
        services.layout.extensions.xgetbv_in_use = false;
        assert!(is_gp(run_with(
            &bytes,
            &mut state,
            &mut memory,
            &mut services
        )));
    }

    #[test]
    fn xsetbv_accepts_only_valid_supported_values() {
        let bytes = assemble(|a| a.xsetbv());
        let mut memory = FakeMemory::new(DATA, 0, 0xaa);
        let mut state = X86State::default();
        let mut try_set = |value: u64, register: u64| {
            state.set_gpr(0, value & 0xffff_ffff);
            state.set_gpr(2, value >> 32);
            state.set_gpr(1, register);
            run(&bytes, &mut state, &mut memory).map(|_| state.xcr0)
        };
        assert_eq!(try_set(0x3, 0), Ok(0x3));
        assert_eq!(try_set(0x7, 0), Ok(0x7));
        for bad in [0x0, 0x2, 0x5, 0xf, 1 << 40] {
            assert!(try_set(bad, 0).is_err(), "XCR0 {bad:#x} must be refused");
        }
        assert!(try_set(0x3, 1).is_err(), "only XCR0 is writable");
    }

    #[test]
    fn withheld_components_read_as_disabled() {
        let setbv = assemble(|a| a.xsetbv());
        let getbv = assemble(|a| a.xgetbv());
        let mut memory = FakeMemory::new(DATA, 0, 0xaa);
        // A guest that sees AVX and AVX-512 (a CPUID the hypervisor passes through from the
        // host) on a vCPU whose SIMD instructions end in the fallback, which executes only SSE.
        let mut services = FakeServices::new();
        services.layout.supported_xcr0 = 0xe7;
        services.layout.withheld_xcr0 = 0xe4;
        let mut state = X86State::default();
        // Every component in use (as after the guest touched AVX registers).
        let header = super::super::state::XSAVE_HEADER_OFFSET;
        state.xsave[header..header + 8].copy_from_slice(&0xe7u64.to_le_bytes());
        let mut run_with = |bytes: &[u8], register: u64, value: u64| {
            state.set_gpr(0, value & 0xffff_ffff);
            state.set_gpr(2, value >> 32);
            state.set_gpr(1, register);
            state.rip = CODE;
            emulate(bytes, &mut state, &mut memory, &mut services)?;
            Ok::<_, EmulationError>((state.xcr0, state.gpr(0)))
        };
        // The kernel enables everything it sees; XCR0 holds it, XGETBV hides AVX and AVX-512.
        assert_eq!(run_with(&setbv, 0, 0xe7), Ok((0xe7, 0xe7)));
        assert_eq!(run_with(&getbv, 0, 0), Ok((0xe7, 0x3)));
        assert_eq!(run_with(&getbv, 1, 0), Ok((0xe7, 0x3)), "XINUSE likewise");
        // The architecture's own rules still hold for XSETBV.
        for bad in [0x2, 0x5, 0x27, 0x63, 0xb] {
            assert!(
                run_with(&setbv, 0, bad).is_err(),
                "XCR0 {bad:#x} must be refused"
            );
        }
    }

    #[test]
    fn rdtscp_and_random_numbers() {
        let mut memory = FakeMemory::new(DATA, 0, 0xaa);
        let mut state = X86State {
            gprs: [u64::MAX; 16],
            ..Default::default()
        };
        run(&assemble(|a| a.rdtscp()), &mut state, &mut memory).unwrap();
        assert_eq!(
            (state.gpr(0), state.gpr(2), state.gpr(1)),
            (0x9abc_def0, 0x1234_5678, 7)
        );

        state.rflags = 0x2 | 0x8d4; // OF SF ZF AF PF set, CF clear
        run(&assemble(|a| a.rdrand(eax)), &mut state, &mut memory).unwrap();
        assert_eq!(
            state.gpr(0),
            0x5a5a_5a5a,
            "a 32-bit destination zero-extends"
        );
        assert_eq!(state.rflags, 0x2 | 1, "CF set, OF/SF/ZF/AF/PF clear");
        state.gprs[3] = u64::MAX;
        run(&assemble(|a| a.rdseed(bx)), &mut state, &mut memory).unwrap();
        assert_eq!(
            state.gpr(3),
            0xffff_ffff_ffff_5a5a,
            "a 16-bit destination merges"
        );
        run(&assemble(|a| a.rdrand(r12)), &mut state, &mut memory).unwrap();
        assert_eq!(state.gpr(12), 0x5a5a_5a5a_5a5a_5a5a);
    }

    #[test]
    fn unknown_instructions_are_refused_by_name() {
        let mut memory = FakeMemory::new(DATA, 0, 0xaa);
        let mut state = X86State::default();
        let error = run(&assemble(|a| a.cpuid()), &mut state, &mut memory).unwrap_err();
        assert_eq!(error, EmulationError::Unsupported("cpuid".into()));
        assert_eq!(
            run(&[0xff, 0xff], &mut state, &mut memory).unwrap_err(),
            EmulationError::Undecodable
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn rdrand_flags_match_the_host_cpu() {
        if !std::arch::is_x86_feature_detected!("rdrand") {
            eprintln!("skipping rdrand_flags_match_the_host_cpu: the host has no RDRAND");
            return;
        }
        let flags: u64;
        // SAFETY: RDRAND only writes RAX and the flags, which are declared; pushfq/pop read them
        // back through the stack the asm block is allowed to use.
        unsafe {
            std::arch::asm!(
                "2:",
                "rdrand rax",
                "jnc 2b",
                "pushfq",
                "pop {flags}",
                flags = out(reg) flags,
                out("rax") _,
            );
        }
        let mut state = X86State {
            rflags: 0x2 | 0x8d4,
            ..Default::default()
        };
        let mut memory = FakeMemory::new(DATA, 0, 0xaa);
        run(&assemble(|a| a.rdrand(rax)), &mut state, &mut memory).unwrap();
        assert_eq!(state.rflags & ARITHMETIC_FLAGS, flags & ARITHMETIC_FLAGS);
    }
}
