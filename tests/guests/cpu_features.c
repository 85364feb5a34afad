/*
 * cpu_features: what a guest's OS-aware feature detection concludes. Like a Hermit kernel, it
 * enables every XSAVE state component CPUID leaf 0xD offers (x87, SSE, AVX and AVX-512 as
 * architecture allows), then decides like Rust's is_x86_feature_detected!: an AVX-family
 * extension is usable only if CPUID lists it, CR4.OSXSAVE is set and XCR0 (read back with
 * XGETBV) holds its state. Prints one line per extension. Uses XSETBV/XGETBV on purpose.
 */
#include "uhyve.h"

#define CR4_OSFXSR (1ul << 9)
#define CR4_OSXMMEXCPT (1ul << 10)
#define CR4_OSXSAVE (1ul << 18)

struct cpuid_result {
	uint32_t eax, ebx, ecx, edx;
};

static struct cpuid_result cpuid(uint32_t leaf, uint32_t subleaf)
{
	struct cpuid_result r;
	__asm__ volatile("cpuid" : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx) : "a"(leaf), "c"(subleaf));
	return r;
}

static uint64_t xgetbv0(void)
{
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}

static void report(const char *name, int listed, int usable)
{
	put_str("feature ");
	put_str(name);
	put_str(": cpuid=");
	put_dec(listed);
	put_str(" usable=");
	put_dec(usable);
	put_str("\n");
}

static int bit(uint32_t value, int n)
{
	return (value >> n) & 1;
}

int main(void)
{
	uint64_t cr4;
	__asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
	cr4 |= CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE;
	__asm__ volatile("mov %0, %%cr4" ::"r"(cr4));

	struct cpuid_result leaf1 = cpuid(1, 0), leaf7 = cpuid(7, 0), xsave = cpuid(0xd, 0);
	struct cpuid_result ext = cpuid(0x80000001, 0);
	uint64_t offered = ((uint64_t)xsave.edx << 32) | xsave.eax;
	uint64_t wanted = 0x3;
	if ((offered & 0x4) && bit(leaf1.ecx, 28))
		wanted |= 0x4;
	if ((wanted & 0x4) && (offered & 0xe0) == 0xe0)
		wanted |= 0xe0;
	__asm__ volatile("xsetbv" ::"a"((uint32_t)wanted), "d"((uint32_t)(wanted >> 32)), "c"(0));
	uint64_t xcr0 = xgetbv0();
	put_str("xcr0 written=");
	put_hex(wanted);
	put_str(" read=");
	put_hex(xcr0);
	put_str("\n");

	int osxsave = bit(cpuid(1, 0).ecx, 27);
	int avx_state = osxsave && (xcr0 & 6) == 6;
	int avx512_state = avx_state && (xcr0 & 0xe0) == 0xe0;
	report("sse2", bit(leaf1.edx, 26), bit(leaf1.edx, 26));
	report("avx", bit(leaf1.ecx, 28), bit(leaf1.ecx, 28) && avx_state);
	report("fma", bit(leaf1.ecx, 12), bit(leaf1.ecx, 12) && avx_state);
	report("f16c", bit(leaf1.ecx, 29), bit(leaf1.ecx, 29) && avx_state);
	report("avx2", bit(leaf7.ebx, 5), bit(leaf7.ebx, 5) && avx_state);
	report("avx512f", bit(leaf7.ebx, 16), bit(leaf7.ebx, 16) && avx512_state);
	report("lzcnt", bit(ext.ecx, 5), bit(ext.ecx, 5));
	report("sse4a", bit(ext.ecx, 6), bit(ext.ecx, 6));
	return 0;
}
