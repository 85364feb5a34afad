//! Differential tests against the host CPU. A known state is put into the host CPU with a native
//! standard-format XRSTOR of an image the test builds, the host saves it natively, and the
//! emulator, given the same standard-format state (the host's own XSAVE of it), the host's XCR0
//! and the host's CPUID leaf 0xD, must produce the same bytes; a native compacted XRSTOR of an
//! image the emulator produced must give the same state as the emulator's XRSTOR.
//!
//! Each native sequence runs in one `asm!` block that first saves the test thread's own state and
//! finally restores it. Only x87, SSE, AVX and the three AVX-512 components are ever touched:
//! others (PKRU, AMX, …) could change what the thread may access or do not fit the 4096-byte area.
//!
//! What keeps the comparisons exact although hardware has latitude:
//! - XINUSE: after XRSTOR, a component loaded with data is in use, but one initialised (or loaded
//!   with its initial values) may be tracked either way, and AMD processors report the x87 state
//!   as not in use whenever it holds its initial values. The emulator is therefore given the
//!   host's XSAVE of the state (XSTATE_BV = the host's XINUSE), and the images hold non-initial
//!   data in every component they mark in use. After a restore, the XSTATE_BV/XINUSE bits of the
//!   components XRSTOR initialised are not compared (the SDM allows 0 or 1); their bytes are.
//! - The x87 FOP/FIP/FDP are 0 in every image: AMD processors store them only while an x87
//!   exception is pending.
//! - SSE with XMM registers at 0 and MXCSR ≠ 1F80H: processors may report XINUSE[1] = 0 (the
//!   emulator says 1). XSAVEC stores SSE and sets XSTATE_BV[1] either way, so that case is
//!   compared for XSAVEC and XRSTOR only, not for XSAVE/XSAVEOPT (whose XSTATE_BV[1] would
//!   legitimately differ on such processors).
//! - XSAVEOPT's modified optimisation never applies: the save area is never the one last
//!   restored from.

use std::arch::asm;

use super::super::emulate;
use super::super::testing::{FakeMemory, FakeServices};
use super::*;
use iced_x86::code_asm::*;

const CODE: u64 = 0x40_0000;
const DATA: u64 = 0x10_0000;
/// The opmask, ZMM_Hi256 and Hi16_ZMM components (AVX-512).
const AVX512: u64 = 0b1110_0000;
const OPMASK: u64 = 1 << 5;
const ZMM_HI256: u64 = 1 << 6;
const HI16_ZMM: u64 = 1 << 7;
/// What the host writes into, and the emulator's memory holds before, every save area.
const FILL: u8 = 0xcc;

/// A 64-byte aligned XSAVE area.
#[derive(Clone)]
#[repr(C, align(64))]
struct Area([u8; XSAVE_AREA_SIZE]);

impl Area {
    fn filled(byte: u8) -> Box<Self> {
        Box::new(Self([byte; XSAVE_AREA_SIZE]))
    }
}

/// The host's XSAVE configuration.
struct Host {
    xcr0: u64,
    /// The components the tests touch: x87, SSE, AVX and AVX-512 as far as XCR0 enables them
    /// and they fit the 4096-byte area.
    mask: u64,
    layout: XsaveLayout,
}

impl Host {
    /// The host's configuration, or `None` (with a message) if it lacks XSAVE.
    fn detect(test: &str) -> Option<Self> {
        if !std::arch::is_x86_feature_detected!("xsave") {
            eprintln!("skipping {test}: the host has no (OS-enabled) XSAVE");
            return None;
        }
        let layout = XsaveLayout::from_cpuid(|leaf, subleaf| {
            let result = std::arch::x86_64::__cpuid_count(leaf, subleaf);
            [result.eax, result.ebx, result.ecx, result.edx]
        });
        let (low, high): (u32, u32);
        // SAFETY: XGETBV with ECX = 0 only reads XCR0 into EDX:EAX, which are declared; the OS
        // enabled XSAVE (checked above), so the instruction exists and is allowed.
        unsafe {
            asm!("xgetbv", in("ecx") 0, out("eax") low, out("edx") high, options(nomem, nostack));
        }
        let xcr0 = (u64::from(high) << 32) | u64::from(low);
        let fits = |index: u32| {
            layout
                .component(index)
                .is_some_and(|component| component.offset + component.size <= XSAVE_AREA_SIZE)
        };
        let mask = components(xcr0 & (X87 | SSE | AVX | AVX512))
            .filter(|&index| index < 2 || fits(index))
            .fold(0, |mask, index| mask | 1 << index);
        Some(Self { xcr0, mask, layout })
    }

