//! The whole aarch64 VM path — image loading for aarch64, guest preparation, one thread per vCPU,
//! the start gate, HVF exit decoding, the shared dispatcher with the aarch64 page walk, stopping
//! the other vCPUs, crash reports — run on this (any) host against a scripted fake of
//! Hypervisor.framework. The fake plays the guest: it writes parameter blocks into guest RAM
//! through the mapping it was given (as the guest's own stores would) and then raises the data
//! aborts the guest's stores to the hypercall window raise on real hardware.
//!
//! Needs `$UHYVE_TEST_IMAGES` for the real `aarch64-hello_world` (no KVM, no aarch64 host).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uhyve::arch::GuestArch;
use uhyve::arch::aarch64::layout::RAM_BASE;
use uhyve::hvf::{HvfCpu, HvfError, HvfExit, HvfVcpuOps, Reg, SysReg};
use uhyve::loader::KernelImage;
use uhyve::mem::GuestMemory;
use uhyve::output::OutputTarget;
use uhyve::params::{MemorySize, VmConfig};
use uhyve::vm::{EntryRegisters, GuestExit, Hypervisor, VcpuKick, Vm, VmError};
use uhyve_interface::{
    CloseParams, ExitParams, GuestPhysAddr, GuestVirtAddr, HypercallAddress, OpenParams,
    ReadParams, SerialWriteBufferParams, WriteParams,
};

const RAM_SIZE: u64 = 64 << 20;

/// Guest RAM as the hypervisor maps it: host address and guest-physical range.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    host: usize,
    base: u64,
    size: u64,
}

impl Mapping {
    /// The guest's own store of `bytes` at `gpa` (no exit: plain RAM).
    fn guest_write(&self, gpa: u64, bytes: &[u8]) {
        let offset = gpa.checked_sub(self.base).expect("below RAM");
        assert!(offset + bytes.len() as u64 <= self.size, "beyond RAM");
        // SAFETY: the range was just checked to lie inside the guest RAM mapping, which stays
        // alive while any vCPU exists (the Vm drops the hypervisor and vCPUs before its RAM).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.host as *mut u8).add(offset as usize),
                bytes.len(),
            );
        }
    }

    /// The guest's own load of `len` bytes at `gpa`.
    fn guest_read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let offset = gpa.checked_sub(self.base).expect("below RAM");
        assert!(offset + len as u64 <= self.size, "beyond RAM");
        let mut bytes = vec![0; len];
        // SAFETY: as in `guest_write`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.host as *const u8).add(offset as usize),
                bytes.as_mut_ptr(),
                len,
            );
        }
        bytes
    }
}

/// One thing the scripted guest does.
#[derive(Debug, Clone)]
enum Step {
    /// Stores `bytes` at a guest-physical address (no exit).
    Poke(u64, Vec<u8>),
    /// `str x<register>, [hypercall page + port]` with `value` in the register: a data abort.
    Hypercall {
        port: HypercallAddress,
        register: u8,
        value: u64,
    },
    /// A data abort with this syndrome at this IPA.
    Abort { syndrome: u64, ipa: u64 },
    /// Loads `len` bytes at a guest-physical address and records them.
    Peek(u64, usize),
    /// Waits until vCPU `n` runs (as a kernel waits for its secondary CPUs to come up).
    WaitFor(u32),
}

/// What each fake vCPU saw, for the test to check afterwards.
#[derive(Debug, Default, Clone)]
struct Observed {
    /// Registers at the first `hv_vcpu_run`.
    entry: HashMap<Reg, u64>,
    entry_sys: HashMap<SysReg, u64>,
    /// Bytes loaded by `Peek` steps.
    peeks: Vec<Vec<u8>>,
    /// Whether `hv_vcpus_exit` ended its run.
    canceled: bool,
}

