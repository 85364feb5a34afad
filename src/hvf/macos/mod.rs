//! The Hypervisor.framework backend for Apple Silicon: a thin adapter from the framework's C calls
//! to uhyve's traits. It owns the process's one VM ([`HvfVm`]: `hv_vm_create`, the in-kernel GIC,
//! `hv_vm_map` of guest RAM without the hypercall trap window, `hv_vm_destroy` on drop), each
//! vCPU's raw calls ([`HvfVcpu`], used only by the thread that created it, `hv_vcpu_destroy` on
//! drop) and the cross-thread stop ([`HvfKick`]: `hv_vcpus_exit`). Everything that decides what
//! an exit means lives in platform-neutral code ([`super`], [`crate::exits`]).
//!
//! The raw declarations and constants come from xhypervisor's `ffi` module where they match
//! Apple's headers. Bound here instead: `hv_vcpu_create`, whose config argument xhypervisor 0.3.0
//! declares as a pointer to the config (Apple passes the config itself),
//! `hv_vm_get_max_vcpu_count`, which it lacks, `hv_vcpu_{get,set}_simd_fp_reg`, which it leaves
//! out (their value is a 128-bit vector passed in a SIMD register), and the macOS 15 GIC calls
//! ([`gic`]), looked up at run time so that uhyve still starts on older macOS and says what is
//! missing. The vCPUs offer a debugger their registers ([`Hypervisor::aarch64_vcpu`]).
//!
//! Stopping a vCPU takes two things on macOS: `hv_vcpus_exit` ends (or pre-empts) its
//! `hv_vcpu_run`, and a signal with an empty handler interrupts a host `read(2)` its thread may
//! be blocked in during a hypercall (stdin, a FIFO), which `hv_vcpus_exit` cannot reach.

mod gic;

use std::io;
use std::marker::PhantomData;
use std::ptr;
use std::sync::{Arc, Mutex};

use thiserror::Error;
use xhypervisor::ffi as hv;

use crate::arch::GuestArch;
use crate::arch::aarch64::layout::HYPERCALL_WINDOW_SIZE;
use crate::hvf::{HvfCpu, HvfError, HvfExit, HvfVcpuOps, Reg, SysReg, return_name};
use crate::hypervisor::aarch64::debug::Aarch64Vcpu;
use crate::hypervisor::{
    EntryRegisters, Hypervisor, HypervisorError, VcpuError, VcpuKick, VmFeatures,
};
use crate::mem::GuestMemory;

pub use gic::GicError;

/// Calls bound here rather than taken from xhypervisor: `hv_vcpu_create` as Apple declares it
/// (`hv_vcpu.h`, macOS 11: the config by value, NULL for the defaults),
/// `hv_vm_get_max_vcpu_count` (`hv_vm.h`, macOS 11), which xhypervisor lacks, and the SIMD&FP
/// register calls, which xhypervisor leaves out (their value is a vector type).
mod bindings {
    use core::arch::aarch64::uint8x16_t;

    use xhypervisor::ffi::{
        hv_return_t, hv_simd_fp_reg_t, hv_vcpu_config_t, hv_vcpu_exit_t, hv_vcpu_t,
    };

    /// `hv_simd_fp_uchar16_t` (`hv_vcpu_types.h`): Apple's `simd_uchar16`, a clang
    /// `ext_vector_type(16)` of `uint8_t` — a 16-byte short vector, which the AArch64 procedure
    /// call standard (Apple's variant included) passes by value in a SIMD&FP register (Q0 … Q7),
    /// like NEON's `uint8x16_t`. Rust refuses a `repr(simd)` type directly in an `extern` block
    /// on stable (`simd_ffi`); a transparent wrapper has the ABI of the vector it holds.
    #[repr(transparent)]
    #[derive(Clone, Copy)]
    pub struct SimdFpValue(pub uint8x16_t);

    impl SimdFpValue {
        /// The register value `value` (lane 0 is the lowest byte, as in the register).
        pub fn from_u128(value: u128) -> Self {
            // SAFETY: both types are 16 bytes of plain data, for which every bit pattern is
            // valid; on little-endian AArch64 the lowest byte of the u128 is lane 0.
            Self(unsafe { core::mem::transmute::<u128, uint8x16_t>(value) })
        }