    /// The standard-format byte ranges of the components in `self.mask` (MXCSR included).
    fn compared_ranges(&self) -> Vec<Range<usize>> {
        let mut ranges: Vec<_> = std::iter::once(0..XMM_RANGE.end).collect();
        for index in components(self.mask & !(X87 | SSE)) {
            let component = self.layout.component(index).unwrap();
            ranges.push(component.offset..component.offset + component.size);
        }
        ranges
    }

    /// The components of the mask whose bytes in the standard-format `area` are their initial
    /// configuration (for SSE: the XMM registers are 0, MXCSR does not count).
    fn initial_components(&self, area: &Area) -> u64 {
        let zero = |range: Range<usize>| area.0[range].iter().all(|&byte| byte == 0);
        let mut initial = 0;
        if area.0[0..2] == FCW_INITIAL.to_le_bytes()
            && zero(2..MXCSR_OFFSET)
            && zero(32..XMM_OFFSET)
        {
            initial |= X87;
        }
        if zero(XMM_RANGE) {
            initial |= SSE;
        }
        for index in components(self.mask & !(X87 | SSE)) {
            let component = self.layout.component(index).unwrap();
            if zero(component.offset..component.offset + component.size) {
                initial |= 1 << index;
            }
        }
        initial & self.mask
    }

    /// A standard-format image holding recognisable non-initial data derived from `seed` in
    /// every component of the mask, MXCSR `mxcsr`, and XSTATE_BV = mask without `initialised`
    /// (XRSTOR initialises those components, whatever the image holds for them).
    fn image(&self, seed: u8, mxcsr: u32, initialised: u64) -> Box<Area> {
        let mut image = Area::filled(0);
        let bytes = &mut image.0;
        let mut fill = |range: Range<usize>| {
            for (offset, byte) in range.clone().zip(&mut bytes[range]) {
                *byte = (offset as u8).wrapping_mul(31).wrapping_add(seed) | 1;
            }
        };
        // x87: ST0–7 with 10 bytes of data each (the other 6 bytes of each slot are reserved).
        for register in 0..8 {
            let at = 32 + 16 * register;
            fill(at..at + 10);
        }
        // XMM0–15 and the extended components.
        for range in self
            .compared_ranges()
            .into_iter()
            .skip(1)
            .chain([XMM_RANGE])
        {
            fill(range);
        }
        // x87 control: FCW with 53-bit precision (not the initial 037F), all registers valid,
        // FSW, FOP, FIP and FDP 0.
        bytes[0..2].copy_from_slice(&0x027fu16.to_le_bytes());
        bytes[4] = 0xff;
        bytes[MXCSR_OFFSET..MXCSR_OFFSET + 4].copy_from_slice(&mxcsr.to_le_bytes());
        set_xstate_bv(&mut bytes[..], self.mask & !initialised);
        image
    }
}

/// A native save sequence (see [`native_save!`]).
type NativeSave = fn(&Host, &Area, &mut Area, &mut Area, u64);

