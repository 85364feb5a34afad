/*
 * Entry points, exception vectors and ELF note shared by every aarch64 test guest.
 *
 * _start: uhyve enters here on vCPU 0 at EL1h with DAIF masked and the MMU on (identity map),
 * X0 = guest-physical address of the boot info, X1 = cpu id and SP_EL1 = the LOWEST address of a
 * free 32 KiB stack that ends where the image starts (hermit-abi.md sections 1.5 and 7). Like a
 * Hermit kernel, cpu 0 moves SP to the top of that region; it installs the vectors below and calls
 * uhyve_rt_start(boot_info, cpu_id) (../../rt/runtime.c), which never returns. A cpu that arrives
 * here with a non-zero id (a backend that starts every vCPU at the entry) parks at once.
 *
 * uhyve_a64_secondary_entry: where a guest starts a secondary with PSCI CPU_ON. KVM starts it at
 * EL1 with the MMU off (VA = PA, data accesses of Device type) and X0 = the CPU_ON context. It
 * takes the stack of its MPIDR Aff0 from cpu_stacks, installs the vectors, calls
 * uhyve_a64_secondary(context) (weak here: it does nothing unless a guest defines it) and then
 * switches itself off with PSCI CPU_OFF. Ids of UHYVE_A64_MAX_CPUS or more have no stack and
 * switch off at once.
 *
 * The vectors: KVM never sees an exception the guest takes at EL1 (an undefined instruction, a
 * fault on an unmapped address), and with uhyve's initial VBAR_EL1 = 0 the vector fetch would hit
 * the hypercall window, which KVM answers by injecting another abort, for ever. So every guest
 * installs vectors that report the exception: with the MMU on, uhyve_rt_exception
 * (runtime_a64.c) prints kind, ESR_EL1, ELR_EL1 and FAR_EL1 on a stack of its own; then, MMU on
 * or off, the store at uhyve_rt_stop writes ELR_EL1 to offset UHYVE_A64_STOP_OFFSET of the
 * hypercall window, where no hypercall lives, so uhyve stops the VM and names that store. A
 * second exception while reporting skips the report and goes straight to the stop.
 */
#include "../uhyve_a64.h"

	.section .text.start, "ax", %progbits
	.globl _start
	.type _start, %function
_start:
	cbnz x1, park
	adrp x9, uhyve_rt_vectors
	add x9, x9, :lo12:uhyve_rt_vectors
	msr vbar_el1, x9
	isb
	/* SP = top of the boot stack (uhyve gave its lowest address). x0, x1 are the C arguments. */
	add sp, sp, #(UHYVE_A64_BOOT_STACK_SIZE >> 12), lsl #12
	bl uhyve_rt_start
park:
	wfi
	b park
	.size _start, . - _start

	.section .text.uhyve_a64_secondary_entry, "ax", %progbits
	.globl uhyve_a64_secondary_entry
	.type uhyve_a64_secondary_entry, %function
	.balign 8
uhyve_a64_secondary_entry:
	/* x0 = the CPU_ON context: keep it for the C call. Aff0 = the cpu id. */
	mrs x9, mpidr_el1
	and x9, x9, #0xff
	cbz x9, cpu_off
	cmp x9, #UHYVE_A64_MAX_CPUS
	b.hs cpu_off
	/* sp = cpu_stacks + (id + 1) * stack size: the top of slot id. */
	adrp x10, cpu_stacks
	add x10, x10, :lo12:cpu_stacks
	add x9, x9, #1
	lsl x9, x9, #UHYVE_A64_CPU_STACK_SHIFT
	add sp, x10, x9
	adrp x9, uhyve_rt_vectors
	add x9, x9, :lo12:uhyve_rt_vectors
	msr vbar_el1, x9
	isb
	bl uhyve_a64_secondary
cpu_off:
	/* PSCI CPU_OFF (0x84000002); it only returns if it failed. */
	movz x0, #0x0002
	movk x0, #0x8400, lsl #16
	hvc #0
	b park
	.size uhyve_a64_secondary_entry, . - uhyve_a64_secondary_entry

	.section .text.uhyve_a64_secondary, "ax", %progbits
	.weak uhyve_a64_secondary
	.type uhyve_a64_secondary, %function
uhyve_a64_secondary:
	ret
	.size uhyve_a64_secondary, . - uhyve_a64_secondary

/* 16 vectors of 32 instructions each, 2 KiB aligned (VBAR_EL1 bits 10:0 are RES0). */
	.section .text.uhyve_rt_vectors, "ax", %progbits
	.balign 2048
	.globl uhyve_rt_vectors
uhyve_rt_vectors:
	.irp vector, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
	.balign 128
	mov x0, #\vector
	b uhyve_rt_trap
	.endr
	.size uhyve_rt_vectors, . - uhyve_rt_vectors

	.section .text.uhyve_rt_trap, "ax", %progbits
	.type uhyve_rt_trap, %function
uhyve_rt_trap:
	/* x0 = vector number. The interrupted SP and registers are not trusted. */
	mrs x9, sctlr_el1
	tbz x9, #0, 2f
	adrp x9, trap_entered
	ldr w10, [x9, :lo12:trap_entered]
	cbnz w10, 1f
	mov w10, #1
	str w10, [x9, :lo12:trap_entered]
	adrp x9, trap_stack
	add x9, x9, :lo12:trap_stack
	add sp, x9, #(UHYVE_A64_CPU_STACK_SIZE >> 12), lsl #12
	mrs x1, esr_el1
	mrs x2, elr_el1
	mrs x3, far_el1
	bl uhyve_rt_exception
	/* MMU on: the window's first page is virtual page 0. */
1:	mov x1, #UHYVE_A64_STOP_OFFSET
	b 3f
	/* MMU off: its physical address. */
2:	mov x1, #UHYVE_A64_RAM_BASE
	add x1, x1, #UHYVE_A64_STOP_OFFSET
3:	mrs x0, elr_el1
	.globl uhyve_rt_stop
uhyve_rt_stop:
	str x0, [x1]
4:	wfi
	b 4b
	.size uhyve_rt_trap, . - uhyve_rt_trap

/* One stack per cpu id; slot id (1 … UHYVE_A64_MAX_CPUS - 1) belongs to cpu id, slot 0 is unused. */
	.section .bss.cpu_stacks, "aw", %nobits
	.globl cpu_stacks
	.type cpu_stacks, %object
	.balign 4096
cpu_stacks:
	.skip UHYVE_A64_MAX_CPUS * UHYVE_A64_CPU_STACK_SIZE
	.size cpu_stacks, . - cpu_stacks

/* The stack of the exception report (one report per guest: later exceptions skip it). */
	.section .bss.trap_stack, "aw", %nobits
	.balign 4096
trap_stack:
	.skip UHYVE_A64_CPU_STACK_SIZE
trap_entered:
	.skip 4

/*
 * The Hermit entry-version note (hermit-abi.md section 1.2): namesz 7, descsz 1, type 0x5A00,
 * name "HERMIT\0" padded to 8, descriptor one byte 4 padded to 4. The linker script puts this
 * section into the PT_NOTE segment.
 */
	.section .note.hermit.entry-version, "a", %note
	.balign 4
	.long 7
	.long 1
	.long 0x5A00
	.asciz "HERMIT"
	.balign 4
	.byte 4
	.balign 4

	.section .note.GNU-stack, "", %progbits
