//! Unit tests of the hypercall dispatcher: every call of every interface version through
//! [`Hypercalls::handle`], against 4 MiB of guest RAM with hand-built x86_64 page tables.

use super::*;
use crate::arch::PAGE_SIZE;
use crate::arch::x86_64::paging::{PTE_HUGE, PTE_PRESENT, PTE_WRITABLE};
use crate::output::OutputTarget;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use uhyve_interface::v2::{
    FileAttr, FstatParams, GETDENT_END_OF_DIRECTORY, GETDENT_ERROR, GETDENT_SUCCESS, GetdentParams,
    GetdentResult, LseekParamsV2, MkdirParams, ReadParamsV2, STAT_FOLLOW, STAT_NO_FOLLOW,
    STATUS_ERROR, STATUS_SUCCESS, StatParams, StatusResult, WriteParamsV2,
};
use uhyve_interface::{
    self as abi, CloseParams, CmdsizeParams, CmdvalParams, GuestVirtAddr, LseekParams, OpenParams,
    ReadParams, UnlinkParams, WriteParams,
};

/// 4 MiB of guest RAM at GPA 0.
const RAM: u64 = 4 << 20;
/// PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT (first 2 MiB, 4 KiB pages) at 0x4000.
const ROOT: u64 = 0x1000;
/// Parameter structs.
const PARAMS: u64 = 0x10000;
/// Path strings.
const STRING: u64 = 0x11000;
/// A buffer in the 2 MiB identity page at 2 MiB.
const BUF: u64 = 0x30_0000;
/// Virtual pages 0x100 and 0x101 map to the non-contiguous frames 0x150 and 0x140.
const SPLIT_VA: u64 = 0x10_0000;
const SPLIT_PA: [u64; 2] = [0x15_0000, 0x14_0000];
/// Virtual page 0x120 is not present.
const HOLE_VA: u64 = 0x12_0000;

fn guest_memory() -> GuestMemory {
    let mem = GuestMemory::new(GuestPhysAddr::new(0), RAM).unwrap();
    let entry = |at: u64, value: u64| mem.write_obj(GuestPhysAddr::new(at), &value).unwrap();
    let flags = PTE_PRESENT | PTE_WRITABLE;
    entry(ROOT, 0x2000 | flags);
    entry(0x2000, 0x3000 | flags);
    entry(0x3000, 0x4000 | flags);
    entry(0x3008, 0x20_0000 | flags | PTE_HUGE);
    for page in 0..512u64 {
        let frame = match page {
            0x100 => SPLIT_PA[0],
            0x101 => SPLIT_PA[1],
            0x120 => continue,
            _ => page * PAGE_SIZE,
        };
        entry(0x4000 + page * 8, frame | flags);
    }
    mem
}

struct Guest {
    mem: GuestMemory,
    calls: Hypercalls,
    output: Arc<SerialOutput>,
    console: PathBuf,
    mapped: TempDir,
    _console_dir: TempDir,
}

fn guest_with(cmdline: GuestCommandLine) -> Guest {
    let console_dir = tempfile::tempdir().unwrap();
    let console = console_dir.path().join("console");
    let output = Arc::new(SerialOutput::new(OutputTarget::File(console.clone())).unwrap());
    let mapped = tempfile::tempdir().unwrap();
    let files = FileMap::new(&[format!("{}:/root", mapped.path().display())], None).unwrap();
    Guest {
        mem: guest_memory(),
        calls: Hypercalls::new(GuestArch::X86_64, Arc::clone(&output), files, cmdline),
        output,
        console,
        mapped,
        _console_dir: console_dir,
    }
}

fn guest() -> Guest {
    guest_with(GuestCommandLine {
        args: vec!["/path/to/kernel".into(), "-v".into(), "hello".into()],
        env: vec![("A".into(), "1".into()), ("LONG".into(), "value".into())],
    })
}

fn pa(address: u64) -> GuestPhysAddr {
    GuestPhysAddr::new(address)
}

fn is_continue(outcome: &HypercallOutcome) -> bool {
    matches!(outcome, HypercallOutcome::Continue)
}

impl Guest {
    fn call(&self, address: HypercallAddress, argument: u64) -> HypercallOutcome {
        self.calls
            .handle(&self.mem, address.port(), argument, &mut || Ok(pa(ROOT)))
    }

    fn call_ok<T: GuestPod>(&self, address: HypercallAddress, params: T) -> T {
        self.mem.write_obj(pa(PARAMS), &params).unwrap();
        let outcome = self.call(address, PARAMS);
        assert!(is_continue(&outcome), "{outcome:?}");
        self.mem.read_obj(pa(PARAMS)).unwrap()
    }

    fn console(&self) -> String {
        self.output.flush();
        String::from_utf8(std::fs::read(&self.console).unwrap()).unwrap()
    }

    fn put_string(&self, text: &[u8]) -> GuestPhysAddr {
        self.mem.write(pa(STRING), text).unwrap();
        self.mem
            .write(pa(STRING + text.len() as u64), &[0])
            .unwrap();
        pa(STRING)
    }

    fn open(&self, path: &str, flags: i32, mode: i32) -> i32 {
        let name = self.put_string(path.as_bytes());
        self.open_at(name, flags, mode)
    }

    fn open_at(&self, name: GuestPhysAddr, flags: i32, mode: i32) -> i32 {
        let params = OpenParams {
            name,
            flags,
            mode,
            ret: -1,
        };
        self.call_ok(HypercallAddress::FileOpen, params).ret
    }

    fn close(&self, fd: i32) -> i32 {
        self.call_ok(HypercallAddress::FileClose, CloseParams { fd, ret: -1 })
            .ret
    }

    fn write(&self, fd: i32, buf: u64, len: u64) -> u64 {
        let params = WriteParams {
            fd,
            buf: GuestVirtAddr::new(buf),
            len,
        };
        self.call_ok(HypercallAddress::FileWrite, params).len
    }

