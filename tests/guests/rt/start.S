/*
 * Entry point and ELF note shared by every test guest.
 *
 * uhyve enters here on every vCPU in 64-bit mode with paging on (identity map), interrupts off,
 * RDI = guest-physical address of the boot info, RSI = cpu id and RSP = the LOWEST address of a
 * free 32 KiB stack (hermit-abi.md section 1.5). Like a Hermit kernel we move RSP to the top of that
 * region. Only cpu 0 runs C code; secondaries park in a hlt loop without touching memory, so the
 * guests also work with -c N.
 */
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
2:	cli
	hlt
	jmp 2b
	.size _start, . - _start

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