/// A scripted Hypervisor.framework: vCPU `n` replays `scripts[n]`, then idles until kicked.
struct FakeHvf {
    scripts: Vec<Vec<Step>>,
    /// What `hv_vm_get_max_vcpu_count` (and the GIC) allow.
    max_cpus: Option<u32>,
    mapping: Mutex<Option<Mapping>>,
    observed: Arc<Mutex<HashMap<u32, Observed>>>,
}

struct FakeVcpu {
    id: u32,
    steps: VecDeque<Step>,
    mapping: Mapping,
    regs: HashMap<Reg, u64>,
    sys_regs: HashMap<SysReg, u64>,
    kicked: Arc<AtomicBool>,
    started: bool,
    observed: Arc<Mutex<HashMap<u32, Observed>>>,
}

#[derive(Clone)]
struct FakeKick(Arc<AtomicBool>);

impl VcpuKick for FakeKick {
    fn kick(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// ESR_EL2 of a data abort from EL1 with a valid syndrome.
fn data_abort(write: bool, size_log2: u64, register: u8) -> u64 {
    (0x25 << 26)
        | (1 << 25)
        | (1 << 24)
        | (size_log2 << 22)
        | (u64::from(register) << 16)
        | (u64::from(write) << 6)
}

impl FakeVcpu {
    fn observe(&self, update: impl FnOnce(&mut Observed)) {
        update(self.observed.lock().unwrap().entry(self.id).or_default());
    }
}

impl HvfVcpuOps for FakeVcpu {
    fn run(&mut self) -> Result<HvfExit, HvfError> {
        if !self.started {
            self.started = true;
            let (regs, sys) = (self.regs.clone(), self.sys_regs.clone());
            self.observe(|o| {
                o.entry = regs;
                o.entry_sys = sys;
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.kicked.swap(false, Ordering::SeqCst) {
                self.observe(|o| o.canceled = true);
                return Ok(HvfExit::Canceled);
            }
            match self.steps.pop_front() {
                Some(Step::Poke(gpa, bytes)) => self.mapping.guest_write(gpa, &bytes),
                Some(Step::Peek(gpa, len)) => {
                    let bytes = self.mapping.guest_read(gpa, len);
                    self.observe(|o| o.peeks.push(bytes));
                }
                Some(Step::Hypercall {
                    port,
                    register,
                    value,
                }) => {
                    self.regs.insert(Reg::X(register), value);
                    return Ok(HvfExit::Exception {
                        syndrome: data_abort(true, 3, register),
                        virtual_address: u64::from(port as u16),
                        physical_address: self.mapping.base + u64::from(port as u16),
                    });
                }
                Some(Step::WaitFor(cpu)) => {
                    while !self.observed.lock().unwrap().contains_key(&cpu) {
                        if Instant::now() > deadline {
                            return Err(HvfError {
                                call: "hv_vcpu_run (fake: the other vCPU never ran)",
                                code: u32::MAX,
                            });
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                Some(Step::Abort { syndrome, ipa }) => {
                    return Ok(HvfExit::Exception {
                        syndrome,
                        virtual_address: ipa,
                        physical_address: ipa,
                    });
                }
                None => {
                    // Idle (like a guest in WFI) until another vCPU's end stops the VM.
                    if Instant::now() > deadline {
                        return Err(HvfError {
                            call: "hv_vcpu_run (fake: never kicked)",
                            code: u32::MAX,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    fn reg(&mut self, reg: Reg) -> Result<u64, HvfError> {
        Ok(self.regs.get(&reg).copied().unwrap_or(0))
    }
    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), HvfError> {
        self.regs.insert(reg, value);
        Ok(())
    }
    fn sys_reg(&mut self, reg: SysReg) -> Result<u64, HvfError> {
        Ok(self.sys_regs.get(&reg).copied().unwrap_or(0))
    }
    fn set_sys_reg(&mut self, reg: SysReg, value: u64) -> Result<(), HvfError> {
        self.sys_regs.insert(reg, value);
        Ok(())
    }
}

impl Hypervisor for FakeHvf {
    const ARCH: GuestArch = GuestArch::Aarch64;
    type Cpu = HvfCpu<FakeVcpu>;
    type Kick = FakeKick;

    unsafe fn map_memory(&self, mem: &GuestMemory) -> Result<(), VmError> {
        *self.mapping.lock().unwrap() = Some(Mapping {
            host: mem.host_address() as usize,
            base: mem.base().as_u64(),
            size: mem.size(),
        });
        Ok(())
    }

    fn max_cpus(&self) -> Option<u32> {
        self.max_cpus
    }

    fn create_vcpu(
        &self,
        cpu: u32,
        entry: &EntryRegisters,
    ) -> Result<(Self::Cpu, Self::Kick), VmError> {
        let EntryRegisters::Aarch64(registers) = entry else {
            panic!("an aarch64 hypervisor got {entry:?}");
        };
        let kicked = Arc::new(AtomicBool::new(false));
        let mut fake = FakeVcpu {
            id: cpu,
            steps: self
                .scripts
                .get(cpu as usize)
                .cloned()
                .unwrap_or_default()
                .into(),
            mapping: self.mapping.lock().unwrap().expect("RAM is mapped first"),
            regs: HashMap::new(),
            sys_regs: HashMap::new(),
            kicked: Arc::clone(&kicked),
            started: false,
            observed: Arc::clone(&self.observed),
        };
        // What the framework reports before uhyve writes anything: PARange 36 bits.
        fake.sys_regs.insert(SysReg::IdAa64Mmfr0El1, 0x1);
        let ram_base = fake.mapping.base;
        let vcpu = HvfCpu::new(fake, cpu, ram_base, registers)
            .map_err(|source| VmError::Vcpu { cpu, source })?;
        Ok((vcpu, FakeKick(kicked)))
    }
}

fn image_path() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("UHYVE_TEST_IMAGES") else {
        if std::env::var_os("UHYVE_REQUIRE_IMAGES").is_some() {
            panic!("UHYVE_TEST_IMAGES is not set, but UHYVE_REQUIRE_IMAGES is");
        }
        eprintln!("skipping the fake-HVF VM test: UHYVE_TEST_IMAGES is not set");
        return None;
    };
    Some(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(dir)
            .join("aarch64-hello_world"),
    )
}

/// The kernel image's guest-physical range and entry point (PIE at RAM_BASE + 0x40000).
fn image_facts(path: &PathBuf) -> (std::ops::Range<u64>, u64) {
    let image = KernelImage::parse_for(
        std::fs::read(path).unwrap(),
        goblin::elf::header::EM_AARCH64,
    )
    .unwrap();
    let base = RAM_BASE + 0x4_0000;
    let mut slot = vec![0u8; image.footprint() as usize];
    let loaded = image.load(base, &mut slot).unwrap();
    (loaded.image_range, loaded.entry_point)
}

fn config(kernel: PathBuf, cpus: u32, output: OutputTarget, mappings: Vec<String>) -> VmConfig {
    VmConfig {
        kernel,
        kernel_args: vec!["first".into(), "second".into()],
        kernel_options: Vec::new(),
        env: vec![("GREETING".into(), "hello".into())],
        memory_size: MemorySize(RAM_SIZE),
        cpu_count: cpus,
        affinity: None,
        output,
        file_mappings: mappings,
        tempdir: None,
        stats: false,
        emulation_fallback: true,
        hermit_image_mode: Default::default(),
        explicit: Default::default(),
    }
}

fn run(
    config: &VmConfig,
    scripts: Vec<Vec<Step>>,
) -> (Result<GuestExit, VmError>, HashMap<u32, Observed>) {
    run_limited(config, scripts, None)
}

fn run_limited(
    config: &VmConfig,
    scripts: Vec<Vec<Step>>,
    max_cpus: Option<u32>,
) -> (Result<GuestExit, VmError>, HashMap<u32, Observed>) {
    let observed = Arc::new(Mutex::new(HashMap::new()));
    let fake = FakeHvf {
        scripts,
        max_cpus,
        mapping: Mutex::new(None),
        observed: Arc::clone(&observed),
    };
    let result = Vm::with_hypervisor(config, move || Ok(fake)).and_then(|mut vm| vm.run());
    let observed = observed.lock().unwrap().clone();
    (result, observed)
}

fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: the parameter structs are packed plain-old-data without padding.
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
    .to_vec()
}

#[test]
fn a_scripted_aarch64_guest_runs_through_the_whole_vm() {
    let Some(kernel) = image_path() else {
        return;
    };
    let (image, entry) = image_facts(&kernel);
    let host_dir = tempfile::tempdir().unwrap();
    let console = host_dir.path().join("console");
    let config = config(
        kernel,
        2,
        OutputTarget::File(console.clone()),
        vec![format!("{}:/host", host_dir.path().display())],
    );
    // Scratch space inside the kernel's identity-mapped image (its BSS end), as a kernel's
    // static buffers would be.
    let scratch = (image.end - 0x3000) & !0xFFF;
    let text = b"hello from aarch64\n";
    let (params, name, data) = (scratch, scratch + 0x100, scratch + 0x200);
    let file_text = b"written through the aarch64 page tables";
    let unmapped = 0x7000_0000_0000u64;
    let cpu0 = vec![
        Step::WaitFor(1),
        // What the guest finds at X0 (the boot info) and in the FDT it points to.
        Step::Peek(RAM_BASE + 0x4000, 104),
        Step::Peek(RAM_BASE + 0x5000, 4),
        Step::Poke(data, text.to_vec()),
        Step::Poke(
            params,
            bytes_of(&SerialWriteBufferParams {
                buf: GuestPhysAddr::new(data),
                len: text.len() as u64,
            }),
        ),
        Step::Hypercall {
            port: HypercallAddress::SerialWriteBuffer,
            register: 8,
            value: params,
        },
        Step::Poke(name, b"/host/out.txt\0".to_vec()),
        Step::Poke(
            params,
            bytes_of(&OpenParams {
                name: GuestPhysAddr::new(name),
                flags: uhyve_interface::O_WRONLY | uhyve_interface::O_CREAT,
                mode: 0o644,
                ret: -1,
            }),
        ),
        Step::Hypercall {
            port: HypercallAddress::FileOpen,
            register: 9,
            value: params,
        },
        Step::Peek(params + 16, 4),
        Step::Poke(data, file_text.to_vec()),
        // fd 3: the first file the guest opens (0-2 are the console and stdin).
        Step::Poke(
            params + 0x40,
            bytes_of(&WriteParams {
                fd: 3,
                buf: GuestVirtAddr::new(data),
                len: file_text.len() as u64,
            }),
        ),
        Step::Hypercall {
            port: HypercallAddress::FileWrite,
            register: 10,
            value: params + 0x40,
        },
        Step::Peek(params + 0x40 + 12, 8),
        // A buffer the guest's page tables do not map: nothing is written.
        Step::Poke(
            params + 0x80,
            bytes_of(&WriteParams {
                fd: 3,
                buf: GuestVirtAddr::new(unmapped),
                len: 16,
            }),
        ),
        Step::Hypercall {
            port: HypercallAddress::FileWrite,
            register: 11,
            value: params + 0x80,
        },
        Step::Peek(params + 0x80 + 12, 8),
        Step::Poke(params + 0xc0, bytes_of(&CloseParams { fd: 3, ret: -1 })),
        Step::Hypercall {
            port: HypercallAddress::FileClose,
            register: 12,
            value: params + 0xc0,
        },
        Step::Poke(params + 0xe0, bytes_of(&ExitParams { arg: 7 })),
        Step::Hypercall {
            port: HypercallAddress::Exit,
            register: 0,
            value: params + 0xe0,
        },
    ];
    // vCPU 1 idles until vCPU 0's Exit stops the VM.
    let (result, observed) = run(&config, vec![cpu0, vec![]]);
    assert_eq!(result.unwrap(), GuestExit(7));

    let cpu0 = &observed[&0];
    assert_eq!(cpu0.entry[&Reg::Pc], entry);
    assert_eq!(cpu0.entry[&Reg::X(0)], RAM_BASE + 0x4000);
    assert_eq!(cpu0.entry[&Reg::X(1)], 0);
    assert_eq!(cpu0.entry[&Reg::Cpsr], 0x3c5);
    assert_eq!(cpu0.entry_sys[&SysReg::Ttbr0El1], RAM_BASE + 0x1_0000);
    assert_eq!(cpu0.entry_sys[&SysReg::TcrEl1] >> 32, 1, "IPS from PARange");
    let boot_info = &cpu0.peeks[0];
    let field = |at: usize| u64::from_le_bytes(boot_info[at..at + 8].try_into().unwrap());
    assert_eq!(field(0), RAM_BASE, "RAM start");
    assert_eq!(field(8), RAM_BASE + RAM_SIZE, "RAM end");
    assert_eq!(field(24), RAM_BASE + 0x5000, "FDT address");
    assert_eq!(
        (field(32), field(40)),
        (image.start, image.end),
        "kernel image"
    );
    assert_eq!(field(96), 2, "CPU count");
    assert_eq!(cpu0.peeks[1], 0xd00d_feed_u32.to_be_bytes(), "FDT magic");
    assert_eq!(cpu0.peeks[2], 3i32.to_le_bytes(), "FileOpen returned fd 3");
    assert_eq!(
        cpu0.peeks[3],
        (file_text.len() as u64).to_le_bytes(),
        "FileWrite wrote everything"
    );
    assert_eq!(
        cpu0.peeks[4],
        0u64.to_le_bytes(),
        "unmapped buffer: 0 bytes"
    );
    assert!(!cpu0.canceled);

    let cpu1 = &observed[&1];
    assert_eq!(cpu1.entry[&Reg::Pc], entry);
    assert_eq!(cpu1.entry[&Reg::X(1)], 1);
    assert_eq!(cpu1.entry_sys[&SysReg::MpidrEl1] & 0xFF, 1);
    assert!(cpu1.canceled, "vCPU 1 was stopped with hv_vcpus_exit");

    assert_eq!(
        std::fs::read(host_dir.path().join("out.txt")).unwrap(),
        file_text
    );
    assert_eq!(std::fs::read(&console).unwrap(), text);
}

/// Runs a one-vCPU guest doing `steps`; the error it ends with.
fn crash_of(steps: Vec<Step>) -> (String, HashMap<u32, Observed>) {
    let kernel = image_path().expect("checked by the caller");
    let config = config(kernel, 1, OutputTarget::None, vec![]);
    let (result, observed) = run(&config, vec![steps]);
    match result {
        Err(error) => (error.to_string(), observed),
        Ok(exit) => panic!("the guest should have crashed, but exited with {exit:?}"),
    }
}

#[test]
fn a_store_outside_ram_and_devices_is_a_crash_naming_pc_and_instruction() {
    let Some(kernel) = image_path() else {
        return;
    };
    let (_, entry) = image_facts(&kernel);
    let (message, _) = crash_of(vec![Step::Abort {
        syndrome: data_abort(true, 2, 3),
        ipa: 0x0900_0000,
    }]);
    // The instruction word is read through the guest's page tables at PC (the entry point).
    assert!(
        message.starts_with(&format!(
            "guest crashed: vCPU 0: write of 4 bytes (0x0) to 0x9000000, which is neither RAM nor \
             a device at PC {entry:#x}, instruction `.inst 0x"
        )),
        "{message}"
    );
}

#[test]
fn a_data_abort_without_a_valid_syndrome_is_a_clear_crash() {
    if image_path().is_none() {
        return;
    }
    // ISV = 0 (e.g. a load pair or a post-indexed store into the trap window).
    let (message, _) = crash_of(vec![Step::Abort {
        syndrome: (0x25 << 26) | (1 << 25) | (1 << 6),
        ipa: RAM_BASE + 0x540,
    }]);
    assert!(
        message.contains("unhandled exit: data abort at 0x10000540"),
        "{message}"
    );
    assert!(message.contains("ISV"), "{message}");
}

#[test]
fn a_parameter_block_outside_ram_stops_the_vm_with_the_hypercall_named() {
    if image_path().is_none() {
        return;
    }
    let (message, _) = crash_of(vec![Step::Hypercall {
        port: HypercallAddress::Exit,
        register: 5,
        value: u64::MAX - 3,
    }]);
    assert_eq!(
        message,
        "vCPU 0: guest hypercall failed: Exit: parameter block at 0xfffffffffffffffc lies \
         outside guest RAM"
    );
}

#[test]
fn hypercall_arguments_keep_all_64_bits_on_aarch64() {
    if image_path().is_none() {
        return;
    }
    // RAM_BASE + 0x100 with bit 32 set: an x86_64 guest's EAX would drop it, aarch64 must not.
    let (message, _) = crash_of(vec![Step::Hypercall {
        port: HypercallAddress::Exit,
        register: 5,
        value: (1 << 32) | (RAM_BASE + 0x100),
    }]);
    assert!(
        message.contains("at 0x110000100 lies outside guest RAM"),
        "{message}"
    );
}

#[test]
fn a_guest_exception_is_reported_by_class() {
    if image_path().is_none() {
        return;
    }
    // HVC #0: uhyve offers no PSCI.
    let (message, _) = crash_of(vec![Step::Abort {
        syndrome: (0x16 << 26) | (1 << 25),
        ipa: 0,
    }]);
    assert!(message.contains("HVC"), "{message}");
}

#[test]
fn an_x86_64_image_is_refused_by_the_aarch64_vm_with_one_clear_line() {
    let Some(aarch64_image) = image_path() else {
        return;
    };
    let x86_image = aarch64_image.with_file_name("x86_64-hello_world");
    let config = config(x86_image.clone(), 1, OutputTarget::None, vec![]);
    let (result, observed) = run(&config, vec![]);
    let message = result.unwrap_err().to_string();
    assert_eq!(
        message,
        format!(
            "{}: built for x86_64 (e_machine 62), but this uhyve runs aarch64 guests",
            x86_image.display()
        )
    );
    assert!(observed.is_empty(), "no vCPU was created");
}

#[test]
fn more_vcpus_than_the_framework_offers_is_one_clear_error() {
    let Some(kernel) = image_path() else {
        return;
    };
    let config = config(kernel, 8, OutputTarget::None, vec![]);
    let (result, observed) = run_limited(&config, vec![], Some(4));
    assert_eq!(
        result.unwrap_err().to_string(),
        "--cpu-count 8: this hypervisor offers at most 4 vCPUs per VM"
    );
    assert!(observed.is_empty(), "no vCPU was created");
}

/// The aarch64 Hermit application `name` built by `tests/hermit/build.sh`, from
/// `$UHYVE_HERMIT_APPS/aarch64/`, or `None` (skip, unless `UHYVE_REQUIRE_IMAGES` is set).
fn hermit_app(name: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("UHYVE_HERMIT_APPS") else {
        if std::env::var_os("UHYVE_REQUIRE_IMAGES").is_some() {
            panic!(
                "UHYVE_HERMIT_APPS is not set (tests/hermit/build.sh), but UHYVE_REQUIRE_IMAGES is"
            );
        }
        eprintln!("skipping the built aarch64 applications: UHYVE_HERMIT_APPS is not set");
        return None;
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join("aarch64")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing (tests/hermit/build.sh)",
        path.display()
    );
    Some(path)
}

/// Every aarch64 application built from the 0.11 kernel is parsed, relocated and laid out, starts
/// with the registers, boot info and device tree a 0.11 kernel expects (arguments, environment
/// and the `-mount` of the mapped directory in `/chosen/bootargs`), and has its hypercalls served
/// through the shared dispatcher: the scripted guest reads a host file through the mapping with
/// a guest-virtual buffer, prints it, and exits. (Hypervisor.framework itself is faked: the
/// kernel's own instructions do not run here.)
#[test]
fn built_aarch64_applications_run_through_the_fake() {
    for name in ["demo", "exit3", "float", "panic", "threads"] {
        let Some(kernel) = hermit_app(name) else {
            return;
        };
        let (image, entry) = image_facts(&kernel);
        let host_dir = tempfile::tempdir().unwrap();
        std::fs::write(
            host_dir.path().join("from-host.txt"),
            b"mapped for aarch64\n",
        )
        .unwrap();
        let console = host_dir.path().join("console");
        let config = config(
            kernel,
            1,
            OutputTarget::File(console.clone()),
            vec![format!("{}:/data", host_dir.path().display())],
        );
        let scratch = (image.end - 0x3000) & !0xFFF;
        let (params, path, buffer) = (scratch, scratch + 0x100, scratch + 0x200);
        let steps = vec![
            Step::Peek(RAM_BASE + 0x4000, 104),
            Step::Peek(RAM_BASE + 0x5000, 0x1000),
            Step::Poke(path, b"/data/from-host.txt\0".to_vec()),
            Step::Poke(
                params,
                bytes_of(&OpenParams {
                    name: GuestPhysAddr::new(path),
                    flags: uhyve_interface::O_RDONLY,
                    mode: 0,
                    ret: -1,
                }),
            ),
            Step::Hypercall {
                port: HypercallAddress::FileOpen,
                register: 8,
                value: params,
            },
            Step::Poke(
                params + 0x40,
                bytes_of(&ReadParams {
                    fd: 3,
                    buf: GuestVirtAddr::new(buffer),
                    len: 64,
                    ret: -1,
                }),
            ),
            Step::Hypercall {
                port: HypercallAddress::FileRead,
                register: 8,
                value: params + 0x40,
            },
            Step::Peek(params + 0x40 + 20, 8),
            Step::Poke(
                params + 0x80,
                bytes_of(&SerialWriteBufferParams {
                    buf: GuestPhysAddr::new(buffer),
                    len: b"mapped for aarch64\n".len() as u64,
                }),
            ),
            Step::Hypercall {
                port: HypercallAddress::SerialWriteBuffer,
                register: 8,
                value: params + 0x80,
            },
            Step::Poke(params + 0xc0, bytes_of(&ExitParams { arg: 0 })),
            Step::Hypercall {
                port: HypercallAddress::Exit,
                register: 8,
                value: params + 0xc0,
            },
        ];
        let (result, observed) = run(&config, vec![steps]);
        assert_eq!(result.unwrap(), GuestExit(0), "{name}");
        let cpu0 = &observed[&0];
        assert_eq!(cpu0.entry[&Reg::Pc], entry, "{name}: entry point");
        assert_eq!(
            cpu0.entry[&Reg::X(0)],
            RAM_BASE + 0x4000,
            "{name}: boot info"
        );
        let boot_info = &cpu0.peeks[0];
        let field = |at: usize| u64::from_le_bytes(boot_info[at..at + 8].try_into().unwrap());
        assert_eq!(
            (field(32), field(40)),
            (image.start, image.end),
            "{name}: image range"
        );
        assert_eq!(field(24), RAM_BASE + 0x5000, "{name}: FDT address");
        let fdt = &cpu0.peeks[1];
        assert_eq!(fdt[..4], 0xd00d_feed_u32.to_be_bytes(), "{name}: FDT magic");
        let bootargs = b"-mount /data env=GREETING=hello -- first second\0";
        assert!(
            fdt.windows(bootargs.len()).any(|window| window == bootargs),
            "{name}: the 0.11 kernel gets its mount point, environment and arguments in bootargs"
        );
        assert_eq!(
            cpu0.peeks[2],
            (b"mapped for aarch64\n".len() as i64).to_le_bytes(),
            "{name}: FileRead through the mapping"
        );
        assert_eq!(
            std::fs::read(&console).unwrap(),
            b"mapped for aarch64\n",
            "{name}"
        );
    }
}