        /// The register value as one number.
        pub fn to_u128(self) -> u128 {
            // SAFETY: as in `from_u128`.
            unsafe { core::mem::transmute::<uint8x16_t, u128>(self.0) }
        }
    }

    // The framework itself is linked by xhypervisor's build script.
    unsafe extern "C" {
        #[link_name = "hv_vcpu_create"]
        pub fn hv_vcpu_create_with_config(
            vcpu: *mut hv_vcpu_t,
            exit: *mut *const hv_vcpu_exit_t,
            config: hv_vcpu_config_t,
        ) -> hv_return_t;

        pub fn hv_vm_get_max_vcpu_count(max_vcpu_count: *mut u32) -> hv_return_t;
    }

    // `improper_ctypes` calls the NEON vector "unspecified layout", which holds for Rust's own
    // layout rules but not for the C ABI: the vector is lowered as LLVM's `<16 x i8>`, the type
    // clang gives `hv_simd_fp_uchar16_t` (see `SimdFpValue`).
    #[allow(improper_ctypes)]
    unsafe extern "C" {
        pub fn hv_vcpu_get_simd_fp_reg(
            vcpu: hv_vcpu_t,
            reg: hv_simd_fp_reg_t,
            value: *mut SimdFpValue,
        ) -> hv_return_t;

        pub fn hv_vcpu_set_simd_fp_reg(
            vcpu: hv_vcpu_t,
            reg: hv_simd_fp_reg_t,
            value: SimdFpValue,
        ) -> hv_return_t;
    }
}

/// Failures setting up Hypervisor.framework.
#[derive(Debug, Error)]
pub enum HvfVmError {
    /// The process lacks the hypervisor entitlement.
    #[error(
        "Hypervisor.framework denied access (HV_DENIED): uhyve must be signed with the \
         com.apple.security.hypervisor entitlement: \
         codesign --entitlements uhyve.entitlements --force -s - path/to/uhyve"
    )]
    Denied,
    /// This Mac or macOS cannot run VMs.
    #[error(
        "Hypervisor.framework is not supported here (HV_UNSUPPORTED): check `sysctl kern.hv_support`"
    )]
    Unsupported,
    /// The framework is busy, most likely because the process already has a VM.
    #[error(
        "hv_vm_create returned HV_BUSY: Hypervisor.framework allows one VM per process, and this \
         process probably has one already"
    )]
    Busy,
    /// Guest RAM cannot be mapped as the framework requires.
    #[error("cannot map guest RAM: {0}")]
    RamLayout(String),
    /// The vCPU kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickHandler(io::Error),
    /// The in-kernel GIC could not be set up.
    #[error(transparent)]
    Gic(#[from] GicError),
    /// Any other failing call.
    #[error("Hypervisor.framework: {call} failed with {}", return_name(*.code))]
    Call {
        /// The call.
        call: &'static str,
        /// Its `hv_return_t`.
        code: hv::hv_return_t,
    },
}

/// `Ok` for HV_SUCCESS, else the VM-level error for `call`.
fn vm_call(call: &'static str, code: hv::hv_return_t) -> Result<(), HvfVmError> {
    match code {
        hv::HV_SUCCESS => Ok(()),
        // The missing entitlement is what HV_DENIED means when creating the VM.
        hv::HV_DENIED if call == "hv_vm_create" => Err(HvfVmError::Denied),
        hv::HV_UNSUPPORTED => Err(HvfVmError::Unsupported),
        hv::HV_BUSY if call == "hv_vm_create" => Err(HvfVmError::Busy),
        code => Err(HvfVmError::Call { call, code }),
    }
}

/// `Ok` for HV_SUCCESS, else the vCPU-level error for `call`.
fn vcpu_call(call: &'static str, code: hv::hv_return_t) -> Result<(), HvfError> {
    if code == hv::HV_SUCCESS {
        Ok(())
    } else {
        Err(HvfError { call, code })
    }
}

