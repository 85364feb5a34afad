//! What the guest kernel is told at boot: the boot info (hermit-entry's `RawBootInfo`, whose
//! address the kernel gets in RDI / X0) and the flattened device tree (memory, CPUs, TSC rate,
//! the command line in `/chosen/bootargs` and, for a Hermit image archive handed to the kernel,
//! where it lies: `/chosen/linux,initrd-start` and `-end`, also reserved in the device tree's
//! memory reservation block).
//!
//! Both are built on the host from validated values and copied into guest memory through
//! [`GuestMemory`]; the boot info is written with every padding byte zero.

use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};
use std::ops::Range;
use std::sync::Arc;

use hermit_entry::boot_info::{
    BootInfo, HardwareInfo, LoadInfo, PlatformInfo, RawBootInfo, SerialPortBase, TlsInfo,
};
use thiserror::Error;
use uhyve_interface::GuestPhysAddr;
use vm_fdt::{FdtReserveEntry, FdtWriter};

use crate::loader::TlsTemplate;
use crate::mem::{GuestMemory, MemoryError};

/// Size of hermit-entry's `RawBootInfo` (entry versions 3 and 4).
pub const BOOT_INFO_SIZE: usize = 128;

/// The serial port reported to v1 guests: the Uart hypercall port.
pub const V1_SERIAL_PORT: u16 = 0x800;
/// The serial port reported to v2/v3 guests: the SerialWriteBuffer hypercall address.
pub const V2_SERIAL_PORT: u16 = 0x1030;

/// The boot info's `serial_port_base` for a guest speaking `interface_version`.
pub fn serial_port_for_interface(interface_version: u32) -> u16 {
    if interface_version >= 2 {
        V2_SERIAL_PORT
    } else {
        V1_SERIAL_PORT
    }
}

/// Failures building or writing the boot info and the device tree.
#[derive(Debug, Error)]
pub enum BootError {
    /// The guest must have at least one CPU.
    #[error("the guest needs at least one CPU, got 0")]
    NoCpus,
    /// The RAM range is empty or inverted.
    #[error("guest RAM range {start:#x}..{end:#x} is empty or inverted")]
    InvalidRam {
        /// First byte of RAM.
        start: u64,
        /// One past the last byte of RAM.
        end: u64,
    },
    /// The initial RAM disk range is empty or inverted.
    #[error("initial RAM disk range {start:#x}..{end:#x} is empty or inverted")]
    InvalidInitrd {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// The device-tree address must not be 0 (0 means "no device tree" to the kernel).
    #[error("the device-tree address must not be 0")]
    ZeroFdtAddress,
    /// vm-fdt rejected the device tree (e.g. a NUL byte in the boot arguments).
    #[error("cannot build the device tree: {0}")]
    Fdt(#[from] vm_fdt::Error),
    /// The device tree is larger than its area in guest memory.
    #[error(
        "the device tree is {size} bytes, more than the {max} bytes reserved for it; shorten \
         the kernel arguments, environment or application arguments"
    )]
    FdtTooLarge {
        /// Size of the blob.
        size: u64,
        /// Size of the area.
        max: u64,
    },
    /// Copying a boot structure into guest memory failed.
    #[error("cannot write the {what} to guest memory: {source}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// The failed access.
        source: MemoryError,
    },
}

/// Everything the boot info reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// Guest RAM `[start, end)`.
    pub ram: Range<u64>,
    /// Where the kernel image was loaded.
    pub kernel_image: Range<u64>,
    /// TLS template (from the image's PT_TLS header; the kernel copies it itself), `None` if
    /// the image has none.
    pub tls: Option<TlsTemplate>,
    /// Number of vCPUs (the kernel waits for exactly this many).
    pub num_cpus: u32,
    /// TSC frequency in kHz, if known.
    pub cpu_freq_khz: Option<u32>,
    /// Wall-clock time at VM creation.
    pub boot_time: time::OffsetDateTime,
    /// Serial port base ([`V1_SERIAL_PORT`] for v1 guests; 0 reports "none").
    pub serial_port: u16,
    /// Whether the kernel should scan PCI.
    pub has_pci: bool,
    /// Guest address of the device tree, if one is provided.
    pub fdt_address: Option<u64>,
}

/// Byte ranges of `RawBootInfo` that hold fields; everything else is padding.
///
/// `RawBootInfo` and all types inside it are `repr(C)` (or primitives / `Option<NonZero*>`, whose
/// `None` is guaranteed to be 0), so this layout follows from the `repr(C)` rules for
/// hermit-entry 0.10.x: hardware info 0..32, load info 32..80, platform tag (u32) at 80 and the
/// `Uhyve` variant at 88 (has_pci), 96 (num_cpus), 104 (cpu_freq) and 112 (x86_64, aligned to
/// 8) or 108 (aarch64) (boot_time).
#[cfg(target_arch = "x86_64")]
const FIELD_BYTES: [Range<usize>; 5] = [0..18, 24..84, 88..89, 96..108, 112..128];
#[cfg(target_arch = "aarch64")]
const FIELD_BYTES: [Range<usize>; 3] = [0..84, 88..89, 96..124];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the boot-info layout is known only for x86_64 and aarch64 hosts");

// The field ranges above are only valid for this exact size and alignment.
const _: () = assert!(size_of::<RawBootInfo>() == BOOT_INFO_SIZE);
const _: () = assert!(align_of::<RawBootInfo>() == 8);

#[cfg(target_arch = "x86_64")]
fn serial_port_base(port: u16) -> Option<SerialPortBase> {
    SerialPortBase::new(port)
}

#[cfg(target_arch = "aarch64")]
fn serial_port_base(port: u16) -> Option<SerialPortBase> {
    SerialPortBase::new(u64::from(port))
}

