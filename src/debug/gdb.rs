//! The GDB remote server of `-s/--gdb-port`, built on the `gdbstub` crate: every vCPU is a GDB
//! thread (thread id = vCPU id + 1), and one stopping stops all ([`Debugger`]). The target
//! description is the guest's: `gdbstub_arch`'s x86_64 (with SSE) or aarch64.

use std::net::{TcpListener, TcpStream};
use std::num::NonZeroUsize;
use std::time::Duration;

use std::marker::PhantomData;

use gdbstub::arch::Arch;
use gdbstub::common::{Signal, Tid};
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub, MultiThreadStopReason};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::section_offsets::{Offsets, SectionOffsets, SectionOffsetsOps};
use gdbstub::target::{Target, TargetError, TargetResult};

use super::{Debugger, Phase, Registers, Request, Response, Resume, StopKind};
use crate::arch::GuestArch;
use crate::hypervisor::{HardwareBreakpoint, HardwareBreakpointKind};

/// What the server needs of a `gdbstub_arch` architecture besides its target description.
trait GuestArchitecture: Arch<Usize = u64, BreakpointKind = usize> {
    /// Its watchpoints can match reads alone (x86 debug registers cannot).
    const READ_WATCHPOINTS: bool;
    /// GDB's registers from a vCPU's (`None` if they are of another architecture).
    fn from_vcpu(registers: Registers) -> Option<Self::Registers>;
    /// A vCPU's registers from GDB's.
    fn to_vcpu(registers: &Self::Registers) -> Registers;
}

impl GuestArchitecture for gdbstub_arch::x86::X86_64_SSE {
    const READ_WATCHPOINTS: bool = false;

    fn from_vcpu(registers: Registers) -> Option<Self::Registers> {
        match registers {
            Registers::X86_64(r) => Some(*r),
            Registers::Aarch64(_) => None,
        }
    }

    fn to_vcpu(registers: &Self::Registers) -> Registers {
        Registers::X86_64(Box::new(registers.clone()))
    }
}

impl GuestArchitecture for gdbstub_arch::aarch64::AArch64 {
    const READ_WATCHPOINTS: bool = true;

    fn from_vcpu(registers: Registers) -> Option<Self::Registers> {
        match registers {
            Registers::Aarch64(r) => Some(*r),
            Registers::X86_64(_) => None,
        }
    }

    fn to_vcpu(registers: &Self::Registers) -> Registers {
        Registers::Aarch64(Box::new(registers.clone()))
    }
}

/// gdbstub's packet buffer (its default), advertised to GDB as `PacketSize`.
const PACKET_BUFFER: usize = 4096;
/// The longest memory read GDB itself asks for: its hex reply must fit one packet. gdbstub splits
/// a longer `m` request (only a malformed client sends one, e.g. `m0,ffffffffffffffff`) into
/// reads of a whole buffer each and streams them: refusing those ends such a request with an
/// error instead of an endless reply.
const MAX_READ: usize = PACKET_BUFFER / 2;

/// How often the server looks for a stopping VM while it waits for GDB to connect.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// How a debugging session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The guest ended (GDB was told).
    GuestEnded,
    /// GDB detached or went away: the guest runs on.
    Detached,
    /// GDB killed the guest.
    Killed,
}

fn tid(cpu: u32) -> Tid {
    NonZeroUsize::new(cpu as usize + 1).unwrap_or(NonZeroUsize::MIN)
}

fn cpu_of(tid: Tid) -> u32 {
    (tid.get() - 1) as u32
}