    fn read(&self, fd: i32, buf: u64, len: u64) -> i64 {
        let params = ReadParams {
            fd,
            buf: GuestVirtAddr::new(buf),
            len,
            ret: 0,
        };
        self.call_ok(HypercallAddress::FileRead, params).ret
    }

    fn lseek(&self, fd: i32, offset: i64, whence: i32) -> i64 {
        let params = LseekParams { fd, offset, whence };
        self.call_ok(HypercallAddress::FileLseek, params).offset
    }

    fn unlink_at(&self, name: GuestPhysAddr) -> i32 {
        let params = UnlinkParams { name, ret: -1 };
        self.call_ok(HypercallAddress::FileUnlink, params).ret
    }

    fn unlink(&self, path: &str) -> i32 {
        let name = self.put_string(path.as_bytes());
        self.unlink_at(name)
    }

    fn host(&self, name: &str) -> PathBuf {
        self.mapped.path().join(name)
    }

    fn bytes(&self, address: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        self.mem.read(pa(address), &mut bytes).unwrap();
        bytes
    }
}

#[test]
fn hypercalls_are_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Hypercalls>();
    shared::<SerialOutput>();
}

#[test]
fn serial_bytes_and_buffers_reach_the_output() {
    let g = guest();
    // Only the low byte of the port data counts.
    assert!(is_continue(&g.call(HypercallAddress::Uart, 0x1234_5641)));
    assert!(is_continue(
        &g.call(HypercallAddress::Uart, u64::from(b'\n'))
    ));
    g.mem.write(pa(0x20000), b"buffered\n").unwrap();
    let params = SerialWriteBufferParams {
        buf: pa(0x20000),
        len: 9,
    };
    g.call_ok(HypercallAddress::SerialWriteBuffer, params);
    assert_eq!(g.console(), "A\nbuffered\n");
}