/// Encodes the boot info for an **aarch64** guest, whatever the host architecture (hermit-entry's
/// types follow the host, so the aarch64 layout of hermit-abi.md §2.1 is written field by field):
/// serial port base as u64 at 16, boot time as i128 nanoseconds at 108, all gaps zero.
pub fn encode_boot_info_aarch64(params: &BootParams) -> Result<[u8; BOOT_INFO_SIZE], BootError> {
    if params.ram.start >= params.ram.end {
        return Err(BootError::InvalidRam {
            start: params.ram.start,
            end: params.ram.end,
        });
    }
    if params.num_cpus == 0 {
        return Err(BootError::NoCpus);
    }
    if params.fdt_address == Some(0) {
        return Err(BootError::ZeroFdtAddress);
    }
    let mut bytes = [0u8; BOOT_INFO_SIZE];
    let mut put = |at: usize, field: &[u8]| bytes[at..at + field.len()].copy_from_slice(field);
    put(0, &params.ram.start.to_le_bytes());
    put(8, &params.ram.end.to_le_bytes());
    put(16, &u64::from(params.serial_port).to_le_bytes());
    put(24, &params.fdt_address.unwrap_or(0).to_le_bytes());
    put(32, &params.kernel_image.start.to_le_bytes());
    put(40, &params.kernel_image.end.to_le_bytes());
    if let Some(tls) = params.tls {
        for (index, value) in [tls.start, tls.filesz, tls.memsz, tls.align]
            .iter()
            .enumerate()
        {
            put(48 + 8 * index, &value.to_le_bytes());
        }
    }
    put(80, &AARCH64_PLATFORM_UHYVE.to_le_bytes());
    put(88, &[u8::from(params.has_pci)]);
    put(96, &u64::from(params.num_cpus).to_le_bytes());
    put(104, &params.cpu_freq_khz.unwrap_or(0).to_le_bytes());
    put(108, &params.boot_time.unix_timestamp_nanos().to_le_bytes());
    Ok(bytes)
}

/// Platform tag of `PlatformInfo::Uhyve` in the aarch64 boot info.
const AARCH64_PLATFORM_UHYVE: u32 = 1;

/// Builds the raw boot info for `params` and returns its bytes, padding zeroed.
pub fn encode_boot_info(params: &BootParams) -> Result<[u8; BOOT_INFO_SIZE], BootError> {
    if params.ram.start >= params.ram.end {
        return Err(BootError::InvalidRam {
            start: params.ram.start,
            end: params.ram.end,
        });
    }
    let num_cpus = NonZeroU64::new(u64::from(params.num_cpus)).ok_or(BootError::NoCpus)?;
    let device_tree = match params.fdt_address {
        Some(address) => Some(NonZeroU64::new(address).ok_or(BootError::ZeroFdtAddress)?),
        None => None,
    };
    let info = BootInfo {
        hardware_info: HardwareInfo {
            phys_addr_range: params.ram.clone(),
            serial_port_base: serial_port_base(params.serial_port),
            device_tree,
        },
        load_info: LoadInfo {
            kernel_image_addr_range: params.kernel_image.clone(),
            tls_info: params.tls.map(|tls| TlsInfo {
                start: tls.start,
                filesz: tls.filesz,
                memsz: tls.memsz,
                align: tls.align,
            }),
        },
        platform_info: PlatformInfo::Uhyve {
            has_pci: params.has_pci,
            num_cpus,
            cpu_freq: params.cpu_freq_khz.and_then(NonZeroU32::new),
            boot_time: params.boot_time,
        },
    };
    let raw = RawBootInfo::from(info);
    let base = std::ptr::from_ref(&raw).cast::<u8>();
    let mut bytes = [0u8; BOOT_INFO_SIZE];
    for range in FIELD_BYTES {
        // SAFETY: `raw` is a live local of exactly BOOT_INFO_SIZE bytes (asserted at compile
        // time), and `range` lies inside it. The ranges cover only bytes that belong to fields
        // of `RawBootInfo` under its repr(C) layout (see FIELD_BYTES): integers, `bool`,
        // `Option<NonZero*>` (fully initialised, None = 0), the enum tag and the fields of the
        // `Uhyve` variant, which is the one `From<BootInfo>` wrote. Padding bytes, which may be
        // uninitialised, are never read; they stay zero in `bytes`. The slice is only read
        // while `raw` is alive and not mutated.
        let field = unsafe { std::slice::from_raw_parts(base.add(range.start), range.len()) };
        bytes[range].copy_from_slice(field);
    }
    Ok(bytes)
}

/// Writes the boot info for `params` to guest memory at `at` (128 bytes, padding zero), in the
/// layout of `platform`.
pub fn write_boot_info(
    mem: &GuestMemory,
    at: GuestPhysAddr,
    params: &BootParams,
    platform: BootPlatform,
) -> Result<(), BootError> {
    let bytes = match platform {
        BootPlatform::X86_64 => encode_boot_info(params)?,
        BootPlatform::Aarch64 => encode_boot_info_aarch64(params)?,
    };
    mem.write(at, &bytes).map_err(|source| BootError::Write {
        what: "boot info",
        source,
    })
}