/// The process's Hypervisor.framework VM (the framework has no VM handle: at most one VM exists
/// per process, and every `hv_vm_*` call acts on it). Destroyed on drop, after every vCPU
/// (each vCPU thread destroys its own vCPU before `crate::vm::Vm` drops this).
pub struct HvfVm {
    /// The most vCPUs the framework and the device tree's redistributor area allow.
    max_cpus: u32,
    /// Where guest RAM starts (set when it is mapped; the hypercall window is its first 16 KiB).
    ram_base: std::sync::OnceLock<u64>,
}

impl HvfVm {
    /// Creates the VM with the default configuration and the in-kernel GICv3 at the addresses
    /// the device tree names. Of the `features`, Hypervisor.framework offers none: each one asked
    /// for is one warning.
    pub fn create(features: VmFeatures) -> Result<Self, HvfVmError> {
        if features.pit {
            log::warn!(
                "--pit has no effect with Hypervisor.framework: the i8254 PIT is an x86 device, \
                 and the guests here are aarch64"
            );
        }
        if features.cpu_power_management {
            log::warn!(
                "--cpu-pm has no effect with Hypervisor.framework: it is a KVM setting \
                 (KVM_CAP_X86_DISABLE_EXITS) that has no counterpart here"
            );
        }
        install_kick_handler()?;
        // SAFETY: hv_vm_create takes an optional config object; NULL selects the defaults.
        vm_call("hv_vm_create", unsafe { hv::hv_vm_create(ptr::null_mut()) })?;
        // From here on, drop destroys the VM, also when a step below fails.
        let mut vm = Self {
            max_cpus: 0,
            ram_base: std::sync::OnceLock::new(),
        };
        let mut framework_max = 0u32;
        // SAFETY: `framework_max` is a live out-parameter.
        let code = unsafe { bindings::hv_vm_get_max_vcpu_count(&mut framework_max) };
        vm_call("hv_vm_get_max_vcpu_count", code)?;
        let gic_max = gic::create()?;
        vm.max_cpus = framework_max.min(gic_max);
        Ok(vm)
    }
}

impl Drop for HvfVm {
    fn drop(&mut self) {
        // SAFETY: the VM exists (created in `create`) and all of its vCPUs were destroyed by
        // their threads; guest RAM is still mapped in this process, so the framework releases
        // its mapping before uhyve unmaps the memory.
        let code = unsafe { hv::hv_vm_destroy() };
        if code != hv::HV_SUCCESS {
            log::warn!("hv_vm_destroy failed with {}", return_name(code));
        }
    }
}

impl From<HvfVmError> for HypervisorError {
    fn from(error: HvfVmError) -> Self {
        Self::Backend(Box::new(error))
    }
}

impl Hypervisor for HvfVm {
    const ARCH: GuestArch = GuestArch::Aarch64;
    type Cpu = HvfCpu<HvfVcpu>;
    type Kick = HvfKick;

    unsafe fn map_memory(&self, mem: &GuestMemory) -> Result<(), HypervisorError> {
        // The first 16 KiB of RAM (one Apple Silicon page) stay unmapped: the guest's hypercall
        // stores there fault and reach uhyve as data aborts.
        let window = HYPERCALL_WINDOW_SIZE;
        let layout_error = |what: String| HypervisorError::from(HvfVmError::RamLayout(what));
        let ram_base = mem.base().as_u64();
        let mapped_base = ram_base
            .checked_add(window)
            .ok_or_else(|| layout_error(format!("RAM at {ram_base:#x}")))?;
        if self.ram_base.set(ram_base).is_err() {
            return Err(layout_error("guest RAM is mapped twice".into()));
        }
        let size = mem
            .size()
            .checked_sub(window)
            .and_then(|size| usize::try_from(size).ok())
            .ok_or_else(|| layout_error(format!("{:#x} bytes of RAM", mem.size())))?;
        let offset = usize::try_from(window).map_err(|e| layout_error(e.to_string()))?;
        // SAFETY: `offset` < mem.size() (checked above), so the pointer stays inside the
        // mapping `mem` owns.
        let host = unsafe { mem.host_address().add(offset) };
        // hv_vm_map wants the host address, the IPA and the size page aligned (16 KiB pages on
        // Apple Silicon; mmap gives page-aligned RAM, and its size is a multiple of 2 MiB).
        let page = APPLE_SILICON_PAGE;
        if !(host as usize).is_multiple_of(page)
            || !mapped_base.is_multiple_of(page as u64)
            || !size.is_multiple_of(page)
        {
            return Err(layout_error(format!(
                "host {host:p}, guest {mapped_base:#x} or size {size:#x} is not 16 KiB aligned"
            )));
        }
        // SAFETY: [host, host + size) is the part of guest RAM above the window, page aligned
        // (checked above). The caller guarantees that `mem` outlives the VM (and hv_vm_destroy
        // removes the mapping), so the framework never reaches host memory that is not guest RAM.
        let code = unsafe {
            hv::hv_vm_map(
                host.cast(),
                mapped_base,
                size,
                hv::HV_MEMORY_READ | hv::HV_MEMORY_WRITE | hv::HV_MEMORY_EXEC,
            )
        };
        Ok(vm_call("hv_vm_map", code)?)
    }