/// Runs `$instruction` natively: with the test thread's own state saved around it, XRSTOR
/// `image` (standard format, the host mask), XSAVE it into `snapshot`, then `$instruction`
/// into `target` with EDX:EAX = `rfbm`.
macro_rules! native_save {
    ($name:ident, $instruction:literal) => {
        fn $name(host: &Host, image: &Area, snapshot: &mut Area, target: &mut Area, rfbm: u64) {
            let mut original = Area::filled(0);
            // SAFETY: every area is 64-byte aligned, 4096 bytes long (more than the host's
            // layout of the mask needs, see `Host::detect`) and live; `original` starts zeroed,
            // so its header is valid for the final XRSTOR. The thread's registers of the mask
            // components are saved first and restored last, so the code around the block sees
            // them unchanged; only RAX/RDX, declared, are left modified.
            unsafe {
                asm!(
                    "mov eax, {mask_low:e}",
                    "mov edx, {mask_high:e}",
                    "xsave64 [{original}]",
                    "xrstor64 [{image}]",
                    "xsave64 [{snapshot}]",
                    "mov eax, {rfbm_low:e}",
                    "mov edx, {rfbm_high:e}",
                    concat!($instruction, " [{target}]"),
                    "mov eax, {mask_low:e}",
                    "mov edx, {mask_high:e}",
                    "xrstor64 [{original}]",
                    original = in(reg) original.0.as_mut_ptr(),
                    image = in(reg) image.0.as_ptr(),
                    snapshot = in(reg) snapshot.0.as_mut_ptr(),
                    target = in(reg) target.0.as_mut_ptr(),
                    mask_low = in(reg) host.mask as u32,
                    mask_high = in(reg) (host.mask >> 32) as u32,
                    rfbm_low = in(reg) rfbm as u32,
                    rfbm_high = in(reg) (rfbm >> 32) as u32,
                    out("eax") _,
                    out("edx") _,
                    options(nostack),
                );
            }
        }
    };
}

native_save!(native_xsave, "xsave64");
native_save!(native_xsaveopt, "xsaveopt64");
native_save!(native_xsavec, "xsavec64");
native_save!(native_xsavec32, "xsavec");

/// Natively, with the test thread's own state saved around it: XRSTOR `start` (standard
/// format, the host mask), XRSTOR `compacted` with EDX:EAX = `rfbm`, XGETBV(1), and XSAVE the
/// result into `after`. Returns XCR0 & XINUSE.
fn native_restore(host: &Host, start: &Area, compacted: &Area, rfbm: u64, after: &mut Area) -> u64 {
    let mut original = Area::filled(0);
    let (low, high): (u32, u32);
    // SAFETY: as in `native_save!`; `compacted` was accepted by the emulator's XRSTOR, whose
    // header checks are those of the architecture, so the native XRSTOR does not fault. XGETBV
    // with ECX = 1 exists (the caller checked CPUID.(EAX=0DH,ECX=1):EAX[2]); RAX, RCX and RDX
    // are declared.
    unsafe {
        asm!(
            "mov eax, {mask_low:e}",
            "mov edx, {mask_high:e}",
            "xsave64 [{original}]",
            "xrstor64 [{start}]",
            "mov eax, {rfbm_low:e}",
            "mov edx, {rfbm_high:e}",
            "xrstor64 [{compacted}]",
            "mov ecx, 1",
            "xgetbv",
            "mov {low:e}, eax",
            "mov {high:e}, edx",
            "mov eax, {mask_low:e}",
            "mov edx, {mask_high:e}",
            "xsave64 [{after}]",
            "xrstor64 [{original}]",
            original = in(reg) original.0.as_mut_ptr(),
            start = in(reg) start.0.as_ptr(),
            compacted = in(reg) compacted.0.as_ptr(),
            after = in(reg) after.0.as_mut_ptr(),
            mask_low = in(reg) host.mask as u32,
            mask_high = in(reg) (host.mask >> 32) as u32,
            rfbm_low = in(reg) rfbm as u32,
            rfbm_high = in(reg) (rfbm >> 32) as u32,
            low = out(reg) low,
            high = out(reg) high,
            out("eax") _,
            out("ecx") _,
            out("edx") _,
            options(nostack),
        );
    }
    (u64::from(high) << 32) | u64::from(low)
}

fn assemble(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut assembler = CodeAssembler::new(64).unwrap();
    build(&mut assembler).unwrap();
    assembler.assemble(CODE).unwrap()
}

