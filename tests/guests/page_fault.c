/*
 * page_fault: stores to a read-only page must raise the page fault the CPU defines, whoever
 * executes the store. The guest maps one page twice (a read-only and a writable alias) plus a
 * not-present page, sets CR0.WP, installs a #PF handler, and stores with instructions the KVM
 * here executes itself (mov) and with ones that end in uhyve's user-space fallback (movhps,
 * xsave). Each must fault with CR2 = the address and the right error code, and leave the page
 * unchanged. Uses XMM registers only inside the asm statements (the fallback's instructions).
 */
#include "uhyve.h"

#define CR0_WP (1ul << 16)
#define CR4_OSFXSR (1ul << 9)
#define CR4_OSXMMEXCPT (1ul << 10)
#define CR4_OSXSAVE (1ul << 18)
#define PTE_PRESENT 1ul
#define PTE_WRITABLE 2ul
#define PTE_HUGE (1ul << 7)
#define PTE_ADDRESS 0x000ffffffffff000ul

/* The aliases live in the 2 MiB region at 768 MiB, which the guest maps itself. */
#define ALIAS_BASE 0x30000000ul
#define READ_ONLY (ALIAS_BASE + 0x0000)
#define WRITABLE (ALIAS_BASE + 0x1000)
#define NOT_PRESENT (ALIAS_BASE + 0x2000)

#define ERROR_PRESENT 1u
#define ERROR_WRITE 2u

static uint64_t page_table[512] __attribute__((aligned(4096)));
static uint8_t target[4096] __attribute__((aligned(4096)));

struct idt_gate {
	uint16_t offset_low, selector;
	uint8_t ist, type;
	uint16_t offset_mid;
	uint32_t offset_high, reserved;
} __attribute__((packed));

static struct idt_gate idt[15] __attribute__((aligned(16)));

/* Written by the handler. */
volatile uint64_t pf_count, pf_error, pf_address, pf_recovery;

void pf_handler(void);
__asm__(".text\n"
	"pf_handler:\n"
	"	popq pf_error(%rip)\n"
	"	pushq %rax\n"
	"	movq %cr2, %rax\n"
	"	movq %rax, pf_address(%rip)\n"
	"	movq pf_recovery(%rip), %rax\n"
	"	movq %rax, 8(%rsp)\n"
	"	incq pf_count(%rip)\n"
	"	popq %rax\n"
	"	iretq\n");

static void install_handler(void)
{
	uint64_t handler = (uint64_t)pf_handler;
	idt[14] = (struct idt_gate){
		.offset_low = (uint16_t)handler,
		.selector = 0x08,
		.type = 0x8e, /* present, DPL 0, 64-bit interrupt gate */
		.offset_mid = (uint16_t)(handler >> 16),
		.offset_high = (uint32_t)(handler >> 32),
	};
	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) idtr = {sizeof(idt) - 1, (uint64_t)idt};
	__asm__ volatile("lidt %0" ::"m"(idtr));
}

static uint64_t read_cr(int which)
{
	uint64_t value = 0;
	if (which == 0)
		__asm__ volatile("mov %%cr0, %0" : "=r"(value));
	else if (which == 3)
		__asm__ volatile("mov %%cr3, %0" : "=r"(value));
	else
		__asm__ volatile("mov %%cr4, %0" : "=r"(value));
	return value;
}

static void map_aliases(void)
{
	/* Identity-mapped boot tables: the PD covering the first GiB. */
	uint64_t *pml4 = (uint64_t *)(read_cr(3) & PTE_ADDRESS);
	uint64_t *pdpt = (uint64_t *)(pml4[0] & PTE_ADDRESS);
	uint64_t *pd = (uint64_t *)(pdpt[0] & PTE_ADDRESS);
	page_table[0] = (uint64_t)target | PTE_PRESENT;
	page_table[1] = (uint64_t)target | PTE_PRESENT | PTE_WRITABLE;
	page_table[2] = 0;
	pd[ALIAS_BASE >> 21] = (uint64_t)page_table | PTE_PRESENT | PTE_WRITABLE;
	__asm__ volatile("mov %0, %%cr3" ::"r"(read_cr(3)) : "memory");
}