    fn max_cpus(&self) -> Option<u32> {
        Some(self.max_cpus)
    }

    fn create_vcpu(
        &self,
        cpu: u32,
        entry: &EntryRegisters,
    ) -> Result<(Self::Cpu, Self::Kick), HypervisorError> {
        let EntryRegisters::Aarch64(registers) = entry else {
            return Err(HypervisorError::Vcpu {
                cpu,
                source: VcpuError::Unexpected {
                    operation: "create vCPU",
                    detail: "Hypervisor.framework on Apple Silicon runs aarch64 guests only".into(),
                },
            });
        };
        let vcpu = HvfVcpu::create().map_err(|error| HypervisorError::Vcpu {
            cpu,
            source: VcpuError::Backend {
                operation: "create vCPU",
                source: Box::new(error),
            },
        })?;
        let kick = vcpu.kick_handle();
        let ram_base = *self.ram_base.get().ok_or_else(|| HypervisorError::Vcpu {
            cpu,
            source: VcpuError::Unexpected {
                operation: "create vCPU",
                detail: "guest RAM is not mapped yet".into(),
            },
        })?;
        let vcpu = HvfCpu::new(vcpu, cpu, ram_base, registers)
            .map_err(|source| HypervisorError::Vcpu { cpu, source })?;
        Ok((vcpu, kick))
    }

    fn aarch64_vcpu(cpu: &mut Self::Cpu) -> Option<&mut dyn Aarch64Vcpu> {
        Some(cpu)
    }
}

/// One vCPU's raw calls. Created by, used by and destroyed on one thread (HVF's rule): the raw
/// pointer field makes it neither `Send` nor `Sync`.
pub struct HvfVcpu {
    id: hv::hv_vcpu_t,
    /// The framework's exit record for this vCPU, updated by every `hv_vcpu_run`.
    exit: *const hv::hv_vcpu_exit_t,
    /// What its kick handles aim at; cleared before the vCPU is destroyed.
    kick_target: Arc<Mutex<Option<KickTarget>>>,
    _one_thread: PhantomData<*const ()>,
}

impl HvfVcpu {
    /// `hv_vcpu_create` for the calling thread, default configuration.
    fn create() -> Result<Self, HvfError> {
        let mut id: hv::hv_vcpu_t = 0;
        let mut exit: *const hv::hv_vcpu_exit_t = ptr::null();
        // SAFETY: both out-pointers point to live locals; NULL is the documented default config.
        let code =
            unsafe { bindings::hv_vcpu_create_with_config(&mut id, &mut exit, ptr::null_mut()) };
        vcpu_call("hv_vcpu_create", code)?;
        if exit.is_null() {
            // SAFETY: the vCPU was just created by this thread.
            unsafe { hv::hv_vcpu_destroy(id) };
            return Err(HvfError {
                call: "hv_vcpu_create (no exit record)",
                code: hv::HV_ERROR,
            });
        }
        let kick_target = Arc::new(Mutex::new(Some(KickTarget {
            vcpu: id,
            thread: std::thread::current(),
            // SAFETY: pthread_self has no preconditions. This is the thread that creates the
            // vCPU, which runs and destroys it too.
            pthread: unsafe { libc::pthread_self() },
        })));
        Ok(Self {
            id,
            exit,
            kick_target,
            _one_thread: PhantomData,
        })
    }

