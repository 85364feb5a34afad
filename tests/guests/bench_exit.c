/*
 * bench_exit: the cold-start benchmark's guest (benches/uhyve_bench.rs). It exits with code 0 at
 * once: the only hypercall is the Exit the runtime issues when main returns.
 */
#include "uhyve.h"

int main(void)
{
	return 0;
}
