/*
 * emulated: executes, on purpose, the SSE, XSAVE-family and system instructions some KVM hosts
 * cannot emulate (this project's CI machine among them), and checks every result against values
 * known in advance. On such a host uhyve's user-space fallback executes them; on any other KVM the
 * CPU does. Either way each check must print "ok". This is the one test guest allowed to use XMM
 * registers (only inside the asm statements below; the C code stays general-purpose).
 */
#include "uhyve.h"

#define CR4_OSFXSR (1ul << 9)
#define CR4_OSXMMEXCPT (1ul << 10)
#define CR4_OSXSAVE (1ul << 18)

static void enable_sse_and_xsave(void)
{
	uint64_t cr4;
	__asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
	cr4 |= CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE;
	__asm__ volatile("mov %0, %%cr4" ::"r"(cr4));
}

static uint64_t xgetbv0(void)
{
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}

/* a OP b on scalar doubles given as bit patterns; OP is an SSE2 instruction name. */
#define SCALAR_OP(op, a, b)                                                                        \
	({                                                                                         \
		uint64_t result_;                                                                  \
		__asm__ volatile("movq %1, %%xmm0\n\t"                                             \
				 "movq %2, %%xmm1\n\t" op " %%xmm1, %%xmm0\n\t"                    \
				 "movq %%xmm0, %0"                                                 \
				 : "=r"(result_)                                                   \
				 : "r"(a), "r"(b));                                                \
		result_;                                                                           \
	})

static uint64_t xmm0_low(void)
{
	uint64_t value;
	__asm__ volatile("movq %%xmm0, %0" : "=r"(value));
	return value;
}

static void set_xmm0_low(uint64_t value)
{
	__asm__ volatile("movq %0, %%xmm0" ::"r"(value));
}

static uint8_t save_area[4096] __attribute__((aligned(64)));

#define D_1_5 0x3ff8000000000000ull
#define D_3_0 0x4008000000000000ull
#define D_4_5 0x4012000000000000ull
#define D_2_0 0x4000000000000000ull

int main(void)
{
	enable_sse_and_xsave();

	uint64_t xcr0 = xgetbv0();
	check("xgetbv reads XCR0 with x87 enabled", (xcr0 & 1) == 1, (int64_t)xcr0);
	__asm__ volatile("xsetbv" ::"a"(3), "d"(0), "c"(0));
	check("xsetbv enables SSE state", xgetbv0() == 3, (int64_t)xgetbv0());

	uint32_t mxcsr_in = 0x7f80, mxcsr_out = 0;
	__asm__ volatile("ldmxcsr %1\n\tstmxcsr %0" : "=m"(mxcsr_out) : "m"(mxcsr_in));
	check("ldmxcsr/stmxcsr round trip", mxcsr_out == 0x7f80, mxcsr_out);
	mxcsr_in = 0x1f80;
	__asm__ volatile("ldmxcsr %0" ::"m"(mxcsr_in));

	uint64_t sum = SCALAR_OP("addsd", D_3_0, D_1_5);
	check("addsd 3.0 + 1.5", sum == D_4_5, (int64_t)sum);
	uint64_t product = SCALAR_OP("mulsd", D_3_0, D_1_5);
	check("mulsd 3.0 * 1.5", product == D_4_5, (int64_t)product);
	uint64_t quotient = SCALAR_OP("divsd", D_3_0, D_1_5);
	check("divsd 3.0 / 1.5", quotient == D_2_0, (int64_t)quotient);
	uint64_t difference = SCALAR_OP("subsd", D_3_0, D_1_5);
	check("subsd 3.0 - 1.5", difference == D_1_5, (int64_t)difference);
	uint64_t zero = SCALAR_OP("pxor", D_3_0, D_3_0);
	check("pxor clears", zero == 0, (int64_t)zero);
	uint64_t qsum = SCALAR_OP("paddq", 40ull, 2ull);
	check("paddq 40 + 2", qsum == 42, (int64_t)qsum);

	uint8_t below;
	__asm__ volatile("movq %1, %%xmm0\n\tmovq %2, %%xmm1\n\tucomisd %%xmm1, %%xmm0\n\tsetb %0"
			 : "=r"(below)
			 : "r"(D_1_5), "r"(D_3_0));
	check("ucomisd 1.5 < 3.0 sets CF", below == 1, below);

	int64_t truncated;
	__asm__ volatile("movq %1, %%xmm0\n\tcvttsd2si %%xmm0, %0" : "=r"(truncated) : "r"(D_4_5));
	check("cvttsd2si 4.5 = 4", truncated == 4, truncated);
	uint64_t converted;
	__asm__ volatile("cvtsi2sd %1, %%xmm0\n\tmovq %%xmm0, %0" : "=r"(converted) : "r"((int64_t)3));
	check("cvtsi2sd 3 = 3.0", converted == D_3_0, (int64_t)converted);

	/* fxsave/fxrstor: XMM0 sits at byte 160 of the legacy region. */
	set_xmm0_low(0x1122334455667788ull);
	__asm__ volatile("fxsave64 %0" : "=m"(save_area));
	uint64_t saved;
	memcpy(&saved, save_area + 160, 8);
	check("fxsave stores XMM0", saved == 0x1122334455667788ull, (int64_t)saved);
	uint64_t replacement = 0x0102030405060708ull;
	memcpy(save_area + 160, &replacement, 8);
	__asm__ volatile("fxrstor64 %0" ::"m"(save_area));
	check("fxrstor loads XMM0", xmm0_low() == replacement, (int64_t)xmm0_low());

	/* xsave/xrstor of x87 + SSE state: a zeroed area has a valid (zero) header. */
	memset(save_area, 0, sizeof(save_area));
	set_xmm0_low(0x2233445566778899ull);
	__asm__ volatile("xsave64 %0" : "+m"(save_area) : "a"(3), "d"(0));
	memcpy(&saved, save_area + 160, 8);
	check("xsave stores XMM0", saved == 0x2233445566778899ull, (int64_t)saved);
	uint64_t xstate_bv;
	memcpy(&xstate_bv, save_area + 512, 8);
	check("xsave header within XCR0", (xstate_bv & ~3ull) == 0, (int64_t)xstate_bv);
	xstate_bv |= 2;
	memcpy(save_area + 512, &xstate_bv, 8);
	memcpy(save_area + 160, &replacement, 8);
	__asm__ volatile("xrstor64 %0" ::"m"(save_area), "a"(3), "d"(0));
	check("xrstor loads XMM0", xmm0_low() == replacement, (int64_t)xmm0_low());

	uint32_t lo1, hi1, lo2, hi2, aux;
	__asm__ volatile("rdtscp" : "=a"(lo1), "=d"(hi1), "=c"(aux));
	__asm__ volatile("rdtscp" : "=a"(lo2), "=d"(hi2), "=c"(aux));
	uint64_t t1 = ((uint64_t)hi1 << 32) | lo1, t2 = ((uint64_t)hi2 << 32) | lo2;
	check("rdtscp counts forward", t2 > t1, (int64_t)(t2 - t1));

	return check_failures != 0;
}