impl Debugger<'_> {
    /// Runs `request` on the parked vCPU `cpu`.
    fn request(&self, cpu: u32, request: Request) -> Response {
        let mut state = self.lock();
        if !state.alive.get(cpu as usize).copied().unwrap_or(false) {
            return Response::Failed(format!("vCPU {cpu} does not exist"));
        }
        state.response = None;
        state.request = Some((cpu, request));
        self.changed.notify_all();
        loop {
            if let Some(response) = state.response.take() {
                return response;
            }
            if state.shutdown || !state.alive[cpu as usize] {
                state.request = None;
                return Response::Failed(format!("vCPU {cpu} is gone"));
            }
            state = self.wait(state);
        }
    }

    /// Any vCPU that can serve a memory request.
    fn first_alive(&self) -> u32 {
        let state = self.lock();
        state.alive.iter().position(|a| *a).unwrap_or(0) as u32
    }

    fn resume_all(&self) {
        let mut state = self.lock();
        state.phase = Phase::Running;
        state.stop = None;
        state.generation += 1;
        self.changed.notify_all();
    }

    /// GDB asked to stop (Ctrl-C).
    fn interrupt(&self) {
        let mut state = self.lock();
        if state.phase == Phase::Running {
            state.phase = Phase::Stopping;
            state.stop = Some((0, StopKind::Interrupted));
            drop(state);
            (self.kick_all)();
        }
    }

    fn detach(&self) {
        let mut state = self.lock();
        state.detached = true;
        state.phase = Phase::Running;
        state.generation += 1;
        self.changed.notify_all();
    }

    /// The stop GDB is told of, once the world has stopped or the guest ended.
    fn poll_stop(&self) -> Option<MultiThreadStopReason<u64>> {
        let state = self.lock();
        if let Some(code) = state.exited {
            return Some(MultiThreadStopReason::Exited(code as u8));
        }
        if state.ended || state.shutdown {
            return Some(MultiThreadStopReason::Terminated(Signal::SIGKILL));
        }
        if state.phase != Phase::Stopped {
            return None;
        }
        let (cpu, kind) = state.stop?;
        let tid = tid(cpu);
        Some(match kind {
            StopKind::Interrupted => MultiThreadStopReason::SignalWithThread {
                tid,
                signal: Signal::SIGINT,
            },
            StopKind::Step => MultiThreadStopReason::SignalWithThread {
                tid,
                signal: Signal::SIGTRAP,
            },
            StopKind::SoftwareBreakpoint => MultiThreadStopReason::SwBreak(tid),
            StopKind::HardwareBreakpoint => MultiThreadStopReason::HwBreak(tid),
            StopKind::Watchpoint(bp) => MultiThreadStopReason::Watch {
                tid,
                kind: match bp.kind {
                    HardwareBreakpointKind::Write => WatchKind::Write,
                    HardwareBreakpointKind::Read => WatchKind::Read,
                    _ => WatchKind::ReadWrite,
                },
                addr: bp.address,
            },
        })
    }

    /// Waits until the world has stopped before the first instruction.
    fn wait_initial_stop(&self) {
        let mut state = self.lock();
        while state.phase != Phase::Stopped && !state.shutdown && !state.ended {
            state = self.wait(state);
        }
    }
}

/// The `gdbstub` target: the debugger of one VM whose guests have architecture `A`.
struct GdbTarget<'d, 'k, A> {
    debugger: &'d Debugger<'k>,
    /// The vCPUs GDB named an action for in the resume being prepared.
    named: std::collections::BTreeSet<u32>,
    arch: PhantomData<A>,
}

fn failed<T>(response: Response) -> Result<T, TargetError<String>> {
    match response {
        Response::Failed(message) => {
            log::debug!("gdb request failed: {message}");
            Err(TargetError::NonFatal)
        }
        _ => Err(TargetError::NonFatal),
    }
}

impl<A: GuestArchitecture> Target for GdbTarget<'_, '_, A> {
    type Arch = A;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_section_offsets(&mut self) -> Option<SectionOffsetsOps<'_, Self>> {
        Some(self)
    }

    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }
}

impl<A: GuestArchitecture> SectionOffsets for GdbTarget<'_, '_, A> {
    /// A position-independent kernel (every Hermit image) runs where uhyve placed it: GDB moves
    /// the symbols of its file by the load bias, so `gdb app -ex 'target remote …'` just works.
    fn get_section_offsets(&mut self) -> Result<Offsets<u64>, Self::Error> {
        let bias = self.debugger.load_bias;
        Ok(Offsets::Sections {
            text: bias,
            data: bias,
            bss: Some(bias),
        })
    }
}