/// The emulator's vCPU for a host snapshot: that XSAVE area, the host's XCR0, RBX = DATA and
/// EDX:EAX = `rfbm`.
fn emulated_state(host: &Host, snapshot: &Area, rfbm: u64) -> X86State {
    let mut state = X86State {
        xcr0: host.xcr0,
        ..Default::default()
    };
    state.xsave.copy_from_slice(&snapshot.0);
    state.set_gpr(0, rfbm & 0xffff_ffff);
    state.set_gpr(2, rfbm >> 32);
    state.set_gpr(3, DATA);
    state
}

/// Runs `bytes` in the emulator with the host's layout.
fn emulate_on(
    host: &Host,
    bytes: &[u8],
    state: &mut X86State,
    memory: &mut FakeMemory,
) -> Result<Instruction, EmulationError> {
    state.rip = CODE;
    emulate(
        bytes,
        state,
        memory,
        &mut FakeServices::with_layout(host.layout.clone()),
    )
}

/// Requested-feature bitmaps that leave gaps in the compacted format, within the host mask,
/// without duplicates.
fn rfbms(host: &Host) -> Vec<u64> {
    let mut rfbms = Vec::new();
    for rfbm in [
        u64::MAX,
        !AVX,
        !SSE,
        X87 | SSE | HI16_ZMM,
        AVX | ZMM_HI256,
        SSE | OPMASK,
        X87 | OPMASK | HI16_ZMM,
        X87,
        0,
    ] {
        let rfbm = rfbm & host.mask;
        if !rfbms.contains(&rfbm) {
            rfbms.push(rfbm);
        }
    }
    rfbms
}

/// Images covering components in use, components initialised by XRSTOR, and the MXCSR cases;
/// `with_mxcsr_exception` adds SSE with XMM registers at 0 but MXCSR ≠ 1F80H.
fn images(host: &Host, with_mxcsr_exception: bool) -> Vec<(&'static str, Box<Area>)> {
    let mut images = vec![
        ("all in use", host.image(1, 0x3fa0, 0)),
        (
            "x87, AVX and opmask initialised",
            host.image(2, 0x9fa0, X87 | AVX | OPMASK),
        ),
        (
            "SSE (MXCSR 1F80H) and Hi16_ZMM initialised",
            host.image(3, MXCSR_DEFAULT, SSE | HI16_ZMM),
        ),
    ];
    if with_mxcsr_exception {
        images.push(("SSE initialised, MXCSR 3FA0H", host.image(4, 0x3fa0, SSE)));
    }
    images
}

/// Runs one native-against-emulated comparison (`Some(message)` on a difference) up to five
/// times. The host kernel may preempt the test thread between the native snapshot and the
/// native save; saving and restoring the thread's state then can change which components the
/// CPU counts as in use (XINUSE), and with it what an optimised save writes. A real difference
/// shows up on every attempt; a preemption almost never twice in a row.
fn with_retries(mut compare: impl FnMut() -> Option<String>) {
    let mut last = None;
    for _ in 0..5 {
        match compare() {
            None => return,
            Some(difference) => last = Some(difference),
        }
    }
    panic!("{}", last.unwrap_or_default());
}

