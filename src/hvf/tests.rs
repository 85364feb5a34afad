//! The HVF vCPU logic against a scripted fake of Hypervisor.framework's vCPU calls.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::*;
use crate::arch::aarch64::initial_registers;
use crate::arch::aarch64::layout::RAM_BASE;
use crate::exits::{EmulationFallback, ExitServices, GuestExit, LoopVcpu, run_vcpu};
use crate::hypercall::{GuestCommandLine, Hypercalls};
use crate::isolation::FileMap;
use crate::mem::GuestMemory;
use crate::output::{OutputTarget, SerialOutput};

/// A vCPU that replays scripted exits and keeps its registers in maps.
#[derive(Default)]
struct FakeHvf {
    script: VecDeque<HvfExit>,
    regs: HashMap<Reg, u64>,
    sys_regs: HashMap<SysReg, u64>,
}

impl HvfVcpuOps for FakeHvf {
    fn run(&mut self) -> Result<HvfExit, HvfError> {
        self.script.pop_front().ok_or(HvfError {
            call: "hv_vcpu_run",
            code: u32::MAX,
        })
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

const ENTRY: u64 = RAM_BASE + 0x4_0000;

/// ESR_EL2 of a data abort from EL1 with a valid syndrome.
fn data_abort(write: bool, size_log2: u64, register: u64) -> u64 {
    (0x25 << 26)
        | (1 << 25)
        | (1 << 24)
        | (size_log2 << 22)
        | (register << 16)
        | (u64::from(write) << 6)
}

fn store_to(port: u16, register: u8) -> HvfExit {
    HvfExit::Exception {
        syndrome: data_abort(true, 3, u64::from(register)),
        virtual_address: u64::from(port),
        physical_address: RAM_BASE + u64::from(port),
    }
}

fn cpu(script: Vec<HvfExit>) -> HvfCpu<FakeHvf> {
    let mut fake = FakeHvf {
        script: script.into(),
        ..Default::default()
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
        2,
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
    // TCR_EL1.IPS from the vCPU's PARange, not from the value passed in (2).
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
    assert_eq!(vcpu.run().unwrap(), VcpuExit::Debug);
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
        crate::arch::GuestArch::Aarch64,
        Arc::clone(&output),
        FileMap::new(&[], Some(dir.path().to_owned())).unwrap(),
        GuestCommandLine::default(),
    );
    let services = ExitServices {
        mem: &mem,
        hypercalls: &hypercalls,
        fallback: EmulationFallback::new(false),
        stop: AtomicBool::new(false),
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
    };
    let end = run_vcpu(looped, &services, None).unwrap();
    assert_eq!(end, Some(GuestExit(3)));
    // Past the three SerialWriteByte stores; the Exit store is never resumed.
    assert_eq!(vcpu.instruction_pointer().unwrap(), ENTRY + 12);
    output.flush();
    assert_eq!(std::fs::read_to_string(log).unwrap(), "hi\n");
}