    /// A handle another thread can use to stop this vCPU (see [`HvfKick`]).
    fn kick_handle(&self) -> HvfKick {
        HvfKick {
            target: Arc::clone(&self.kick_target),
        }
    }
}

impl Drop for HvfVcpu {
    fn drop(&mut self) {
        // First: no kick may name this vCPU once it is destroyed.
        *self.kick_target.lock().unwrap_or_else(|p| p.into_inner()) = None;
        // SAFETY: the vCPU was created by this thread (the type cannot leave it) and is not
        // running: only this thread runs it.
        let code = unsafe { hv::hv_vcpu_destroy(self.id) };
        if code != hv::HV_SUCCESS {
            log::warn!("hv_vcpu_destroy failed with {}", return_name(code));
        }
    }
}

/// The framework's number for a general register.
fn reg_number(reg: Reg) -> Result<hv::hv_reg_t, HvfError> {
    match reg {
        Reg::X(number @ 0..=30) => Ok(hv::HV_REG_X0 + hv::hv_reg_t::from(number)),
        Reg::X(_) => Err(HvfError {
            call: "hv_vcpu_get_reg (no such X register)",
            code: hv::HV_BAD_ARGUMENT,
        }),
        Reg::Pc => Ok(hv::HV_REG_PC),
        Reg::Cpsr => Ok(hv::HV_REG_CPSR),
        Reg::Fpcr => Ok(hv::HV_REG_FPCR),
        Reg::Fpsr => Ok(hv::HV_REG_FPSR),
    }
}

/// The framework's number for a system register (op0:op1:CRn:CRm:op2, see `hv_vcpu_types.h`).
fn sys_reg_number(reg: SysReg) -> Result<hv::hv_sys_reg_t, HvfError> {
    // Breakpoint and watchpoint register pair n sits at CRm = n: eight apart.
    let debug = |first: hv::hv_sys_reg_t, n: u8| {
        if n < 16 {
            Ok(first + (hv::hv_sys_reg_t::from(n) << 3))
        } else {
            Err(HvfError {
                call: "hv_sys_reg_t (no such debug register)",
                code: hv::HV_BAD_ARGUMENT,
            })
        }
    };
    Ok(match reg {
        SysReg::SpEl1 => hv::HV_SYS_REG_SP_EL1,
        SysReg::MpidrEl1 => hv::HV_SYS_REG_MPIDR_EL1,
        SysReg::MairEl1 => hv::HV_SYS_REG_MAIR_EL1,
        SysReg::TcrEl1 => hv::HV_SYS_REG_TCR_EL1,
        SysReg::Ttbr0El1 => hv::HV_SYS_REG_TTBR0_EL1,
        SysReg::Ttbr1El1 => hv::HV_SYS_REG_TTBR1_EL1,
        SysReg::CpacrEl1 => hv::HV_SYS_REG_CPACR_EL1,
        SysReg::MdscrEl1 => hv::HV_SYS_REG_MDSCR_EL1,
        SysReg::SctlrEl1 => hv::HV_SYS_REG_SCTLR_EL1,
        SysReg::IdAa64Mmfr0El1 => hv::HV_SYS_REG_ID_AA64MMFR0_EL1,
        SysReg::SpEl0 => hv::HV_SYS_REG_SP_EL0,
        SysReg::ElrEl1 => hv::HV_SYS_REG_ELR_EL1,
        SysReg::SpsrEl1 => hv::HV_SYS_REG_SPSR_EL1,
        SysReg::EsrEl1 => hv::HV_SYS_REG_ESR_EL1,
        SysReg::VbarEl1 => hv::HV_SYS_REG_VBAR_EL1,
        SysReg::DbgBvr(n) => debug(hv::HV_SYS_REG_DBGBVR0_EL1, n)?,
        SysReg::DbgBcr(n) => debug(hv::HV_SYS_REG_DBGBCR0_EL1, n)?,
        SysReg::DbgWvr(n) => debug(hv::HV_SYS_REG_DBGWVR0_EL1, n)?,
        SysReg::DbgWcr(n) => debug(hv::HV_SYS_REG_DBGWCR0_EL1, n)?,
    })
}