#[test]
fn serial_buffers_outside_ram_are_fatal() {
    let g = guest();
    for (buf, len) in [(RAM - 4, 8), (RAM, 1), (u64::MAX, 2), (0, u64::MAX)] {
        let params = SerialWriteBufferParams { buf: pa(buf), len };
        g.mem.write_obj(pa(PARAMS), &params).unwrap();
        match g.call(HypercallAddress::SerialWriteBuffer, PARAMS) {
            HypercallOutcome::Fatal(error) => {
                let message = error.to_string();
                assert!(
                    message.starts_with("SerialWriteBuffer: buffer at"),
                    "{message}"
                );
                assert!(message.contains(&format!("{buf:#x}")), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    let empty = SerialWriteBufferParams {
        buf: pa(u64::MAX),
        len: 0,
    };
    g.call_ok(HypercallAddress::SerialWriteBuffer, empty);
    assert_eq!(g.console(), "");
}

#[test]
fn parameter_blocks_outside_ram_are_fatal() {
    let g = guest();
    let structured = HypercallAddress::ALL.into_iter().filter(|address| {
        !matches!(
            address,
            HypercallAddress::Uart
                | HypercallAddress::Netwrite
                | HypercallAddress::Netread
                | HypercallAddress::Netstat
        )
    });
    for address in structured {
        // Straddling the end of RAM (every struct is at least 4 bytes) and far outside.
        for argument in [RAM - 2, 0xFFFF_F000] {
            match g.call(address, argument) {
                HypercallOutcome::Fatal(error) => assert_eq!(
                    error.to_string(),
                    format!(
                        "{}: parameter block at {argument:#x} lies outside guest RAM",
                        address.name()
                    )
                ),
                other => panic!("{}: {other:?}", address.name()),
            }
        }
    }
}

#[test]
fn only_the_low_32_bits_address_the_parameters() {
    let g = guest();
    g.mem.write_obj(pa(PARAMS), &ExitParams { arg: 7 }).unwrap();
    assert!(matches!(
        g.call(HypercallAddress::Exit, 0xdead_0000_0000 | PARAMS),
        HypercallOutcome::Exit(7)
    ));
}

#[test]
fn exit_reports_the_status() {
    let g = guest();
    for status in [0, 42, -1] {
        g.mem
            .write_obj(pa(PARAMS), &ExitParams { arg: status })
            .unwrap();
        assert!(matches!(
            g.call(HypercallAddress::Exit, PARAMS),
            HypercallOutcome::Exit(s) if s == status
        ));
    }
}

#[test]
fn network_ports_are_ignored() {
    let g = guest();
    for address in [
        HypercallAddress::Netwrite,
        HypercallAddress::Netread,
        HypercallAddress::Netstat,
    ] {
        assert!(is_continue(&g.call(address, 0xFFFF_FFFF)));
    }
}

/// Runs Cmdsize, places one 0x100-byte slot per item at `slots` (pre-filled with a canary)
/// and runs Cmdval. Returns the sizes.
fn cmdsize_then_cmdval(g: &Guest) -> CmdsizeParams {
    let sizes = g.call_ok(HypercallAddress::Cmdsize, CmdsizeParams::default());
    let (argc, envc) = (sizes.argc as u64, sizes.envc as u64);
    g.mem.write(pa(0x40000), &[0xAA; 0x10000]).unwrap();
    g.mem.write(pa(0x60000), &[0xAA; 0x10000]).unwrap();
    for k in 0..argc {
        g.mem
            .write_obj(pa(0x30000 + 8 * k), &(0x40000 + 0x100 * k))
            .unwrap();
    }
    for k in 0..envc {
        g.mem
            .write_obj(pa(0x38000 + 8 * k), &(0x60000 + 0x100 * k))
            .unwrap();
    }
    let params = CmdvalParams {
        argv: pa(0x30000),
        envp: pa(0x38000),
    };
    g.call_ok(HypercallAddress::Cmdval, params);
    sizes
}

#[test]
fn cmdsize_and_cmdval_agree_and_respect_slot_sizes() {
    let g = guest();
    let sizes = cmdsize_then_cmdval(&g);
    let (argc, argsz, envc, envsz) = (sizes.argc, sizes.argsz, sizes.envc, sizes.envsz);
    assert_eq!(argc, 3);
    assert_eq!(&argsz[..3], &[16, 3, 6]);
    assert_eq!(envc, 2);
    assert_eq!(&envsz[..2], &[4, 11]);
    let expected_args: [&[u8]; 3] = [b"/path/to/kernel\0", b"-v\0", b"hello\0"];
    for (k, expected) in expected_args.iter().enumerate() {
        let slot = g.bytes(0x40000 + 0x100 * k as u64, 0x100);
        assert_eq!(&slot[..expected.len()], *expected);
        assert!(slot[expected.len()..].iter().all(|&b| b == 0xAA), "arg {k}");
    }
    let expected_env: [&[u8]; 2] = [b"A=1\0", b"LONG=value\0"];
    for (k, expected) in expected_env.iter().enumerate() {
        let slot = g.bytes(0x60000 + 0x100 * k as u64, 0x100);
        assert_eq!(&slot[..expected.len()], *expected);
        assert!(slot[expected.len()..].iter().all(|&b| b == 0xAA), "env {k}");
    }
    // Slots beyond the announced counts are untouched.
    assert!(g.bytes(0x40300, 0x100).iter().all(|&b| b == 0xAA));
    assert!(g.bytes(0x60200, 0x100).iter().all(|&b| b == 0xAA));
}

#[test]
fn cmdval_writes_only_the_announced_items() {
    let args: Vec<OsString> = (0..200).map(|i| format!("arg{i}").into()).collect();
    let g = guest_with(GuestCommandLine {
        args,
        env: Vec::new(),
    });
    let sizes = cmdsize_then_cmdval(&g);
    let (argc, envc, envsz) = (sizes.argc, sizes.envc, sizes.envsz);
    // No environment is announced as one empty item (see `env_array.rs`).
    assert_eq!((argc, envc, envsz[0]), (128, 1, 1));
    assert_eq!(&g.bytes(0x60000, 2), b"\0\xAA");
    assert_eq!(&g.bytes(0x40000 + 0x100 * 127, 8), b"arg127\0\xAA");
    assert!(
        g.bytes(0x40000 + 0x100 * 128, 0x100)
            .iter()
            .all(|&b| b == 0xAA)
    );
}

#[test]
fn cmdval_pointers_outside_ram_are_fatal() {
    let g = guest();
    let run = |argv: u64, envp: u64| {
        let params = CmdvalParams {
            argv: pa(argv),
            envp: pa(envp),
        };
        g.mem.write_obj(pa(PARAMS), &params).unwrap();
        match g.call(HypercallAddress::Cmdval, PARAMS) {
            HypercallOutcome::Fatal(error) => error.to_string(),
            other => panic!("{other:?}"),
        }
    };
    // Argument array outside RAM, or straddling its end.
    assert!(run(RAM + 0x1000, 0x38000).contains("Cmdval: argv array entry 0 at 0x401000"));
    assert!(run(RAM - 12, 0x38000).contains("argv array entry 1"));
    assert!(run(u64::MAX - 7, 0x38000).contains("argv array entry"));
    // A slot pointer outside RAM, or a slot running past its end.
    g.mem.write_obj(pa(0x30000), &0x40000u64).unwrap();
    g.mem.write_obj(pa(0x30008), &(RAM - 2)).unwrap();
    assert!(run(0x30000, 0x38000).contains("Cmdval: argv slot 1 at 0x3ffffe"));
    g.mem.write_obj(pa(0x30008), &0x40100u64).unwrap();
    g.mem.write_obj(pa(0x30010), &0x40200u64).unwrap();
    g.mem.write_obj(pa(0x38000), &u64::MAX).unwrap();
    assert!(run(0x30000, 0x38000).contains("envp slot 0"));
}

#[test]
fn files_in_a_mapped_directory() {
    let g = guest();
    let fd = g.open(
        "/root/f.txt",
        abi::O_RDWR | abi::O_CREAT | abi::O_TRUNC,
        0o644,
    );
    assert_eq!(fd, 3);
    g.mem.write(pa(BUF), b"hello world").unwrap();
    assert_eq!(g.write(fd, BUF, 11), 11);
    assert_eq!(std::fs::read(g.host("f.txt")).unwrap(), b"hello world");
    assert_eq!(g.lseek(fd, 6, abi::SEEK_SET), 6);
    assert_eq!(g.read(fd, BUF + 0x1000, 100), 5);
    assert_eq!(g.bytes(BUF + 0x1000, 5), b"world");
    assert_eq!(g.read(fd, BUF + 0x1000, 100), 0);
    assert_eq!(g.lseek(fd, -5, abi::SEEK_END), 6);
    assert_eq!(g.lseek(fd, 1, abi::SEEK_CUR), 7);
    assert_eq!(g.lseek(fd, -1, abi::SEEK_SET), -1);
    assert_eq!(g.lseek(fd, 0, 3), -1);
    assert_eq!(g.close(fd), 0);
    assert_eq!(g.close(fd), -abi::EBADF);
    // 0.6.9-era kernels send paths relative to the mount; fds are never reused.
    let fd = g.open("root/f.txt", abi::O_RDONLY, 0);
    assert_eq!(fd, 4);
    assert_eq!(g.read(fd, BUF, 5), 5);
    assert_eq!(g.bytes(BUF, 5), b"hello");
    assert_eq!(g.close(fd), 0);
    assert_eq!(
        g.open(
            "/root/f.txt",
            abi::O_WRONLY | abi::O_CREAT | abi::O_EXCL,
            0o644
        ),
        -abi::EEXIST
    );
    assert_eq!(g.unlink("/root/f.txt"), 0);
    assert!(!g.host("f.txt").exists());
    assert_eq!(g.open("/root/f.txt", abi::O_RDONLY, 0), -abi::ENOENT);
    assert_eq!(g.unlink("/root/f.txt"), -abi::ENOENT);
    assert_eq!(g.open("/root", abi::O_WRONLY, 0), -abi::EISDIR);
    assert_eq!(
        g.open("/root/d", abi::O_CREAT | abi::O_DIRECTORY, 0o755),
        -abi::EINVAL
    );
}

#[test]
fn buffers_spanning_non_contiguous_frames() {
    let g = guest();
    let fd = g.open("/root/split", abi::O_RDWR | abi::O_CREAT, 0o644);
    assert!(fd >= 3);
    // The virtual buffer [SPLIT_VA + 0xF00, + 0x200) lies in two frames, in reverse order.
    g.mem
        .write(pa(SPLIT_PA[0] + 0xF00), &[b'a'; 0x100])
        .unwrap();
    g.mem.write(pa(SPLIT_PA[1]), &[b'b'; 0x100]).unwrap();
    assert_eq!(g.write(fd, SPLIT_VA + 0xF00, 0x200), 0x200);
    let mut expected = vec![b'a'; 0x100];
    expected.extend_from_slice(&[b'b'; 0x100]);
    assert_eq!(std::fs::read(g.host("split")).unwrap(), expected);

    g.mem.write(pa(SPLIT_PA[0] + 0xF00), &[0; 0x100]).unwrap();
    g.mem.write(pa(SPLIT_PA[1]), &[0; 0x100]).unwrap();
    assert_eq!(g.lseek(fd, 0xC0, abi::SEEK_SET), 0xC0);
    assert_eq!(g.read(fd, SPLIT_VA + 0xFC0, 0x100), 0x100);
    assert_eq!(g.bytes(SPLIT_PA[0] + 0xFC0, 0x40), vec![b'a'; 0x40]);
    assert_eq!(g.bytes(SPLIT_PA[1], 0xC0), vec![b'b'; 0xC0]);
    assert_eq!(g.bytes(SPLIT_PA[1] + 0xC0, 0x40), vec![0; 0x40]);
    // The frames the identity map would have used are untouched.
    assert!(g.bytes(SPLIT_VA + 0xF00, 0x200).iter().all(|&b| b == 0));
}

#[test]
fn unmapped_guest_paths_use_the_private_temp_dir() {
    let g = guest();
    let guest_path = format!("/tmp/uhyve-hypercall-test-{}-x", std::process::id());
    assert!(!Path::new(&guest_path).exists());
    assert_eq!(g.open(&guest_path, abi::O_RDONLY, 0), -abi::ENOENT);
    let fd = g.open(&guest_path, abi::O_WRONLY | abi::O_CREAT, 0o600);
    assert!(fd >= 3);
    g.mem.write(pa(BUF), b"private").unwrap();
    assert_eq!(g.write(fd, BUF, 7), 7);
    assert_eq!(g.close(fd), 0);
    assert!(
        !Path::new(&guest_path).exists(),
        "the host's /tmp was touched"
    );

    let fd = g.open(&guest_path, abi::O_RDONLY, 0);
    assert!(fd >= 3);
    assert_eq!(g.read(fd, BUF + 0x100, 64), 7);
    assert_eq!(g.bytes(BUF + 0x100, 7), b"private");
    assert_eq!(g.close(fd), 0);
    assert_eq!(g.unlink(&guest_path), 0);
    assert_eq!(g.open(&guest_path, abi::O_RDONLY, 0), -abi::ENOENT);
    assert_eq!(g.unlink(&guest_path), -abi::ENOENT);
    assert!(!Path::new(&guest_path).exists());
}

#[test]
fn escapes_from_the_mapping_are_refused() {
    if crate::isolation::beneath::skip_without_openat2("escapes_from_the_mapping_are_refused") {
        return;
    }
    let g = guest();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"secret").unwrap();
    std::os::unix::fs::symlink(&secret, g.host("link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), g.host("dirlink")).unwrap();
    let flags = abi::O_WRONLY | abi::O_TRUNC;
    assert_eq!(g.open("/root/link", flags, 0), -abi::EPERM);
    assert_eq!(g.open("/root/dirlink/secret", flags, 0), -abi::EPERM);
    assert_eq!(g.unlink("/root/dirlink/secret"), -abi::EPERM);
    let climb = format!("/root/../../..{}", secret.display());
    assert_eq!(g.open(&climb, flags, 0), -abi::EINVAL);
    let lexical = format!("/root/..{}", secret.display());
    assert_eq!(g.open(&lexical, flags, 0), -abi::ENOENT);
    assert_eq!(g.unlink(&lexical), -abi::ENOENT);
    assert_eq!(std::fs::read(&secret).unwrap(), b"secret");
}

#[test]
fn bad_file_descriptors() {
    let g = guest();
    for fd in [99, -1, 1, 2, i32::MIN] {
        assert_eq!(g.read(fd, BUF, 10), -i64::from(abi::EBADF), "read fd {fd}");
    }
    for fd in [99, -1, 0, i32::MAX] {
        assert_eq!(g.write(fd, BUF, 10), 0, "write fd {fd}");
        assert_eq!(g.lseek(fd, 0, abi::SEEK_SET), -1, "lseek fd {fd}");
    }
    assert_eq!(g.lseek(1, 0, abi::SEEK_CUR), -1);
    assert_eq!(g.close(99), -abi::EBADF);
    for fd in [0, 1, 2, -5] {
        assert_eq!(g.close(fd), 0);
    }
}

#[test]
fn unmapped_buffers() {
    let g = guest();
    std::fs::write(g.host("data"), vec![b'd'; 0x3000]).unwrap();
    let fd = g.open("/root/data", abi::O_RDWR, 0);
    assert!(fd >= 3);
    for buf in [HOLE_VA, RAM + 0x1000, 0x8000_0000_0000, u64::MAX - 4] {
        assert_eq!(g.read(fd, buf, 16), -i64::from(abi::EFAULT), "{buf:#x}");
        assert_eq!(g.write(fd, buf, 16), 0, "{buf:#x}");
    }
    assert_eq!(g.lseek(fd, 0, abi::SEEK_CUR), 0, "nothing was consumed");
    // A buffer running into the hole: only the mapped prefix is used.
    assert_eq!(g.read(fd, HOLE_VA - 0x800, 0x1000), 0x800);
    assert_eq!(g.lseek(fd, 0, abi::SEEK_CUR), 0x800);
    assert_eq!(g.write(fd, HOLE_VA - 0x800, 0x1000), 0x800);
    assert_eq!(g.lseek(fd, 0, abi::SEEK_CUR), 0x1000);
    // A bad fd needs no page-table root, a good one does: a failing backend is fatal.
    let failing = &mut || {
        Err(VcpuError::Unexpected {
            operation: "get registers",
            detail: "test".into(),
        })
    };
    let params = ReadParams {
        fd: 99,
        buf: GuestVirtAddr::new(BUF),
        len: 16,
        ret: 0,
    };
    g.mem.write_obj(pa(PARAMS), &params).unwrap();
    let outcome = g
        .calls
        .handle(&g.mem, HypercallAddress::FileRead.port(), PARAMS, failing);
    assert!(is_continue(&outcome));
    g.mem
        .write_obj(pa(PARAMS), &ReadParams { fd, ..params })
        .unwrap();
    match g
        .calls
        .handle(&g.mem, HypercallAddress::FileRead.port(), PARAMS, failing)
    {
        HypercallOutcome::Fatal(error) => assert!(error.to_string().starts_with("FileRead:")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn huge_lengths_return_quickly() {
    let g = guest();
    std::fs::write(g.host("small"), b"0123456789").unwrap();
    let start = Instant::now();
    let fd = g.open("/root/small", abi::O_RDWR, 0);
    assert_eq!(g.read(fd, BUF, u64::MAX), 10);
    assert_eq!(g.bytes(BUF, 10), b"0123456789");
    // Writes stop where the guest mapping ends (4 MiB) or at the RAM-size cap.
    assert_eq!(g.write(fd, RAM - 0x1000, u64::MAX), 0x1000);
    let written = g.write(fd, 0, u64::MAX);
    assert_eq!(written, HOLE_VA, "stops at the first unmapped page");
    assert_eq!(g.write(1, BUF, u64::MAX), RAM - BUF);
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[test]
fn paths_at_the_end_of_ram_and_bad_strings() {
    let g = guest();
    // Unterminated up to the end of RAM, outside RAM, not UTF-8.
    g.mem.write(pa(RAM - 4), b"abcd").unwrap();
    assert_eq!(g.open_at(pa(RAM - 4), abi::O_RDONLY, 0), -abi::EINVAL);
    assert_eq!(g.open_at(pa(RAM), abi::O_RDONLY, 0), -abi::EFAULT);
    assert_eq!(g.open_at(pa(u64::MAX), abi::O_RDONLY, 0), -abi::EFAULT);
    assert_eq!(g.open("/root/\u{fffd}", abi::O_RDONLY, 0), -abi::ENOENT);
    let bad = g.put_string(b"/root/\xff\xfe");
    assert_eq!(g.open_at(bad, abi::O_RDONLY, 0), -abi::EINVAL);
    assert_eq!(g.unlink_at(bad), -abi::EINVAL);
    assert_eq!(g.unlink_at(pa(RAM)), -abi::EFAULT);
    assert_eq!(g.open("", abi::O_RDONLY, 0), -abi::ENOENT);

    // Kernel 0.6.9 sends unlink paths without NUL: read until the end of RAM.
    let fd = g.open("/root/zz", abi::O_WRONLY | abi::O_CREAT, 0o644);
    assert_eq!(g.close(fd), 0);
    g.mem.write(pa(RAM - 8), b"/root/zz").unwrap();
    assert_eq!(g.unlink_at(pa(RAM - 8)), 0);
    assert!(!g.host("zz").exists());
}

#[test]
fn writes_to_fd_1_and_2_reach_the_console() {
    let g = guest();
    g.mem.write(pa(BUF), b"to stdout\nto stderr\n").unwrap();
    assert_eq!(g.write(1, BUF, 10), 10);
    assert_eq!(g.write(2, BUF + 10, 10), 10);
    // Spanning non-contiguous frames works for the console too.
    g.mem.write(pa(SPLIT_PA[0] + 0xFFE), b"ab").unwrap();
    g.mem.write(pa(SPLIT_PA[1]), b"c\n").unwrap();
    assert_eq!(g.write(1, SPLIT_VA + 0xFFE, 4), 4);
    assert_eq!(g.console(), "to stdout\nto stderr\nabc\n");
}

// ---- interface v2/v3 ----

fn guest_v(version: u32) -> Guest {
    let mut g = guest();
    g.calls = std::mem::replace(
        &mut g.calls,
        Hypercalls::new(
            GuestArch::X86_64,
            Arc::clone(&g.output),
            FileMap::new(&[], None).unwrap(),
            GuestCommandLine::default(),
        ),
    )
    .with_interface(version);
    g
}

impl Guest {
    fn call_v2(&self, address: HypercallAddressV2, argument: u64) -> HypercallOutcome {
        self.calls
            .handle(&self.mem, address as u16, argument, &mut || {
                panic!("v2 hypercalls take physical addresses")
            })
    }

    fn call_v2_ok<T: GuestPod>(&self, address: HypercallAddressV2, params: T) -> T {
        self.mem.write_obj(pa(PARAMS), &params).unwrap();
        let outcome = self.call_v2(address, PARAMS);
        assert!(is_continue(&outcome), "{outcome:?}");
        self.mem.read_obj(pa(PARAMS)).unwrap()
    }

    fn open_v2(&self, path: &str, flags: i32, mode: i32) -> i32 {
        let params = OpenParams {
            name: self.put_string(path.as_bytes()),
            flags,
            mode,
            ret: -1,
        };
        self.call_v2_ok(HypercallAddressV2::FileOpen, params).ret
    }

    fn write_v2(&self, fd: i32, buf: u64, len: u64) -> i64 {
        let params = WriteParamsV2 {
            fd,
            buf: pa(buf),
            len,
            ret: i64::MIN,
            ..Default::default()
        };
        self.call_v2_ok(HypercallAddressV2::FileWrite, params).ret
    }

    fn read_v2(&self, fd: i32, buf: u64, len: u64) -> i64 {
        let params = ReadParamsV2 {
            fd,
            buf: pa(buf),
            len,
            ret: i64::MIN,
            ..Default::default()
        };
        self.call_v2_ok(HypercallAddressV2::FileRead, params).ret
    }

    fn lseek_v2(&self, fd: i32, offset: i64, whence: u32) -> i64 {
        let params = LseekParamsV2 { fd, offset, whence };
        self.call_v2_ok(HypercallAddressV2::FileLseek, params)
            .offset
    }

    fn mkdir_v3(&self, path: &str) -> StatusResult {
        let params = MkdirParams {
            path: self.put_string(path.as_bytes()),
            len: path.len() as u64 + 1,
            ..Default::default()
        };
        self.call_v2_ok(HypercallAddressV2::Mkdir, params).ret
    }

    fn getdents_v3(&self, fd: i32, buf: u64, len: u64) -> GetdentResult {
        let params = GetdentParams {
            fd,
            buf: pa(buf),
            len,
            ..Default::default()
        };
        self.call_v2_ok(HypercallAddressV2::Getdents, params).ret
    }

    fn stat_v3(&self, path: &str, kind: u32, attr: u64) -> StatusResult {
        let params = StatParams {
            name: self.put_string(path.as_bytes()),
            kind,
            attr: pa(attr),
            ..Default::default()
        };
        self.call_v2_ok(HypercallAddressV2::FileStat, params).ret
    }

    fn fstat_v3(&self, fd: i32, attr: u64) -> StatusResult {
        let params = FstatParams {
            fd,
            attr: pa(attr),
            ..Default::default()
        };
        self.call_v2_ok(HypercallAddressV2::FileFstat, params).ret
    }

    /// Names listed by Getdents on `fd`, read `chunk` bytes at a time, until the end.
    fn list_v3(&self, fd: i32, chunk: u64) -> Vec<String> {
        let mut names = Vec::new();
        loop {
            let result = self.getdents_v3(fd, BUF, chunk);
            match result.tag {
                GETDENT_END_OF_DIRECTORY => return names,
                GETDENT_SUCCESS => {
                    let bytes = self.bytes(BUF, result.value as usize);
                    let records = crate::isolation::dir::decode_dirents(&bytes).unwrap();
                    assert!(!records.is_empty());
                    names.extend(
                        records
                            .into_iter()
                            .map(|r| String::from_utf8(r.name).unwrap()),
                    );
                }
                _ => panic!("getdents failed: {result:?}"),
            }
        }
    }
}

const OK: StatusResult = StatusResult {
    tag: STATUS_SUCCESS,
    errno: 0,
};

fn failed(errno: i32) -> StatusResult {
    StatusResult {
        tag: STATUS_ERROR,
        errno,
    }
}

fn guest_v_mapped(version: u32) -> Guest {
    let mut g = guest_v(version);
    let files = FileMap::new(&[format!("{}:/root", g.mapped.path().display())], None).unwrap();
    g.calls = Hypercalls::new(
        GuestArch::X86_64,
        Arc::clone(&g.output),
        files,
        GuestCommandLine::default(),
    )
    .with_interface(version);
    g
}

#[test]
fn v2_exit_takes_the_code_from_the_register_and_console_calls_use_physical_buffers() {
    let g = guest_v(2);
    assert!(matches!(
        g.call_v2(HypercallAddressV2::Exit, 0xFFFF_FFFF),
        HypercallOutcome::Exit(-1)
    ));
    assert!(matches!(
        g.call_v2(HypercallAddressV2::Exit, 3),
        HypercallOutcome::Exit(3)
    ));
    assert!(is_continue(
        &g.call_v2(HypercallAddressV2::SerialWriteByte, 0x141)
    ));
    g.mem.write(pa(BUF), b"bc\n").unwrap();
    let buffer = SerialWriteBufferParamsV2 {
        buf: pa(BUF),
        len: 3,
    };
    g.call_v2_ok(HypercallAddressV2::SerialWriteBuffer, buffer);
    assert_eq!(g.console(), "Abc\n");

    // No error field: a buffer outside RAM stops the VM, naming the hypercall.
    for (buf, len) in [(RAM - 2, 3), (u64::MAX, 2)] {
        let bad = SerialWriteBufferParamsV2 { buf: pa(buf), len };
        g.mem.write_obj(pa(PARAMS), &bad).unwrap();
        match g.call_v2(HypercallAddressV2::SerialWriteBuffer, PARAMS) {
            HypercallOutcome::Fatal(error) => {
                assert!(error.to_string().contains("SerialWriteBuffer"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }
    // A parameter block outside RAM stops the VM too.
    assert!(matches!(
        g.call_v2(HypercallAddressV2::SerialWriteBuffer, RAM - 8),
        HypercallOutcome::Fatal(HypercallError::ParamsOutsideRam { .. })
    ));
    assert!(matches!(
        g.call_v2(HypercallAddressV2::FileRead, u64::MAX),
        HypercallOutcome::Fatal(HypercallError::ParamsOutsideRam { .. })
    ));
}

#[test]
fn each_version_knows_only_its_own_addresses() {
    // A v1 port on a v2 guest, a v2 address on a v1 guest, and the v3-only calls on a v2
    // guest are ignored: the parameter block stays as it was.
    let v2 = guest_v_mapped(2);
    let untouched = MkdirParams {
        path: v2.put_string(b"/root/d"),
        len: 8,
        ret: StatusResult { tag: 77, errno: 77 },
    };
    for address in [
        HypercallAddressV2::Mkdir,
        HypercallAddressV2::Getdents,
        HypercallAddressV2::FileStat,
        HypercallAddressV2::FileFstat,
    ] {
        let after = v2.call_v2_ok(address, untouched);
        assert_eq!(after.ret, untouched.ret, "{}", address.name());
    }
    assert!(!v2.host("d").exists());
    assert!(is_continue(&v2.call(HypercallAddress::Exit, PARAMS)));
    assert!(is_continue(&v2.calls.handle(
        &v2.mem,
        0x1234,
        0,
        &mut || { unreachable!() }
    )));

    let v1 = guest();
    assert!(is_continue(&v1.call_v2(HypercallAddressV2::Exit, 1)));
    let v3 = guest_v_mapped(3);
    let mkdir = MkdirParams {
        path: v3.put_string(b"/root/d"),
        ..untouched
    };
    assert_eq!(v3.call_v2_ok(HypercallAddressV2::Mkdir, mkdir).ret, OK);
    assert!(v3.host("d").is_dir());
    // Reads of anything but SerialReadByte give all ones.
    assert_eq!(
        v3.calls.handle_read(HypercallAddressV2::Exit as u16, 1),
        u64::MAX
    );
    assert_eq!(v1.calls.handle_read(0x1018, 4), u64::MAX);
}

#[test]
fn v2_files_read_write_and_seek_through_physical_buffers_with_negative_errnos() {
    let g = guest_v_mapped(2);
    let fd = g.open_v2("/root/f", abi::O_RDWR | abi::O_CREAT, 0o644);
    assert!(fd > 2, "{fd}");
    // A buffer straddling the non-contiguous frames of SPLIT_VA is no problem: it is physical.
    g.mem.write(pa(SPLIT_PA[1]), b"0123456789").unwrap();
    assert_eq!(g.write_v2(fd, SPLIT_PA[1], 10), 10);
    assert_eq!(std::fs::read(g.host("f")).unwrap(), b"0123456789");
    assert_eq!(g.lseek_v2(fd, 2, abi::SEEK_SET as u32), 2);
    assert_eq!(g.read_v2(fd, BUF, 4), 4);
    assert_eq!(g.bytes(BUF, 4), b"2345");
    assert_eq!(g.lseek_v2(fd, -1, abi::SEEK_END as u32), 9);
    assert_eq!(g.read_v2(fd, BUF, 100), 1);
    assert_eq!(g.read_v2(fd, BUF, 100), 0);
    assert_eq!(g.lseek_v2(fd, 0, abi::SEEK_CUR as u32), 10);

    // Errors come back as -errno, and nothing outside RAM is touched.
    assert_eq!(g.read_v2(fd, RAM - 2, 4), -i64::from(abi::EFAULT));
    assert_eq!(g.write_v2(fd, u64::MAX - 1, 4), -i64::from(abi::EFAULT));
    assert_eq!(g.read_v2(99, BUF, 4), -i64::from(abi::EBADF));
    assert_eq!(g.write_v2(0, BUF, 4), -i64::from(abi::EBADF));
    assert_eq!(g.read_v2(1, BUF, 4), -i64::from(abi::EBADF));
    assert_eq!(
        g.lseek_v2(fd, -20, abi::SEEK_SET as u32),
        -i64::from(abi::EINVAL)
    );
    assert_eq!(g.lseek_v2(fd, 0, 7), -i64::from(abi::EINVAL));
    assert_eq!(g.lseek_v2(fd, 0, u32::MAX), -i64::from(abi::EINVAL));
    assert_eq!(g.lseek_v2(1, 0, 0), -i64::from(abi::EBADF));
    // A zero-length transfer may carry any address.
    assert_eq!(g.read_v2(fd, u64::MAX, 0), 0);

    // Console writes through fd 1.
    g.mem.write(pa(BUF), b"out\n").unwrap();
    assert_eq!(g.write_v2(1, BUF, 4), 4);
    assert_eq!(g.console(), "out\n");

    let close = g.call_v2_ok(HypercallAddressV2::FileClose, CloseParams { fd, ret: -1 });
    assert_eq!({ close.ret }, 0);
    assert_eq!(g.read_v2(fd, BUF, 1), -i64::from(abi::EBADF));
    let name = g.put_string(b"/root/f");
    let unlink = g.call_v2_ok(
        HypercallAddressV2::FileUnlink,
        UnlinkParams { name, ret: -1 },
    );
    assert_eq!({ unlink.ret }, 0);
    assert!(!g.host("f").exists());
    assert_eq!(
        g.open_v2("/elsewhere/../root/f", abi::O_RDONLY, 0),
        -abi::ENOENT
    );
    // Only v1 reads an unlink path up to the end of RAM (kernel 0.6.9 sends no NUL).
    g.mem.write(pa(RAM - 8), b"/root/zz").unwrap();
    let unlink = UnlinkParams {
        name: pa(RAM - 8),
        ret: -1,
    };
    let unlink = g.call_v2_ok(HypercallAddressV2::FileUnlink, unlink);
    assert_eq!({ unlink.ret }, -abi::EINVAL);
}

#[test]
fn v3_mkdir_and_getdents_list_directories_in_pieces() {
    let g = guest_v_mapped(3);
    assert_eq!(g.mkdir_v3("/root/dir"), OK);
    assert_eq!(g.mkdir_v3("/root/dir"), failed(abi::EEXIST));
    assert_eq!(g.mkdir_v3("/root/missing/dir"), failed(abi::ENOENT));
    assert!(g.host("dir").is_dir());
    for index in 0..20 {
        std::fs::write(g.host(&format!("dir/file-{index:02}")), b"x").unwrap();
    }
    let fd = g.open_v2("/root/dir", abi::O_RDONLY | abi::O_DIRECTORY, 0);
    assert!(fd > 2, "{fd}");
    // 64-byte pieces hold about two records each: every name comes exactly once.
    let mut names = g.list_v3(fd, 64);
    names.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("file-{i:02}")).collect();
    expected.extend([".".into(), "..".into()]);
    expected.sort();
    assert_eq!(names, expected);
    // Rewinding starts the listing again.
    assert_eq!(g.lseek_v2(fd, 0, abi::SEEK_SET as u32), 0);
    assert_eq!(g.list_v3(fd, 1 << 20).len(), 22);

    // Errors: a buffer too small for one record, a buffer outside RAM, no directory, bad fd.
    assert_eq!(g.lseek_v2(fd, 0, abi::SEEK_SET as u32), 0);
    let error = |errno: i32| GetdentResult {
        tag: GETDENT_ERROR,
        value: errno as u64,
        ..Default::default()
    };
    assert_eq!(g.getdents_v3(fd, BUF, 8), error(abi::EINVAL));
    assert_eq!(g.getdents_v3(fd, RAM - 16, 4096), error(abi::EFAULT));
    assert_eq!(g.getdents_v3(fd, u64::MAX - 8, 4096), error(abi::EFAULT));
    assert_eq!(g.getdents_v3(99, BUF, 4096), error(abi::EBADF));
    assert_eq!(g.getdents_v3(1, BUF, 4096), error(abi::EBADF));
    let file = g.open_v2("/root/dir/file-00", abi::O_RDONLY, 0);
    assert_eq!(g.getdents_v3(file, BUF, 4096), error(abi::ENOTDIR));
    // A directory is no file to read.
    assert_eq!(g.read_v2(fd, BUF, 16), -i64::from(abi::EISDIR));

    // The guest root lists the mount points.
    let root = g.open_v2("/", abi::O_RDONLY | abi::O_DIRECTORY, 0);
    assert_eq!(g.list_v3(root, 4096), ["root"]);

    // Mkdir paths: `len` counts the NUL or not, but a longer string is refused; the path
    // must lie inside RAM.
    let params = MkdirParams {
        path: g.put_string(b"/root/y"),
        len: 7,
        ..Default::default()
    };
    assert_eq!(g.call_v2_ok(HypercallAddressV2::Mkdir, params).ret, OK);
    assert!(g.host("y").is_dir());
    let params = MkdirParams {
        path: g.put_string(b"/root/x"),
        len: 6,
        ..Default::default()
    };
    let ret = g.call_v2_ok(HypercallAddressV2::Mkdir, params).ret;
    assert_eq!(ret, failed(abi::EINVAL));
    for outside in [RAM, u64::MAX] {
        let params = MkdirParams {
            path: pa(outside),
            len: 100,
            ..Default::default()
        };
        let ret = g.call_v2_ok(HypercallAddressV2::Mkdir, params).ret;
        assert_eq!(ret, failed(abi::EFAULT));
    }
    assert!(!g.host("x").exists());
}

#[test]
fn v3_stat_and_fstat_fill_the_file_attributes() {
    if crate::isolation::beneath::skip_without_openat2("v3_stat_and_fstat_fill_the_file_attributes")
    {
        return;
    }
    let g = guest_v_mapped(3);
    std::fs::write(g.host("data"), vec![7u8; 5000]).unwrap();
    std::os::unix::fs::symlink("data", g.host("link")).unwrap();
    const ATTR: u64 = BUF + 0x1000;
    let attr = || g.mem.read_obj::<FileAttr>(pa(ATTR)).unwrap();

    assert_eq!(g.stat_v3("/root/link", STAT_FOLLOW, ATTR), OK);
    let followed = attr();
    assert_eq!(followed.st_size, 5000);
    assert_eq!(followed.st_mode & 0o170000, 0o100000);
    assert_eq!(followed.st_nlink, 1);
    let host = std::fs::metadata(g.host("data")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(followed.st_ino, host.ino());
    assert_eq!(followed.st_mtim.tv_sec, host.mtime());
    assert_eq!(i64::from(followed.st_mtim.tv_nsec), host.mtime_nsec());

    assert_eq!(g.stat_v3("/root/link", STAT_NO_FOLLOW, ATTR), OK);
    assert_eq!(attr().st_mode & 0o170000, 0o120000);
    assert_eq!(g.stat_v3("/root", STAT_FOLLOW, ATTR), OK);
    assert_eq!(attr().st_mode & 0o170000, 0o040000);
    assert_eq!(g.stat_v3("/", STAT_FOLLOW, ATTR), OK);
    assert_eq!(attr().st_mode & 0o170000, 0o040000);

    let fd = g.open_v2("/root/data", abi::O_RDONLY, 0);
    g.mem.write(pa(ATTR), &[0u8; 120]).unwrap();
    assert_eq!(g.fstat_v3(fd, ATTR), OK);
    assert_eq!(attr(), followed);

    // Errors: no such path, a bad kind, attributes outside RAM, bad descriptors.
    assert_eq!(
        g.stat_v3("/root/none", STAT_FOLLOW, ATTR),
        failed(abi::ENOENT)
    );
    assert_eq!(
        g.stat_v3("/elsewhere", STAT_FOLLOW, ATTR),
        failed(abi::ENOENT)
    );
    assert_eq!(g.stat_v3("/root/data", 2, ATTR), failed(abi::EINVAL));
    assert_eq!(
        g.stat_v3("/root/data", STAT_FOLLOW, RAM - 8),
        failed(abi::EFAULT)
    );
    assert_eq!(g.fstat_v3(fd, u64::MAX - 4), failed(abi::EFAULT));
    assert_eq!(g.fstat_v3(99, ATTR), failed(abi::EBADF));
    assert_eq!(g.fstat_v3(0, ATTR), failed(abi::EBADF));
    let params = StatParams {
        name: pa(RAM + 5),
        kind: STAT_FOLLOW,
        attr: pa(ATTR),
        ..Default::default()
    };
    let ret = g.call_v2_ok(HypercallAddressV2::FileStat, params).ret;
    assert_eq!(ret, failed(abi::EFAULT));
}

#[test]
fn file_data_buffers_are_page_aligned() {
    let mut buffer = super::AlignedBuffer::default();
    for len in [0, 1, 100, 4096, 5000, 65536, 1 << 20] {
        let slice = buffer.slice(len);
        assert_eq!(slice.as_ptr().addr() % 4096, 0, "{len}");
        assert_eq!(slice.len(), len.min(65536), "{len}");
    }
}
