//! Guest debugging: the stop-the-world coordination between a debugger ([`gdb`], the GDB remote
//! server of `-s/--gdb-port`) and the vCPU threads. Each vCPU thread keeps its vCPU: while the
//! world is stopped it parks in [`Debugger::before_run`] and serves the debugger's register and
//! memory requests itself (Hypervisor.framework allows vCPU calls only from the owning thread).
//! The architecture-specific parts are the register sets ([`x86_64`], [`aarch64`]) and the
//! breakpoint instruction; guest memory goes through the guest's own page tables.

mod aarch64;
pub mod gdb;
mod x86_64;

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use uhyve_interface::GuestVirtAddr;

use crate::arch::GuestArch;
use crate::hypervisor::aarch64::debug::Aarch64Vcpu;
use crate::hypervisor::x86_64::X86Vcpu;
use crate::hypervisor::{DebugExit, GuestDebug, HardwareBreakpoint, VcpuExit, VirtualCpu};
use crate::mem::GuestMemory;
use crate::mem::virt::GuestVirtMemory;

/// A vCPU's registers as GDB sees them, for the guest's architecture.
#[derive(Debug, Clone)]
pub enum Registers {
    /// GPRs, RIP, EFLAGS, segments, x87 and SSE.
    X86_64(Box<gdbstub_arch::x86::reg::X86_64CoreRegs>),
    /// X0–X30, SP, PC, PSTATE, V0–V31, FPSR and FPCR.
    Aarch64(Box<gdbstub_arch::aarch64::reg::AArch64CoreRegs>),
}

/// Why the world stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// Waiting for the debugger before the first instruction, or after a Ctrl-C.
    Interrupted,
    /// A breakpoint the debugger set.
    SoftwareBreakpoint,
    /// A hardware breakpoint.
    HardwareBreakpoint,
    /// A watchpoint on `address`.
    Watchpoint(HardwareBreakpoint),
    /// A single step ended.
    Step,
}

/// How a vCPU runs after the debugger resumes the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Runs until the next stop.
    Continue,
    /// Executes one instruction.
    Step,
    /// Stays stopped (another vCPU is being stepped).
    Hold,
}

/// A debugger's request served by a parked vCPU thread.
#[derive(Debug, Clone)]
pub enum Request {
    /// Read the registers.
    ReadRegisters,
    /// Write the registers.
    WriteRegisters(Registers),
    /// Read guest-virtual memory (as much as is mapped from the start).
    ReadMemory(u64, usize),
    /// Write guest-virtual memory.
    WriteMemory(u64, Vec<u8>),
}

/// A parked vCPU's answer.
#[derive(Debug, Clone)]
pub enum Response {
    /// The registers.
    Registers(Registers),
    /// The bytes read.
    Memory(Vec<u8>),
    /// Done.
    Done,
    /// The request failed.
    Failed(String),
}

/// What the vCPU loop does after [`Debugger::before_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Go {
    /// Enter the guest.
    Run,
    /// The VM is stopping: leave the loop.
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping,
    Stopped,
}

/// The debugger's breakpoints.
#[derive(Debug, Default)]
struct Breakpoints {
    /// Software breakpoints: address → the bytes the breakpoint instruction replaced.
    software: BTreeMap<u64, Vec<u8>>,
    hardware: [Option<HardwareBreakpoint>; 4],
}

struct State {
    alive: Vec<bool>,
    parked: Vec<bool>,
    phase: Phase,
    stop: Option<(u32, StopKind)>,
    resume: Vec<Resume>,
    /// Incremented on every resume.
    generation: u64,
    request: Option<(u32, Request)>,
    response: Option<Response>,
    breakpoints: Breakpoints,
    exited: Option<i32>,
    ended: bool,
    detached: bool,
    shutdown: bool,
}

/// The coordination between the debugger and the vCPU threads of one VM.
pub struct Debugger<'k> {
    state: Mutex<State>,
    changed: Condvar,
    mem: &'k GuestMemory,
    arch: GuestArch,
    kick_all: &'k (dyn Fn() + Sync),
    /// The kernel's load bias, reported to GDB (`qOffsets`) so that the symbols of a
    /// position-independent image match where it was loaded.
    load_bias: u64,
}

/// A vCPU as its thread lends it to the debugger while parked.
pub struct DebugVcpu<'v, C: VirtualCpu> {
    /// The vCPU.
    pub vcpu: &'v mut C,
    /// Its x86 state access, where the backend offers it.
    pub x86: fn(&mut C) -> Option<&mut dyn X86Vcpu>,
    /// Its aarch64 register access, where the backend offers it.
    pub aarch64: fn(&mut C) -> Option<&mut dyn Aarch64Vcpu>,
}

