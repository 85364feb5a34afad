//! Unit tests of the XSAVE family with hand-computed expectations: standard and compacted offsets
//! (with and without 64-byte alignment), the init optimisation, XSTATE_BV/XCOMP_BV, MXCSR rules,
//! round trips, every #GP of XRSTOR with no side effect, and save areas partly outside memory.

use super::super::testing::{CODE, FakeMemory, FakeServices, assemble, run, run_with};
use super::*;
use iced_x86::code_asm::*;

const DATA: u64 = 0x10_0000;
const ALL: u64 = u64::MAX;

/// The exception a failed instruction would raise, if that is why it failed.
fn exception(result: Result<Instruction, EmulationError>) -> Option<&'static str> {
    match result {
        Err(EmulationError::GuestException { exception, .. }) => Some(exception),
        _ => None,
    }
}

fn set_requested(state: &mut X86State, rfbm: u64) {
    state.set_gpr(0, rfbm & 0xffff_ffff);
    state.set_gpr(2, rfbm >> 32);
}

fn put(bytes: &mut [u8], at: usize, data: &[u8]) {
    bytes[at..at + data.len()].copy_from_slice(data);
}

/// x87, SSE and AVX with recognisable data, all in use, XCR0 = 7, EDX:EAX = 7, RBX = DATA.
fn state_with_data() -> X86State {
    let mut state = X86State {
        xcr0: 0x7,
        rip: CODE,
        ..Default::default()
    };
    for index in 0..16 {
        state.set_xmm(
            index,
            0x0101_0101_0101_0101_0101_0101_0101_0101 * (index as u128 + 1),
        );
    }
    state.set_mxcsr(0x1fa0);
    put(
        &mut state.xsave[..],
        MXCSR_MASK_OFFSET,
        &0xffffu32.to_le_bytes(),
    );
    put(&mut state.xsave[..], 0, &0x027fu16.to_le_bytes()); // FCW: not the initial 037F
    state.xsave[4] = 0x01; // abridged FTW: ST0 valid
    state.xsave[32..42].fill(9); // ST0
    state.xsave[576..576 + 256].fill(0x77); // upper halves of YMM0–15
    set_xstate_bv(&mut state.xsave[..], 0x7);
    set_requested(&mut state, 0x7);
    state.set_gpr(3, DATA); // RBX: save area
    state
}

/// Standard offsets of the made-up components of [`compaction_services`].
const COMPONENT_3: usize = 1024;
const COMPONENT_4: usize = 1088;
const COMPONENT_5: usize = 1152;

/// x87, SSE, AVX (576, 256 bytes) and three made-up components whose standard offsets differ from
/// every compacted one: 3 (8 bytes at 1024), 4 (24 bytes at 1088) and 5 (64 bytes at 1152), 4
/// and 5 starting on a 64-byte boundary in the compacted format if `aligned`.
fn compaction_services(aligned: bool) -> FakeServices {
    let mut services = FakeServices::new();
    let component = |offset, size, aligned| {
        Some(XsaveComponent {
            offset,
            size,
            aligned,
        })
    };
    services.layout.supported_xcr0 = 0x3f;
    services.layout.components[3] = component(COMPONENT_3, 8, false);
    services.layout.components[4] = component(COMPONENT_4, 24, aligned);
    services.layout.components[5] = component(COMPONENT_5, 64, aligned);
    services
}

/// [`state_with_data`] with XCR0 = 0x3f, EDX:EAX = all ones and components 3 (0x33), 4 (0x44)
/// and 5 (0x55) in use.
fn compaction_state() -> X86State {
    let mut state = state_with_data();
    state.xcr0 = 0x3f;
    state.xsave[COMPONENT_3..COMPONENT_3 + 8].fill(0x33);
    state.xsave[COMPONENT_4..COMPONENT_4 + 24].fill(0x44);
    state.xsave[COMPONENT_5..COMPONENT_5 + 64].fill(0x55);
    set_xstate_bv(&mut state.xsave[..], 0x3f);
    set_requested(&mut state, ALL);
    state
}

#[test]
fn compacted_offsets_follow_xcomp_bv_with_and_without_alignment() {
    let instruction = iced_x86::Decoder::with_ip(64, &[0x0f, 0xc7, 0x23], 0, 0).decode();
    let offsets = |aligned: bool, present: u64| {
        compacted_offsets(&instruction, present, &compaction_services(aligned)).unwrap()
    };
    // All: AVX 576..832, 3 at 832..840, 4 at 840 (or 896 aligned) .. +24, 5 right after (or on
    // the next 64-byte boundary).
    assert_eq!(
        offsets(false, 0x3f),
        [(2, 576), (3, 832), (4, 840), (5, 864)]
    );
    assert_eq!(
        offsets(true, 0x3f),
        [(2, 576), (3, 832), (4, 896), (5, 960)]
    );
    // Without AVX the first extended component starts at 576.
    assert_eq!(offsets(false, 0x3b), [(3, 576), (4, 584), (5, 608)]);
    assert_eq!(offsets(true, 0x3b), [(3, 576), (4, 640), (5, 704)]);
    // An aligned component that is first stays at 576; x87/SSE bits do not matter.
    assert_eq!(offsets(true, 0x30), [(4, 576), (5, 640)]);
    assert_eq!(offsets(true, 0x3), []);
    // A component CPUID does not describe cannot be placed.
    assert!(matches!(
        compacted_offsets(&instruction, 1 << 9, &compaction_services(true)),
        Err(EmulationError::Unsupported(_))
    ));
}