/// Everything the device tree describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdtParams {
    /// Guest RAM `[start, end)`.
    pub ram: Range<u64>,
    /// Number of vCPUs.
    pub num_cpus: u32,
    /// TSC frequency in kHz, if known (`/hermit,tsc/khz`).
    pub tsc_khz: Option<u32>,
    /// `/chosen/bootargs`, see [`bootargs`].
    pub bootargs: String,
    /// Guest directories for `/uhyve,mounts` (kernels ≥ 0.12 mount the host file system at
    /// each); no node when empty.
    pub mounts: Vec<String>,
    /// Guest-physical range of the initial RAM disk (a Hermit image archive in the internal
    /// mode): `/chosen/linux,initrd-start` and `linux,initrd-end` (u64 each), and the same range
    /// in the memory reservation block so that the kernel does not hand it out.
    pub initrd: Option<Range<u64>>,
    /// The guest has PCI devices (the network card): on aarch64 the tree then describes the
    /// PCI host bridge (`/pcie@1000000000`, see [`write_pci_host_bridge`]); x86_64 kernels scan
    /// the legacy configuration ports instead.
    pub pci: bool,
}

/// The bytes given to the kernel as its initial RAM disk (the decompressed tar of a Hermit image
/// archive); shown by its length in debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct InitialRamdisk(pub Arc<[u8]>);

impl fmt::Debug for InitialRamdisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InitialRamdisk({} bytes)", self.0.len())
    }
}

/// Builds the device tree blob (DTB version 17) for `params`.
pub fn build_fdt(params: &FdtParams) -> Result<Vec<u8>, BootError> {
    build_fdt_for(params, BootPlatform::X86_64)
}

/// Which architecture the boot structures are for: the boot info's layout and the devices the
/// device tree describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootPlatform {
    /// x86_64: `/hermit,tsc` when the TSC frequency is known.
    X86_64,
    /// aarch64 (hermit-abi.md §7.4): the GICv3 (`/intc@8000000` with its ITS) and the generic
    /// timer (`/timer`); CPUs are `arm,cortex-a72`.
    Aarch64,
}

/// GICv3 distributor base and size, redistributor base and size (§7.4).
const GIC_REG: [u64; 4] = [0x800_0000, 0x1_0000, 0x80A_0000, 0xF6_0000];
/// The GIC's phandle, by which the PCI host bridge's interrupt map names it.
const GIC_PHANDLE: u32 = 1;
/// GIC ITS base and size.
const GIC_ITS_REG: [u64; 2] = [0x808_0000, 0x2_0000];
/// Timer PPIs: secure physical, non-secure physical, virtual, hypervisor (type 1 = PPI, level).
const TIMER_INTERRUPTS: [u32; 12] = [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4];

/// [`build_fdt`] for a given platform.
pub fn build_fdt_for(params: &FdtParams, platform: BootPlatform) -> Result<Vec<u8>, BootError> {
    let Range { start, end } = params.ram;
    if start >= end {
        return Err(BootError::InvalidRam { start, end });
    }
    if params.num_cpus == 0 {
        return Err(BootError::NoCpus);
    }
    let mut fdt = match &params.initrd {
        None => FdtWriter::new()?,
        Some(Range { start, end }) if start < end => {
            FdtWriter::new_with_mem_reserv(&[FdtReserveEntry::new(*start, end - start)?])?
        }
        Some(Range { start, end }) => {
            return Err(BootError::InvalidInitrd {
                start: *start,
                end: *end,
            });
        }
    };
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "hermit,uhyve")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;

    let memory = fdt.begin_node(&format!("memory@{start:x}"))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[start, end - start])?;
    fdt.end_node(memory)?;

    write_cpus(&mut fdt, params.num_cpus, platform)?;
    match platform {
        BootPlatform::X86_64 => {
            if let Some(khz) = params.tsc_khz {
                let tsc = fdt.begin_node("hermit,tsc")?;
                fdt.property_u32("khz", khz)?;
                fdt.end_node(tsc)?;
            }
        }
        BootPlatform::Aarch64 => {
            write_gic_and_timer(&mut fdt)?;
            if params.pci {
                write_pci_host_bridge(&mut fdt)?;
            }
        }
    }

    if !params.mounts.is_empty() {
        let mounts = fdt.begin_node("uhyve,mounts")?;
        fdt.property_string_list("mounts", params.mounts.clone())?;
        fdt.end_node(mounts)?;
    }

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &params.bootargs)?;
    if let Some(initrd) = &params.initrd {
        fdt.property_u64("linux,initrd-start", initrd.start)?;
        fdt.property_u64("linux,initrd-end", initrd.end)?;
    }
    fdt.end_node(chosen)?;

    fdt.end_node(root)?;
    Ok(fdt.finish()?)
}

