//! The whole aarch64 VM path — image loading for aarch64, guest preparation, one thread per vCPU,
//! the start gate, HVF exit decoding, the shared dispatcher with the aarch64 page walk, stopping
//! the other vCPUs, crash reports — run on this (any) host against a scripted fake of
//! Hypervisor.framework. The fake plays the guest: it writes parameter blocks into guest RAM
//! through the mapping it was given (as the guest's own stores would) and then raises the data
//! aborts the guest's stores to (and v2/v3 loads from) the hypercall window raise on real
//! hardware. Interface v1 images run with RAM at 0x1000_0000; copies of the image whose notes
//! announce interface v2 or v3 run with RAM at 4 GiB and the v2 address table.
//!
//! Needs `$UHYVE_TEST_IMAGES` for the real `aarch64-hello_world` (no KVM, no aarch64 host).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uhyve::arch::GuestArch;
use uhyve::arch::aarch64::layout::RAM_BASE;
use uhyve::exits::GuestExit;
use uhyve::hvf::{HvfCpu, HvfError, HvfExit, HvfVcpuOps, Reg, SysReg};
use uhyve::hypervisor::aarch64::debug::Aarch64Vcpu;
use uhyve::hypervisor::{EntryRegisters, Hypervisor, HypervisorError, VcpuKick};
use uhyve::loader::KernelImage;
use uhyve::mem::GuestMemory;
use uhyve::output::OutputTarget;
use uhyve::params::{MemorySize, VmConfig};
use uhyve::vm::{Vm, VmError};
use uhyve_interface::v2::HypercallAddressV2;
use uhyve_interface::{
    CloseParams, ExitParams, GuestPhysAddr, GuestVirtAddr, HypercallAddress, OpenParams,
    ReadParams, SerialWriteBufferParams, UnlinkParams, WriteParams,
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
    /// `str x<register>, [hypercall window + address]` of interface v2/v3 (any address in the
    /// window, served or not).
    Store {
        address: u16,
        register: u8,
        value: u64,
    },
    /// `ldr x<register>, [hypercall window + address]` of `1 << size_log2` bytes; the register's
    /// value after the load is recorded.
    Load {
        address: u16,
        register: u8,
        size_log2: u64,
    },
    /// A data abort with this syndrome at this IPA.
    Abort { syndrome: u64, ipa: u64 },
    /// Any exit, as the framework reports it.
    Exit(HvfExit),
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
    /// Register values after each `Load` step.
    loads: Vec<u64>,
    /// How far PC moved while uhyve handled each hypercall exit (every one must be 4).
    pc_steps: Vec<u64>,
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
    /// PC at the last hypercall exit, and the register a load goes to.
    pending: Option<(u64, Option<u8>)>,
    /// When the script is done: idle until kicked (a VM's vCPU), or fail as a broken
    /// `hv_vcpu_run` would (a lone vCPU under test).
    idle_when_done: bool,
    /// The debugging side: SIMD registers, trap flags, what each run saw, injected failures.
    debug: FakeDebug,
}

/// The fake's guest-debugging state.
#[derive(Debug, Default)]
struct FakeDebug {
    /// Q0 … Q31.
    simd: HashMap<u8, u128>,
    /// `hv_vcpu_set_trap_debug_exceptions`.
    trap_exceptions: bool,
    /// `hv_vcpu_set_trap_debug_reg_accesses`.
    trap_reg_accesses: bool,
    /// PC and CPSR at each `hv_vcpu_run`.
    runs: Vec<(u64, u64)>,
    /// How many `hv_vcpu_set_sys_reg` calls were made.
    sys_reg_writes: usize,
    /// Calls (by their framework name) that fail with HV_ERROR.
    failing: Vec<&'static str>,
}