#[test]
fn xsavec_stores_components_in_use_at_compacted_offsets() {
    let save = assemble(|a| a.xsavec64(ptr(rbx)));
    let mut services = compaction_services(true);
    let mut state = compaction_state();
    // x87 and component 4 in their initial configuration (their bytes are stale).
    set_xstate_bv(&mut state.xsave[..], 0b10_1110);
    let before = state.clone();
    let mut memory = FakeMemory::new(DATA, 4096, 0xaa);
    run_with(&save, &mut state, &mut memory, &mut services).unwrap();
    assert_eq!(state.xsave, before.xsave, "a save changes no state");
    assert_eq!(state.rip, CODE + 4);

    let mut expected = vec![0xaa; 4096];
    put(&mut expected, 24, &before.xsave[24..32]); // MXCSR, MXCSR_MASK
    put(&mut expected, 160, &before.xsave[160..416]); // XMM0–15
    put(&mut expected, 512, &0b10_1110u64.to_le_bytes()); // XSTATE_BV = XINUSE & RFBM
    put(&mut expected, 520, &(0x3f | 1u64 << 63).to_le_bytes()); // XCOMP_BV
    put(&mut expected, 576, &[0x77; 256]); // AVX
    put(&mut expected, 832, &[0x33; 8]); // component 3; 4 (at 896) is not in use
    put(&mut expected, 960, &[0x55; 64]); // component 5, 64-byte aligned
    assert_eq!(memory.bytes, expected);

    // Unaligned layout, AVX not requested, x87 in use: 3 at 576, 4 at 584, 5 at 608.
    let mut services = compaction_services(false);
    let mut state = compaction_state();
    set_requested(&mut state, 0x3b);
    let mut memory = FakeMemory::new(DATA, 4096, 0xaa);
    run_with(&save, &mut state, &mut memory, &mut services).unwrap();
    let mut expected = vec![0xaa; 4096];
    put(&mut expected, 0, &state.xsave[0..24]); // x87 control and pointers
    put(&mut expected, 24, &state.xsave[24..32]);
    put(&mut expected, 32, &state.xsave[32..160]); // ST0–7
    put(&mut expected, 160, &state.xsave[160..416]);
    put(&mut expected, 512, &0x3bu64.to_le_bytes());
    put(&mut expected, 520, &(0x3b | 1u64 << 63).to_le_bytes());
    put(&mut expected, 576, &[0x33; 8]);
    put(&mut expected, 584, &[0x44; 24]);
    put(&mut expected, 608, &[0x55; 64]);
    assert_eq!(memory.bytes, expected);

    // Nothing requested: only the header.
    set_requested(&mut state, 0);
    let mut memory = FakeMemory::new(DATA, 4096, 0xaa);
    run_with(&save, &mut state, &mut memory, &mut services).unwrap();
    let mut expected = vec![0xaa; 4096];
    put(&mut expected, 512, &0u64.to_le_bytes());
    put(&mut expected, 520, &(1u64 << 63).to_le_bytes());
    assert_eq!(memory.bytes, expected);
}

#[test]
fn xsavec_stores_mxcsr_only_with_sse() {
    let save = assemble(|a| a.xsavec(ptr(rbx)));
    // x87 | AVX: MXCSR is not stored (unlike XSAVE), AVX is the first extended component.
    let mut state = state_with_data();
    set_requested(&mut state, 0b101);
    let mut memory = FakeMemory::new(DATA, 4096, 0xaa);
    run(&save, &mut state, &mut memory).unwrap();
    assert_eq!(&memory.bytes[24..32], &[0xaa; 8]);
    assert_eq!(read_u64(&memory.bytes, 512), 0b101);
    assert_eq!(read_u64(&memory.bytes, 520), 0b101 | 1 << 63);
    assert_eq!(&memory.bytes[576..832], &[0x77; 256][..]);

    // SSE requested but in its initial configuration, MXCSR 1F80H: nothing of SSE is stored.
    let mut state = state_with_data();
    set_xstate_bv(&mut state.xsave[..], 0b101);
    state.set_mxcsr(MXCSR_DEFAULT);
    set_requested(&mut state, 0b010);
    let mut memory = FakeMemory::new(DATA, 4096, 0xaa);
    run(&save, &mut state, &mut memory).unwrap();
    assert_eq!(&memory.bytes[..512], &[0xaa; 512][..]);
    assert_eq!(read_u64(&memory.bytes, 512), 0);
    assert_eq!(read_u64(&memory.bytes, 520), 0b010 | 1 << 63);

    // The same with MXCSR 1FA0H: SSE is saved (XMM registers as their initial 0) and marked.
    state.set_mxcsr(0x1fa0);
    let mut memory = FakeMemory::new(DATA, 4096, 0xaa);
    run(&save, &mut state, &mut memory).unwrap();
    assert_eq!(&memory.bytes[24..28], &0x1fa0u32.to_le_bytes());
    assert_eq!(
        &memory.bytes[160..416],
        &[0; 256][..],
        "stale XMM bytes are not stored"
    );
    assert_eq!(read_u64(&memory.bytes, 512), 0b010);
}

