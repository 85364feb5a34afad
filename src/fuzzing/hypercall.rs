//! Fuzz target `hypercall`: the hypercall dispatcher over arbitrary guest RAM, for interfaces 1, 2
//! and 3 and both guest architectures. The input describes a short sequence of hypercalls: each
//! a well-formed request laid out as the interface version's struct (`hypercall_requests`), or
//! any address with a block built field by field from plausible values (pointers to guest paths
//! and buffers, small fds, open flags, lengths) or raw ones. Files go through a FileMap over the
//! shared sandbox tree, which must be untouched outside its mappings after every call.
//!
//! SerialReadBuffer and hypercall reads (SerialReadByte) are left out: they read the host's
//! standard input and would block the fuzzer.

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use uhyve_interface::v2::HypercallAddressV2;
use uhyve_interface::{GuestPhysAddr, HypercallAddress};

use super::hypercall_requests::{Pools, Request};
use super::sandbox::{GuestPath, OpenFlags};
use super::sandbox_tree::sandbox_tree;
use crate::arch::GuestArch;
use crate::hypercall::{GuestCommandLine, HypercallOutcome, Hypercalls};
use crate::isolation::FileMap;
use crate::mem::GuestMemory;
use crate::output::{OutputTarget, SerialOutput};

/// Guest RAM size.
const RAM_SIZE: u64 = 0x40000;
/// The x86_64 page tables (PML4, PDPT, PD) identity-mapping the first 2 MiB above the RAM base.
const PML4: u64 = 0x1000;
/// Parameter blocks, one 0x100-byte slot per call.
const PARAMS: u64 = 0x8000;
const PARAMS_SLOT: u64 = 0x100;
/// Guest path strings, one 0x200-byte slot each: first [`DEFAULT_PATHS`], then the input's.
const STRINGS: u64 = 0x9000;
const STRING_SLOT: u64 = 0x200;
const STRING_SLOTS: u64 = 16;
/// Paths every input can use: files, directories and the tricky cases of the sandbox tree.
const DEFAULT_PATHS: [&str; 8] = [
    "/root/file",
    "/root/dir",
    "/root/new0",
    "/data/inner",
    "/root/escape",
    "/root/../root/link",
    "/tmpfile",
    "/",
];
/// Data buffers (after the 16 path slots).
const BUFFERS: u64 = 0x10000;
/// Most hypercalls per input.
const MAX_CALLS: usize = 16;

/// The value of one parameter-block field.
#[derive(Debug, Arbitrary)]
enum FieldValue {
    /// Guest-physical (and, identity-mapped, guest-virtual) address of path slot n.
    Path(u8),
    /// Address of a buffer at this offset in the buffer area.
    Buffer(u16),
    /// A small file descriptor (0 … 7).
    Fd(u8),
    Flags(OpenFlags),
    Mode(u16),
    Len(u16),
    Raw(u64),
}

/// One field: its value and its width (4 or 8 bytes).
#[derive(Debug, Arbitrary)]
struct Field {
    value: FieldValue,
    wide: bool,
}

/// Which hypercall address a call uses.
#[derive(Debug, Arbitrary)]
enum Address {
    /// Entry n of the address table of the guest's interface version.
    Known(u8),
    Raw(u16),
}

/// What the argument register holds.
#[derive(Debug, Arbitrary)]
enum Argument {
    /// The call's parameter block.
    Block,
    Raw(u64),
}

/// One hypercall: a well-formed request, or any address with any block and argument.
#[derive(Debug, Arbitrary)]
enum Call {
    Request(Request),
    Raw {
        address: Address,
        fields: Vec<Field>,
        argument: Argument,
    },
}

/// The target's input.
#[derive(Debug, Arbitrary)]
struct HypercallInput {
    interface: u8,
    aarch64: bool,
    /// RAM at 4 GiB (as v2/v3 guests have it) instead of 0.
    high_ram: bool,
    ram_patches: Vec<(u32, Vec<u8>)>,
    paths: Vec<GuestPath>,
    calls: Vec<Call>,
}

/// Runs the input's hypercalls against a fresh dispatcher and checks the sandbox afterwards.
pub fn hypercall(data: &[u8]) {
    let Ok(input) = HypercallInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let tree = sandbox_tree();
    let interface = u32::from(input.interface % 3) + 1;
    let arch = if input.aarch64 {
        GuestArch::Aarch64
    } else {
        GuestArch::X86_64
    };
    let base = if input.high_ram { 1 << 32 } else { 0 };
    let mem = prepare_memory(&input, base);
    let files =
        FileMap::new(&tree.default_mappings(), Some(tree.private())).expect("map the sandbox tree");
    let output = Arc::new(SerialOutput::new(OutputTarget::None).expect("a null console"));
    let cmdline = GuestCommandLine {
        args: vec!["/kernel".into(), "-v".into()],
        env: vec![("KEY".into(), "value".into())],
    };
    let calls = Hypercalls::new(arch, output, files, cmdline).with_interface(interface);
    for (index, call) in input.calls.iter().take(MAX_CALLS).enumerate() {
        let block = base + PARAMS + index as u64 * PARAMS_SLOT;
        let (address, argument) = prepare_call(&mem, base, block, interface, call);
        if HypercallAddressV2::try_from(address) == Ok(HypercallAddressV2::SerialReadBuffer) {
            continue;
        }
        let mut root = || Ok(GuestPhysAddr::new(base + PML4));
        if let HypercallOutcome::Fatal(_) = calls.handle(&mem, address, argument, &mut root) {
            break;
        }
        tree.assert_untouched(false);
    }
    drop(calls);
    tree.assert_untouched(true);
}