/// Where two byte slices first differ.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[test]
fn xsavec_matches_the_host_cpu() {
    let Some(host) = Host::detect("xsavec_matches_the_host_cpu") else {
        return;
    };
    if !std::arch::is_x86_feature_detected!("xsavec") {
        eprintln!("skipping xsavec_matches_the_host_cpu: the host has no XSAVEC");
        return;
    }
    let forms: [(&str, NativeSave, Vec<u8>); 2] = [
        (
            "xsavec64",
            native_xsavec,
            assemble(|a| a.xsavec64(ptr(rbx))),
        ),
        ("xsavec", native_xsavec32, assemble(|a| a.xsavec(ptr(rbx)))),
    ];
    let mut compared = 0;
    for (description, image) in images(&host, true) {
        for rfbm in rfbms(&host) {
            for (form, native, bytes) in &forms {
                with_retries(|| {
                    let mut snapshot = Area::filled(0);
                    let mut native_area = Area::filled(FILL);
                    native(&host, &image, &mut snapshot, &mut native_area, rfbm);
                    let mut state = emulated_state(&host, &snapshot, rfbm);
                    let before = state.clone();
                    let mut memory = FakeMemory::new(DATA, XSAVE_AREA_SIZE, FILL);
                    emulate_on(&host, bytes, &mut state, &mut memory).unwrap();
                    assert_eq!(state.xsave, before.xsave);
                    first_difference(&memory.bytes, &native_area.0).map(|at| {
                        format!(
                            "{form} of {description}, RFBM {rfbm:#x}: first difference at byte {at}"
                        )
                    })
                });
                compared += 1;
            }
        }
    }
    eprintln!(
        "xsavec_matches_the_host_cpu: {compared} saves compared (mask {:#x})",
        host.mask
    );
}

#[test]
fn xsave_and_xsaveopt_match_the_host_cpu() {
    let Some(host) = Host::detect("xsave_and_xsaveopt_match_the_host_cpu") else {
        return;
    };
    let mut forms: Vec<(&str, NativeSave, Vec<u8>)> =
        vec![("xsave64", native_xsave, assemble(|a| a.xsave64(ptr(rbx))))];
    if std::arch::is_x86_feature_detected!("xsaveopt") {
        forms.push((
            "xsaveopt64",
            native_xsaveopt,
            assemble(|a| a.xsaveopt64(ptr(rbx))),
        ));
    } else {
        eprintln!("xsave_and_xsaveopt_match_the_host_cpu: the host has no XSAVEOPT, skipping it");
    }
    for (description, image) in images(&host, false) {
        for rfbm in rfbms(&host) {
            for (form, native, bytes) in &forms {
                with_retries(|| {
                    let mut snapshot = Area::filled(0);
                    let mut native_area = Area::filled(FILL);
                    native(&host, &image, &mut snapshot, &mut native_area, rfbm);
                    let mut state = emulated_state(&host, &snapshot, rfbm);
                    let mut memory = FakeMemory::new(DATA, XSAVE_AREA_SIZE, FILL);
                    emulate_on(&host, bytes, &mut state, &mut memory).unwrap();
                    first_difference(&memory.bytes, &native_area.0).map(|at| {
                        format!(
                            "{form} of {description}, RFBM {rfbm:#x}: first difference at byte {at}"
                        )
                    })
                });
            }
        }
    }
}

