/*
 * bench_sse: the emulation fallback's benchmark guest (benches/uhyve_bench.rs, measurement 7).
 * Like `emulated`, it uses XMM registers on purpose, only inside the asm statements below.
 *
 *   bench_sse float <n>    n iterations of a scalar double kernel: movsd load, mulsd, addsd,
 *                          divsd, movsd store, with the loop control in general registers
 *                          (dec; jnz)
 *   bench_sse memchr <n>   n iterations of a memchr step over 16 bytes: movdqu load, pcmpeqb,
 *                          pmovmskb, then test; jnz; add; dec; jnz in general registers
 *
 * On a KVM that cannot execute SSE every SSE instruction is one emulation-failure exit that
 * uhyve's fallback executes; the benchmark counts them with --stats. Exits 0, or 100 on bad
 * usage, 1 if a result is wrong.
 */
#include "uhyve.h"

#define CR4_OSFXSR (1ul << 9)
#define CR4_OSXMMEXCPT (1ul << 10)

static void enable_sse(void)
{
	uint64_t cr4;
	__asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
	cr4 |= CR4_OSFXSR | CR4_OSXMMEXCPT;
	__asm__ volatile("mov %0, %%cr4" ::"r"(cr4));
}

/* x = (x * 1.0 + 0.0) / 1.0, n times, in memory: the value stays 2.0 (0x4000000000000000). */
static int float_loop(uint32_t n)
{
	static volatile uint64_t x = 0x4000000000000000ull;
	static const uint64_t one = 0x3ff0000000000000ull, zero = 0;
	if (n == 0)
		return 0;
	__asm__ volatile("movq %2, %%xmm1\n\t"
			 "movq %3, %%xmm2\n\t"
			 "movq %2, %%xmm3\n\t"
			 "1: movsd (%1), %%xmm0\n\t"
			 "mulsd %%xmm1, %%xmm0\n\t"
			 "addsd %%xmm2, %%xmm0\n\t"
			 "divsd %%xmm3, %%xmm0\n\t"
			 "movsd %%xmm0, (%1)\n\t"
			 "dec %0\n\t"
			 "jnz 1b"
			 : "+r"(n)
			 : "r"(&x), "r"(one), "r"(zero)
			 : "memory", "cc");
	return x == 0x4000000000000000ull ? 0 : 1;
}

/* n times: compare 16 bytes with the byte 'z' (never there), take the mask, go on. */
static int memchr_loop(uint32_t n)
{
	static const uint8_t block[16] = "abcdefghijklmnop";
	static const uint8_t needle[16] = "zzzzzzzzzzzzzzzz";
	uint32_t found = 0;
	if (n == 0)
		return 0;
	__asm__ volatile("movdqu (%3), %%xmm1\n\t"
			 "1: movdqu (%2), %%xmm0\n\t"
			 "pcmpeqb %%xmm1, %%xmm0\n\t"
			 "pmovmskb %%xmm0, %%eax\n\t"
			 "test %%eax, %%eax\n\t"
			 "jnz 2f\n\t"
			 "add $0, %1\n\t"
			 "dec %0\n\t"
			 "jnz 1b\n\t"
			 "jmp 3f\n\t"
			 "2: mov $1, %1\n\t"
			 "3:"
			 : "+r"(n), "+r"(found)
			 : "r"(block), "r"(needle)
			 : "rax", "memory", "cc");
	return found == 0 ? 0 : 1;
}

int main(void)
{
	struct uhyve_args args;
	int64_t n;
	if (uhyve_get_args(&args) != 0 || args.argc < 3 || parse_int(args.argv[2], &n) != 0 ||
	    n < 0 || n > (int64_t)UINT32_MAX) {
		put_str("usage: bench_sse float|memchr <n>\n");
		return 100;
	}
	enable_sse();
	if (strcmp(args.argv[1], "float") == 0)
		return float_loop((uint32_t)n);
	if (strcmp(args.argv[1], "memchr") == 0)
		return memchr_loop((uint32_t)n);
	put_str("usage: bench_sse float|memchr <n>\n");
	return 100;
}
