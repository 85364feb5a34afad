/*
 * bench_hypercalls: the hypercall round-trip benchmark's guest (benches/uhyve_bench.rs).
 *
 *   bench_hypercalls uart <n>    n Uart hypercalls (port 0x800, byte 'x'; run it with -o none)
 *   bench_hypercalls close <n>   n FileClose hypercalls on fd 0 (answered without a host syscall)
 *
 * The loop is the same three instructions as the benchmark's floor program (out; dec; jnz), so
 * the difference per iteration is the host's handling of one exit. Exits 0, or 100 on bad usage.
 */
#include "uhyve.h"

/* `n` times `out dx, al` (or `out dx, eax` when `wide`), nothing else in the loop. */
static void out_loop(uint16_t port, uint32_t value, uint32_t n, int wide)
{
	if (n == 0)
		return;
	if (wide)
		__asm__ volatile("1: outl %%eax, %%dx\n\t"
				 "dec %%ecx\n\t"
				 "jnz 1b"
				 : "+c"(n)
				 : "a"(value), "d"(port)
				 : "memory", "cc");
	else
		__asm__ volatile("1: outb %%al, %%dx\n\t"
				 "dec %%ecx\n\t"
				 "jnz 1b"
				 : "+c"(n)
				 : "a"(value), "d"(port)
				 : "memory", "cc");
}

int main(void)
{
	struct uhyve_args args;
	int64_t n;
	if (uhyve_get_args(&args) != 0 || args.argc < 3 || parse_int(args.argv[2], &n) != 0 ||
	    n < 0 || n > (int64_t)UINT32_MAX) {
		put_str("usage: bench_hypercalls uart|close <n>\n");
		return 100;
	}
	if (strcmp(args.argv[1], "uart") == 0) {
		out_loop(UHYVE_PORT_UART, 'x', (uint32_t)n, 0);
	} else if (strcmp(args.argv[1], "close") == 0) {
		static volatile struct CloseParams params = {.fd = 0, .ret = -1};
		out_loop(UHYVE_PORT_FILE_CLOSE, uhyve_gpa32(&params), (uint32_t)n, 1);
		if (n > 0 && params.ret != 0)
			return 1;
	} else {
		put_str("usage: bench_hypercalls uart|close <n>\n");
		return 100;
	}
	return 0;
}