impl FakeDebug {
    /// HV_ERROR if `call` is to fail.
    fn check(&self, call: &'static str) -> Result<(), HvfError> {
        if self.failing.contains(&call) {
            Err(HvfError {
                call,
                code: 0xfae9_4001,
            })
        } else {
            Ok(())
        }
    }
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
        let register = |reg| self.regs.get(&reg).copied().unwrap_or(0);
        let (pc, cpsr) = (register(Reg::Pc), register(Reg::Cpsr));
        self.debug.runs.push((pc, cpsr));
        if !self.started {
            self.started = true;
            let (regs, sys) = (self.regs.clone(), self.sys_regs.clone());
            self.observe(|o| {
                o.entry = regs;
                o.entry_sys = sys;
            });
        }
        if let Some((pc, load)) = self.pending.take() {
            let step = self.regs[&Reg::Pc].wrapping_sub(pc);
            let loaded = load.map(|register| self.regs.get(&Reg::X(register)).copied());
            self.observe(|o| {
                o.pc_steps.push(step);
                if let Some(value) = loaded {
                    o.loads.push(value.unwrap_or(0));
                }
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
                    self.pending = Some((self.regs[&Reg::Pc], None));
                    return Ok(HvfExit::Exception {
                        syndrome: data_abort(true, 3, register),
                        virtual_address: u64::from(port as u16),
                        physical_address: self.mapping.base + u64::from(port as u16),
                    });
                }
                Some(Step::Store {
                    address,
                    register,
                    value,
                }) => {
                    self.regs.insert(Reg::X(register), value);
                    self.pending = Some((self.regs[&Reg::Pc], None));
                    return Ok(HvfExit::Exception {
                        syndrome: data_abort(true, 3, register),
                        virtual_address: u64::from(address),
                        physical_address: self.mapping.base + u64::from(address),
                    });
                }
                Some(Step::Load {
                    address,
                    register,
                    size_log2,
                }) => {
                    self.regs.insert(Reg::X(register), 0x5555_5555_5555_5555);
                    self.pending = Some((self.regs[&Reg::Pc], Some(register)));
                    return Ok(HvfExit::Exception {
                        syndrome: data_abort(false, size_log2, register),
                        virtual_address: u64::from(address),
                        physical_address: self.mapping.base + u64::from(address),
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
                Some(Step::Exit(exit)) => return Ok(exit),
                Some(Step::Abort { syndrome, ipa }) => {
                    return Ok(HvfExit::Exception {
                        syndrome,
                        virtual_address: ipa,
                        physical_address: ipa,
                    });
                }
                None if !self.idle_when_done => {
                    return Err(HvfError {
                        call: "hv_vcpu_run",
                        code: u32::MAX,
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
        self.debug.check("hv_vcpu_get_reg")?;
        Ok(self.regs.get(&reg).copied().unwrap_or(0))
    }
    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), HvfError> {
        self.debug.check("hv_vcpu_set_reg")?;
        self.regs.insert(reg, value);
        Ok(())
    }
    fn sys_reg(&mut self, reg: SysReg) -> Result<u64, HvfError> {
        self.debug.check("hv_vcpu_get_sys_reg")?;
        Ok(self.sys_regs.get(&reg).copied().unwrap_or(0))
    }
    fn set_sys_reg(&mut self, reg: SysReg, value: u64) -> Result<(), HvfError> {
        self.debug.check("hv_vcpu_set_sys_reg")?;
        self.debug.sys_reg_writes += 1;
        self.sys_regs.insert(reg, value);
        Ok(())
    }
    fn simd_fp_reg(&mut self, number: u8) -> Result<u128, HvfError> {
        self.debug.check("hv_vcpu_get_simd_fp_reg")?;
        assert!(number < 32, "Q{number}");
        Ok(self.debug.simd.get(&number).copied().unwrap_or(0))
    }
    fn set_simd_fp_reg(&mut self, number: u8, value: u128) -> Result<(), HvfError> {
        self.debug.check("hv_vcpu_set_simd_fp_reg")?;
        assert!(number < 32, "Q{number}");
        self.debug.simd.insert(number, value);
        Ok(())
    }
    fn set_trap_debug_exceptions(&mut self, trap: bool) -> Result<(), HvfError> {
        self.debug.check("hv_vcpu_set_trap_debug_exceptions")?;
        self.debug.trap_exceptions = trap;
        Ok(())
    }
    fn set_trap_debug_reg_accesses(&mut self, trap: bool) -> Result<(), HvfError> {
        self.debug.check("hv_vcpu_set_trap_debug_reg_accesses")?;
        self.debug.trap_reg_accesses = trap;
        Ok(())
    }
}

impl Hypervisor for FakeHvf {
    const ARCH: GuestArch = GuestArch::Aarch64;
    type Cpu = HvfCpu<FakeVcpu>;
    type Kick = FakeKick;

    unsafe fn map_memory(&self, mem: &GuestMemory) -> Result<(), HypervisorError> {
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
    ) -> Result<(Self::Cpu, Self::Kick), HypervisorError> {
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
            pending: None,
            idle_when_done: true,
            debug: FakeDebug::default(),
        };
        // What the framework reports before uhyve writes anything: PARange 36 bits.
        fake.sys_regs.insert(SysReg::IdAa64Mmfr0El1, 0x1);
        let ram_base = fake.mapping.base;
        let vcpu = HvfCpu::new(fake, cpu, ram_base, registers)
            .map_err(|source| HypervisorError::Vcpu { cpu, source })?;
        Ok((vcpu, FakeKick(kicked)))
    }

    fn aarch64_vcpu(cpu: &mut Self::Cpu) -> Option<&mut dyn Aarch64Vcpu> {
        Some(cpu)
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
fn image_facts(path: &std::path::Path) -> (std::ops::Range<u64>, u64) {
    image_facts_at(path, RAM_BASE)
}

/// The kernel image's guest-physical range and entry point in RAM starting at `ram_base`.
fn image_facts_at(path: &std::path::Path, ram_base: u64) -> (std::ops::Range<u64>, u64) {
    let image = KernelImage::parse_for(
        std::fs::read(path).unwrap(),
        goblin::elf::header::EM_AARCH64,
    )
    .unwrap();
    let base = ram_base + 0x4_0000;
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
        // The VMs run inside the test process, which must stay unconfined.
        confinement: uhyve::params::Confinement::NONE,
        // The scripts expect the kernel at its lowest base.
        tuning: uhyve::params::VmTuning {
            aslr: false,
            ..Default::default()
        },
        gdb: None,
        net: None,
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
    assert_eq!(
        cpu0.pc_steps,
        vec![4; 5],
        "PC moves past every handled store"
    );

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

/// The syndrome of a trapped MRS (`read`) or MSR of system register `op0, op1, CRn, CRm, op2`
/// with transfer register `rt`.
fn system_register_trap(
    read: bool,
    (op0, op1, crn, crm, op2): (u64, u64, u64, u64, u64),
    rt: u64,
) -> u64 {
    (0x18 << 26)
        | (1 << 25)
        | (op0 << 20)
        | (op2 << 17)
        | (op1 << 14)
        | (crn << 10)
        | (rt << 5)
        | (crm << 1)
        | u64::from(read)
}

#[test]
fn performance_monitor_registers_read_as_zero_and_ignore_writes() {
    if image_path().is_none() {
        return;
    }
    // Hermit 0.11's start-up: MSR PMUSERENR_EL0, MSR PMCNTENSET_EL0, MRS PMCR_EL0. Each is
    // emulated; the guest goes on to the HVC, which stops it.
    let (message, _) = crash_of(vec![
        Step::Abort {
            syndrome: system_register_trap(false, (3, 3, 9, 14, 0), 1),
            ipa: 0,
        },
        Step::Abort {
            syndrome: system_register_trap(false, (3, 3, 9, 12, 1), 2),
            ipa: 0,
        },
        Step::Abort {
            syndrome: system_register_trap(true, (3, 3, 9, 12, 0), 5),
            ipa: 0,
        },
        Step::Abort {
            syndrome: (0x16 << 26) | (1 << 25),
            ipa: 0,
        },
    ]);
    assert!(message.contains("HVC"), "{message}");
    // Any other trapped system register still stops the guest, named by its class.
    let (message, _) = crash_of(vec![Step::Abort {
        syndrome: system_register_trap(true, (3, 0, 1, 0, 0), 5),
        ipa: 0,
    }]);
    assert!(message.contains("guest exception"), "{message}");
    assert!(message.contains("ESR 0x62"), "{message}");
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

// ---- interface v2/v3 on aarch64 ----

/// A copy of the aarch64 image `kernel` that announces uhyve interface `version`: its `PT_NOTE`
/// segment is rewritten to hold an `UHYVEIF` note (big-endian u32) and its other notes except
/// the GNU ABI tag (which the new note replaces, so the segment does not grow).
fn with_interface_note(kernel: &std::path::Path, version: u32, dir: &std::path::Path) -> PathBuf {
    let mut bytes = std::fs::read(kernel).unwrap();
    let elf = goblin::elf::Elf::parse(&bytes).unwrap();
    let (index, note) = elf
        .program_headers
        .iter()
        .enumerate()
        .find(|(_, ph)| ph.p_type == goblin::elf::program_header::PT_NOTE)
        .expect("the image has a PT_NOTE segment");
    let (start, len) = (note.p_offset as usize, note.p_filesz as usize);
    let phdr = elf.header.e_phoff as usize + index * usize::from(elf.header.e_phentsize);
    drop(elf);

    let align4 = |n: usize| n.next_multiple_of(4);
    let mut notes = Vec::new();
    notes.extend_from_slice(&8u32.to_le_bytes());
    notes.extend_from_slice(&4u32.to_le_bytes());
    notes.extend_from_slice(&0x5B00u32.to_le_bytes());
    notes.extend_from_slice(b"UHYVEIF\0");
    notes.extend_from_slice(&version.to_be_bytes());
    let old = bytes[start..start + len].to_vec();
    let mut at = 0;
    while at + 12 <= old.len() {
        let word = |i: usize| u32::from_le_bytes(old[at + i..at + i + 4].try_into().unwrap());
        let (namesz, descsz) = (word(0) as usize, word(4) as usize);
        let size = 12 + align4(namesz) + align4(descsz);
        let name = &old[at + 12..at + 12 + namesz];
        if name != b"GNU\0" {
            notes.extend_from_slice(&old[at..at + size]);
        }
        at += size;
    }
    assert!(
        notes.len() <= len,
        "the new notes fit where the old ones were"
    );
    bytes[start..start + len].fill(0);
    bytes[start..start + notes.len()].copy_from_slice(&notes);
    // p_filesz and p_memsz of the Elf64_Phdr.
    for field in [32, 40] {
        bytes[phdr + field..phdr + field + 8].copy_from_slice(&(notes.len() as u64).to_le_bytes());
    }
    let path = dir.join(format!("hello-v{version}"));
    std::fs::write(&path, bytes).unwrap();
    let image = KernelImage::parse_for(
        std::fs::read(&path).unwrap(),
        goblin::elf::header::EM_AARCH64,
    )
    .unwrap();
    assert_eq!(image.interface_version(), version);
    path
}

/// Guest RAM of v2/v3 guests starts at 4 GiB.
const HIGH_RAM_BASE: u64 = 4 << 30;

/// A v2/v3 hypercall: the argument in X`register`.
fn v2_call(address: HypercallAddressV2, register: u8, value: u64) -> Step {
    Step::Store {
        address: address as u16,
        register,
        value,
    }
}

/// The sample aarch64 image rewritten to announce interface `version`, in a temporary directory
/// (bind `_dir` to keep it alive), and where it lands in RAM at 4 GiB.
struct V2Image {
    _dir: tempfile::TempDir,
    kernel: PathBuf,
    image: std::ops::Range<u64>,
    entry: u64,
}

impl V2Image {
    /// `None` (skip) without `$UHYVE_TEST_IMAGES`.
    fn new(version: u32) -> Option<Self> {
        let original = image_path()?;
        let dir = tempfile::tempdir().unwrap();
        let kernel = with_interface_note(&original, version, dir.path());
        let (image, entry) = image_facts_at(&kernel, HIGH_RAM_BASE);
        Some(Self {
            _dir: dir,
            kernel,
            image,
            entry,
        })
    }
}

/// Where the scripted v2/v3 guest keeps things: free RAM after the kernel image (v2 buffers are
/// guest-physical, so no page tables are involved).
struct V2Scratch {
    params: u64,
    strings: u64,
    buffer: u64,
    attr: u64,
}

impl V2Scratch {
    fn after(image: &std::ops::Range<u64>) -> Self {
        let base = image.end.next_multiple_of(0x10000);
        Self {
            params: base,
            strings: base + 0x1000,
            buffer: base + 0x2000,
            attr: base + 0x4000,
        }
    }

    /// Writes the parameter block for call number `n` (each gets its own 0x80 bytes) and
    /// returns the steps for the call and for peeking the whole block afterwards.
    fn call<T: Copy>(&self, n: u64, address: HypercallAddressV2, params: T) -> [Step; 3] {
        let at = self.params + n * 0x80;
        [
            Step::Poke(at, bytes_of(&params)),
            v2_call(address, (n % 29) as u8, at),
            Step::Peek(at, std::mem::size_of::<T>()),
        ]
    }

    /// The NUL-terminated `path` at string slot `n`.
    fn string(&self, n: u64, path: &str) -> (Step, GuestPhysAddr) {
        let at = self.strings + n * 0x80;
        let mut bytes = path.as_bytes().to_vec();
        bytes.push(0);
        (Step::Poke(at, bytes), GuestPhysAddr::new(at))
    }
}

/// Reads a `T` out of the bytes a `Peek` recorded.
fn from_bytes<T: Copy + Default>(bytes: &[u8]) -> T {
    assert_eq!(bytes.len(), std::mem::size_of::<T>());
    let mut value = T::default();
    // SAFETY: `value` is a plain-old-data parameter struct (every field an integer, padding
    // spelled out as fields) of exactly `bytes.len()` bytes, so any bytes form a valid value.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (&mut value as *mut T).cast::<u8>(),
            bytes.len(),
        );
    }
    value
}

/// A v3 aarch64 guest, in the layout of interface v2/v3 (RAM at 4 GiB, the hypercall window in
/// its first 16 KiB, the console at 0x1030), uses every v2/v3 hypercall through the shared
/// dispatcher: console output, mkdir, create/write/close, stat and lstat, open and list a mapped
/// directory, fstat, read and seek, unlink, and exit with a negative code. Each store and load is
/// a data abort after which PC moves past the instruction.
#[test]
fn a_v3_aarch64_guest_uses_every_hypercall_through_the_fake() {
    use uhyve_interface::v2::*;
    use uhyve_interface::{O_CREAT, O_DIRECTORY, O_RDONLY, O_WRONLY, SEEK_SET};
    if !host_follows_symlinks_beneath() {
        eprintln!(
            "SKIPPED a_v3_aarch64_guest_uses_every_hypercall_through_the_fake: no openat2 here \
             (qemu-user), so the symlink this guest stats is refused; the test runs natively"
        );
        return;
    }
    let Some(V2Image {
        _dir,
        kernel,
        image,
        entry,
    }) = V2Image::new(3)
    else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("from-host.txt"), b"mapped for v3\n").unwrap();
    std::os::unix::fs::symlink("from-host.txt", host_dir.path().join("link")).unwrap();
    let console = work.path().join("console");
    let config = config(
        kernel,
        1,
        OutputTarget::File(console.clone()),
        vec![format!("{}:/data", host_dir.path().display())],
    );
    let s = V2Scratch::after(&image);
    let text = b"v3 console\n";
    let written = b"written by a v3 guest";

    let mut steps = vec![
        Step::Peek(HIGH_RAM_BASE + 0x4000, 104),
        Step::Peek(HIGH_RAM_BASE + 0x5000, 0x1000),
        // Only the low byte counts.
        v2_call(
            HypercallAddressV2::SerialWriteByte,
            3,
            0xAB00_0000_0000_0076,
        ),
        Step::Poke(s.buffer, text.to_vec()),
    ];
    let serial = SerialWriteBufferParamsV2 {
        len: text.len() as u64,
        buf: GuestPhysAddr::new(s.buffer),
    };
    steps.extend(s.call(0, HypercallAddressV2::SerialWriteBuffer, serial));
    let (poke, sub) = s.string(0, "/data/sub");
    steps.push(poke);
    let mkdir = MkdirParams {
        path: sub,
        len: 10,
        ..Default::default()
    };
    steps.extend(s.call(1, HypercallAddressV2::Mkdir, mkdir));
    let (poke, new_file) = s.string(1, "/data/sub/new.txt");
    steps.push(poke);
    let open = OpenParams {
        name: new_file,
        flags: O_WRONLY | O_CREAT,
        mode: 0o644,
        ret: -1,
    };
    steps.extend(s.call(2, HypercallAddressV2::FileOpen, open));
    steps.push(Step::Poke(s.buffer + 0x100, written.to_vec()));
    let write = WriteParamsV2 {
        len: written.len() as u64,
        buf: GuestPhysAddr::new(s.buffer + 0x100),
        fd: 3,
        ..Default::default()
    };
    steps.extend(s.call(3, HypercallAddressV2::FileWrite, write));
    steps.extend(s.call(
        4,
        HypercallAddressV2::FileClose,
        CloseParams { fd: 3, ret: -1 },
    ));
    let (poke, link) = s.string(2, "/data/link");
    steps.push(poke);
    let lstat = StatParams {
        name: link,
        kind: STAT_NO_FOLLOW,
        attr: GuestPhysAddr::new(s.attr),
        ..Default::default()
    };
    steps.extend(s.call(5, HypercallAddressV2::FileStat, lstat));
    steps.push(Step::Peek(s.attr, 120));
    let stat = StatParams {
        kind: STAT_FOLLOW,
        ..lstat
    };
    steps.extend(s.call(6, HypercallAddressV2::FileStat, stat));
    steps.push(Step::Peek(s.attr, 120));
    let (poke, data) = s.string(3, "/data");
    steps.push(poke);
    let open_dir = OpenParams {
        name: data,
        flags: O_RDONLY | O_DIRECTORY,
        mode: 0,
        ret: -1,
    };
    steps.extend(s.call(7, HypercallAddressV2::FileOpen, open_dir));
    let list = GetdentParams {
        fd: 4,
        buf: GuestPhysAddr::new(s.buffer + 0x1000),
        len: 0x1000,
        ..Default::default()
    };
    steps.extend(s.call(8, HypercallAddressV2::Getdents, list));
    steps.push(Step::Peek(s.buffer + 0x1000, 0x1000));
    steps.extend(s.call(9, HypercallAddressV2::Getdents, list));
    let (poke, from_host) = s.string(4, "/data/from-host.txt");
    steps.push(poke);
    let open_read = OpenParams {
        name: from_host,
        flags: O_RDONLY,
        mode: 0,
        ret: -1,
    };
    steps.extend(s.call(10, HypercallAddressV2::FileOpen, open_read));
    let fstat = FstatParams {
        fd: 5,
        attr: GuestPhysAddr::new(s.attr + 0x100),
        ..Default::default()
    };
    steps.extend(s.call(11, HypercallAddressV2::FileFstat, fstat));
    steps.push(Step::Peek(s.attr + 0x100, 120));
    let seek = LseekParamsV2 {
        offset: 7,
        whence: SEEK_SET as u32,
        fd: 5,
    };
    steps.extend(s.call(12, HypercallAddressV2::FileLseek, seek));
    let read = ReadParamsV2 {
        len: 64,
        buf: GuestPhysAddr::new(s.buffer + 0x200),
        fd: 5,
        ..Default::default()
    };
    steps.extend(s.call(13, HypercallAddressV2::FileRead, read));
    steps.push(Step::Peek(s.buffer + 0x200, 7));
    let unlink = UnlinkParams {
        name: new_file,
        ret: -1,
    };
    steps.extend(s.call(14, HypercallAddressV2::FileUnlink, unlink));
    // A v1 hypercall on a v3 guest is no hypercall: nothing happens.
    steps.push(Step::Poke(
        s.params + 0x800,
        bytes_of(&ExitParams { arg: 9 }),
    ));
    steps.push(Step::Hypercall {
        port: HypercallAddress::Exit,
        register: 4,
        value: s.params + 0x800,
    });
    // The exit code is the register itself, an i32 zero-extended.
    steps.push(v2_call(HypercallAddressV2::Exit, 8, 0xFFFF_FFFE));

    let (result, observed) = run(&config, vec![steps]);
    assert_eq!(result.unwrap(), GuestExit(-2));
    let cpu0 = &observed[&0];
    assert_eq!(cpu0.entry[&Reg::Pc], entry);
    assert_eq!(cpu0.entry[&Reg::X(0)], HIGH_RAM_BASE + 0x4000);
    assert_eq!(cpu0.entry_sys[&SysReg::Ttbr0El1], HIGH_RAM_BASE + 0x1_0000);
    // Every handled store and load moved PC past its instruction (the exit ends the run).
    assert_eq!(cpu0.pc_steps, vec![4; 17], "PC steps");

    let mut peeks = cpu0.peeks.iter();
    let mut next = || peeks.next().expect("one more peek").as_slice();
    let boot_info = next();
    let field = |at: usize| u64::from_le_bytes(boot_info[at..at + 8].try_into().unwrap());
    assert_eq!(field(0), HIGH_RAM_BASE, "RAM start");
    assert_eq!(field(8), HIGH_RAM_BASE + RAM_SIZE, "RAM end");
    assert_eq!(
        field(16),
        0x1030,
        "serial port: the v2 SerialWriteBuffer address"
    );
    assert_eq!(field(24), HIGH_RAM_BASE + 0x5000, "FDT address");
    let fdt = next();
    assert_eq!(fdt[..4], 0xd00d_feed_u32.to_be_bytes(), "FDT magic");
    let contains = |needle: &[u8]| fdt.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(b"env=GREETING=hello -- first second\0"),
        "bootargs"
    );
    assert!(
        !contains(b"-mount"),
        "a v2+ kernel learns its mounts from /uhyve,mounts"
    );
    assert!(
        contains(b"uhyve,mounts\0") && contains(b"/data\0"),
        "mount list"
    );

    let _serial: SerialWriteBufferParamsV2 = from_bytes(next());
    let mkdir: MkdirParams = from_bytes(next());
    assert_eq!(
        (mkdir.ret.tag, mkdir.ret.errno),
        (STATUS_SUCCESS, 0),
        "mkdir"
    );
    let open: OpenParams = from_bytes(next());
    assert_eq!({ open.ret }, 3, "open for writing");
    let write: WriteParamsV2 = from_bytes(next());
    assert_eq!(write.ret, written.len() as i64, "write");
    let close: CloseParams = from_bytes(next());
    assert_eq!({ close.ret }, 0, "close");
    let lstat: StatParams = from_bytes(next());
    assert_eq!(lstat.ret.tag, STATUS_SUCCESS, "lstat");
    let link_attr: FileAttr = from_bytes(next());
    assert_eq!(
        link_attr.st_mode & 0o170000,
        0o120000,
        "lstat sees the link"
    );
    let stat: StatParams = from_bytes(next());
    assert_eq!(stat.ret.tag, STATUS_SUCCESS, "stat");
    let file_attr: FileAttr = from_bytes(next());
    assert_eq!(
        file_attr.st_mode & 0o170000,
        0o100000,
        "stat follows the link"
    );
    assert_eq!(file_attr.st_size, 14);
    let open_dir: OpenParams = from_bytes(next());
    assert_eq!({ open_dir.ret }, 4, "open the directory");
    let list: GetdentParams = from_bytes(next());
    assert_eq!(list.ret.tag, GETDENT_SUCCESS, "getdents");
    let records = &next()[..list.ret.value as usize];
    let mut names = dirent_names(records);
    names.sort();
    assert_eq!(names, [".", "..", "from-host.txt", "link", "sub"]);
    let end: GetdentParams = from_bytes(next());
    assert_eq!(end.ret.tag, GETDENT_END_OF_DIRECTORY, "getdents at the end");
    let open_read: OpenParams = from_bytes(next());
    assert_eq!({ open_read.ret }, 5, "open for reading");
    let fstat: FstatParams = from_bytes(next());
    assert_eq!(fstat.ret.tag, STATUS_SUCCESS, "fstat");
    let fstat_attr: FileAttr = from_bytes(next());
    assert_eq!(fstat_attr, file_attr, "fstat and stat agree");
    let seek: LseekParamsV2 = from_bytes(next());
    assert_eq!(seek.offset, 7, "lseek");
    let read: ReadParamsV2 = from_bytes(next());
    assert_eq!(read.ret, 7, "read the rest");
    assert_eq!(next(), b"for v3\n");
    let unlink: UnlinkParams = from_bytes(next());
    assert_eq!({ unlink.ret }, 0, "unlink");
    assert!(peeks.next().is_none());

    assert!(host_dir.path().join("sub").is_dir());
    assert!(!host_dir.path().join("sub/new.txt").exists());
    assert_eq!(std::fs::read(&console).unwrap(), b"vv3 console\n");
}

/// The names in a buffer of `dirent64` records.
fn dirent_names(mut records: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    while !records.is_empty() {
        let reclen = usize::from(u16::from_le_bytes([records[16], records[17]]));
        let name = &records[19..reclen];
        let nul = name.iter().position(|&b| b == 0).unwrap();
        names.push(String::from_utf8(name[..nul].to_vec()).unwrap());
        records = &records[reclen..];
    }
    names
}

/// A v2 aarch64 guest: the v3-only calls are no hypercalls for it (their parameter blocks stay
/// untouched), file calls with buffers outside RAM fail with −EFAULT in `ret`, bad descriptors
/// with −EBADF, and the guest goes on.
#[test]
fn a_v2_aarch64_guest_gets_errnos_and_no_v3_calls() {
    use uhyve_interface::v2::*;
    use uhyve_interface::{EBADF, EFAULT};
    let Some(V2Image {
        _dir,
        kernel,
        image,
        ..
    }) = V2Image::new(2)
    else {
        return;
    };
    let host_dir = tempfile::tempdir().unwrap();
    let config = config(
        kernel,
        1,
        OutputTarget::None,
        vec![format!("{}:/data", host_dir.path().display())],
    );
    let s = V2Scratch::after(&image);
    let ram_end = HIGH_RAM_BASE + RAM_SIZE;
    let (poke, sub) = s.string(0, "/data/sub");
    let mut steps = vec![poke];
    let mkdir = MkdirParams {
        path: sub,
        len: 10,
        ret: StatusResult {
            tag: STATUS_NONE,
            errno: 0,
        },
    };
    steps.extend(s.call(0, HypercallAddressV2::Mkdir, mkdir));
    let fstat = FstatParams {
        fd: 1,
        attr: GuestPhysAddr::new(s.attr),
        ..Default::default()
    };
    steps.extend(s.call(1, HypercallAddressV2::FileFstat, fstat));
    // Console writes from buffers outside RAM, straddling its end, at the top of the address
    // space and below RAM; a read from a bad descriptor; a seek on the console.
    for (n, (buf, len)) in [
        (ram_end, 8),
        (ram_end - 4, 8),
        (u64::MAX - 3, 8),
        (HIGH_RAM_BASE - 8, 8),
    ]
    .into_iter()
    .enumerate()
    {
        let write = WriteParamsV2 {
            len,
            buf: GuestPhysAddr::new(buf),
            fd: 1,
            ..Default::default()
        };
        steps.extend(s.call(2 + n as u64, HypercallAddressV2::FileWrite, write));
    }
    let read = ReadParamsV2 {
        len: 8,
        buf: GuestPhysAddr::new(s.buffer),
        fd: 77,
        ..Default::default()
    };
    steps.extend(s.call(6, HypercallAddressV2::FileRead, read));
    let seek = LseekParamsV2 {
        offset: 0,
        whence: 9,
        fd: 1,
    };
    steps.extend(s.call(7, HypercallAddressV2::FileLseek, seek));
    steps.push(v2_call(HypercallAddressV2::Exit, 0, 5));

    let (result, observed) = run(&config, vec![steps]);
    assert_eq!(result.unwrap(), GuestExit(5));
    let cpu0 = &observed[&0];
    let peeks = &cpu0.peeks;
    let after_mkdir: MkdirParams = from_bytes(&peeks[0]);
    assert_eq!(after_mkdir.ret.tag, STATUS_NONE, "Mkdir is no v2 hypercall");
    assert!(!host_dir.path().join("sub").exists());
    let after_fstat: FstatParams = from_bytes(&peeks[1]);
    assert_eq!(
        after_fstat.ret.tag, STATUS_NONE,
        "FileFstat is no v2 hypercall"
    );
    for peek in &peeks[2..6] {
        let write: WriteParamsV2 = from_bytes(peek);
        assert_eq!(write.ret, -i64::from(EFAULT), "{write:?}");
    }
    let read: ReadParamsV2 = from_bytes(&peeks[6]);
    assert_eq!(read.ret, -i64::from(EBADF));
    let seek: LseekParamsV2 = from_bytes(&peeks[7]);
    assert_eq!(seek.offset, -i64::from(EBADF), "the console cannot seek");
    assert_eq!(cpu0.pc_steps, vec![4; 8]);
}

/// A v2 parameter block outside RAM, or a console buffer outside it, stops the VM with the
/// hypercall named; a load or store in the hypercall window that is no hypercall (a null-pointer
/// access, as the window is what virtual address 0 maps to) is a crash naming it.
#[test]
fn bad_v2_accesses_stop_the_aarch64_vm_with_a_clear_message() {
    use uhyve_interface::v2::*;
    let Some(V2Image {
        _dir,
        kernel,
        image,
        entry,
    }) = V2Image::new(3)
    else {
        return;
    };
    let crash = |steps: Vec<Step>| {
        let config = config(kernel.clone(), 1, OutputTarget::None, vec![]);
        match run(&config, vec![steps]).0 {
            Err(error) => error.to_string(),
            Ok(exit) => panic!("the guest should have been stopped, but exited with {exit:?}"),
        }
    };
    let ram_end = HIGH_RAM_BASE + RAM_SIZE;
    assert_eq!(
        crash(vec![v2_call(HypercallAddressV2::FileRead, 8, ram_end - 8)]),
        format!(
            "vCPU 0: guest hypercall failed: FileRead: parameter block at {:#x} lies outside \
             guest RAM",
            ram_end - 8
        )
    );
    // Below RAM (the v1 base, where a v1 guest's blocks would be).
    assert!(
        crash(vec![v2_call(HypercallAddressV2::Getdents, 8, RAM_BASE)])
            .contains("Getdents: parameter block at 0x10000000 lies outside guest RAM")
    );
    let s = V2Scratch::after(&image);
    let serial = SerialWriteBufferParamsV2 {
        len: 16,
        buf: GuestPhysAddr::new(ram_end - 8),
    };
    let mut steps = vec![];
    steps.extend(s.call(0, HypercallAddressV2::SerialWriteBuffer, serial));
    assert!(crash(steps).contains(&format!(
        "SerialWriteBuffer: buffer at {:#x} (length 0x10) lies outside guest RAM",
        ram_end - 8
    )),);
    let message = crash(vec![Step::Load {
        address: 0x1018,
        register: 2,
        size_log2: 2,
    }]);
    assert!(
        message.contains(
            "read of 4 bytes at offset 0x1018 of the hypercall window (guest-physical \
             0x100001018), which is no hypercall (a null-pointer access?)"
        ),
        "{message}"
    );
    assert!(
        message.contains(&format!("{entry:#x}")),
        "names the PC: {message}"
    );
    let message = crash(vec![Step::Store {
        address: 0x8,
        register: 2,
        value: 0,
    }]);
    assert!(
        message.contains("write of 8 bytes at offset 0x8 of the hypercall window"),
        "{message}"
    );
}

/// SerialReadByte (a load from 0x1040) and SerialReadBuffer take uhyve's standard input, so the
/// test makes this test process's standard input a pipe holding `xy-rest of it` (no other test
/// here reads it). A child process would be cleaner, but under qemu-user (.ci/aarch64-tests) the
/// test binary cannot simply execute itself.
#[test]
fn a_v3_aarch64_guest_reads_the_serial_input() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    if image_path().is_none() {
        return;
    }
    let (reader, mut writer) = std::io::pipe().unwrap();
    writer.write_all(b"xy-rest of it").unwrap();
    drop(writer);
    // SAFETY: dup2 only replaces descriptor 0 with a duplicate of the pipe's read end, which is
    // open; nothing in this process holds a reference to the old descriptor 0's state.
    assert_eq!(unsafe { libc::dup2(reader.as_raw_fd(), 0) }, 0);
    drop(reader);
    serial_input()
}

/// The scripted guest of [`a_v3_aarch64_guest_reads_the_serial_input`].
fn serial_input() {
    use uhyve_interface::v2::*;
    let V2Image {
        _dir,
        kernel,
        image,
        ..
    } = V2Image::new(3).expect("checked by the caller");
    let config = config(kernel, 1, OutputTarget::None, vec![]);
    let s = V2Scratch::after(&image);
    let byte_load = |register: u8, size_log2: u64| Step::Load {
        address: HypercallAddressV2::SerialReadByte as u16,
        register,
        size_log2,
    };
    let read_buffer = SerialReadBufferParams {
        maxlen: 64,
        len: 99,
        buf: GuestPhysAddr::new(s.buffer),
    };
    let mut steps = vec![byte_load(3, 0), byte_load(4, 2)];
    steps.extend(s.call(0, HypercallAddressV2::SerialReadBuffer, read_buffer));
    steps.push(Step::Peek(s.buffer, 11));
    // The end of the input: all ones from the byte, nothing from the buffer.
    steps.push(byte_load(5, 0));
    steps.extend(s.call(1, HypercallAddressV2::SerialReadBuffer, read_buffer));
    steps.push(v2_call(HypercallAddressV2::Exit, 8, 0));
    let (result, observed) = run(&config, vec![steps]);
    assert_eq!(result.unwrap(), GuestExit(0));
    let cpu0 = &observed[&0];
    assert_eq!(cpu0.loads, vec![u64::from(b'x'), u64::from(b'y'), 0xFF]);
    let first: SerialReadBufferParams = from_bytes(&cpu0.peeks[0]);
    assert_eq!(first.len, 11, "the rest of the input");
    assert_eq!(cpu0.peeks[1], b"-rest of it");
    let at_end: SerialReadBufferParams = from_bytes(&cpu0.peeks[2]);
    assert_eq!(at_end.len, 0, "the end of the input");
    assert_eq!(cpu0.pc_steps, vec![4; 5]);
}

// ---- the HVF vCPU logic on its own: one vCPU replaying raw exits ----

mod vcpu_logic {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use uhyve::arch::aarch64::initial_registers;
    use uhyve::exits::{EmulationFallback, ExitServices, LoopVcpu, run_vcpu};
    use uhyve::hvf::return_name;
    use uhyve::hypercall::{GuestCommandLine, Hypercalls};
    use uhyve::hypervisor::{VcpuExit, VirtualCpu};
    use uhyve::isolation::FileMap;
    use uhyve::output::SerialOutput;

    pub(super) const ENTRY: u64 = RAM_BASE + 0x4_0000;

    pub(super) fn store_to(port: u16, register: u8) -> HvfExit {
        HvfExit::Exception {
            syndrome: data_abort(true, 3, register),
            virtual_address: u64::from(port),
            physical_address: RAM_BASE + u64::from(port),
        }
    }

    /// One vCPU on its own, replaying `script`; its registers are the fake's maps.
    pub(super) fn cpu(script: Vec<HvfExit>) -> HvfCpu<FakeVcpu> {
        let mut fake = FakeVcpu {
            id: 1,
            steps: script.into_iter().map(Step::Exit).collect(),
            mapping: Mapping {
                host: 0,
                base: RAM_BASE,
                size: 0,
            },
            regs: HashMap::new(),
            sys_regs: HashMap::new(),
            kicked: Arc::new(AtomicBool::new(false)),
            started: false,
            observed: Arc::new(Mutex::new(HashMap::new())),
            pending: None,
            idle_when_done: false,
            debug: FakeDebug::default(),
        };
        // CPACR_EL1 as the framework reports it before uhyve touches it.
        fake.sys_regs.insert(SysReg::CpacrEl1, 0x3 << 16);
        // PARange 0b0001 (36 bits), as an M1 reports it to its guests.
        fake.sys_regs.insert(SysReg::IdAa64Mmfr0El1, 0x1101_2121);
        let registers = initial_registers(
            ENTRY,
            GuestPhysAddr::new(RAM_BASE + 0x1_0000),
            GuestPhysAddr::new(RAM_BASE + 0x4000),
            ENTRY - 0x8000,
            1,
        );
        HvfCpu::new(fake, 1, RAM_BASE, &registers).unwrap()
    }

    #[test]
    fn entry_state_follows_the_abi() {
        let mut vcpu = cpu(vec![]);
        let fake = vcpu.ops();
        assert_eq!(fake.regs[&Reg::Pc], ENTRY);
        assert_eq!(fake.regs[&Reg::X(0)], RAM_BASE + 0x4000);
        assert_eq!(fake.regs[&Reg::X(1)], 1);
        assert_eq!(fake.regs[&Reg::Cpsr], 0x3c5);
        assert_eq!(fake.sys_regs[&SysReg::SpEl1], ENTRY - 0x8000);
        assert_eq!(fake.sys_regs[&SysReg::MpidrEl1] & 0xff, 1);
        assert_eq!(fake.sys_regs[&SysReg::Ttbr0El1], RAM_BASE + 0x1_0000);
        // TCR_EL1.IPS from the vCPU's PARange.
        assert_eq!(fake.sys_regs[&SysReg::TcrEl1], 0x1_3510_3510);
        // FP/SIMD enabled on top of what the framework reported.
        assert_eq!(fake.sys_regs[&SysReg::CpacrEl1], (0x3 << 16) | (0x3 << 20));
        assert_eq!(
            vcpu.page_table_root().unwrap(),
            GuestPhysAddr::new(RAM_BASE + 0x1_0000)
        );
    }

    #[test]
    fn stores_to_the_hypercall_page_are_hypercalls_and_pc_moves_past_them_on_resume() {
        let mut vcpu = cpu(vec![store_to(0x800, 8), store_to(0x540, 2)]);
        vcpu.ops().set_reg(Reg::X(8), u64::from(b'h')).unwrap();
        vcpu.ops().set_reg(Reg::X(2), RAM_BASE + 0x9000).unwrap();
        assert_eq!(
            vcpu.run().unwrap(),
            VcpuExit::Hypercall {
                address: HypercallAddress::Uart.port(),
                argument: u64::from(b'h')
            }
        );
        // Until the guest resumes, PC names the store (for crash reports).
        assert_eq!(vcpu.instruction_pointer().unwrap(), ENTRY);
        assert_eq!(
            vcpu.run().unwrap(),
            VcpuExit::Hypercall {
                address: HypercallAddress::Exit.port(),
                argument: RAM_BASE + 0x9000
            }
        );
        assert_eq!(vcpu.instruction_pointer().unwrap(), ENTRY + 4);
    }

    #[test]
    fn hypercall_reads_fill_the_target_register_and_mmio_accesses_report_their_value() {
        let device = 0x900_0000;
        let read = HvfExit::Exception {
            syndrome: data_abort(false, 2, 3),
            virtual_address: 0x1040,
            physical_address: RAM_BASE + 0x1040,
        };
        let store = HvfExit::Exception {
            syndrome: data_abort(true, 1, 31),
            virtual_address: device,
            physical_address: device,
        };
        let load = HvfExit::Exception {
            syndrome: data_abort(false, 3, 4),
            virtual_address: device,
            physical_address: device,
        };
        let mut vcpu = cpu(vec![read, store, load]);
        assert_eq!(
            vcpu.run().unwrap(),
            VcpuExit::HypercallRead {
                address: 0x1040,
                size: 4
            }
        );
        vcpu.complete_hypercall_read(0xdead_beef_1234_5678).unwrap();
        assert_eq!(vcpu.ops().regs[&Reg::X(3)], 0x1234_5678);
        assert_eq!(vcpu.instruction_pointer().unwrap(), ENTRY);
        // A store of XZR writes zero.
        assert_eq!(
            vcpu.run().unwrap(),
            VcpuExit::MmioWrite {
                address: device,
                data: 0,
                size: 2
            }
        );
        assert_eq!(
            vcpu.instruction_pointer().unwrap(),
            ENTRY + 4,
            "past the load"
        );
        // MMIO accesses outside RAM stop the VM: PC stays at them, for the crash report.
        assert_eq!(
            vcpu.run().unwrap(),
            VcpuExit::MmioRead {
                address: device,
                size: 8
            }
        );
        assert_eq!(vcpu.instruction_pointer().unwrap(), ENTRY + 4);
        assert!(vcpu.complete_hypercall_read(1).is_err(), "nothing pending");
    }

    #[test]
    fn framework_return_codes_are_named() {
        assert_eq!(return_name(0xfae9_4007), "HV_DENIED (0xfae94007)");
        assert_eq!(return_name(0xfae9_4008), "HV_EXISTS (0xfae94008)");
        assert_eq!(return_name(0x1234), "0x1234");
        let error = HvfError {
            call: "hv_vcpu_run",
            code: 0xfae9_4004,
        };
        assert_eq!(
            error.to_string(),
            "hv_vcpu_run returned HV_ILLEGAL_GUEST_STATE (0xfae94004)"
        );
    }

    #[test]
    fn a_trapped_wfi_idles_until_woken_and_wfe_does_not() {
        let wfi = HvfExit::Exception {
            syndrome: 0x01 << 26,
            virtual_address: 0,
            physical_address: 0,
        };
        let wfe = HvfExit::Exception {
            syndrome: (0x01 << 26) | 1,
            virtual_address: 0,
            physical_address: 0,
        };
        let mut vcpu = cpu(vec![wfi, wfe]);
        // A pending unpark (what a kick does) ends the idle at once.
        std::thread::current().unpark();
        assert_eq!(vcpu.run().unwrap(), VcpuExit::Halt);
        assert_eq!(vcpu.run().unwrap(), VcpuExit::Halt);
        assert_eq!(
            vcpu.instruction_pointer().unwrap(),
            ENTRY + 4,
            "past the WFI"
        );
    }

    #[test]
    fn other_exits_are_named() {
        let exception = |syndrome| HvfExit::Exception {
            syndrome,
            virtual_address: 0,
            physical_address: 0,
        };
        let no_syndrome = exception((0x24 << 26) | (1 << 25));
        let hvc = exception(0x16 << 26);
        let wfi = exception(0x01 << 26);
        let brk = exception(0x3c << 26);
        let mut vcpu = cpu(vec![
            no_syndrome,
            hvc,
            wfi,
            brk,
            HvfExit::Canceled,
            HvfExit::Unknown(7),
        ]);
        assert!(matches!(vcpu.run().unwrap(), VcpuExit::Unhandled { .. }));
        let VcpuExit::Unhandled { description } = vcpu.run().unwrap() else {
            panic!("HVC must be reported");
        };
        assert!(description.contains("HVC"), "{description}");
        assert_eq!(vcpu.run().unwrap(), VcpuExit::Halt);
        assert_eq!(vcpu.instruction_pointer().unwrap(), ENTRY);
        assert_eq!(
            vcpu.run().unwrap(),
            VcpuExit::Debug(uhyve::hypervisor::DebugExit::SoftwareBreakpoint)
        );
        assert_eq!(
            vcpu.instruction_pointer().unwrap(),
            ENTRY + 4,
            "past the WFI"
        );
        assert_eq!(vcpu.run().unwrap(), VcpuExit::Interrupted);
        assert!(matches!(vcpu.run().unwrap(), VcpuExit::Unhandled { .. }));
        assert!(vcpu.run().is_err(), "a failing hv_vcpu_run is an error");
        assert!(vcpu.complete_port_in(0).is_err());
        assert!(vcpu.register_dump().unwrap().contains("pc "));
    }

    #[test]
    fn performance_monitor_accesses_are_emulated_on_the_vcpu_alone() {
        let trap = |read, register, rt| HvfExit::Exception {
            syndrome: system_register_trap(read, register, rt),
            virtual_address: 0,
            physical_address: 0,
        };
        let mut vcpu = cpu(vec![
            trap(false, (3, 3, 9, 14, 0), 1), // MSR PMUSERENR_EL0, X1
            trap(true, (3, 3, 9, 12, 0), 5),  // MRS X5, PMCR_EL0
            trap(true, (3, 0, 1, 0, 0), 6),   // MRS X6, SCTLR_EL1: not emulated
        ]);
        vcpu.ops().set_reg(Reg::X(5), 0x55).unwrap();
        assert!(matches!(vcpu.run().unwrap(), VcpuExit::Unhandled { .. }));
        assert_eq!(vcpu.ops().regs[&Reg::X(5)], 0, "reads as zero");
        assert_eq!(vcpu.instruction_pointer().unwrap(), ENTRY + 8);
    }

    #[test]
    fn a_scripted_guest_runs_through_the_shared_dispatcher() {
        // Boot, print "hi\n" with SerialWriteByte, then Exit(3): the same exit loop as on KVM.
        let mem = GuestMemory::new(GuestPhysAddr::new(RAM_BASE), 16 << 20).unwrap();
        let exit_params = GuestPhysAddr::new(RAM_BASE + 0x9000);
        mem.write_obj(exit_params, &uhyve_interface::ExitParams { arg: 3 })
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console");
        let output = Arc::new(SerialOutput::new(OutputTarget::File(log.clone())).unwrap());
        let hypercalls = Hypercalls::new(
            GuestArch::Aarch64,
            Arc::clone(&output),
            FileMap::new(&[], Some(dir.path().to_owned())).unwrap(),
            GuestCommandLine::default(),
        );
        let services = ExitServices {
            mem: &mem,
            hypercalls: &hypercalls,
            fallback: EmulationFallback::new(false),
            stop: AtomicBool::new(false),
            debugger: None,
            devices: None,
            device_interrupt: &NoInterrupt,
            pci_ecam: None,
        };
        let script = vec![
            store_to(0x800, 8),
            store_to(0x800, 9),
            store_to(0x800, 10),
            store_to(0x540, 0),
        ];
        let mut vcpu = cpu(script);
        for (register, byte) in [(8, b'h'), (9, b'i'), (10, b'\n')] {
            vcpu.ops()
                .set_reg(Reg::X(register), u64::from(byte))
                .unwrap();
        }
        vcpu.ops().set_reg(Reg::X(0), exit_params.as_u64()).unwrap();
        let looped = LoopVcpu {
            vcpu: &mut vcpu,
            x86: |_| None,
            aarch64: |_| None,
        };
        let end = run_vcpu(looped, &services, None).unwrap();
        assert_eq!(end, Some(GuestExit(3)));
        // Past the three SerialWriteByte stores; the Exit store is never resumed.
        assert_eq!(vcpu.instruction_pointer().unwrap(), ENTRY + 12);
        output.flush();
        assert_eq!(std::fs::read_to_string(log).unwrap(), "hi\n");
    }
}

// ---- guest debugging of the HVF vCPU: debug registers, traps, steps and debug exits ----

mod guest_debugging {
    use super::vcpu_logic::{ENTRY, cpu, store_to};
    use super::*;
    use uhyve::arch::aarch64::debug::{
        MDSCR_KDE, MDSCR_MDE, MDSCR_SS, PSTATE_SS, WatchAccess, breakpoint_registers,
        watchpoint_registers,
    };
    use uhyve::hypervisor::aarch64::debug::Aarch64Registers;
    use uhyve::hypervisor::{
        DebugExit, GuestDebug, HardwareBreakpoint, HardwareBreakpointKind, VcpuExit, VirtualCpu,
    };

    /// An exception exit with syndrome `syndrome` and FAR `far`.
    fn exception(syndrome: u64, far: u64) -> HvfExit {
        HvfExit::Exception {
            syndrome,
            virtual_address: far,
            physical_address: 0,
        }
    }

    /// ESR_EL2 of exception class `ec` (32-bit instruction).
    fn esr(ec: u64) -> u64 {
        (ec << 26) | (1 << 25)
    }

    fn slot(address: u64, kind: HardwareBreakpointKind, len: u8) -> Option<HardwareBreakpoint> {
        Some(HardwareBreakpoint { address, kind, len })
    }

    /// Debugging on with software breakpoints and these hardware slots.
    fn debugging(hardware: [Option<HardwareBreakpoint>; 4]) -> GuestDebug {
        GuestDebug {
            enabled: true,
            single_step: false,
            software_breakpoints: true,
            hardware,
        }
    }

    fn stepping() -> GuestDebug {
        GuestDebug {
            single_step: true,
            ..debugging([None; 4])
        }
    }

    fn sys(vcpu: &mut HvfCpu<FakeVcpu>, reg: SysReg) -> u64 {
        vcpu.ops().sys_regs.get(&reg).copied().unwrap_or(0)
    }

    fn slot_values(vcpu: &mut HvfCpu<FakeVcpu>, n: u8) -> [u64; 4] {
        [
            sys(vcpu, SysReg::DbgBvr(n)),
            sys(vcpu, SysReg::DbgBcr(n)),
            sys(vcpu, SysReg::DbgWvr(n)),
            sys(vcpu, SysReg::DbgWcr(n)),
        ]
    }

    #[test]
    fn debugging_arms_the_slots_and_traps_and_off_restores_the_guests_registers() {
        let mut vcpu = cpu(vec![]);
        assert!(
            !vcpu.ops().debug.trap_exceptions,
            "no traps without a debugger"
        );
        // The guest's own: MDSCR_EL1 with TDCC and MDE, a breakpoint of its own in slot 2.
        let guest_mdscr = (1 << 12) | MDSCR_MDE;
        let fake = vcpu.ops();
        fake.sys_regs.insert(SysReg::MdscrEl1, guest_mdscr);
        fake.sys_regs.insert(SysReg::DbgBvr(2), 0x4000_8000);
        fake.sys_regs.insert(SysReg::DbgBcr(2), 0x1e7);
        let debug = debugging([
            slot(0x4000_1000, HardwareBreakpointKind::Execute, 1),
            slot(0x4000_2004, HardwareBreakpointKind::Write, 4),
            None,
            // Crosses a doubleword: no register pair covers it.
            slot(0x4000_2006, HardwareBreakpointKind::ReadWrite, 4),
        ]);
        vcpu.set_guest_debug(&debug).unwrap();
        assert!(vcpu.ops().debug.trap_exceptions);
        assert!(vcpu.ops().debug.trap_reg_accesses);
        let (bvr, bcr) = breakpoint_registers(0x4000_1000);
        assert_eq!(slot_values(&mut vcpu, 0), [bvr, bcr, 0, 0]);
        let (wvr, wcr) = watchpoint_registers(0x4000_2004, 4, WatchAccess::Store).unwrap();
        assert_eq!(slot_values(&mut vcpu, 1), [0, 0, wvr, wcr]);
        assert_eq!(
            slot_values(&mut vcpu, 2),
            [0; 4],
            "the guest's slot is disabled"
        );
        assert_eq!(
            slot_values(&mut vcpu, 3),
            [0; 4],
            "a crossing watchpoint is not armed"
        );
        assert_eq!(
            sys(&mut vcpu, SysReg::MdscrEl1),
            (1 << 12) | MDSCR_KDE | MDSCR_MDE
        );
        // A debugger sets the same debugging before every run: nothing is written again.
        let writes = vcpu.ops().debug.sys_reg_writes;
        vcpu.set_guest_debug(&debug).unwrap();
        assert_eq!(vcpu.ops().debug.sys_reg_writes, writes);
        // Off: the guest's own registers and MDSCR_EL1, no traps.
        vcpu.set_guest_debug(&GuestDebug::default()).unwrap();
        assert!(!vcpu.ops().debug.trap_exceptions);
        assert!(!vcpu.ops().debug.trap_reg_accesses);
        assert_eq!(sys(&mut vcpu, SysReg::MdscrEl1), guest_mdscr);
        assert_eq!(slot_values(&mut vcpu, 0), [0; 4]);
        assert_eq!(slot_values(&mut vcpu, 1), [0; 4]);
        assert_eq!(slot_values(&mut vcpu, 2), [0x4000_8000, 0x1e7, 0, 0]);
        // Off again (a detached debugger says so before every run): nothing to do.
        let writes = vcpu.ops().debug.sys_reg_writes;
        vcpu.set_guest_debug(&GuestDebug::default()).unwrap();
        assert_eq!(vcpu.ops().debug.sys_reg_writes, writes);
    }

    #[test]
    fn single_step_sets_mdscr_ss_and_pstate_ss_for_one_run() {
        let mut vcpu = cpu(vec![exception(esr(0x32), 0), HvfExit::Canceled]);
        vcpu.set_guest_debug(&stepping()).unwrap();
        assert_eq!(
            sys(&mut vcpu, SysReg::MdscrEl1) & (MDSCR_SS | MDSCR_KDE | MDSCR_MDE),
            MDSCR_SS | MDSCR_KDE | MDSCR_MDE
        );
        assert_eq!(vcpu.run().unwrap(), VcpuExit::Debug(DebugExit::SingleStep));
        let (_, cpsr) = vcpu.ops().debug.runs[0];
        assert_ne!(cpsr & PSTATE_SS, 0, "the run steps one instruction");
        // The fake leaves PSTATE.SS as it was (hardware clears it): the vCPU clears it anyway.
        assert_eq!(vcpu.ops().regs[&Reg::Cpsr] & PSTATE_SS, 0);
        assert_eq!(vcpu.ops().regs[&Reg::Cpsr], 0x3c5, "nothing else changed");
        // Continue: no step bits.
        vcpu.set_guest_debug(&debugging([None; 4])).unwrap();
        assert_eq!(sys(&mut vcpu, SysReg::MdscrEl1) & MDSCR_SS, 0);
        assert_eq!(vcpu.run().unwrap(), VcpuExit::Interrupted);
        let (_, cpsr) = vcpu.ops().debug.runs[1];
        assert_eq!(cpsr & PSTATE_SS, 0);
    }

    #[test]
    fn a_step_over_a_hypercall_stops_right_after_it() {
        let mut vcpu = cpu(vec![store_to(0x800, 8), exception(esr(0x32), 0)]);
        vcpu.set_guest_debug(&stepping()).unwrap();
        assert!(matches!(vcpu.run().unwrap(), VcpuExit::Hypercall { .. }));
        assert_eq!(vcpu.ops().regs[&Reg::Cpsr] & PSTATE_SS, 0);
        // The host completed the store: the step is done, so the guest takes the step exception
        // before its next instruction (PSTATE.SS clear with MDSCR_EL1.SS set).
        assert_eq!(vcpu.run().unwrap(), VcpuExit::Debug(DebugExit::SingleStep));
        let runs = &vcpu.ops().debug.runs;
        assert_ne!(runs[0].1 & PSTATE_SS, 0);
        assert_eq!(runs[1], (ENTRY + 4, 0x3c5));
    }

    #[test]
    fn each_debug_exception_is_its_debug_exit() {
        let debug = debugging([
            slot(0x4000_1000, HardwareBreakpointKind::Execute, 1),
            slot(0x4000_6008, HardwareBreakpointKind::Write, 8),
            slot(0x4000_3000, HardwareBreakpointKind::Execute, 1),
            None,
        ]);
        let mut vcpu = cpu(vec![
            exception(esr(0x3c) | 7, 0),
            exception(esr(0x32), 0),
            exception(esr(0x30), 0),
            exception(esr(0x30), 0),
            exception(esr(0x34), 0x4000_600c),
            exception(esr(0x34), 0x4000_9000),
        ]);
        vcpu.set_guest_debug(&debug).unwrap();
        let mut run_at = |pc: u64| {
            vcpu.ops().set_reg(Reg::Pc, pc).unwrap();
            vcpu.run().unwrap()
        };
        let software = VcpuExit::Debug(DebugExit::SoftwareBreakpoint);
        assert_eq!(run_at(ENTRY), software);
        assert_eq!(run_at(ENTRY), VcpuExit::Debug(DebugExit::SingleStep));
        // The syndrome does not name the breakpoint: the one on PC's instruction matched.
        assert_eq!(
            run_at(0x4000_3000),
            VcpuExit::Debug(DebugExit::HardwareBreakpoint(2))
        );
        assert_eq!(run_at(0x4000_5000), VcpuExit::Debug(DebugExit::Other));
        // A watchpoint by the FAR the framework reports.
        assert_eq!(run_at(ENTRY), VcpuExit::Debug(DebugExit::Watchpoint(1)));
        assert_eq!(run_at(ENTRY), VcpuExit::Debug(DebugExit::Other));
    }

    #[test]
    fn the_guests_own_brk_is_reinjected_as_its_exception_entry() {
        let mut vcpu = cpu(vec![exception(esr(0x3c) | 0x3e8, 0), HvfExit::Canceled]);
        vcpu.set_guest_debug(&debugging([None; 4])).unwrap();
        vcpu.ops().sys_regs.insert(SysReg::VbarEl1, 0x4000_0800);
        // NZ flags, EL1h, nothing masked.
        vcpu.ops().set_reg(Reg::Cpsr, 0x6000_0005).unwrap();
        assert!(vcpu.reinject_breakpoint().is_err(), "no BRK to hand back");
        assert_eq!(
            vcpu.run().unwrap(),
            VcpuExit::Debug(DebugExit::SoftwareBreakpoint)
        );
        // A failing read leaves the BRK for the next try.
        vcpu.ops().debug.failing.push("hv_vcpu_get_sys_reg");
        assert!(vcpu.reinject_breakpoint().is_err());
        vcpu.ops().debug.failing.clear();
        vcpu.reinject_breakpoint().unwrap();
        assert_eq!(sys(&mut vcpu, SysReg::ElrEl1), ENTRY);
        assert_eq!(sys(&mut vcpu, SysReg::SpsrEl1), 0x6000_0005);
        assert_eq!(sys(&mut vcpu, SysReg::EsrEl1), 0xf200_03e8);
        assert_eq!(vcpu.ops().regs[&Reg::Cpsr], 0x3c5, "EL1h, DAIF masked");
        assert_eq!(vcpu.ops().regs[&Reg::Pc], 0x4000_0a00, "current EL, SP_ELx");
        assert!(vcpu.reinject_breakpoint().is_err(), "only once");
        // The guest resumes at the vector itself.
        assert_eq!(vcpu.run().unwrap(), VcpuExit::Interrupted);
        assert_eq!(vcpu.ops().debug.runs[1].0, 0x4000_0a00);
    }

    #[test]
    fn without_software_breakpoints_the_guest_takes_its_brk_at_once() {
        let mut vcpu = cpu(vec![exception(esr(0x3c) | 1, 0), HvfExit::Canceled]);
        let debug = GuestDebug {
            software_breakpoints: false,
            ..debugging([None; 4])
        };
        vcpu.set_guest_debug(&debug).unwrap();
        vcpu.ops().sys_regs.insert(SysReg::VbarEl1, 0x4000_0800);
        assert_eq!(vcpu.run().unwrap(), VcpuExit::Interrupted);
        assert_eq!(vcpu.ops().debug.runs[1].0, 0x4000_0a00);
        assert_eq!(sys(&mut vcpu, SysReg::EsrEl1), 0xf200_0001);
    }

    #[test]
    fn registers_round_trip_with_the_stack_pointer_pstate_selects() {
        let mut vcpu = cpu(vec![]);
        let mut registers = Aarch64Registers {
            x: std::array::from_fn(|i| 0x1000 + i as u64),
            sp: 0x4800_0000,
            pc: ENTRY + 0x40,
            pstate: 0x6000_03c5,
            v: std::array::from_fn(|i| ((i as u128) << 120) | (0xdead_0000 + i as u128)),
            fpsr: 0x0800_0010,
            fpcr: 0x0300_0000,
        };
        let access = FakeHvf::aarch64_vcpu(&mut vcpu).expect("the HVF vCPU offers it");
        access.set_registers(&registers).unwrap();
        assert_eq!(access.registers().unwrap(), registers);
        let fake = vcpu.ops();
        // EL1h: SP is SP_EL1.
        assert_eq!(fake.sys_regs[&SysReg::SpEl1], 0x4800_0000);
        assert_eq!(fake.sys_regs.get(&SysReg::SpEl0), None);
        assert_eq!(fake.regs[&Reg::X(30)], 0x1000 + 30);
        assert_eq!(fake.debug.simd[&31], (31 << 120) | 0xdead_001f);
        assert_eq!(fake.regs[&Reg::Fpsr], 0x0800_0010);
        // EL1t: SP is SP_EL0; SP_EL1 keeps its value.
        registers.pstate = 0x3c4;
        registers.sp = 0x4900_0000;
        vcpu.set_registers(&registers).unwrap();
        assert_eq!(vcpu.registers().unwrap(), registers);
        assert_eq!(sys(&mut vcpu, SysReg::SpEl0), 0x4900_0000);
        assert_eq!(sys(&mut vcpu, SysReg::SpEl1), 0x4800_0000);
        // A failing call is an error.
        vcpu.ops().debug.failing.push("hv_vcpu_get_simd_fp_reg");
        assert!(vcpu.registers().is_err());
        vcpu.ops().debug.failing.push("hv_vcpu_set_simd_fp_reg");
        assert!(vcpu.set_registers(&registers).is_err());
    }

    #[test]
    fn registers_show_the_pc_the_guest_resumes_at() {
        let mut vcpu = cpu(vec![
            store_to(0x800, 8),
            HvfExit::Canceled,
            store_to(0x800, 8),
            HvfExit::Canceled,
        ]);
        assert!(matches!(vcpu.run().unwrap(), VcpuExit::Hypercall { .. }));
        // The store is done: a debugger sees the instruction after it, and it is not skipped.
        assert_eq!(vcpu.registers().unwrap().pc, ENTRY + 4);
        assert_eq!(vcpu.run().unwrap(), VcpuExit::Interrupted);
        assert_eq!(vcpu.ops().debug.runs[1].0, ENTRY + 4);
        // A PC the debugger writes is where the guest resumes.
        assert!(matches!(vcpu.run().unwrap(), VcpuExit::Hypercall { .. }));
        let registers = Aarch64Registers {
            pc: 0x4000_2000,
            ..vcpu.registers().unwrap()
        };
        vcpu.set_registers(&registers).unwrap();
        assert_eq!(vcpu.run().unwrap(), VcpuExit::Interrupted);
        assert_eq!(vcpu.ops().debug.runs[3].0, 0x4000_2000);
    }

    #[test]
    fn while_debugging_the_guest_sees_its_own_debug_registers() {
        const MDSCR: (u64, u64, u64, u64, u64) = (2, 0, 0, 2, 2);
        const DBGBVR1: (u64, u64, u64, u64, u64) = (2, 0, 0, 1, 4);
        const DBGBCR5: (u64, u64, u64, u64, u64) = (2, 0, 0, 5, 5);
        let trap = |read, register, rt| exception(system_register_trap(read, register, rt), 0);
        let mut vcpu = cpu(vec![
            trap(false, MDSCR, 3),    // MSR MDSCR_EL1, X3
            trap(true, MDSCR, 4),     // MRS X4, MDSCR_EL1
            trap(false, DBGBVR1, 5),  // MSR DBGBVR1_EL1, X5
            trap(true, DBGBVR1, 6),   // MRS X6, DBGBVR1_EL1
            trap(false, DBGBCR5, 31), // MSR DBGBCR5_EL1, XZR
            HvfExit::Canceled,
        ]);
        let guest_mdscr = (1 << 12) | MDSCR_SS;
        vcpu.ops().set_reg(Reg::X(3), guest_mdscr).unwrap();
        vcpu.ops().set_reg(Reg::X(5), 0x4000_7000).unwrap();
        vcpu.ops().sys_regs.insert(SysReg::DbgBcr(5), 0x1e7);
        vcpu.set_guest_debug(&debugging([
            None,
            slot(0x4000_1100, HardwareBreakpointKind::Execute, 1),
            None,
            None,
        ]))
        .unwrap();
        // All five are emulated: the guest runs on past each.
        assert_eq!(vcpu.run().unwrap(), VcpuExit::Interrupted);
        assert_eq!(vcpu.ops().debug.runs[5].0, ENTRY + 20);
        assert_eq!(vcpu.ops().regs[&Reg::X(4)], guest_mdscr);
        assert_eq!(vcpu.ops().regs[&Reg::X(6)], 0x4000_7000);
        // The hardware has the guest's other MDSCR bits, the debugger's debug bits and slots.
        assert_eq!(
            sys(&mut vcpu, SysReg::MdscrEl1),
            (1 << 12) | MDSCR_KDE | MDSCR_MDE
        );
        assert_eq!(sys(&mut vcpu, SysReg::DbgBvr(1)), 0x4000_1100);
        // Slot 5 is not the debugger's: the guest's write reaches it.
        assert_eq!(sys(&mut vcpu, SysReg::DbgBcr(5)), 0);
        // Off: what the guest wrote is what it has.
        vcpu.set_guest_debug(&GuestDebug::default()).unwrap();
        assert_eq!(sys(&mut vcpu, SysReg::MdscrEl1), guest_mdscr);
        assert_eq!(sys(&mut vcpu, SysReg::DbgBvr(1)), 0x4000_7000);
        // Without a debugger such a trap stays an unhandled exit, as before.
        let mut vcpu = cpu(vec![trap(false, MDSCR, 3)]);
        assert!(matches!(vcpu.run().unwrap(), VcpuExit::Unhandled { .. }));
    }

    #[test]
    fn failing_raw_calls_are_errors_and_the_next_try_writes_everything() {
        let mut vcpu = cpu(vec![exception(esr(0x32), 0)]);
        let debug = debugging([
            slot(0x4000_1000, HardwareBreakpointKind::Execute, 1),
            None,
            None,
            None,
        ]);
        vcpu.ops()
            .debug
            .failing
            .push("hv_vcpu_set_trap_debug_exceptions");
        let error = vcpu.set_guest_debug(&debug).unwrap_err();
        assert!(error.to_string().contains("HV_ERROR"), "{error}");
        vcpu.ops().debug.failing.clear();
        vcpu.set_guest_debug(&debug).unwrap();
        assert!(vcpu.ops().debug.trap_exceptions);
        assert_eq!(slot_values(&mut vcpu, 0)[0], 0x4000_1000);
        // Turning debugging off fails halfway: it stays on for the next try.
        vcpu.ops().debug.failing.push("hv_vcpu_set_sys_reg");
        assert!(vcpu.set_guest_debug(&GuestDebug::default()).is_err());
        vcpu.ops().debug.failing.clear();
        vcpu.set_guest_debug(&GuestDebug::default()).unwrap();
        assert!(!vcpu.ops().debug.trap_exceptions);
        assert_eq!(slot_values(&mut vcpu, 0), [0; 4]);
        // A register the step needs cannot be read: the run fails, nothing panics.
        vcpu.set_guest_debug(&stepping()).unwrap();
        vcpu.ops().debug.failing.push("hv_vcpu_get_reg");
        assert!(vcpu.run().is_err());
    }
}

/// Whether the host kernel has `openat2` (which the file sandbox needs to follow symlinks inside
/// a mapping); `qemu-user` does not.
fn host_follows_symlinks_beneath() -> bool {
    #[cfg(target_os = "linux")]
    {
        let how = [0u64; 3]; // struct open_how: flags, mode, resolve
        // SAFETY: openat2 of "." relative to the working directory with a zeroed open_how of the
        // size given; the returned descriptor (if any) is closed at once.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                libc::AT_FDCWD,
                c".".as_ptr(),
                how.as_ptr(),
                std::mem::size_of_val(&how),
            )
        };
        if fd >= 0 {
            // SAFETY: `fd` was just returned by openat2 and is closed once.
            unsafe { libc::close(fd as libc::c_int) };
            return true;
        }
        std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// The interrupt of a VM without devices: never raised.
struct NoInterrupt;

impl uhyve::virtio::DeviceInterrupt for NoInterrupt {
    fn raise(&self) {}
    fn lower(&self) {}
}
