//! Fuzz target `boot_encoders`: the boot info (both layouts) and the device tree (both
//! platforms) from arbitrary but plausible parameters; the device tree must parse back with
//! exactly what was put in, and the command line must split back into its words.

use std::ops::Range;

use arbitrary::{Arbitrary, Unstructured};

use super::fdt_reader;
use crate::boot::{
    BootParams, BootPlatform, FdtParams, bootargs, build_fdt_for, encode_boot_info,
    encode_boot_info_aarch64,
};
use crate::loader::TlsTemplate;

/// Most vCPUs the target asks for (each is a node; more only slows the fuzzer down).
const MAX_CPUS: u32 = 300;

/// The encoders' inputs.
#[derive(Debug, Arbitrary)]
struct BootInput {
    ram_start: u64,
    ram_size: u64,
    kernel_image: Range<u64>,
    tls: Option<(u64, u64, u64, u64)>,
    cpus: u32,
    tsc_khz: Option<u32>,
    boot_time_seconds: i32,
    serial_port: u16,
    has_pci: bool,
    fdt_address: Option<u64>,
    kernel_args: Vec<String>,
    env: Vec<(String, String)>,
    app_args: Vec<String>,
    mounts: Vec<String>,
    initrd: Option<Range<u64>>,
    aarch64: bool,
}

/// Encodes the boot info and the device tree and checks them.
pub fn boot_encoders(data: &[u8]) {
    let Ok(input) = BootInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let ram = input.ram_start..input.ram_start.saturating_add(input.ram_size);
    let num_cpus = input.cpus % (MAX_CPUS + 1);
    check_boot_info(&input, &ram, num_cpus);
    let line = bootargs(&input.kernel_args, &input.env, &input.app_args);
    check_bootargs_split(&input, &line);
    let params = FdtParams {
        ram,
        num_cpus,
        tsc_khz: input.tsc_khz,
        bootargs: line,
        mounts: input.mounts.clone(),
        initrd: input.initrd.clone(),
        pci: input.has_pci,
    };
    let platform = if input.aarch64 {
        BootPlatform::Aarch64
    } else {
        BootPlatform::X86_64
    };
    match build_fdt_for(&params, platform) {
        Ok(blob) => check_fdt(&params, platform, &blob),
        Err(error) => {
            let has_nul = params.bootargs.contains('\0')
                || params.mounts.iter().any(|mount| mount.contains('\0'));
            let bad_initrd = params.initrd.as_ref().is_some_and(|r| r.start >= r.end);
            let invalid = params.ram.is_empty() || num_cpus == 0 || bad_initrd;
            assert!(has_nul || invalid, "{params:?}: {error}");
        }
    }
}

/// Both boot-info layouts: valid parameters encode, and the fields both layouts share read back.
fn check_boot_info(input: &BootInput, ram: &Range<u64>, num_cpus: u32) {
    let params = BootParams {
        ram: ram.clone(),
        kernel_image: input.kernel_image.clone(),
        tls: input.tls.map(|(start, filesz, memsz, align)| TlsTemplate {
            start,
            filesz,
            memsz,
            align,
        }),
        num_cpus,
        cpu_freq_khz: input.tsc_khz,
        boot_time: time::OffsetDateTime::from_unix_timestamp(input.boot_time_seconds.into())
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        serial_port: input.serial_port,
        has_pci: input.has_pci,
        fdt_address: input.fdt_address,
    };
    let valid = !ram.is_empty() && num_cpus != 0 && input.fdt_address != Some(0);
    for encoded in [encode_boot_info(&params), encode_boot_info_aarch64(&params)] {
        let Ok(bytes) = encoded else {
            assert!(!valid, "{params:?} rejected");
            continue;
        };
        assert!(valid, "{params:?} accepted");
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        assert_eq!((word(0), word(8)), (ram.start, ram.end));
        assert_eq!(word(24), input.fdt_address.unwrap_or(0));
        let image = &input.kernel_image;
        assert_eq!((word(32), word(40)), (image.start, image.end));
        assert_eq!(word(96), u64::from(num_cpus));
        assert_eq!(bytes[88], u8::from(input.has_pci));
    }
}

/// The device tree parses back and says what `params` say.
fn check_fdt(params: &FdtParams, platform: BootPlatform, blob: &[u8]) {
    let fdt = fdt_reader::parse(blob).unwrap_or_else(|| panic!("unparsable FDT for {params:?}"));
    let start = params.ram.start;
    let memory = format!("/memory@{start:x}");
    let reg: Vec<u8> = [start, params.ram.end - start]
        .iter()
        .flat_map(|value| value.to_be_bytes())
        .collect();
    assert_eq!(fdt.property(&memory, "reg"), Some(reg.as_slice()));
    let cpus = fdt
        .nodes
        .iter()
        .filter(|node| node.starts_with("/cpus/cpu@"));
    assert_eq!(cpus.count(), params.num_cpus as usize);
    let bootargs = [params.bootargs.as_bytes(), &[0]].concat();
    assert_eq!(
        fdt.property("/chosen", "bootargs"),
        Some(bootargs.as_slice())
    );
    let mounts: Vec<u8> = params
        .mounts
        .iter()
        .flat_map(|mount| mount.bytes().chain([0]))
        .collect();
    let expected_mounts = (!params.mounts.is_empty()).then_some(mounts.as_slice());
    assert_eq!(fdt.property("/uhyve,mounts", "mounts"), expected_mounts);
    let tsc = fdt.property("/hermit,tsc", "khz");
    let expected_tsc = params.tsc_khz.map(u32::to_be_bytes);
    match platform {
        BootPlatform::X86_64 => assert_eq!(tsc, expected_tsc.as_ref().map(|khz| &khz[..])),
        BootPlatform::Aarch64 => assert!(fdt.nodes.iter().any(|node| node == "/timer")),
    }
    let initrd = params.initrd.as_ref();
    let start = fdt.property("/chosen", "linux,initrd-start");
    assert_eq!(
        start,
        initrd
            .map(|r| r.start.to_be_bytes())
            .as_ref()
            .map(|b| &b[..])
    );
    let reservations = initrd.map(|r| vec![(r.start, r.end - r.start)]);
    assert_eq!(fdt.reservations, reservations.unwrap_or_default());
}

/// Splits `line` as a POSIX shell splits words (whitespace, single quotes, backslashes): how the
/// kernel reads its command line.
fn shell_split(line: &str) -> Option<Vec<String>> {
    let (mut words, mut word, mut in_word) = (Vec::new(), String::new(), false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    quoted => word.push(quoted),
                }
            },
            '\\' => word.push(chars.next()?),
            c if c.is_ascii_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                }
                in_word = false;
                continue;
            }
            c => word.push(c),
        }
        in_word = true;
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

/// Environment and application arguments come back unchanged from the command line (kernel
/// arguments are passed verbatim, so only plain ones are part of the check).
fn check_bootargs_split(input: &BootInput, line: &str) {
    let plain = |arg: &String| {
        !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=.".contains(c))
    };
    if !input.kernel_args.iter().all(plain) {
        return;
    }
    let mut expected = input.kernel_args.clone();
    expected.extend(
        input
            .env
            .iter()
            .map(|(key, value)| format!("env={key}={value}")),
    );
    if !input.app_args.is_empty() {
        expected.push("--".to_owned());
        expected.extend(input.app_args.iter().cloned());
    }
    assert_eq!(shell_split(line), Some(expected), "{line:?}");
}