/// `/cpus` with one `cpu@N` per vCPU.
fn write_cpus(fdt: &mut FdtWriter, num_cpus: u32, platform: BootPlatform) -> Result<(), BootError> {
    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for id in 0..num_cpus {
        let cpu = fdt.begin_node(&format!("cpu@{id}"))?;
        fdt.property_string("device_type", "cpu")?;
        if platform == BootPlatform::Aarch64 {
            fdt.property_string("compatible", "arm,cortex-a72")?;
        }
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;
    Ok(())
}

/// The aarch64 GICv3 (`/intc@8000000` with its ITS) and generic timer (`/timer`).
fn write_gic_and_timer(fdt: &mut FdtWriter) -> Result<(), BootError> {
    let intc = fdt.begin_node(&format!("intc@{:x}", GIC_REG[0]))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_array_u64("reg", &GIC_REG)?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_phandle(GIC_PHANDLE)?;
    let its = fdt.begin_node(&format!("its@{:x}", GIC_ITS_REG[0]))?;
    fdt.property_u32("#msi-cells", 1)?;
    fdt.property_array_u64("reg", &GIC_ITS_REG)?;
    fdt.property_string("compatible", "arm,gic-v3-its")?;
    fdt.property_null("msi-controller")?;
    fdt.end_node(its)?;
    fdt.end_node(intc)?;
    let timer = fdt.begin_node("timer")?;
    fdt.property_array_u32("interrupts", &TIMER_INTERRUPTS)?;
    fdt.property_null("always-on")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    fdt.end_node(timer)?;
    Ok(())
}

/// The aarch64 PCI host bridge (`/pcie@1000000000`) in the form Hermit's aarch64 kernels scan
/// for: a generic ECAM bridge, its I/O, 32-bit and 64-bit memory windows in `ranges`
/// (3 PCI address cells, 2 parent address cells, 2 size cells each), and an `interrupt-map`
/// that routes the network card's pin INTA to its level-triggered SPI on the GIC.
fn write_pci_host_bridge(fdt: &mut FdtWriter) -> Result<(), BootError> {
    use crate::arch::aarch64::layout::{NET_SPI, PCI_ECAM, PCI_IO, PCI_MEM32, PCI_MEM64};
    /// `ranges` space codes (bits 25:24 of the first PCI address cell), prefetchable bit 30.
    const IO_SPACE: u32 = 0x0100_0000;
    const MEM32_SPACE: u32 = 0x0200_0000;
    const MEM64_PREFETCHABLE: u32 = 0x4300_0000;
    /// Interrupt pin INTA in the child interrupt specifier.
    const PIN_INTA: u32 = 1;
    /// The GIC's interrupt types and flags: an SPI, level-triggered active high.
    const GIC_SPI: u32 = 0;
    const LEVEL_HIGH: u32 = 4;
    let range = |space: u32, window: &Range<u64>| {
        let size = window.end - window.start;
        let (child_high, child_low) = match space {
            IO_SPACE => (0, 0),
            _ => ((window.start >> 32) as u32, window.start as u32),
        };
        [
            space,
            child_high,
            child_low,
            (window.start >> 32) as u32,
            window.start as u32,
            (size >> 32) as u32,
            size as u32,
        ]
    };
    let bridge = fdt.begin_node(&format!("pcie@{:x}", PCI_ECAM.start))?;
    fdt.property_string("compatible", "pci-host-ecam-generic")?;
    fdt.property_string("device_type", "pci")?;
    fdt.property_u32("#address-cells", 3)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("#interrupt-cells", 1)?;
    fdt.property_array_u64("reg", &[PCI_ECAM.start, PCI_ECAM.end - PCI_ECAM.start])?;
    fdt.property_array_u32("bus-range", &[0, 0xff])?;
    let ranges: Vec<u32> = [
        range(IO_SPACE, &PCI_IO),
        range(MEM32_SPACE, &PCI_MEM32),
        range(MEM64_PREFETCHABLE, &PCI_MEM64),
    ]
    .concat();
    fdt.property_array_u32("ranges", &ranges)?;
    let card = crate::virtio::NET_SLOT << 11;
    fdt.property_array_u32("interrupt-map-mask", &[0xf800, 0, 0, 7])?;
    fdt.property_array_u32(
        "interrupt-map",
        &[
            card,
            0,
            0,
            PIN_INTA,
            GIC_PHANDLE,
            0,
            0,
            GIC_SPI,
            NET_SPI,
            LEVEL_HIGH,
        ],
    )?;
    fdt.property_null("dma-coherent")?;
    fdt.end_node(bridge)?;
    Ok(())
}

/// Writes the device tree `bytes` to guest memory at `at`; fails if it is larger than the
/// device-tree area of `max` bytes.
pub fn write_fdt(
    mem: &GuestMemory,
    at: GuestPhysAddr,
    max: u64,
    bytes: &[u8],
) -> Result<(), BootError> {
    let size = bytes.len() as u64;
    if size > max {
        return Err(BootError::FdtTooLarge { size, max });
    }
    mem.write(at, bytes).map_err(|source| BootError::Write {
        what: "device tree",
        source,
    })
}

/// Whether `c` can stand in a shell word without quoting.
fn is_shell_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-.,:/@%+=".contains(c)
}

/// `text` as one shell word (quoted as `push_quoted` does), e.g. for a kernel argument's value.
pub fn shell_word(text: &str) -> String {
    let mut word = String::new();
    if text.is_empty() {
        word.push_str("''");
    } else {
        push_quoted(&mut word, text);
    }
    word
}

/// Appends `text` to `out` so that a POSIX shell-words split reads it back unchanged: as is if
/// it contains only safe characters, otherwise in single quotes (a `'` becomes `'\''`).
fn push_quoted(out: &mut String, text: &str) {
    if text.chars().all(is_shell_safe) {
        out.push_str(text);
        return;
    }
    out.push('\'');
    for c in text.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
}