#[test]
fn xsavec_then_compacted_xrstor_round_trips() {
    let save = assemble(|a| a.xsavec64(ptr(rbx)));
    let restore = assemble(|a| a.xrstor64(ptr(rbx)));
    for aligned in [false, true] {
        let mut services = compaction_services(aligned);
        let mut state = compaction_state();
        let saved = state.clone();
        let mut memory = FakeMemory::new(DATA, 4096, 0xaa);
        // XSAVEC writes only XSTATE_BV and XCOMP_BV: the rest of the header must be clean.
        memory.bytes[512..576].fill(0);
        run_with(&save, &mut state, &mut memory, &mut services).unwrap();

        let mut clobbered = X86State {
            xcr0: 0x3f,
            gprs: saved.gprs,
            ..Default::default()
        };
        clobbered.xsave[..].fill(0x11);
        set_xstate_bv(&mut clobbered.xsave[..], 0x3f);
        put(
            &mut clobbered.xsave[..],
            MXCSR_OFFSET,
            &0x1f80u32.to_le_bytes(),
        );
        put(
            &mut clobbered.xsave[..],
            MXCSR_MASK_OFFSET,
            &0xffffu32.to_le_bytes(),
        );
        run_with(&restore, &mut clobbered, &mut memory, &mut services).unwrap();
        // Everything that belongs to a component came back; bytes outside components
        // (416..576, the holes of the standard layout) are not state.
        let owned = [
            0..416,
            512..520,
            576..832,
            1024..1032,
            1088..1112,
            1152..1216,
        ];
        for range in owned {
            assert_eq!(
                clobbered.xsave[range.clone()],
                saved.xsave[range.clone()],
                "aligned {aligned}, {range:?}"
            );
        }
    }

    // Save without AVX, restore everything: AVX is not in XCOMP_BV, so it is initialised.
    let mut services = compaction_services(true);
    let mut state = compaction_state();
    set_requested(&mut state, 0x3b);
    let mut memory = FakeMemory::new(DATA, 4096, 0);
    run_with(&save, &mut state, &mut memory, &mut services).unwrap();
    set_requested(&mut state, ALL);
    state.xsave[COMPONENT_5..COMPONENT_5 + 64].fill(0);
    run_with(&restore, &mut state, &mut memory, &mut services).unwrap();
    assert_eq!(&state.xsave[576..832], &[0; 256][..]);
    assert_eq!(&state.xsave[COMPONENT_5..COMPONENT_5 + 64], &[0x55; 64][..]);
    assert_eq!(xstate_bv(state.xsave.as_slice()), 0x3b);
}

/// A compacted image: XSTATE_BV, XCOMP_BV (without bit 63), and the legacy region of `legacy`.
fn compacted_image(legacy: &X86State, xstate_bv: u64, xcomp_bv: u64) -> FakeMemory {
    let mut memory = FakeMemory::new(DATA, 4096, 0xaa);
    put(&mut memory.bytes, 0, &legacy.xsave[..416]);
    memory.bytes[512..576].fill(0);
    put(&mut memory.bytes, 512, &xstate_bv.to_le_bytes());
    put(&mut memory.bytes, 520, &(xcomp_bv | 1 << 63).to_le_bytes());
    memory
}