impl<A: GuestArchitecture> MultiThreadBase for GdbTarget<'_, '_, A> {
    fn read_registers(&mut self, regs: &mut A::Registers, tid: Tid) -> TargetResult<(), Self> {
        match self.debugger.request(cpu_of(tid), Request::ReadRegisters) {
            Response::Registers(r) => {
                *regs = A::from_vcpu(r).ok_or(TargetError::NonFatal)?;
                Ok(())
            }
            other => failed(other),
        }
    }

    fn write_registers(&mut self, regs: &A::Registers, tid: Tid) -> TargetResult<(), Self> {
        let request = Request::WriteRegisters(A::to_vcpu(regs));
        match self.debugger.request(cpu_of(tid), request) {
            Response::Done => Ok(()),
            other => failed(other),
        }
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        if data.len() > MAX_READ {
            return Err(TargetError::NonFatal);
        }
        let request = Request::ReadMemory(start, data.len());
        match self.debugger.request(cpu_of(tid), request) {
            Response::Memory(bytes) => {
                let mut bytes = bytes;
                // GDB sees its own breakpoints as the original bytes.
                let state = self.debugger.lock();
                let first = start.saturating_sub(8);
                for (address, original) in state.breakpoints.software.range(first..) {
                    for (i, byte) in original.iter().enumerate() {
                        let Some(at) = address
                            .checked_add(i as u64)
                            .and_then(|a| a.checked_sub(start))
                        else {
                            continue;
                        };
                        if let Some(slot) = bytes.get_mut(at as usize) {
                            *slot = *byte;
                        }
                    }
                    if address.saturating_sub(start) >= bytes.len() as u64 {
                        break;
                    }
                }
                if bytes.is_empty() {
                    // Nothing mapped there: an error for GDB (`E..`), not an empty reply.
                    return Err(TargetError::NonFatal);
                }
                data[..bytes.len()].copy_from_slice(&bytes);
                Ok(bytes.len())
            }
            other => failed(other),
        }
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let request = Request::WriteMemory(start, data.to_vec());
        match self.debugger.request(cpu_of(tid), request) {
            Response::Done => Ok(()),
            other => failed(other),
        }
    }