/// Writes the parameter block of `call` at `block` and returns its address and argument.
fn prepare_call(
    mem: &GuestMemory,
    base: u64,
    block: u64,
    interface: u32,
    call: &Call,
) -> (u16, u64) {
    match call {
        Call::Request(request) => {
            let pools = Pools {
                path: Box::new(move |slot| path_slot(base, slot)),
                buffer: Box::new(move |offset| buffer_at(base, offset)),
            };
            let (address, bytes, argument) = request.encode(interface, &pools);
            let _ = mem.write(GuestPhysAddr::new(block), &bytes);
            (address, argument.unwrap_or(block))
        }
        Call::Raw {
            address,
            fields,
            argument,
        } => {
            write_block(mem, base, block, fields);
            let address = match *address {
                Address::Known(n) => known_address(interface, n),
                Address::Raw(address) => address,
            };
            let argument = match *argument {
                Argument::Block => block,
                Argument::Raw(raw) => raw,
            };
            (address, argument)
        }
    }
}

/// Guest-physical address of path slot `slot`.
fn path_slot(base: u64, slot: u8) -> u64 {
    base + STRINGS + u64::from(slot) % STRING_SLOTS * STRING_SLOT
}

/// Guest-physical address of the buffer at `offset` in the buffer area.
fn buffer_at(base: u64, offset: u16) -> u64 {
    base + BUFFERS + u64::from(offset) % (RAM_SIZE - BUFFERS)
}

/// Entry `n` of the address table of interface `interface`.
fn known_address(interface: u32, n: u8) -> u16 {
    let n = usize::from(n);
    if interface == 1 {
        HypercallAddress::ALL[n % HypercallAddress::ALL.len()].port()
    } else {
        HypercallAddressV2::ALL[n % HypercallAddressV2::ALL.len()] as u16
    }
}

/// Guest RAM at `base` with identity-mapping x86_64 page tables, the input's paths and its raw
/// patches.
fn prepare_memory(input: &HypercallInput, base: u64) -> GuestMemory {
    let mem = GuestMemory::new(GuestPhysAddr::new(base), RAM_SIZE).expect("fuzzing guest RAM");
    let at = |offset: u64| GuestPhysAddr::new(base + offset);
    let (present_writable, huge) = (0x3u64, 0x80u64);
    let pdpt_index = (base >> 30) & 511;
    let entries = [
        (PML4, (base + PML4 + 0x1000) | present_writable),
        (
            PML4 + 0x1000 + pdpt_index * 8,
            (base + PML4 + 0x2000) | present_writable,
        ),
        (PML4 + 0x2000, base | present_writable | huge),
    ];
    for (offset, entry) in entries {
        mem.write_obj(at(offset), &entry)
            .expect("page-table entry inside RAM");
    }
    let paths = DEFAULT_PATHS.iter().map(|path| path.to_string());
    let paths = paths.chain(input.paths.iter().map(GuestPath::render));
    for (slot, path) in paths.take(STRING_SLOTS as usize).enumerate() {
        let mut bytes = path.into_bytes();
        bytes.truncate(STRING_SLOT as usize - 1);
        bytes.push(0);
        let _ = mem.write(at(STRINGS + slot as u64 * STRING_SLOT), &bytes);
    }
    for (offset, bytes) in input.ram_patches.iter().take(8) {
        let offset = u64::from(*offset) % RAM_SIZE;
        let len = bytes.len().min((RAM_SIZE - offset) as usize);
        let _ = mem.write(at(offset), &bytes[..len]);
    }
    mem
}

/// Writes the parameter block of one call at `block`.
fn write_block(mem: &GuestMemory, base: u64, block: u64, fields: &[Field]) {
    let mut bytes = Vec::new();
    for field in fields {
        let value = match &field.value {
            FieldValue::Path(slot) => base + STRINGS + u64::from(*slot % 8) * STRING_SLOT,
            FieldValue::Buffer(offset) => {
                base + BUFFERS + u64::from(*offset) % (RAM_SIZE - BUFFERS)
            }
            FieldValue::Fd(fd) => u64::from(fd % 8),
            FieldValue::Flags(flags) => flags.value().cast_unsigned().into(),
            FieldValue::Mode(mode) => u64::from(*mode),
            FieldValue::Len(len) => u64::from(*len),
            FieldValue::Raw(raw) => *raw,
        };
        let width = if field.wide { 8 } else { 4 };
        bytes.extend_from_slice(&value.to_le_bytes()[..width]);
    }
    bytes.truncate(PARAMS_SLOT as usize);
    let _ = mem.write(GuestPhysAddr::new(block), &bytes);
}