#[test]
fn compacted_xrstor_initialises_what_xstate_bv_does_not_hold() {
    let restore = assemble(|a| a.xrstor64(ptr(rbx)));
    let mut services = compaction_services(true);
    // XCOMP_BV: x87, SSE, AVX (576), 5 (832, aligned). XSTATE_BV: x87 and 5.
    let mut image_source = state_with_data();
    put(&mut image_source.xsave[..], 0, &0x0a7fu16.to_le_bytes());
    let mut memory = compacted_image(&image_source, 0b10_0001, 0b10_0111);
    memory.bytes[832..896].fill(0x99);
    let mut state = compaction_state();
    run_with(&restore, &mut state, &mut memory, &mut services).unwrap();
    assert_eq!(&state.xsave[0..2], &0x0a7fu16.to_le_bytes(), "x87 loaded");
    assert_eq!(&state.xsave[160..416], &[0; 256][..], "XMM initialised");
    assert_eq!(
        state.mxcsr(),
        MXCSR_DEFAULT,
        "SSE requested, not in XSTATE_BV"
    );
    assert_eq!(
        &state.xsave[28..32],
        &0xffffu32.to_le_bytes(),
        "MXCSR_MASK kept"
    );
    assert_eq!(&state.xsave[576..832], &[0; 256][..], "AVX initialised");
    assert_eq!(
        &state.xsave[COMPONENT_3..COMPONENT_3 + 8],
        &[0; 8],
        "not in XCOMP_BV"
    );
    assert_eq!(&state.xsave[COMPONENT_4..COMPONENT_4 + 24], &[0; 24]);
    assert_eq!(&state.xsave[COMPONENT_5..COMPONENT_5 + 64], &[0x99; 64][..]);
    assert_eq!(xstate_bv(state.xsave.as_slice()), 0b10_0001);

    // Only component 4 requested: nothing else changes, 4 is initialised.
    let mut state = compaction_state();
    let before = state.clone();
    set_requested(&mut state, 0b1_0000);
    run_with(&restore, &mut state, &mut memory, &mut services).unwrap();
    let mut expected = before.xsave.clone();
    expected[COMPONENT_4..COMPONENT_4 + 24].fill(0);
    set_xstate_bv(&mut expected[..], 0x2f);
    assert_eq!(state.xsave, expected);

    // AVX alone: MXCSR is neither loaded nor checked (the image's is invalid) in the compacted
    // form, unlike the standard one.
    let mut memory = compacted_image(&image_source, 0b110, 0b110);
    put(&mut memory.bytes, MXCSR_OFFSET, &0x1_0000u32.to_le_bytes());
    memory.bytes[576..832].fill(0x42);
    let mut state = state_with_data();
    set_requested(&mut state, 0b100);
    run(&restore, &mut state, &mut memory).unwrap();
    assert_eq!(state.mxcsr(), 0x1fa0);
    assert_eq!(&state.xsave[576..832], &[0x42; 256][..]);
    // SSE requested: the reserved bit faults, nothing changes.
    let mut state = state_with_data();
    let before = state.clone();
    assert_eq!(
        exception(run(&restore, &mut state, &mut memory)),
        Some("#GP")
    );
    assert_eq!(state, before);
    // A valid MXCSR is loaded; a different MXCSR_MASK in the image is ignored.
    put(&mut memory.bytes, MXCSR_OFFSET, &0x3f80u32.to_le_bytes());
    put(
        &mut memory.bytes,
        MXCSR_MASK_OFFSET,
        &0x1234u32.to_le_bytes(),
    );
    run(&restore, &mut state, &mut memory).unwrap();
    assert_eq!(state.mxcsr(), 0x3f80);
    assert_eq!(&state.xsave[28..32], &0xffffu32.to_le_bytes());
}

#[test]
fn compacted_xrstor_faults_change_nothing() {
    let restore = assemble(|a| a.xrstor64(ptr(rbx)));
    let save = assemble(|a| a.xsavec64(ptr(rbx)));
    let mut services = compaction_services(true);
    // A valid image of x87, SSE, AVX and 5 (no 3 or 4 in XCOMP_BV).
    let mut state = compaction_state();
    set_requested(&mut state, 0x27);
    let mut valid = FakeMemory::new(DATA, 4096, 0);
    run_with(&save, &mut state, &mut valid, &mut services).unwrap();
    let mut fresh = compaction_state();
    run_with(&restore, &mut fresh, &mut valid, &mut services).unwrap();

    type Corruption = Box<dyn Fn(&mut [u8])>;
    let mut cases: Vec<(String, Corruption)> = vec![
        (
            "XCOMP_BV bit not in XCR0".into(),
            Box::new(|bytes: &mut [u8]| bytes[520 + 1] |= 1 << 1), // bit 9
        ),
        (
            "XSTATE_BV bit not in XCOMP_BV".into(),
            Box::new(|bytes: &mut [u8]| bytes[512] |= 1 << 4),
        ),
        (
            "XSTATE_BV bit 63".into(),
            Box::new(|bytes: &mut [u8]| bytes[512 + 7] |= 0x80),
        ),
        (
            "reserved MXCSR bit".into(),
            Box::new(|bytes: &mut [u8]| bytes[MXCSR_OFFSET + 2] |= 1),
        ),
    ];
    for byte in 16..64 {
        cases.push((
            format!("header byte {byte}"),
            Box::new(move |bytes: &mut [u8]| bytes[512 + byte] = 1),
        ));
    }
    for (name, corrupt) in cases {
        let mut memory = FakeMemory::new(DATA, 4096, 0);
        memory.bytes.copy_from_slice(&valid.bytes);
        corrupt(&mut memory.bytes);
        let mut state = compaction_state();
        let before = state.clone();
        let result = run_with(&restore, &mut state, &mut memory, &mut services);
        assert_eq!(exception(result), Some("#GP"), "{name}");
        assert_eq!(state, before, "{name}: nothing changed");
    }
    // XSTATE_BV outside XCOMP_BV faults even for components not requested.
    let mut memory = FakeMemory::new(DATA, 4096, 0);
    memory.bytes.copy_from_slice(&valid.bytes);
    memory.bytes[512] |= 1 << 4;
    let mut state = compaction_state();
    set_requested(&mut state, 0b11);
    assert_eq!(
        exception(run_with(&restore, &mut state, &mut memory, &mut services)),
        Some("#GP")
    );

    // Without XSAVEC, the compacted form is #GP and XSAVEC itself #UD.
    services.layout.extensions.compaction = false;
    let mut state = compaction_state();
    let before = state.clone();
    assert_eq!(
        exception(run_with(&restore, &mut state, &mut valid, &mut services)),
        Some("#GP")
    );
    let snapshot = valid.bytes.clone();
    assert_eq!(
        exception(run_with(&save, &mut state, &mut valid, &mut services)),
        Some("#UD")
    );
    assert_eq!(state, before);
    assert_eq!(valid.bytes, snapshot);

    // A misaligned area is #GP for XSAVEC and XRSTOR.
    let mut services = compaction_services(true);
    for bytes in [&save, &restore] {
        let mut state = compaction_state();
        state.set_gpr(3, DATA + 32);
        let before = state.clone();
        let mut memory = FakeMemory::new(DATA, 8192, 0xaa);
        let result = run_with(bytes, &mut state, &mut memory, &mut services);
        assert_eq!(exception(result), Some("#GP"));
        assert_eq!(state, before);
        assert_eq!(memory.bytes, vec![0xaa; 8192]);
    }
}