/// The framework's number for SIMD&FP register Q`number`.
fn simd_fp_reg_number(number: u8) -> Result<hv::hv_simd_fp_reg_t, HvfError> {
    if number < 32 {
        Ok(hv::HV_SIMD_FP_REG_Q0 + hv::hv_simd_fp_reg_t::from(number))
    } else {
        Err(HvfError {
            call: "hv_simd_fp_reg_t (no such Q register)",
            code: hv::HV_BAD_ARGUMENT,
        })
    }
}

impl HvfVcpuOps for HvfVcpu {
    fn run(&mut self) -> Result<HvfExit, HvfError> {
        // SAFETY: this thread created the vCPU.
        vcpu_call("hv_vcpu_run", unsafe { hv::hv_vcpu_run(self.id) })?;
        // SAFETY: `exit` is the framework's record for this vCPU (non-null, checked at
        // creation), valid until hv_vcpu_destroy and written only during hv_vcpu_run on this
        // thread; it is copied out, never referenced.
        let exit = unsafe { ptr::read(self.exit) };
        Ok(match exit.reason {
            hv::HV_EXIT_REASON_CANCELED => HvfExit::Canceled,
            hv::HV_EXIT_REASON_EXCEPTION => HvfExit::Exception {
                syndrome: exit.exception.syndrome,
                virtual_address: exit.exception.virtual_address,
                physical_address: exit.exception.physical_address,
            },
            hv::HV_EXIT_REASON_VTIMER_ACTIVATED => HvfExit::VtimerActivated,
            other => HvfExit::Unknown(other),
        })
    }

    fn reg(&mut self, reg: Reg) -> Result<u64, HvfError> {
        let number = reg_number(reg)?;
        let mut value = 0;
        // SAFETY: this thread created the vCPU; `value` is a live out-parameter.
        vcpu_call("hv_vcpu_get_reg", unsafe {
            hv::hv_vcpu_get_reg(self.id, number, &mut value)
        })?;
        Ok(value)
    }

    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), HvfError> {
        let number = reg_number(reg)?;
        // SAFETY: this thread created the vCPU.
        vcpu_call("hv_vcpu_set_reg", unsafe {
            hv::hv_vcpu_set_reg(self.id, number, value)
        })
    }

    fn sys_reg(&mut self, reg: SysReg) -> Result<u64, HvfError> {
        let number = sys_reg_number(reg)?;
        let mut value = 0;
        // SAFETY: this thread created the vCPU; `value` is a live out-parameter.
        vcpu_call("hv_vcpu_get_sys_reg", unsafe {
            hv::hv_vcpu_get_sys_reg(self.id, number, &mut value)
        })?;
        Ok(value)
    }

    fn set_sys_reg(&mut self, reg: SysReg, value: u64) -> Result<(), HvfError> {
        let number = sys_reg_number(reg)?;
        // SAFETY: this thread created the vCPU.
        vcpu_call("hv_vcpu_set_sys_reg", unsafe {
            hv::hv_vcpu_set_sys_reg(self.id, number, value)
        })
    }

    fn simd_fp_reg(&mut self, number: u8) -> Result<u128, HvfError> {
        let reg = simd_fp_reg_number(number)?;
        let mut value = bindings::SimdFpValue::from_u128(0);
        // SAFETY: this thread created the vCPU; `value` is a live out-parameter of the type the
        // framework writes (see `SimdFpValue`).
        vcpu_call("hv_vcpu_get_simd_fp_reg", unsafe {
            bindings::hv_vcpu_get_simd_fp_reg(self.id, reg, &mut value)
        })?;
        Ok(value.to_u128())
    }

    fn set_simd_fp_reg(&mut self, number: u8, value: u128) -> Result<(), HvfError> {
        let reg = simd_fp_reg_number(number)?;
        // SAFETY: this thread created the vCPU; the value is passed in a SIMD&FP register, as
        // the framework expects (see `SimdFpValue`).
        vcpu_call("hv_vcpu_set_simd_fp_reg", unsafe {
            bindings::hv_vcpu_set_simd_fp_reg(self.id, reg, bindings::SimdFpValue::from_u128(value))
        })
    }

    fn set_trap_debug_exceptions(&mut self, trap: bool) -> Result<(), HvfError> {
        // SAFETY: this thread created the vCPU.
        vcpu_call("hv_vcpu_set_trap_debug_exceptions", unsafe {
            hv::hv_vcpu_set_trap_debug_exceptions(self.id, trap)
        })
    }

    fn set_trap_debug_reg_accesses(&mut self, trap: bool) -> Result<(), HvfError> {
        // SAFETY: this thread created the vCPU.
        vcpu_call("hv_vcpu_set_trap_debug_reg_accesses", unsafe {
            hv::hv_vcpu_set_trap_debug_reg_accesses(self.id, trap)
        })
    }
}