impl<'k> Debugger<'k> {
    /// The debugger of a VM with `cpus` vCPUs of architecture `arch` whose kernel was loaded
    /// `load_bias` bytes above its link-time addresses; every vCPU waits before its first
    /// instruction.
    pub fn new(
        cpus: u32,
        arch: GuestArch,
        mem: &'k GuestMemory,
        kick_all: &'k (dyn Fn() + Sync),
        load_bias: u64,
    ) -> Self {
        let n = cpus as usize;
        Self {
            state: Mutex::new(State {
                alive: vec![true; n],
                parked: vec![false; n],
                phase: Phase::Stopping,
                stop: Some((0, StopKind::Interrupted)),
                resume: vec![Resume::Continue; n],
                generation: 0,
                request: None,
                response: None,
                breakpoints: Breakpoints::default(),
                exited: None,
                ended: false,
                detached: false,
                shutdown: false,
            }),
            changed: Condvar::new(),
            mem,
            arch,
            kick_all,
            load_bias,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'g>(&self, guard: MutexGuard<'g, State>) -> MutexGuard<'g, State> {
        self.changed
            .wait_timeout(guard, Duration::from_millis(50))
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    fn mark_parked(&self, state: &mut State, cpu: usize, parked: bool) {
        state.parked[cpu] = parked;
        if state.phase == Phase::Stopping
            && state
                .alive
                .iter()
                .zip(&state.parked)
                .all(|(alive, parked)| !alive || *parked)
        {
            state.phase = Phase::Stopped;
        }
        self.changed.notify_all();
    }

    /// Called by a vCPU thread before every entry into the guest: parks while the world is
    /// stopped (serving the debugger's requests), then sets the vCPU's guest debugging.
    pub fn before_run<C: VirtualCpu>(&self, cpu: DebugVcpu<'_, C>) -> Go {
        let DebugVcpu { vcpu, x86, aarch64 } = cpu;
        let id = vcpu.id() as usize;
        let mut state = self.lock();
        if state.shutdown {
            return Go::Stop;
        }
        if state.detached {
            drop(state);
            let _ = vcpu.set_guest_debug(&GuestDebug::default());
            return Go::Run;
        }
        let mut must_park = state.phase != Phase::Running || state.resume[id] == Resume::Hold;
        while must_park {
            self.mark_parked(&mut state, id, true);
            let generation = state.generation;
            while !state.shutdown
                && (state.phase != Phase::Running || state.generation == generation)
            {
                if state.detached {
                    break;
                }
                if let Some((target, _)) = &state.request
                    && *target as usize == id
                    && let Some((_, request)) = state.request.take()
                {
                    drop(state);
                    let access = DebugVcpu {
                        vcpu: &mut *vcpu,
                        x86,
                        aarch64,
                    };
                    let response = self.serve(access, request);
                    state = self.lock();
                    state.response = Some(response);
                    self.changed.notify_all();
                    continue;
                }
                state = self.wait(state);
            }
            state.parked[id] = false;
            if state.shutdown {
                return Go::Stop;
            }
            must_park = !state.detached && state.resume[id] == Resume::Hold;
        }
        let debug = if state.detached {
            GuestDebug::default()
        } else {
            GuestDebug {
                enabled: true,
                single_step: state.resume[id] == Resume::Step,
                software_breakpoints: true,
                hardware: state.breakpoints.hardware,
            }
        };
        drop(state);
        if let Err(error) = vcpu.set_guest_debug(&debug) {
            log::warn!("vCPU {id}: {error}");
        }
        Go::Run
    }

    fn serve<C: VirtualCpu>(&self, cpu: DebugVcpu<'_, C>, request: Request) -> Response {
        let DebugVcpu { vcpu, x86, aarch64 } = cpu;
        let result = match request {
            Request::ReadRegisters => match self.arch {
                GuestArch::X86_64 => x86_64::read_registers(vcpu, x86),
                GuestArch::Aarch64 => aarch64::read_registers(vcpu, aarch64),
            }
            .map(Response::Registers),
            Request::WriteRegisters(registers) => match registers {
                Registers::X86_64(r) => x86_64::write_registers(vcpu, x86, &r),
                Registers::Aarch64(r) => aarch64::write_registers(vcpu, aarch64, &r),
            }
            .map(|()| Response::Done),
            Request::ReadMemory(address, len) => {
                self.read_memory(vcpu, address, len).map(Response::Memory)
            }
            Request::WriteMemory(address, data) => self
                .write_memory(vcpu, address, &data)
                .map(|()| Response::Done),
        };
        result.unwrap_or_else(Response::Failed)
    }

    /// Reads guest-virtual memory as the vCPU's page tables map it: the mapped prefix (an error
    /// if not even the first byte is mapped).
    fn read_memory<C: VirtualCpu>(
        &self,
        vcpu: &mut C,
        address: u64,
        len: usize,
    ) -> Result<Vec<u8>, String> {
        let root = vcpu.page_table_root().map_err(|e| e.to_string())?;
        let door = GuestVirtMemory::new(self.mem, self.arch.page_tables(root));
        let mut buf = vec![0; len];
        let prefix = door.read_prefix(GuestVirtAddr::new(address), &mut buf);
        if prefix.len == 0
            && let Some(stop) = prefix.stop
        {
            return Err(stop.to_string());
        }
        buf.truncate(prefix.len);
        Ok(buf)
    }

    /// Writes guest-virtual memory (all or nothing).
    fn write_memory<C: VirtualCpu>(
        &self,
        vcpu: &mut C,
        address: u64,
        data: &[u8],
    ) -> Result<(), String> {
        let root = vcpu.page_table_root().map_err(|e| e.to_string())?;
        let door = GuestVirtMemory::new(self.mem, self.arch.page_tables(root));
        door.write(GuestVirtAddr::new(address), data)
            .map_err(|e| e.to_string())
    }

    /// The software breakpoint instruction of the guest's architecture.
    fn breakpoint_instruction(&self) -> &'static [u8] {
        match self.arch {
            GuestArch::X86_64 => &[x86_64::INT3],
            GuestArch::Aarch64 => &crate::arch::aarch64::debug::BRK_0,
        }
    }