    fn list_active_threads(
        &mut self,
        thread_is_active: &mut dyn FnMut(Tid),
    ) -> Result<(), Self::Error> {
        let alive = self.debugger.lock().alive.clone();
        for (cpu, _) in alive.iter().enumerate().filter(|(_, a)| **a) {
            thread_is_active(tid(cpu as u32));
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl<A: GuestArchitecture> MultiThreadResume for GdbTarget<'_, '_, A> {
    fn resume(&mut self) -> Result<(), Self::Error> {
        {
            // While one vCPU steps, the others stay stopped.
            let mut state = self.debugger.lock();
            if state.resume.contains(&Resume::Step) {
                for resume in state.resume.iter_mut().filter(|r| **r != Resume::Step) {
                    *resume = Resume::Hold;
                }
            }
        }
        self.debugger.resume_all();
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        // gdbstub's contract: a thread GDB names no action for continues (`vCont;c` and
        // `vCont;c:p1.-1` name none), unless GDB asks for scheduler locking.
        self.debugger.lock().resume.fill(Resume::Continue);
        self.named.clear();
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        if let Some(resume) = self.debugger.lock().resume.get_mut(cpu_of(tid) as usize) {
            *resume = Resume::Continue;
        }
        self.named.insert(cpu_of(tid));
        Ok(())
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl<A: GuestArchitecture> MultiThreadSingleStep for GdbTarget<'_, '_, A> {
    fn set_resume_action_step(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        if let Some(resume) = self.debugger.lock().resume.get_mut(cpu_of(tid) as usize) {
            *resume = Resume::Step;
        }
        self.named.insert(cpu_of(tid));
        Ok(())
    }
}

impl<A: GuestArchitecture> MultiThreadSchedulerLocking for GdbTarget<'_, '_, A> {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        // Only the vCPUs GDB named run (`stepi` sends `vCont;s:p1.1` alone).
        let mut state = self.debugger.lock();
        for (cpu, resume) in state.resume.iter_mut().enumerate() {
            if !self.named.contains(&(cpu as u32)) {
                *resume = Resume::Hold;
            }
        }
        Ok(())
    }
}

impl<A: GuestArchitecture> Breakpoints for GdbTarget<'_, '_, A> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl<A: GuestArchitecture> SwBreakpoint for GdbTarget<'_, '_, A> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self
            .debugger
            .lock()
            .breakpoints
            .software
            .contains_key(&addr)
        {
            return Ok(true);
        }
        let cpu = self.debugger.first_alive();
        let instruction = self.debugger.breakpoint_instruction();
        let request = Request::ReadMemory(addr, instruction.len());
        let Response::Memory(original) = self.debugger.request(cpu, request) else {
            return Ok(false);
        };
        if original.len() != instruction.len() {
            return Ok(false);
        }
        let request = Request::WriteMemory(addr, instruction.to_vec());
        if !matches!(self.debugger.request(cpu, request), Response::Done) {
            return Ok(false);
        }
        self.debugger
            .lock()
            .breakpoints
            .software
            .insert(addr, original);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let Some(original) = self.debugger.lock().breakpoints.software.remove(&addr) else {
            return Ok(false);
        };
        let cpu = self.debugger.first_alive();
        let request = Request::WriteMemory(addr, original);
        Ok(matches!(
            self.debugger.request(cpu, request),
            Response::Done
        ))
    }
}

impl<A: GuestArchitecture> GdbTarget<'_, '_, A> {
    fn add_hardware(&mut self, bp: HardwareBreakpoint) -> bool {
        let mut state = self.debugger.lock();
        match state
            .breakpoints
            .hardware
            .iter_mut()
            .find(|slot| slot.is_none())
        {
            Some(slot) => {
                *slot = Some(bp);
                true
            }
            None => false,
        }
    }

    fn remove_hardware(&mut self, bp: HardwareBreakpoint) -> bool {
        let mut state = self.debugger.lock();
        match state
            .breakpoints
            .hardware
            .iter_mut()
            .find(|slot| **slot == Some(bp))
        {
            Some(slot) => {
                *slot = None;
                true
            }
            None => false,
        }
    }
}

fn execute_at(address: u64) -> HardwareBreakpoint {
    HardwareBreakpoint {
        address,
        kind: HardwareBreakpointKind::Execute,
        len: 1,
    }
}

fn watch<A: GuestArchitecture>(
    address: u64,
    len: u64,
    kind: WatchKind,
) -> Option<HardwareBreakpoint> {
    let len = u8::try_from(len)
        .ok()
        .filter(|l| matches!(l, 1 | 2 | 4 | 8))?;
    let kind = match kind {
        WatchKind::Write => HardwareBreakpointKind::Write,
        WatchKind::Read if A::READ_WATCHPOINTS => HardwareBreakpointKind::Read,
        // Without read-only data breakpoints (x86) reads are watched with writes.
        WatchKind::Read | WatchKind::ReadWrite => HardwareBreakpointKind::ReadWrite,
    };
    Some(HardwareBreakpoint { address, kind, len })
}

impl<A: GuestArchitecture> HwBreakpoint for GdbTarget<'_, '_, A> {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.add_hardware(execute_at(addr)))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.remove_hardware(execute_at(addr)))
    }
}

impl<A: GuestArchitecture> HwWatchpoint for GdbTarget<'_, '_, A> {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(watch::<A>(addr, len, kind).is_some_and(|bp| self.add_hardware(bp)))
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(watch::<A>(addr, len, kind).is_some_and(|bp| self.remove_hardware(bp)))
    }
}

