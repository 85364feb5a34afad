/*
 * crash (aarch64): crashes on purpose in the way argv[1] selects; uhyve must stop the VM with a
 * non-zero status and a message that names the PC of the crashing instruction, instead of hanging
 * or letting the guest go on. Before crashing the guest prints "<what> at <hex address of the
 * instruction>"; should uhyve let it continue, it prints "survived" and returns 42.
 *
 *   udf   `udf #0`, an undefined instruction. The exception is the guest's own business at EL1
 *         (KVM never sees it): the vectors of rt/start.S print "exception: synchronous from
 *         current EL with SP_ELx: esr 0x2000000 elr <udf address> ..." and "stopping at <hex>",
 *         and then store to offset 0xff8 of the hypercall window, which is no hypercall: uhyve
 *         names that store's PC.
 *   brk   `brk #0x77`, a breakpoint instruction of the guest's own: like udf, the guest's vectors
 *         report it ("esr 0xf2000077 elr <brk address>") and stop. Under a debugger that did not
 *         set it (tests/gdb_aarch64.rs) the guest must see exactly the same.
 *   mmio  a plain 32-bit `str` of 0x1234 to the first address after RAM, which no device serves.
 *         uhyve's page tables map nothing there, so the guest first maps that page (Device-nGnRnE)
 *         into them (uhyve_a64_map_page); the store then reaches uhyve as an MMIO write.
 *   nisv  `stp` of two registers to the Exit address 0x540 in the hypercall window: a store pair
 *         carries no instruction syndrome, so neither KVM nor uhyve can decode it. Both registers
 *         hold the address of an ExitParams with code 0, so a uhyve that took the pair for an Exit
 *         hypercall would end with status 0 (and the test would notice).
 */
#include "../uhyve.h"

#define SURVIVED 42

static int survived(void)
{
	put_str("survived\n");
	return SURVIVED;
}

static void print_at(const char *what, const void *instruction)
{
	put_str(what);
	put_str(" at ");
	put_hex((uint64_t)(uintptr_t)instruction);
	put_str("\n");
}

static __attribute__((noinline)) int crash_udf(void)
{
	extern char crash_udf_instruction[];
	print_at("udf", crash_udf_instruction);
	__asm__ volatile(".globl crash_udf_instruction\n"
			 "crash_udf_instruction: udf #0" : : : "memory");
	return survived();
}

static __attribute__((noinline)) int crash_brk(void)
{
	extern char crash_brk_instruction[];
	print_at("brk", crash_brk_instruction);
	__asm__ volatile(".globl crash_brk_instruction\n"
			 "crash_brk_instruction: brk #0x77" : : : "memory");
	return survived();
}

static __attribute__((noinline)) int crash_mmio(void)
{
	extern char crash_mmio_store[];
	uint64_t target = uhyve_boot_info->phys_addr_end;
	if (uhyve_a64_map_page(target, UHYVE_A64_PAGE_DEVICE) != 0) {
		put_str("cannot map the page after RAM\n");
		return 1;
	}
	put_str("target ");
	put_hex(target);
	put_str("\n");
	print_at("store", crash_mmio_store);
	__asm__ volatile(".globl crash_mmio_store\n"
			 "crash_mmio_store: str %w0, [%x1]"
			 :
			 : "r"(0x1234), "r"(target)
			 : "memory");
	return survived();
}

static __attribute__((noinline)) int crash_nisv(void)
{
	extern char crash_nisv_store[];
	static volatile struct ExitParams exit_zero = {.arg = 0};
	print_at("stp", crash_nisv_store);
	__asm__ volatile(".globl crash_nisv_store\n"
			 "crash_nisv_store: stp %x0, %x0, [%x1]"
			 :
			 : "r"((uint64_t)(uintptr_t)&exit_zero), "r"((uint64_t)UHYVE_PORT_EXIT)
			 : "memory");
	return survived();
}

int main(void)
{
	struct uhyve_args args;
	if (uhyve_get_args(&args) != 0 || args.argc < 2) {
		put_str("usage: crash udf|brk|mmio|nisv\n");
		return 100;
	}
	const char *what = args.argv[1];
	if (strcmp(what, "udf") == 0)
		return crash_udf();
	if (strcmp(what, "brk") == 0)
		return crash_brk();
	if (strcmp(what, "mmio") == 0)
		return crash_mmio();
	if (strcmp(what, "nisv") == 0)
		return crash_nisv();
	put_str("unknown crash\n");
	return 100;
}