static void set_write_protect(int on)
{
	uint64_t cr0 = read_cr(0);
	cr0 = on ? cr0 | CR0_WP : cr0 & ~CR0_WP;
	__asm__ volatile("mov %0, %%cr0" ::"r"(cr0) : "memory");
}

/* Runs one store at `address`; returns 1 if it faulted (the handler resumes at label 1). */
#define STORE(instruction, address, extra_inputs...)                                               \
	({                                                                                         \
		uint64_t before_ = pf_count;                                                       \
		__asm__ volatile("leaq 1f(%%rip), %%r11\n\t"                                       \
				 "movq %%r11, pf_recovery(%%rip)\n\t" instruction "\n"              \
				 "1:"                                                              \
				 :                                                                 \
				 : "b"(address), ##extra_inputs                                    \
				 : "r11", "memory");                                               \
		pf_count != before_;                                                               \
	})

static void expect_fault(const char *name, int faulted, uint64_t address, uint32_t error)
{
	check(name, faulted, (int64_t)pf_count);
	check("  CR2 names the address", pf_address == address, (int64_t)pf_address);
	check("  error code", pf_error == error, (int64_t)pf_error);
}

static int untouched(void)
{
	for (size_t i = 0; i < sizeof(target); i++)
		if (target[i] != 0)
			return 0;
	return 1;
}

static uint8_t save_area[4096] __attribute__((aligned(64)));

int main(void)
{
	uint64_t cr4 = read_cr(4) | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE;
	__asm__ volatile("mov %0, %%cr4" ::"r"(cr4));
	__asm__ volatile("xsetbv" ::"a"(3), "d"(0), "c"(0));
	install_handler();
	map_aliases();
	set_write_protect(1);
	uint64_t ones = ~0ul;
	__asm__ volatile("movq %0, %%xmm0\n\tmovlhps %%xmm0, %%xmm0" ::"r"(ones));

	/* Reads of the read-only alias work. */
	uint64_t value;
	__asm__ volatile("movq (%1), %0" : "=r"(value) : "r"(READ_ONLY));
	check("read the read-only alias", value == 0 && pf_count == 0, (int64_t)pf_count);

	expect_fault("mov to a read-only page faults (the hypervisor's own store)",
		     STORE("movq %%rbx, (%%rbx)", READ_ONLY), READ_ONLY, ERROR_PRESENT | ERROR_WRITE);
	expect_fault("movhps to a read-only page faults (the fallback's store)",
		     STORE("movhps %%xmm0, 8(%%rbx)", READ_ONLY), READ_ONLY + 8,
		     ERROR_PRESENT | ERROR_WRITE);
	expect_fault("xsave to a read-only page faults", STORE("xsave (%%rbx)", READ_ONLY, "a"(3), "d"(0)),
		     READ_ONLY, ERROR_PRESENT | ERROR_WRITE);
	check("the read-only page is unchanged", untouched(), 0);
	expect_fault("movhps to a not-present page faults", STORE("movhps %%xmm0, (%%rbx)", NOT_PRESENT),
		     NOT_PRESENT, ERROR_WRITE);

	uint64_t count = pf_count;
	STORE("movhps %%xmm0, 16(%%rbx)", WRITABLE);
	check("movhps to the writable alias stores", pf_count == count, (int64_t)pf_count);
	__asm__ volatile("movq 16(%1), %0" : "=r"(value) : "r"(READ_ONLY));
	check("  and the read-only alias sees it", value == ~0ul, (int64_t)value);

	/* Without CR0.WP the kernel may write read-only pages. */
	set_write_protect(0);
	count = pf_count;
	STORE("movhps %%xmm0, 24(%%rbx)", READ_ONLY);
	check("without CR0.WP movhps to a read-only page stores", pf_count == count, (int64_t)pf_count);
	__asm__ volatile("movq 24(%1), %0" : "=r"(value) : "r"(READ_ONLY));
	check("  the value arrived", value == ~0ul, (int64_t)value);
	(void)save_area;
	return check_failures != 0;
}