#[test]
fn xsave_then_xrstor_round_trips_every_component() {
    let save = assemble(|a| a.xsave(ptr(rbx)));
    let restore = assemble(|a| a.xrstor(ptr(rbx)));
    let mut memory = FakeMemory::new(DATA, 4096, 0xaa);
    memory.bytes[512..576].fill(0); // a clean header, as after a first XSAVE of a zeroed area
    let mut state = state_with_data();
    let saved = state.clone();
    run(&save, &mut state, &mut memory).unwrap();
    // Data landed at the architectural offsets; the header says all three are in use.
    assert_eq!(&memory.bytes[160..176], &saved.xsave[160..176]);
    assert_eq!(&memory.bytes[24..28], &0x1fa0u32.to_le_bytes());
    assert_eq!(&memory.bytes[576..832], &[0x77; 256][..]);
    assert_eq!(read_u64(&memory.bytes, 512), 7);
    // Bytes no component owns stay untouched.
    assert_eq!(&memory.bytes[416..512], &[0xaa; 96][..]);

    let mut clobbered = saved.clone();
    for index in 0..16 {
        clobbered.set_xmm(index, 0);
    }
    clobbered.set_mxcsr(0x1f80);
    clobbered.xsave[576..832].fill(0);
    clobbered.xsave[32..42].fill(0);
    run(&restore, &mut clobbered, &mut memory).unwrap();
    clobbered.rip = saved.rip;
    assert_eq!(clobbered.xsave[..], saved.xsave[..]);
}

#[test]
fn xsave_stores_initial_values_and_xsaveopt_skips_them() {
    let xsave = assemble(|a| a.xsave64(ptr(rbx)));
    let xsaveopt = assemble(|a| a.xsaveopt64(ptr(rbx)));
    let mut state = state_with_data();
    // x87 and AVX in their initial configuration, with stale bytes in the area.
    set_xstate_bv(&mut state.xsave[..], 0b010);
    // XSTATE_BV in memory: bits outside RFBM (3, 40) survive, bits inside are replaced.
    let old_header = (1u64 << 40) | 0b1101;
    let fresh_memory = || {
        let mut memory = FakeMemory::new(DATA, 4096, 0xaa);
        put(&mut memory.bytes, 512, &old_header.to_le_bytes());
        memory
    };

    let mut memory = fresh_memory();
    run(&xsave, &mut state, &mut memory).unwrap();
    let mut expected = vec![0xaa; 4096];
    let mut x87 = [0u8; 24];
    put(&mut x87, 0, &0x037fu16.to_le_bytes());
    put(&mut expected, 0, &x87); // initial FCW, everything else 0
    put(&mut expected, 24, &state.xsave[24..32]);
    put(&mut expected, 32, &[0; 128]); // ST0–7
    put(&mut expected, 160, &state.xsave[160..416]);
    put(&mut expected, 512, &((1u64 << 40) | 0b1010).to_le_bytes());
    put(&mut expected, 576, &[0; 256]); // AVX initial, not the stale 0x77
    assert_eq!(memory.bytes, expected, "XSAVE");

    let mut memory = fresh_memory();
    run(&xsaveopt, &mut state, &mut memory).unwrap();
    let mut expected = vec![0xaa; 4096];
    put(&mut expected, 24, &state.xsave[24..32]);
    put(&mut expected, 160, &state.xsave[160..416]);
    put(&mut expected, 512, &((1u64 << 40) | 0b1010).to_le_bytes());
    assert_eq!(memory.bytes, expected, "XSAVEOPT");

    // AVX alone: both store MXCSR (and MXCSR_MASK) even without SSE.
    set_requested(&mut state, 0b100);
    for bytes in [&xsave, &xsaveopt] {
        let mut memory = fresh_memory();
        run(bytes, &mut state, &mut memory).unwrap();
        assert_eq!(&memory.bytes[24..32], &state.xsave[24..32]);
        assert_eq!(read_u64(&memory.bytes, 512), (1 << 40) | 0b1001);
    }

    // Without XSAVEOPT in CPUID the instruction is #UD.
    let mut services = FakeServices::new();
    services.layout.extensions.xsaveopt = false;
    let mut memory = fresh_memory();
    let result = run_with(&xsaveopt, &mut state, &mut memory, &mut services);
    assert_eq!(exception(result), Some("#UD"));
}