/// Host page size on Apple Silicon: `hv_vm_map` works in these units.
const APPLE_SILICON_PAGE: usize = 0x4000;

/// The signal that interrupts a vCPU thread blocked in a host call (its handler does nothing).
const KICK_SIGNAL: libc::c_int = libc::SIGUSR2;

/// Installs the empty handler of [`KICK_SIGNAL`] without `SA_RESTART`, so that the signal makes
/// a blocking `read(2)` return `EINTR`. Idempotent.
fn install_kick_handler() -> Result<(), HvfVmError> {
    crate::hypervisor::thread_kick::install_empty_handler(KICK_SIGNAL)
        .map_err(HvfVmError::KickHandler)
}

/// Stops one vCPU from any thread: `hv_vcpus_exit` makes its current or next `hv_vcpu_run`
/// return with HV_EXIT_REASON_CANCELED, an unpark ends a WFI idle, and a signal interrupts a
/// host call its thread is blocked in. Once the vCPU is destroyed a kick does nothing, so the
/// handle may outlive it.
#[derive(Clone)]
pub struct HvfKick {
    target: Arc<Mutex<Option<KickTarget>>>,
}

/// Where a kick goes while its vCPU exists.
struct KickTarget {
    vcpu: hv::hv_vcpu_t,
    /// The vCPU's thread, for unpark.
    thread: std::thread::Thread,
    /// The same thread, for the signal.
    pthread: libc::pthread_t,
}

// SAFETY: the pthread id is a plain value usable from any thread (the other fields are Send
// already); the vCPU id is only passed to hv_vcpus_exit, which any thread may call.
unsafe impl Send for KickTarget {}

