/*
 * Entry point and ELF note shared by every test guest.
 *
 * uhyve enters here on every vCPU at the same time, in 64-bit mode with paging on (identity map),
 * interrupts off, RDI = guest-physical address of the boot info, RSI = cpu id and RSP = the LOWEST
 * address of a free 32 KiB stack (hermit-abi.md sections 1.5 and 4). Every vCPU gets that same RSP,
 * and it belongs to cpu 0: like a Hermit kernel, cpu 0 moves RSP to the top of that region and
 * runs uhyve_rt_start (runtime.c). A secondary (RSI != 0) first switches to its own 16 KiB stack
 * in cpu_stacks below, without touching memory before, then calls
 * uhyve_rt_secondary(boot_info, cpu_id) and parks in a hlt loop when it returns. A cpu id of
 * UHYVE_RT_MAX_CPUS or more has no stack and parks at once.
 *
 * uhyve_rt_secondary is defined weak here (it just returns), so guests that do not care about
 * secondaries need not define it; a guest's own definition replaces it.
 */
#define UHYVE_RT_MAX_CPUS 64
#define UHYVE_RT_CPU_STACK_SHIFT 14 /* 16 KiB per cpu */
#define UHYVE_RT_CPU_STACK_SIZE (1 << UHYVE_RT_CPU_STACK_SHIFT)

	.section .text.start, "ax", @progbits
	.globl _start
	.type _start, @function
_start:
	test %esi, %esi
	jnz 2f
	add $(0x8000 - 0x10), %rsp
	/* rdi = boot info, rsi = cpu id: the first two C arguments already. */
	call uhyve_rt_start
1:	cli
	hlt
	jmp 1b

	/* A secondary. The cpu id is a u32 (hermit-abi.md 1.5): zero-extend it first. */
2:	mov %esi, %esi
	cmp $UHYVE_RT_MAX_CPUS, %rsi
	jae 1b
	/* rsp = cpu_stacks + (id + 1) * stack size - 0x10: 16-byte aligned before the call. */
	lea 1(%rsi), %rax
	shl $UHYVE_RT_CPU_STACK_SHIFT, %rax
	lea cpu_stacks(%rip), %rsp
	add %rax, %rsp
	sub $0x10, %rsp
	call uhyve_rt_secondary
	jmp 1b
	.size _start, . - _start

	.section .text.uhyve_rt_secondary, "ax", @progbits
	.weak uhyve_rt_secondary
	.type uhyve_rt_secondary, @function
uhyve_rt_secondary:
	ret
	.size uhyve_rt_secondary, . - uhyve_rt_secondary

/* One stack per cpu id; cpu_stacks[id] (id >= 1) is the stack of cpu id. Slot 0 stays unused. */
	.section .bss.cpu_stacks, "aw", @nobits
	.globl cpu_stacks
	.type cpu_stacks, @object
	.balign 4096
cpu_stacks:
	.skip UHYVE_RT_MAX_CPUS * UHYVE_RT_CPU_STACK_SIZE
	.size cpu_stacks, . - cpu_stacks

/*
 * The Hermit entry-version note (hermit-abi.md section 1.2): namesz 7, descsz 1, type 0x5A00,
 * name "HERMIT\0" padded to 8, descriptor one byte 4 padded to 4. The linker script puts this
 * section into the PT_NOTE segment.
 */
	.section .note.hermit.entry-version, "a", @note
	.balign 4
	.long 7
	.long 1
	.long 0x5A00
	.asciz "HERMIT"
	.balign 4
	.byte 4
	.balign 4

	.section .note.GNU-stack, "", @progbits