#[test]
fn xrstor_initialises_components_missing_from_xstate_bv() {
    let restore = assemble(|a| a.xrstor(ptr(rbx)));
    let mut memory = FakeMemory::new(DATA, 4096, 0xaa);
    memory.bytes[512..576].fill(0);
    memory.bytes[512] = 0b001; // only x87 saved
    memory.bytes[24..28].copy_from_slice(&0x1f00u32.to_le_bytes());
    memory.bytes[0..2].copy_from_slice(&0x027fu16.to_le_bytes());
    let mut state = state_with_data();
    run(&restore, &mut state, &mut memory).unwrap();
    assert_eq!(
        state.xmm(5),
        0,
        "SSE not in XSTATE_BV: XMM registers are initialised"
    );
    assert_eq!(
        state.mxcsr(),
        0x1f00,
        "MXCSR is loaded whenever SSE is requested"
    );
    assert_eq!(&state.xsave[0..2], &0x027fu16.to_le_bytes());
    assert_eq!(&state.xsave[576..832], &[0u8; 256][..], "AVX initialised");
    assert_eq!(
        xstate_bv(state.xsave.as_slice()),
        0b011,
        "a non-default MXCSR keeps SSE in use"
    );

    // Initialised x87: FCW 037F, the rest 0.
    memory.bytes[512] = 0;
    memory.bytes[24..28].copy_from_slice(&MXCSR_DEFAULT.to_le_bytes());
    let mut state = state_with_data();
    run(&restore, &mut state, &mut memory).unwrap();
    assert_eq!(&state.xsave[0..2], &0x037fu16.to_le_bytes());
    assert_eq!(&state.xsave[2..24], &[0; 22][..]);
    assert_eq!(&state.xsave[32..160], &[0; 128][..]);
    assert_eq!(xstate_bv(state.xsave.as_slice()), 0);
}

#[test]
fn standard_xrstor_header_rules() {
    let restore = assemble(|a| a.xrstor64(ptr(rbx)));
    let mut valid = FakeMemory::new(DATA, 4096, 0);
    put(&mut valid.bytes, 0, &state_with_data().xsave[..1024]);
    let try_with = |corrupt: &dyn Fn(&mut [u8])| {
        let mut memory = FakeMemory::new(DATA, 4096, 0);
        memory.bytes.copy_from_slice(&valid.bytes);
        corrupt(&mut memory.bytes);
        let mut state = X86State {
            xcr0: 0x7,
            rip: CODE,
            ..Default::default()
        };
        set_requested(&mut state, 0x7);
        state.set_gpr(3, DATA);
        let before = state.clone();
        let result = run(&restore, &mut state, &mut memory);
        if result.is_err() {
            assert_eq!(state, before, "nothing changed");
        }
        exception(result)
    };
    assert_eq!(try_with(&|_| {}), None);
    // Bytes 8..24 (XCOMP_BV and the next 8) must be zero; the SDM (and hardware) do not check
    // bytes 24..64 in the standard form.
    for byte in 8..24 {
        assert_eq!(try_with(&|b| b[512 + byte] = 1), Some("#GP"), "byte {byte}");
    }
    for byte in 24..64 {
        assert_eq!(try_with(&|b| b[512 + byte] = 1), None, "byte {byte}");
    }
    assert_eq!(
        try_with(&|b| b[512] |= 1 << 3),
        Some("#GP"),
        "XSTATE_BV not in XCR0"
    );
    assert_eq!(
        try_with(&|b| b[519] |= 0x80),
        Some("#GP"),
        "XSTATE_BV bit 63"
    );
    assert_eq!(
        try_with(&|b| b[MXCSR_OFFSET + 2] = 1),
        Some("#GP"),
        "reserved MXCSR bit"
    );
}