impl VcpuKick for HvfKick {
    fn kick(&self) {
        let target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        let Some(target) = target.as_ref() else {
            return;
        };
        // SAFETY: hv_vcpus_exit may be called from any thread. The vCPU exists: its `Drop`
        // clears the target (under this lock) before destroying it.
        let code = unsafe { hv::hv_vcpus_exit(&target.vcpu, 1) };
        if code != hv::HV_SUCCESS {
            log::warn!("hv_vcpus_exit failed with {}", return_name(code));
        }
        target.thread.unpark();
        // SAFETY: the vCPU exists, so the thread that created it and destroys it is alive; the
        // signal's handler is empty, so delivering it only interrupts a blocking call.
        unsafe { crate::hypervisor::thread_kick::interrupt(target.pthread, KICK_SIGNAL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hv_sys_reg_t` is op0:op1:CRn:CRm:op2 packed as 2:3:4:4:3 bits (`hv_vcpu_types.h`).
    fn encoding(op0: u16, op1: u16, crn: u16, crm: u16, op2: u16) -> hv::hv_sys_reg_t {
        (op0 << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2
    }

    #[test]
    fn system_register_numbers_follow_the_architectural_encoding() {
        // Encodings from the Arm ARM; SP_EL1 uses its EL2 view (op1 = 4), as the header does.
        let expected = [
            (SysReg::SpEl1, encoding(3, 4, 4, 1, 0)),
            (SysReg::MpidrEl1, encoding(3, 0, 0, 0, 5)),
            (SysReg::MairEl1, encoding(3, 0, 10, 2, 0)),
            (SysReg::TcrEl1, encoding(3, 0, 2, 0, 2)),
            (SysReg::Ttbr0El1, encoding(3, 0, 2, 0, 0)),
            (SysReg::Ttbr1El1, encoding(3, 0, 2, 0, 1)),
            (SysReg::CpacrEl1, encoding(3, 0, 1, 0, 2)),
            (SysReg::MdscrEl1, encoding(2, 0, 0, 2, 2)),
            (SysReg::SctlrEl1, encoding(3, 0, 1, 0, 0)),
            (SysReg::IdAa64Mmfr0El1, encoding(3, 0, 0, 7, 0)),
            (SysReg::SpEl0, encoding(3, 0, 4, 1, 0)),
            (SysReg::ElrEl1, encoding(3, 0, 4, 0, 1)),
            (SysReg::SpsrEl1, encoding(3, 0, 4, 0, 0)),
            (SysReg::EsrEl1, encoding(3, 0, 5, 2, 0)),
            (SysReg::VbarEl1, encoding(3, 0, 12, 0, 0)),
            (SysReg::DbgBvr(0), encoding(2, 0, 0, 0, 4)),
            (SysReg::DbgBcr(1), encoding(2, 0, 0, 1, 5)),
            (SysReg::DbgWvr(2), encoding(2, 0, 0, 2, 6)),
            (SysReg::DbgWcr(3), encoding(2, 0, 0, 3, 7)),
            (SysReg::DbgWcr(15), encoding(2, 0, 0, 15, 7)),
        ];
        for (reg, number) in expected {
            assert_eq!(sys_reg_number(reg).unwrap(), number, "{reg:?}");
        }
        // The header's own constants agree.
        assert_eq!(
            sys_reg_number(SysReg::DbgBvr(3)).unwrap(),
            hv::HV_SYS_REG_DBGBVR3_EL1
        );
        assert_eq!(
            sys_reg_number(SysReg::DbgWcr(1)).unwrap(),
            hv::HV_SYS_REG_DBGWCR1_EL1
        );
        assert!(sys_reg_number(SysReg::DbgBvr(16)).is_err());
    }

    #[test]
    fn simd_registers_are_numbered_and_keep_their_byte_order() {
        assert_eq!(simd_fp_reg_number(31).unwrap(), hv::HV_SIMD_FP_REG_Q31);
        assert!(simd_fp_reg_number(32).is_err());
        let value = 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100u128;
        let vector = bindings::SimdFpValue::from_u128(value);
        // SAFETY: `vector` is a live 16-byte value; reading its bytes is reading plain data.
        let bytes: [u8; 16] = unsafe { core::mem::transmute(vector.0) };
        assert_eq!(
            bytes,
            core::array::from_fn(|i| i as u8),
            "lane 0 is the lowest byte"
        );
        assert_eq!(vector.to_u128(), value);
    }

    #[test]
    fn general_register_numbers_match_the_header() {
        assert_eq!(reg_number(Reg::X(0)).unwrap(), 0);
        assert_eq!(reg_number(Reg::X(30)).unwrap(), 30);
        assert_eq!(reg_number(Reg::Pc).unwrap(), 31);
        assert_eq!(reg_number(Reg::Cpsr).unwrap(), 34);
        assert_eq!(reg_number(Reg::Fpcr).unwrap(), 32);
        assert_eq!(reg_number(Reg::Fpsr).unwrap(), 33);
        assert!(
            reg_number(Reg::X(31)).is_err(),
            "X31 is SP or XZR, not a register"
        );
    }

    #[test]
    fn framework_errors_are_named() {
        assert!(matches!(
            vm_call("hv_vm_create", hv::HV_DENIED),
            Err(HvfVmError::Denied)
        ));
        assert!(matches!(
            vm_call("hv_vm_create", hv::HV_BUSY),
            Err(HvfVmError::Busy)
        ));
        assert!(matches!(
            vm_call("hv_vm_map", hv::HV_DENIED),
            Err(HvfVmError::Call { .. })
        ));
        assert!(HvfVmError::Denied.to_string().contains("codesign"));
    }

    #[test]
    fn the_exit_record_has_apples_layout() {
        assert_eq!(std::mem::size_of::<hv::hv_vcpu_exit_t>(), 32);
        assert_eq!(std::mem::offset_of!(hv::hv_vcpu_exit_t, exception), 8);
    }
}