#[test]
fn compacted_xrstor_matches_the_host_cpu() {
    let Some(host) = Host::detect("compacted_xrstor_matches_the_host_cpu") else {
        return;
    };
    if !std::arch::is_x86_feature_detected!("xsavec") || !host.layout.extensions.xgetbv_in_use {
        eprintln!("skipping compacted_xrstor_matches_the_host_cpu: no XSAVEC or XGETBV(1)");
        return;
    }
    let save = assemble(|a| a.xsavec64(ptr(rbx)));
    let restore = assemble(|a| a.xrstor64(ptr(rbx)));
    let xgetbv = assemble(|a| a.xgetbv());
    // The state before the restore, and its host snapshot.
    let start = host.image(7, 0x1fc0, 0);
    let mut start_snapshot = Area::filled(0);
    native_xsave(&host, &start, &mut start_snapshot, &mut Area::filled(0), 0);
    let restore_rfbms = [u64::MAX, AVX | OPMASK, SSE, X87 | HI16_ZMM];
    let mut compared = 0;
    for (description, image) in images(&host, true) {
        let mut snapshot = Area::filled(0);
        native_xsave(&host, &image, &mut snapshot, &mut Area::filled(0), 0);
        for save_rfbm in rfbms(&host) {
            // The compacted image, made by the emulator.
            let mut state = emulated_state(&host, &snapshot, save_rfbm);
            let mut memory = FakeMemory::new(DATA, XSAVE_AREA_SIZE, 0);
            emulate_on(&host, &save, &mut state, &mut memory).unwrap();
            let mut compacted = Area::filled(0);
            compacted.0.copy_from_slice(&memory.bytes);
            for restore_rfbm in restore_rfbms.map(|rfbm| rfbm & host.mask) {
                let context =
                    format!("{description}, saved {save_rfbm:#x}, restored {restore_rfbm:#x}");
                let mut state = emulated_state(&host, &start_snapshot, restore_rfbm);
                emulate_on(&host, &restore, &mut state, &mut memory).unwrap();
                let mut after = Area::filled(0);
                let native_in_use =
                    native_restore(&host, &start, &compacted, restore_rfbm, &mut after);
                for range in host.compared_ranges() {
                    assert!(
                        state.xsave[range.clone()] == after.0[range.clone()],
                        "{context}: {range:?} differs at byte {:?}",
                        range.clone().find(|&at| state.xsave[at] != after.0[at])
                    );
                }
                // A component in its initial configuration may be tracked as in use or not.
                let initial = host.initial_components(&after);
                let emulated_bv = xstate_bv(state.xsave.as_slice()) & host.mask;
                let native_bv = xstate_bv(&after.0) & host.mask;
                assert_eq!(
                    emulated_bv & !initial,
                    native_bv & !initial,
                    "{context}: XSTATE_BV"
                );
                state.set_gpr(1, 1);
                emulate_on(&host, &xgetbv, &mut state, &mut memory).unwrap();
                let emulated_in_use = (state.gpr(2) << 32) | state.gpr(0);
                assert_eq!(
                    emulated_in_use & host.mask & !initial,
                    native_in_use & host.mask & !initial,
                    "{context}: XGETBV(1)"
                );
                compared += 1;
            }
        }
    }
    eprintln!("compacted_xrstor_matches_the_host_cpu: {compared} restores compared");
}

#[test]
fn fxsave64_matches_the_host_cpu() {
    // Put known XMM and MXCSR values into the host CPU with FXRSTOR64, read them back with a
    // native FXSAVE64, and compare with the emulator saving the same state.
    #[repr(C, align(64))]
    struct Legacy([u8; 512]);
    let mut image = Legacy([0; 512]);
    // SAFETY: FXSAVE64 writes 512 bytes into the aligned, live buffer.
    unsafe { asm!("fxsave64 [{}]", in(reg) image.0.as_mut_ptr()) };
    for (index, chunk) in image.0[160..416].chunks_exact_mut(16).enumerate() {
        chunk.fill(0x0f_u8.wrapping_mul(index as u8 + 1));
    }
    image.0[24..28].copy_from_slice(&0x3fa0u32.to_le_bytes());
    let mut native = Legacy([0xcc; 512]);
    // SAFETY: restores an image the CPU itself produced (only XMM values and a valid MXCSR
    // changed), saves it again, and finally restores the original state so the test thread
    // continues with its own registers; both buffers are aligned and live.
    unsafe {
        let mut original = Legacy([0; 512]);
        asm!(
            "fxsave64 [{original}]",
            "fxrstor64 [{image}]",
            "fxsave64 [{native}]",
            "fxrstor64 [{original}]",
            original = in(reg) original.0.as_mut_ptr(),
            image = in(reg) image.0.as_ptr(),
            native = in(reg) native.0.as_mut_ptr(),
        );
    }
    let mut state = X86State::default();
    state.xsave[..512].copy_from_slice(&native.0);
    set_xstate_bv(&mut state.xsave[..], X87 | SSE);
    state.set_gpr(3, DATA);
    state.rip = CODE;
    let mut memory = FakeMemory::new(DATA, 512, 0xaa);
    memory.bytes[416..].copy_from_slice(&native.0[416..]);
    emulate(
        &assemble(|a| a.fxsave64(ptr(rbx))),
        &mut state,
        &mut memory,
        &mut FakeServices::new(),
    )
    .unwrap();
    assert_eq!(&memory.bytes[..], &native.0[..]);
}