#[test]
fn xsave_family_faults_are_refused_without_side_effects() {
    let mut memory = FakeMemory::new(DATA, 8192, 0xaa);
    memory.bytes[512..576].fill(0);
    for (bytes, address) in [
        (assemble(|a| a.xsave(ptr(rbx))), DATA + 8),
        (assemble(|a| a.xsaveopt(ptr(rbx))), DATA + 16),
        (assemble(|a| a.xsavec(ptr(rbx))), DATA + 48),
        (assemble(|a| a.xrstor(ptr(rbx))), DATA + 32),
        (assemble(|a| a.fxsave(ptr(rbx))), DATA + 4),
        (assemble(|a| a.fxrstor(ptr(rbx))), DATA + 8),
    ] {
        let mut state = state_with_data();
        state.set_gpr(3, address);
        let before = state.clone();
        let snapshot = memory.bytes.clone();
        let error = run(&bytes, &mut state, &mut memory).unwrap_err();
        assert!(
            matches!(
                error,
                EmulationError::GuestException {
                    exception: "#GP",
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(state, before);
        assert_eq!(memory.bytes, snapshot);
    }
}

#[test]
fn save_areas_partly_outside_memory_write_nothing() {
    let saves = [
        assemble(|a| a.xsave64(ptr(rbx))),
        assemble(|a| a.xsaveopt64(ptr(rbx))),
        assemble(|a| a.xsavec64(ptr(rbx))),
    ];
    // 700 bytes of memory: the header fits, AVX (576..832) does not.
    for bytes in &saves {
        let mut memory = FakeMemory::new(DATA, 700, 0xaa);
        memory.bytes[512..576].fill(0);
        let snapshot = memory.bytes.clone();
        let mut state = state_with_data();
        let result = run(bytes, &mut state, &mut memory);
        assert!(
            matches!(result, Err(EmulationError::BadAddress { .. })),
            "{result:?}"
        );
        assert_eq!(memory.bytes, snapshot, "nothing written");
        // Without AVX the same area is large enough.
        set_requested(&mut state, 0b011);
        run(bytes, &mut state, &mut memory).unwrap();
    }
    // Areas that start outside memory, or whose end would overflow the address space.
    for address in [DATA + 0x10_0000, 0xffff_ffff_ffff_ffc0] {
        for bytes in saves.iter().chain([&assemble(|a| a.xrstor64(ptr(rbx)))]) {
            let mut memory = FakeMemory::new(DATA, 4096, 0xaa);
            let mut state = state_with_data();
            state.set_gpr(3, address);
            let before = state.clone();
            let result = run(bytes, &mut state, &mut memory);
            assert!(
                matches!(result, Err(EmulationError::BadAddress { .. })),
                "{result:?}"
            );
            assert_eq!(state, before);
            assert_eq!(memory.bytes, vec![0xaa; 4096]);
        }
    }
    // XRSTOR of a compacted image whose AVX part lies beyond memory changes nothing.
    let mut memory = FakeMemory::new(DATA, 700, 0xaa);
    memory.bytes[512..576].fill(0);
    put(&mut memory.bytes, 512, &0b111u64.to_le_bytes());
    put(&mut memory.bytes, 520, &(0b111u64 | 1 << 63).to_le_bytes());
    put(
        &mut memory.bytes,
        MXCSR_OFFSET,
        &MXCSR_DEFAULT.to_le_bytes(),
    );
    let mut state = state_with_data();
    let before = state.clone();
    let result = run(&assemble(|a| a.xrstor64(ptr(rbx))), &mut state, &mut memory);
    assert!(
        matches!(result, Err(EmulationError::BadAddress { .. })),
        "{result:?}"
    );
    assert_eq!(state, before);
}

#[test]
fn components_the_layout_cannot_hold_stop_the_vm() {
    let save = assemble(|a| a.xsavec64(ptr(rbx)));
    let xsave = assemble(|a| a.xsave64(ptr(rbx)));
    // XCR0 enables component 3, which CPUID does not describe.
    let mut state = state_with_data();
    state.xcr0 = 0xf;
    set_requested(&mut state, 0xf);
    for bytes in [&save, &xsave] {
        let mut memory = FakeMemory::new(DATA, 4096, 0);
        let result = run(bytes, &mut state, &mut memory);
        assert!(
            matches!(result, Err(EmulationError::Unsupported(_))),
            "{result:?}"
        );
        assert_eq!(memory.bytes, vec![0; 4096]);
    }
    // A component beyond the 4096-byte area KVM exchanges cannot be held.
    let mut services = FakeServices::new();
    services.layout.supported_xcr0 = 0xf;
    services.layout.components[3] = Some(XsaveComponent {
        offset: 4000,
        size: 200,
        aligned: false,
    });
    set_xstate_bv(&mut state.xsave[..], 0xf);
    let mut memory = FakeMemory::new(DATA, 8192, 0);
    let result = run_with(&xsave, &mut state, &mut memory, &mut services);
    assert!(matches!(result, Err(EmulationError::Unsupported(_))));
    // XSAVEC can still place it when it is not in use, and it is needed for the offsets.
    set_xstate_bv(&mut state.xsave[..], 0x7);
    run_with(&save, &mut state, &mut memory, &mut services).unwrap();
    assert_eq!(read_u64(&memory.bytes, 520), 0xf | 1 << 63);
}

#[test]
fn xsaves_and_xrstors_are_not_emulated() {
    for bytes in [
        assemble(|a| a.xsaves64(ptr(rbx))),
        assemble(|a| a.xrstors64(ptr(rbx))),
    ] {
        let mut memory = FakeMemory::new(DATA, 4096, 0);
        let mut state = state_with_data();
        let result = run(&bytes, &mut state, &mut memory);
        assert!(
            matches!(result, Err(EmulationError::Unsupported(_))),
            "{result:?}"
        );
    }
}

#[test]
fn fxsave_and_fxrstor_move_the_legacy_region() {
    let save = assemble(|a| a.fxsave64(ptr(rbx)));
    let restore = assemble(|a| a.fxrstor64(ptr(rbx)));
    let mut memory = FakeMemory::new(DATA, 512, 0xaa);
    let mut state = state_with_data();
    let saved = state.clone();
    run(&save, &mut state, &mut memory).unwrap();
    assert_eq!(&memory.bytes[..416], &saved.xsave[..416]);
    assert_eq!(
        &memory.bytes[416..],
        &[0xaa; 96][..],
        "bytes 416..512 are not written"
    );
    let mut clobbered = saved.clone();
    clobbered.set_xmm(15, 0);
    clobbered.set_mxcsr(0x1f80);
    memory.bytes[28..32].fill(0); // a different MXCSR_MASK in memory is ignored
    run(&restore, &mut clobbered, &mut memory).unwrap();
    assert_eq!(clobbered.xmm(15), saved.xmm(15));
    assert_eq!(clobbered.mxcsr(), saved.mxcsr());
    assert_eq!(&clobbered.xsave[28..32], &0xffffu32.to_le_bytes());
    // Reserved MXCSR bits in the image fault.
    memory.bytes[24..28].copy_from_slice(&0x1_0000u32.to_le_bytes());
    assert!(run(&restore, &mut clobbered, &mut memory).is_err());
}

#[test]
fn xsave_layout_from_cpuid() {
    let layout = XsaveLayout::from_cpuid(|leaf, sub| match (leaf, sub) {
        (0xd, 0) => [0x207, 0x340, 0x340, 0],
        (0xd, 1) => [0b0101, 0, 0, 0],
        (0xd, 2) => [256, 576, 0, 0],
        (0xd, 9) => [8, 2688, 0b10, 0],
        (0xd, 11) => [16, 0, 0b01, 0], // a supervisor component: not in XCR0
        _ => [0; 4],
    });
    assert_eq!(layout.supported_xcr0, 0x207);
    assert_eq!(
        layout.extensions,
        XsaveExtensions {
            xsaveopt: true,
            compaction: false,
            xgetbv_in_use: true,
        }
    );
    assert_eq!(
        layout.component(2),
        Some(XsaveComponent {
            offset: 576,
            size: 256,
            aligned: false
        })
    );
    assert_eq!(
        layout.component(9),
        Some(XsaveComponent {
            offset: 2688,
            size: 8,
            aligned: true
        })
    );
    assert_eq!(layout.component(3), None);
    assert_eq!(layout.component(11), None);
    assert_eq!(layout.component(99), None);
}

#[test]
fn save_area_straddling_an_unmapped_page_writes_nothing() {
    use crate::arch::x86_64::paging::{PTE_HUGE, PTE_PRESENT, PTE_WRITABLE};
    use crate::exits::emulation::PagedGuestMemory;
    use crate::mem::GuestMemory;
    use uhyve_interface::GuestPhysAddr;

    // 4 MiB of RAM; VA 0 … 2 MiB is one 2 MiB page at PA 0, VA 2 MiB … is not mapped. Tables at
    // 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD).
    let ram = GuestMemory::new(GuestPhysAddr::new(0), 4 << 20).unwrap();
    let entry = |at: u64, value: u64| ram.write_obj(GuestPhysAddr::new(at), &value).unwrap();
    entry(0x1000, 0x2000 | PTE_PRESENT | PTE_WRITABLE);
    entry(0x2000, 0x3000 | PTE_PRESENT | PTE_WRITABLE);
    entry(0x3000, PTE_PRESENT | PTE_WRITABLE | PTE_HUGE);
    // The legacy region and the header are the last 576 bytes of the mapped page; AVX, at 576,
    // would be on the unmapped one.
    let area = 0x20_0000 - 576;
    let read_area = || {
        let mut bytes = vec![0u8; 576];
        ram.read(GuestPhysAddr::new(area), &mut bytes).unwrap();
        bytes
    };
    ram.write(GuestPhysAddr::new(area), &[0xaa; 576]).unwrap();
    let mut memory = PagedGuestMemory::new(
        &ram,
        GuestPhysAddr::new(0x1000),
        X86State::default().paging_mode(),
    );

    let save = assemble(|a| a.xsavec64(ptr(rbx)));
    let mut state = state_with_data();
    state.set_gpr(3, area);
    let result = run(&save, &mut state, &mut memory);
    // The guest's CPU would raise a not-present page fault for the write to the second page.
    assert!(
        matches!(result, Err(EmulationError::PageFault(fault)) if fault.address == 0x20_0000 && fault.error_code == 2),
        "{result:?}"
    );
    assert_eq!(read_area(), vec![0xaa; 576], "nothing written");
    // Without AVX everything lies on the mapped page.
    set_requested(&mut state, 0b011);
    run(&save, &mut state, &mut memory).unwrap();
    let mut written = read_area();
    assert_eq!(&written[160..416], &state.xsave[160..416]);
    assert_eq!(read_u64(&written, 520), 0b011 | 1 << 63);

    // Restoring with AVX in XSTATE_BV needs the unmapped page: nothing changes.
    written[512..520].copy_from_slice(&0b111u64.to_le_bytes());
    written[520..528].copy_from_slice(&(0b111u64 | 1 << 63).to_le_bytes());
    written[528..576].fill(0);
    ram.write(GuestPhysAddr::new(area), &written).unwrap();
    let mut state = state_with_data();
    state.set_gpr(3, area);
    let before = state.clone();
    let result = run(&assemble(|a| a.xrstor64(ptr(rbx))), &mut state, &mut memory);
    assert!(
        matches!(result, Err(EmulationError::PageFault(fault)) if fault.address == 0x20_0000 && fault.error_code == 0),
        "{result:?}"
    );
    assert_eq!(state, before);
}