/// The kernel command line for `/chosen/bootargs`: `KERNEL_ARGS env=K=V … -- APP_ARGS`.
///
/// Kernel arguments are passed verbatim (they are kernel options such as `-freq 2000`). The
/// environment keys and values and the application arguments are shell-quoted when they contain
/// spaces, quotes or other special characters, because the kernel splits the line with shell
/// rules; an empty application argument becomes `''`. `--` is only added when there are
/// application arguments.
pub fn bootargs(kernel_args: &[String], env: &[(String, String)], app_args: &[String]) -> String {
    let mut words: Vec<String> = kernel_args.to_vec();
    for (key, value) in env {
        let mut word = String::from("env=");
        push_quoted(&mut word, key);
        word.push('=');
        push_quoted(&mut word, value);
        words.push(word);
    }
    if !app_args.is_empty() {
        words.push("--".to_owned());
        for arg in app_args {
            let mut word = String::new();
            if arg.is_empty() {
                word.push_str("''");
            } else {
                push_quoted(&mut word, arg);
            }
            words.push(word);
        }
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The x86_64 device-tree area (52 KiB).
    const FDT_MAX_SIZE: u64 = 0xD000;

    fn params() -> BootParams {
        BootParams {
            ram: 0..0x400_0000,
            kernel_image: 0x40000..0x2c_1234,
            tls: Some(TlsTemplate {
                start: 0x20_0020,
                filesz: 0x81,
                memsz: 0x90,
                align: 8,
            }),
            num_cpus: 4,
            cpu_freq_khz: Some(2_995_200),
            boot_time: time::OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789)
                .unwrap(),
            serial_port: V1_SERIAL_PORT,
            has_pci: true,
            fdt_address: Some(0x3000),
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn boot_info_fields_sit_at_the_abi_offsets() {
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 0x10000).unwrap();
        // Dirty the target so stale bytes would show up as non-zero padding.
        mem.write(GuestPhysAddr::new(0x2000), &[0xAA; 256]).unwrap();
        write_boot_info(
            &mem,
            GuestPhysAddr::new(0x2000),
            &params(),
            BootPlatform::X86_64,
        )
        .unwrap();
        let mut b = [0u8; 128];
        mem.read(GuestPhysAddr::new(0x2000), &mut b).unwrap();

        assert_eq!(u64_at(&b, 0), 0);
        assert_eq!(u64_at(&b, 8), 0x400_0000);
        assert_eq!(u16::from_le_bytes([b[16], b[17]]), 0x800);
        assert_eq!(u64_at(&b, 24), 0x3000);
        assert_eq!(u64_at(&b, 32), 0x40000);
        assert_eq!(u64_at(&b, 40), 0x2c_1234);
        assert_eq!(u64_at(&b, 48), 0x20_0020);
        assert_eq!(u64_at(&b, 56), 0x81);
        assert_eq!(u64_at(&b, 64), 0x90);
        assert_eq!(u64_at(&b, 72), 8);
        assert_eq!(u32::from_le_bytes(b[80..84].try_into().unwrap()), 1);
        assert_eq!(b[88], 1);
        assert_eq!(u64_at(&b, 96), 4);
        assert_eq!(
            u32::from_le_bytes(b[104..108].try_into().unwrap()),
            2_995_200
        );
        assert_eq!(
            i128::from_le_bytes(b[112..128].try_into().unwrap()),
            1_700_000_000_123_456_789
        );
        for padding in [18..24, 84..88, 89..96, 108..112] {
            assert!(b[padding.clone()].iter().all(|&x| x == 0), "{padding:?}");
        }
        // The rest of the page is left alone.
        let mut after = [0u8; 1];
        mem.read(GuestPhysAddr::new(0x2080), &mut after).unwrap();
        assert_eq!(after, [0xAA]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn absent_values_are_zero() {
        let p = BootParams {
            tls: None,
            cpu_freq_khz: None,
            serial_port: 0,
            has_pci: false,
            fdt_address: None,
            num_cpus: 1,
            ..params()
        };
        let b = encode_boot_info(&p).unwrap();
        assert_eq!(&b[16..18], &[0, 0]);
        assert_eq!(u64_at(&b, 24), 0);
        assert!(b[48..80].iter().all(|&x| x == 0));
        assert_eq!(b[88], 0);
        assert_eq!(u64_at(&b, 96), 1);
        assert_eq!(&b[104..108], &[0; 4]);
        // A zero frequency is reported as "unknown" as well.
        let b = encode_boot_info(&BootParams {
            cpu_freq_khz: Some(0),
            ..params()
        })
        .unwrap();
        assert_eq!(&b[104..108], &[0; 4]);
    }

    #[test]
    fn invalid_boot_params_are_rejected() {
        assert!(matches!(
            encode_boot_info(&BootParams {
                num_cpus: 0,
                ..params()
            }),
            Err(BootError::NoCpus)
        ));
        assert!(matches!(
            encode_boot_info(&BootParams {
                fdt_address: Some(0),
                ..params()
            }),
            Err(BootError::ZeroFdtAddress)
        ));
        assert!(matches!(
            encode_boot_info(&BootParams {
                ram: 0x1000..0x1000,
                ..params()
            }),
            Err(BootError::InvalidRam { .. })
        ));
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 0x1000).unwrap();
        assert!(matches!(
            write_boot_info(
                &mem,
                GuestPhysAddr::new(0xf90),
                &params(),
                BootPlatform::X86_64
            ),
            Err(BootError::Write {
                what: "boot info",
                ..
            })
        ));
    }

    /// A node of a parsed device tree: full path and properties in order.
    #[derive(Debug)]
    struct Node {
        path: String,
        props: Vec<(String, Vec<u8>)>,
    }

    /// Minimal test-only DTB reader: checks the header and walks the structure block.
    fn parse_dtb(blob: &[u8]) -> Vec<Node> {
        let be32 = |at: usize| u32::from_be_bytes(blob[at..at + 4].try_into().unwrap());
        assert_eq!(be32(0), 0xd00d_feed, "magic");
        assert_eq!(be32(4) as usize, blob.len(), "totalsize");
        assert_eq!(be32(20), 17, "version");
        assert_eq!(be32(24), 16, "last compatible version");
        let struct_off = be32(8) as usize;
        let strings_off = be32(12) as usize;
        let c_string = |at: usize| {
            let len = blob[at..].iter().position(|&b| b == 0).unwrap();
            (String::from_utf8(blob[at..at + len].to_vec()).unwrap(), len)
        };
        let mut nodes: Vec<Node> = Vec::new();
        let mut stack: Vec<usize> = Vec::new();
        let mut at = struct_off;
        loop {
            let token = be32(at);
            at += 4;
            match token {
                1 => {
                    let (name, len) = c_string(at);
                    at = (at + len + 1).next_multiple_of(4);
                    let path = match stack.last() {
                        None => "/".to_owned(),
                        Some(&parent) if nodes[parent].path == "/" => format!("/{name}"),
                        Some(&parent) => format!("{}/{name}", nodes[parent].path),
                    };
                    stack.push(nodes.len());
                    nodes.push(Node {
                        path,
                        props: Vec::new(),
                    });
                }
                2 => {
                    stack.pop().unwrap();
                }
                3 => {
                    let len = be32(at) as usize;
                    let name_off = be32(at + 4) as usize;
                    at += 8;
                    let value = blob[at..at + len].to_vec();
                    at = (at + len).next_multiple_of(4);
                    let (name, _) = c_string(strings_off + name_off);
                    nodes[*stack.last().unwrap()].props.push((name, value));
                }
                4 => {}
                9 => break,
                other => panic!("bad FDT token {other}"),
            }
        }
        assert!(stack.is_empty(), "unbalanced nodes");
        nodes
    }

    fn prop<'a>(nodes: &'a [Node], path: &str, name: &str) -> Option<&'a [u8]> {
        let node = nodes.iter().find(|n| n.path == path)?;
        node.props
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    #[test]
    fn fdt_describes_memory_cpus_tsc_and_bootargs() {
        let blob = build_fdt(&FdtParams {
            ram: 0..0x400_0000,
            num_cpus: 2,
            tsc_khz: Some(2_995_200),
            bootargs: "-freq 2995 -- hello".to_owned(),
            mounts: Vec::new(),
            initrd: None,
            pci: false,
        })
        .unwrap();
        let nodes = parse_dtb(&blob);
        let paths: Vec<&str> = nodes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/",
                "/memory@0",
                "/cpus",
                "/cpus/cpu@0",
                "/cpus/cpu@1",
                "/hermit,tsc",
                "/chosen"
            ]
        );
        assert_eq!(
            prop(&nodes, "/", "compatible"),
            Some(&b"hermit,uhyve\0"[..])
        );
        assert_eq!(prop(&nodes, "/", "#address-cells"), Some(&[0, 0, 0, 2][..]));
        assert_eq!(prop(&nodes, "/", "#size-cells"), Some(&[0, 0, 0, 2][..]));
        assert_eq!(
            prop(&nodes, "/memory@0", "device_type"),
            Some(&b"memory\0"[..])
        );
        let mut reg = Vec::new();
        reg.extend_from_slice(&0u64.to_be_bytes());
        reg.extend_from_slice(&0x400_0000u64.to_be_bytes());
        assert_eq!(prop(&nodes, "/memory@0", "reg"), Some(reg.as_slice()));
        assert_eq!(
            prop(&nodes, "/cpus", "#address-cells"),
            Some(&[0, 0, 0, 1][..])
        );
        assert_eq!(
            prop(&nodes, "/cpus", "#size-cells"),
            Some(&[0, 0, 0, 0][..])
        );
        assert_eq!(
            prop(&nodes, "/cpus/cpu@1", "device_type"),
            Some(&b"cpu\0"[..])
        );
        assert_eq!(
            prop(&nodes, "/hermit,tsc", "khz"),
            Some(&2_995_200u32.to_be_bytes()[..])
        );
        assert_eq!(
            prop(&nodes, "/chosen", "bootargs"),
            Some(&b"-freq 2995 -- hello\0"[..])
        );
    }

    #[test]
    fn aarch64_boot_info_follows_the_abi_offsets() {
        let boot_time =
            time::OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let params = BootParams {
            ram: 0x1000_0000..0x1400_0000,
            kernel_image: 0x1004_0000..0x1010_0000,
            tls: Some(TlsTemplate {
                start: 0x1004_0020,
                filesz: 0x20,
                memsz: 0x70,
                align: 8,
            }),
            num_cpus: 2,
            cpu_freq_khz: None,
            boot_time,
            serial_port: 0x800,
            has_pci: false,
            fdt_address: Some(0x1000_3000),
        };
        let bytes = encode_boot_info_aarch64(&params).unwrap();
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!((u64_at(0), u64_at(8)), (0x1000_0000, 0x1400_0000));
        assert_eq!(u64_at(16), 0x800);
        assert_eq!(u64_at(24), 0x1000_3000);
        assert_eq!((u64_at(32), u64_at(40)), (0x1004_0000, 0x1010_0000));
        assert_eq!(
            [u64_at(48), u64_at(56), u64_at(64), u64_at(72)],
            [0x1004_0020, 0x20, 0x70, 8]
        );
        assert_eq!(u32_at(80), 1);
        assert_eq!(bytes[88], 0);
        assert_eq!(u64_at(96), 2);
        assert_eq!(u32_at(104), 0);
        assert_eq!(
            i128::from_le_bytes(bytes[108..124].try_into().unwrap()),
            1_700_000_000_123_456_789
        );
        for gap in [84..88, 89..96, 124..128] {
            assert!(bytes[gap].iter().all(|&b| b == 0));
        }
        let no_cpus = BootParams {
            num_cpus: 0,
            ..params
        };
        assert!(encode_boot_info_aarch64(&no_cpus).is_err());
    }

    #[test]
    fn aarch64_fdt_describes_gic_and_timer() {
        let blob = build_fdt_for(
            &FdtParams {
                ram: 0x1000_0000..0x1400_0000,
                num_cpus: 1,
                tsc_khz: Some(1),
                bootargs: String::new(),
                mounts: Vec::new(),
                initrd: None,
                pci: false,
            },
            BootPlatform::Aarch64,
        )
        .unwrap();
        let nodes = parse_dtb(&blob);
        let paths: Vec<&str> = nodes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/",
                "/memory@10000000",
                "/cpus",
                "/cpus/cpu@0",
                "/intc@8000000",
                "/intc@8000000/its@8080000",
                "/timer",
                "/chosen"
            ]
        );
        assert_eq!(
            prop(&nodes, "/cpus/cpu@0", "compatible"),
            Some(&b"arm,cortex-a72\0"[..])
        );
        let be64 =
            |values: &[u64]| -> Vec<u8> { values.iter().flat_map(|v| v.to_be_bytes()).collect() };
        assert_eq!(
            prop(&nodes, "/intc@8000000", "reg"),
            Some(be64(&[0x800_0000, 0x1_0000, 0x80A_0000, 0xF6_0000]).as_slice())
        );
        assert_eq!(
            prop(&nodes, "/intc@8000000/its@8080000", "msi-controller"),
            Some(&[][..])
        );
        let interrupts: Vec<u8> = [1u32, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        assert_eq!(
            prop(&nodes, "/timer", "interrupts"),
            Some(interrupts.as_slice())
        );
        assert_eq!(prop(&nodes, "/timer", "always-on"), Some(&[][..]));
    }

    /// The bridge as Hermit 0.11's aarch64 `pci::init` reads it: `reg` as two u64, `ranges` as
    /// entries of 3 + 2 + 2 cells with the space code in bits 25:24, `interrupt-map` entries of
    /// 3 + 1 + 1 + (root `#address-cells` = 2) + 3 cells, SPI level-high for slot 1's INTA.
    #[test]
    fn aarch64_fdt_with_pci_describes_the_host_bridge_hermit_scans() {
        let params = FdtParams {
            pci: true,
            ..one_cpu(0x1000_0000..0x1400_0000)
        };
        let nodes = parse_dtb(&build_fdt_for(&params, BootPlatform::Aarch64).unwrap());
        let cells = |path: &str, name: &str| -> Vec<u32> {
            let bytes = prop(&nodes, path, name).unwrap_or_else(|| panic!("{path} {name}"));
            bytes
                .chunks(4)
                .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
                .collect()
        };
        let bridge = "/pcie@1000000000";
        assert_eq!(
            prop(&nodes, bridge, "compatible"),
            Some(&b"pci-host-ecam-generic\0"[..])
        );
        assert_eq!(cells(bridge, "reg"), [0x10, 0, 0, 0x1000_0000]);
        assert_eq!(cells("/", "#address-cells"), [2]);
        assert_eq!(
            cells(bridge, "ranges"),
            [
                0x0100_0000,
                0,
                0,
                0,
                0x0b00_0000,
                0,
                0x1_0000, // I/O
                0x0200_0000,
                0,
                0x0c00_0000,
                0,
                0x0c00_0000,
                0,
                0x100_0000, // 32-bit
                0x4300_0000,
                0,
                0x0e00_0000,
                0,
                0x0e00_0000,
                0,
                0x100_0000, // 64-bit
            ]
        );
        assert_eq!(
            cells(bridge, "interrupt-map"),
            [0x800, 0, 0, 1, GIC_PHANDLE, 0, 0, 0, 3, 4]
        );
        assert_eq!(cells("/intc@8000000", "phandle"), [GIC_PHANDLE]);
        assert_eq!(cells("/intc@8000000", "#interrupt-cells"), [3]);
        // x86_64 kernels scan the configuration ports: no bridge in their tree.
        let x86 = parse_dtb(&build_fdt(&params).unwrap());
        assert!(x86.iter().all(|n| !n.path.starts_with("/pcie")));
    }

    /// One vCPU on `ram`, nothing else.
    fn one_cpu(ram: Range<u64>) -> FdtParams {
        FdtParams {
            ram,
            num_cpus: 1,
            tsc_khz: None,
            bootargs: String::new(),
            mounts: Vec::new(),
            initrd: None,
            pci: false,
        }
    }

    #[test]
    fn fdt_without_tsc_and_with_nonzero_base() {
        let blob = build_fdt(&one_cpu(0x1000_0000..0x1400_0000)).unwrap();
        let nodes = parse_dtb(&blob);
        assert!(nodes.iter().any(|n| n.path == "/memory@10000000"));
        assert!(nodes.iter().all(|n| n.path != "/hermit,tsc"));
        assert_eq!(prop(&nodes, "/chosen", "bootargs"), Some(&b"\0"[..]));
    }

    #[test]
    fn mount_points_go_into_one_node_as_a_string_list() {
        let blob = build_fdt(&FdtParams {
            mounts: vec!["/data".to_owned(), "/root/cfg".to_owned()],
            ..one_cpu(0..0x400_0000)
        })
        .unwrap();
        let nodes = parse_dtb(&blob);
        let paths: Vec<&str> = nodes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/",
                "/memory@0",
                "/cpus",
                "/cpus/cpu@0",
                "/uhyve,mounts",
                "/chosen"
            ]
        );
        assert_eq!(
            prop(&nodes, "/uhyve,mounts", "mounts"),
            Some(&b"/data\0/root/cfg\0"[..])
        );
    }

    /// The memory reservation block of a DTB: (address, size) pairs up to the terminating
    /// zero entry.
    fn reservations(blob: &[u8]) -> Vec<(u64, u64)> {
        let be32 = |at: usize| u32::from_be_bytes(blob[at..at + 4].try_into().unwrap());
        let be64 = |at: usize| u64::from_be_bytes(blob[at..at + 8].try_into().unwrap());
        let mut at = be32(16) as usize;
        let mut entries = Vec::new();
        loop {
            let (address, size) = (be64(at), be64(at + 8));
            if address == 0 && size == 0 {
                return entries;
            }
            entries.push((address, size));
            at += 16;
        }
    }

    #[test]
    fn an_initial_ramdisk_is_announced_and_reserved() {
        let params = FdtParams {
            ram: 0..0x400_0000,
            num_cpus: 1,
            tsc_khz: None,
            bootargs: String::new(),
            mounts: Vec::new(),
            initrd: Some(0x20_1000..0x28_0a00),
            pci: false,
        };
        let blob = build_fdt(&params).unwrap();
        let nodes = parse_dtb(&blob);
        assert_eq!(
            prop(&nodes, "/chosen", "linux,initrd-start"),
            Some(&0x20_1000u64.to_be_bytes()[..])
        );
        assert_eq!(
            prop(&nodes, "/chosen", "linux,initrd-end"),
            Some(&0x28_0a00u64.to_be_bytes()[..])
        );
        assert_eq!(reservations(&blob), vec![(0x20_1000, 0x7_fa00)]);
        // Without one: no properties, an empty reservation block.
        let blob = build_fdt(&FdtParams {
            initrd: None,
            ..params.clone()
        })
        .unwrap();
        let nodes = parse_dtb(&blob);
        assert_eq!(prop(&nodes, "/chosen", "linux,initrd-start"), None);
        assert!(reservations(&blob).is_empty());
        assert!(matches!(
            build_fdt(&FdtParams {
                initrd: Some(0x1000..0x1000),
                ..params
            }),
            Err(BootError::InvalidInitrd { .. })
        ));
    }

    #[test]
    fn shell_words_survive_splitting() {
        assert_eq!(shell_word("/root"), "/root");
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("/my data"), "'/my data'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
    }

    #[test]
    fn invalid_fdt_params_are_rejected() {
        let ok = FdtParams {
            ram: 0..0x100_0000,
            num_cpus: 1,
            tsc_khz: None,
            bootargs: String::new(),
            mounts: Vec::new(),
            initrd: None,
            pci: false,
        };
        assert!(matches!(
            build_fdt(&FdtParams {
                num_cpus: 0,
                ..ok.clone()
            }),
            Err(BootError::NoCpus)
        ));
        assert!(matches!(
            build_fdt(&FdtParams {
                ram: 5..5,
                ..ok.clone()
            }),
            Err(BootError::InvalidRam { .. })
        ));
        assert!(matches!(
            build_fdt(&FdtParams {
                bootargs: "a\0b".to_owned(),
                ..ok
            }),
            Err(BootError::Fdt(vm_fdt::Error::InvalidString))
        ));
    }

    #[test]
    fn fdt_size_is_limited_to_its_area() {
        let mem = GuestMemory::new(GuestPhysAddr::new(0), 0x20000).unwrap();
        let blob = build_fdt(&FdtParams {
            ram: 0..0x100_0000,
            num_cpus: 1,
            tsc_khz: Some(1000),
            bootargs: "x".to_owned(),
            mounts: Vec::new(),
            initrd: None,
            pci: false,
        })
        .unwrap();
        write_fdt(&mem, GuestPhysAddr::new(0x3000), FDT_MAX_SIZE, &blob).unwrap();
        let mut back = vec![0u8; blob.len()];
        mem.read(GuestPhysAddr::new(0x3000), &mut back).unwrap();
        assert_eq!(back, blob);

        let exact = vec![0u8; FDT_MAX_SIZE as usize];
        assert!(write_fdt(&mem, GuestPhysAddr::new(0x3000), FDT_MAX_SIZE, &exact).is_ok());
        let big = build_fdt(&FdtParams {
            ram: 0..0x100_0000,
            num_cpus: 1,
            tsc_khz: None,
            bootargs: "y".repeat(60 * 1024),
            mounts: Vec::new(),
            initrd: None,
            pci: false,
        })
        .unwrap();
        assert!(matches!(
            write_fdt(&mem, GuestPhysAddr::new(0x3000), FDT_MAX_SIZE, &big),
            Err(BootError::FdtTooLarge { max: 0xD000, .. })
        ));
        assert!(matches!(
            write_fdt(&mem, GuestPhysAddr::new(0x1ff00), FDT_MAX_SIZE, &blob),
            Err(BootError::Write { .. })
        ));
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn env(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn bootargs_format() {
        assert_eq!(bootargs(&[], &[], &[]), "");
        assert_eq!(
            bootargs(&strings(&["-freq", "2000"]), &[], &[]),
            "-freq 2000"
        );
        assert_eq!(bootargs(&[], &[], &strings(&["a", "b"])), "-- a b");
        assert_eq!(
            bootargs(
                &strings(&["-ip", "10.0.5.3"]),
                &env(&[("RUST_LOG", "debug"), ("PATH", "/bin:/usr/bin")]),
                &strings(&["--flag", "x=y"])
            ),
            "-ip 10.0.5.3 env=RUST_LOG=debug env=PATH=/bin:/usr/bin -- --flag x=y"
        );
    }

    #[test]
    fn bootargs_quote_spaces_and_quotes() {
        assert_eq!(
            bootargs(&[], &env(&[("GREETING", "hello world")]), &[]),
            "env=GREETING='hello world'"
        );
        assert_eq!(
            bootargs(&[], &env(&[("Q", "it's \"x\"")]), &[]),
            "env=Q='it'\\''s \"x\"'"
        );
        assert_eq!(bootargs(&[], &env(&[("EMPTY", "")]), &[]), "env=EMPTY=");
        assert_eq!(
            bootargs(&[], &[], &strings(&["two words", "", "$HOME"])),
            "-- 'two words' '' '$HOME'"
        );
    }
}