/// The blocking event loop: GDB's bytes and the world's stops.
enum EventLoop<'d, 'k, A> {
    #[allow(dead_code)]
    Marker(PhantomData<(&'d Debugger<'k>, A)>),
}

impl<'d, 'k, A: GuestArchitecture> BlockingEventLoop for EventLoop<'d, 'k, A> {
    type Target = GdbTarget<'d, 'k, A>;
    type Connection = TcpStream;
    type StopReason = MultiThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut Self::Target,
        conn: &mut Self::Connection,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<String, std::io::Error>> {
        loop {
            if let Some(stop) = target.debugger.poll_stop() {
                return Ok(Event::TargetStopped(stop));
            }
            match conn.peek() {
                Ok(Some(_)) => {
                    let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                    return Ok(Event::IncomingData(byte));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(error) => return Err(WaitForStopReasonError::Connection(error)),
            }
        }
    }

    fn on_interrupt(target: &mut Self::Target) -> Result<Option<Self::StopReason>, String> {
        target.debugger.interrupt();
        Ok(None)
    }
}

/// Waits for GDB's connection on `listener`; `None` if the VM stops first (a stop signal, the
/// guest cannot run) or the listener fails (then the guest runs on without a debugger).
fn accept(listener: &TcpListener, debugger: &Debugger<'_>, address: &str) -> Option<TcpStream> {
    // Polled, so that a stopping VM is noticed while nobody connects.
    if let Err(error) = listener.set_nonblocking(true) {
        log::warn!("GDB server on {address}: {error}");
    }
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(error) = stream.set_nonblocking(false) {
                    log::error!("GDB connection on {address}: {error}");
                    debugger.detach();
                    return None;
                }
                return Some(stream);
            }
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                if debugger.lock().shutdown {
                    return None;
                }
                std::thread::sleep(ACCEPT_POLL);
            }
            Err(error) => {
                log::error!("GDB server on {address}: {error}");
                debugger.detach();
                return None;
            }
        }
    }
}

/// Waits for GDB on `listener`, then serves it until the guest ends, GDB detaches or kills.
pub fn serve(listener: &TcpListener, debugger: &Debugger<'_>) -> SessionEnd {
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    eprintln!("uhyve: waiting for GDB on {address} (target remote {address})");
    let Some(stream) = accept(listener, debugger, &address) else {
        return SessionEnd::Detached;
    };
    let _ = stream.set_nodelay(true);
    debugger.wait_initial_stop();
    let end = match debugger.arch {
        GuestArch::X86_64 => session::<gdbstub_arch::x86::X86_64_SSE>(stream, debugger),
        GuestArch::Aarch64 => session::<gdbstub_arch::aarch64::AArch64>(stream, debugger),
    };
    if end == SessionEnd::Detached {
        // Remove the breakpoints and let the guest run on.
        let software: Vec<_> = std::mem::take(&mut debugger.lock().breakpoints.software)
            .into_iter()
            .collect();
        let cpu = debugger.first_alive();
        for (address, original) in software {
            debugger.request(cpu, Request::WriteMemory(address, original));
        }
        debugger.detach();
    }
    end
}

/// Serves one GDB connection for a guest of architecture `A`.
fn session<A: GuestArchitecture>(stream: TcpStream, debugger: &Debugger<'_>) -> SessionEnd {
    let mut target = GdbTarget::<A> {
        debugger,
        named: std::collections::BTreeSet::new(),
        arch: PhantomData,
    };
    match GdbStub::new(stream).run_blocking::<EventLoop<'_, '_, A>>(&mut target) {
        Ok(DisconnectReason::TargetExited(_) | DisconnectReason::TargetTerminated(_)) => {
            SessionEnd::GuestEnded
        }
        Ok(DisconnectReason::Kill) => SessionEnd::Killed,
        Ok(DisconnectReason::Disconnect) => SessionEnd::Detached,
        Err(error) => {
            log::warn!("GDB connection ended: {error}");
            SessionEnd::Detached
        }
    }
}