    /// Called by a vCPU thread after an exit: whether it is a debug event, which then stops the
    /// world (the caller handles the exit as usual otherwise).
    pub fn after_exit<C: VirtualCpu>(&self, vcpu: &mut C, exit: &VcpuExit) -> bool {
        let id = vcpu.id();
        let mut state = self.lock();
        if state.detached || state.shutdown {
            return false;
        }
        let kind = match exit {
            VcpuExit::Debug(DebugExit::SoftwareBreakpoint) => {
                let rip = vcpu.instruction_pointer().unwrap_or(0);
                if !state.breakpoints.software.contains_key(&rip) {
                    // The guest's own breakpoint instruction: as without a debugger.
                    drop(state);
                    if let Err(error) = vcpu.reinject_breakpoint() {
                        log::warn!("vCPU {id}: {error}");
                    }
                    return true;
                }
                StopKind::SoftwareBreakpoint
            }
            // KVM-PVM cannot execute `int3` at all: an emulation failure at one of the
            // debugger's breakpoints is that breakpoint.
            VcpuExit::EmulationFailure { rip, instruction } => {
                let is_int3 = instruction
                    .as_ref()
                    .is_none_or(|i| i.0.first() == Some(&x86_64::INT3));
                if !(is_int3 && state.breakpoints.software.contains_key(rip)) {
                    return false;
                }
                StopKind::SoftwareBreakpoint
            }
            VcpuExit::Debug(DebugExit::SingleStep | DebugExit::Other) => StopKind::Step,
            VcpuExit::Debug(DebugExit::HardwareBreakpoint(_)) => StopKind::HardwareBreakpoint,
            VcpuExit::Debug(DebugExit::Watchpoint(slot)) => {
                match state
                    .breakpoints
                    .hardware
                    .get(*slot as usize)
                    .copied()
                    .flatten()
                {
                    Some(bp) => StopKind::Watchpoint(bp),
                    None => StopKind::Step,
                }
            }
            _ => return false,
        };
        if state.phase == Phase::Running {
            state.phase = Phase::Stopping;
            state.stop = Some((id, kind));
            self.changed.notify_all();
            drop(state);
            (self.kick_all)();
        }
        true
    }

    /// Called when a vCPU thread ends: with the guest's exit code if it called Exit.
    pub fn vcpu_finished(&self, cpu: u32, exit_code: Option<i32>) {
        let mut state = self.lock();
        if let Some(alive) = state.alive.get_mut(cpu as usize) {
            *alive = false;
        }
        if exit_code.is_some() && state.exited.is_none() {
            state.exited = exit_code;
        }
        if state.alive.iter().all(|a| !a) {
            state.ended = true;
        }
        let parked = state.parked.get(cpu as usize).copied().unwrap_or(true);
        self.mark_parked(&mut state, cpu as usize, parked);
    }

    /// The VM is stopping: parked vCPUs leave their loops.
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.changed.notify_all();
    }
}
