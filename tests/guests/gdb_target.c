/*
 * gdb_target: the debuggee of tests/gdb.rs, built with `-g -O0` (tests/guest-images/build.rs) so
 * that GDB sees its symbols, locals and frames. main() calls compute() (non-inlined, with a
 * local), which reads the global `gdb_value`; main then prints "gdb_value = <n>", so a GDB that
 * changes the variable at the breakpoint sees the new value on the console. A loop in
 * count_up() writes the global `gdb_counter` (a watchpoint target). With more than one cpu
 * (uhyve -c 2), cpu 1 runs on_secondary() (a breakpoint target on vCPU 1) and cpu 0 waits for it
 * before it prints "secondary ran". Exits with GDB_TARGET_EXIT_CODE. aarch64/gdb_target.c builds
 * the same guest for aarch64 (tests/gdb_aarch64.rs).
 */
#include "uhyve.h"

#define GDB_TARGET_EXIT_CODE 7
#define LOOP_ROUNDS 5
/* Bound of cpu 0's wait for cpu 1, in pause iterations (the guest must not hang a test). */
#define SECONDARY_WAIT_ROUNDS 4000000000ull

/* Changed by GDB in tests/gdb.rs (`set var gdb_value = N`). */
volatile int gdb_value = 42;
/* Written by count_up(): a watchpoint target. */
volatile int gdb_counter;
/* Set by cpu 1 in on_secondary(). */
static int secondary_ran;

/* The spin-wait hint of the architecture. */
static inline void cpu_relax(void)
{
#ifdef __aarch64__
	__asm__ volatile("yield" ::: "memory");
#else
	__asm__ volatile("pause" ::: "memory");
#endif
}

/* Called by rt/start.S on every secondary, on its own stack. */
void uhyve_rt_secondary(uint64_t boot_info, uint64_t cpu_id);

__attribute__((noinline)) int compute(int input)
{
	int doubled = input * 2;
	int result = doubled + gdb_value;
	return result;
}

__attribute__((noinline)) void count_up(int rounds)
{
	for (int i = 0; i < rounds; i++)
		gdb_counter = gdb_counter + 1;
}

__attribute__((noinline)) void on_secondary(uint64_t cpu_id)
{
	int marker = (int)cpu_id;
	__atomic_store_n(&secondary_ran, marker, __ATOMIC_RELEASE);
}

void uhyve_rt_secondary(uint64_t boot_info, uint64_t cpu_id)
{
	(void)boot_info;
	if (cpu_id == 1)
		on_secondary(cpu_id);
}

int main(void)
{
	int sum = compute(5);
	put_str("compute(5) = ");
	put_dec(sum);
	put_str("\ngdb_value = ");
	put_dec(gdb_value);
	put_str("\n");
	count_up(LOOP_ROUNDS);
	put_str("gdb_counter = ");
	put_dec(gdb_counter);
	put_str("\n");
	if (uhyve_boot_info->num_cpus > 1) {
		uint64_t rounds = 0;
		while (!__atomic_load_n(&secondary_ran, __ATOMIC_ACQUIRE) &&
		       rounds++ < SECONDARY_WAIT_ROUNDS)
			cpu_relax();
		put_str(__atomic_load_n(&secondary_ran, __ATOMIC_ACQUIRE) ? "secondary ran\n"
									  : "secondary did not run\n");
	}
	put_str("gdb_target done\n");
	return GDB_TARGET_EXIT_CODE;
}
