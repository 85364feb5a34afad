/*
 * smp: multi-core behaviour (uhyve -c N). Every vCPU enters _start at once (rt/start.S); cpu 0 runs
 * main(), each secondary gets its own stack and runs uhyve_rt_secondary() below. Cpu 0 fetches
 * argv, stores the mode in `mode` and then releases the secondaries through the atomic flag
 * `released`; every cross-cpu variable is accessed with __atomic builtins (lock-prefixed
 * read-modify-writes), general-purpose registers only.
 *
 * Modes (argv[1]):
 *   checkin           every cpu increments a counter and fills its slot; cpu 0 waits for
 *                     num_cpus check-ins, verifies the slots and the secondaries' stacks, prints
 *                     "checked in: <n>" and exits with 100 + n.
 *   exit_from_cpu1    cpu 1 prints "cpu1 exiting" and exits with 7 while cpu 0 spins forever with
 *                     interrupts off: uhyve must stop cpu 0 itself.
 *   concurrent_print  cpus 0 and 1 each print 200 lines of 100 bytes, one SerialWriteBuffer
 *                     hypercall per line ("cpu0 line 017 xxx...x\n"); cpu 0 exits 0 once both
 *                     are done.
 *   crash_cpu1        cpu 1 triple-faults (zero-limit IDT, then ud2) while cpu 0 spins forever.
 *   flood_then_exit   cpu 1 prints lines of LINE_LEN bytes for ever; once it has started line
 *                     FLOOD_LINES (more than a 64 KiB pipe holds) and about half a second more has
 *                     passed, cpu 0 exits with 9. With a host stdout nobody reads, cpu 1 is then
 *                     blocked in its console write: uhyve must still end with 9.
 *
 * Every wait of cpu 0 is bounded by WAIT_SECONDS of TSC time, so a uhyve that does not start the
 * secondaries makes the guest fail (exit 1 with a message) instead of hanging.
 */
#include "uhyve.h"

/* Must match UHYVE_RT_MAX_CPUS and the stack size in rt/start.S. */
#define MAX_CPUS 64
#define CPU_STACK_SIZE 0x4000

#define WAIT_SECONDS 20
/* TSC rate assumed when the boot info carries no cpu_freq (a high guess waits longer). */
#define FALLBACK_TSC_KHZ 5000000ull

#define PRINT_LINES 200
#define LINE_LEN 100
#define EXIT_CODE_FROM_CPU1 7
#define FLOOD_LINES 600
#define EXIT_CODE_AFTER_FLOOD 9

/* The .bss stacks of the secondaries, defined in rt/start.S. */
extern unsigned char cpu_stacks[];

/* Called by rt/start.S on every secondary, on its own stack. */
void uhyve_rt_secondary(uint64_t boot_info, uint64_t cpu_id);

enum mode {
	MODE_NONE,
	MODE_CHECKIN,
	MODE_EXIT_FROM_CPU1,
	MODE_CONCURRENT_PRINT,
	MODE_CRASH_CPU1,
	MODE_FLOOD_THEN_EXIT,
};

static int mode;
static int released;
static uint64_t checked_in;
/* Written by cpu i: SLOT_MAGIC | i, and the address of a local on its stack. */
static uint64_t slots[MAX_CPUS];
static uint64_t stack_marks[MAX_CPUS];
static int cpu1_done;
static uint64_t flood_lines_started;

#define SLOT_MAGIC 0x5a17000000000000ull

static inline void cpu_relax(void)
{
	__asm__ volatile("pause" ::: "memory");
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

__attribute__((noreturn)) static void spin_forever(void)
{
	__asm__ volatile("cli\n1: jmp 1b" ::: "memory");
	__builtin_unreachable();
}

/* TSC value after which cpu 0 gives up waiting. */
static uint64_t wait_deadline(void)
{
	uint64_t khz = uhyve_boot_info->cpu_freq ? uhyve_boot_info->cpu_freq : FALLBACK_TSC_KHZ;
	return rdtsc() + WAIT_SECONDS * 1000 * khz;
}

/* Waits until *value >= target; returns 0, or -1 when the deadline passes first. */
static int wait_for(const uint64_t *value, uint64_t target)
{
	uint64_t deadline = wait_deadline();
	while (__atomic_load_n(value, __ATOMIC_ACQUIRE) < target) {
		if (rdtsc() > deadline)
			return -1;
		cpu_relax();
	}
	return 0;
}

static void checkin(uint64_t cpu_id)
{
	/* A local on this cpu's own stack: its address tells cpu 0 which stack was used. */
	volatile uint64_t local = SLOT_MAGIC | cpu_id;
	__atomic_store_n(&stack_marks[cpu_id], (uint64_t)(uintptr_t)&local, __ATOMIC_RELAXED);
	__atomic_store_n(&slots[cpu_id], local, __ATOMIC_RELAXED);
	__atomic_fetch_add(&checked_in, 1, __ATOMIC_RELEASE);
}

/* Writes "cpu<id> line <nnn> xxx...x\n" (LINE_LEN bytes) into `line`. */
static void format_line(char *line, uint64_t cpu_id, int number)
{
	memset(line, 'x', LINE_LEN);
	memcpy(line, "cpu", 3);
	line[3] = (char)('0' + cpu_id);
	memcpy(line + 4, " line ", 6);
	line[10] = (char)('0' + number / 100);
	line[11] = (char)('0' + number / 10 % 10);
	line[12] = (char)('0' + number % 10);
	line[13] = ' ';
	line[LINE_LEN - 1] = '\n';
}

static void print_lines(uint64_t cpu_id)
{
	char line[LINE_LEN];
	for (int i = 0; i < PRINT_LINES; i++) {
		format_line(line, cpu_id, i);
		hc_write_buffer(line, LINE_LEN);
	}
}

__attribute__((noreturn)) static void triple_fault(void)
{
	struct __attribute__((packed)) {
		uint16_t limit;
		uint64_t base;
	} idt = {0, 0};
	__asm__ volatile("lidt %0\n\tud2" : : "m"(idt) : "memory");
	__builtin_unreachable();
}

void uhyve_rt_secondary(uint64_t boot_info, uint64_t cpu_id)
{
	(void)boot_info;
	while (!__atomic_load_n(&released, __ATOMIC_ACQUIRE))
		cpu_relax();
	switch (__atomic_load_n(&mode, __ATOMIC_RELAXED)) {
	case MODE_CHECKIN:
		checkin(cpu_id);
		break;
	case MODE_EXIT_FROM_CPU1:
		if (cpu_id == 1) {
			put_str("cpu1 exiting\n");
			hc_exit(EXIT_CODE_FROM_CPU1);
		}
		break;
	case MODE_CONCURRENT_PRINT:
		if (cpu_id == 1) {
			print_lines(1);
			__atomic_store_n(&cpu1_done, 1, __ATOMIC_RELEASE);
		}
		break;
	case MODE_CRASH_CPU1:
		if (cpu_id == 1)
			triple_fault();
		break;
	case MODE_FLOOD_THEN_EXIT:
		if (cpu_id == 1) {
			char line[LINE_LEN];
			for (int i = 0;; i++) {
				format_line(line, 1, i % 1000);
				__atomic_fetch_add(&flood_lines_started, 1, __ATOMIC_RELEASE);
				hc_write_buffer(line, LINE_LEN);
			}
		}
		break;
	default:
		break;
	}
}

static int fail(const char *message)
{
	put_str("smp: ");
	put_str(message);
	put_str("\n");
	return 1;
}

static int run_checkin(uint64_t num_cpus)
{
	checkin(0);
	if (wait_for(&checked_in, num_cpus) != 0) {
		put_str("smp: only ");
		put_dec((int64_t)__atomic_load_n(&checked_in, __ATOMIC_ACQUIRE));
		put_str(" of ");
		put_dec((int64_t)num_cpus);
		put_str(" cpus checked in\n");
		return 1;
	}
	uint64_t count = __atomic_load_n(&checked_in, __ATOMIC_ACQUIRE);
	if (count != num_cpus)
		return fail("more check-ins than cpus");
	int bad = 0;
	for (uint64_t i = 0; i < num_cpus; i++) {
		uint64_t slot = __atomic_load_n(&slots[i], __ATOMIC_RELAXED);
		uint64_t mark = __atomic_load_n(&stack_marks[i], __ATOMIC_RELAXED);
		uintptr_t low = (uintptr_t)cpu_stacks + i * CPU_STACK_SIZE;
		/* Cpu 0 runs on the boot stack; every secondary must be on its own slice. */
		int stack_ok = i == 0 ? (mark < (uintptr_t)cpu_stacks ||
					 mark >= (uintptr_t)cpu_stacks + MAX_CPUS * CPU_STACK_SIZE)
				      : (mark >= low && mark < low + CPU_STACK_SIZE);
		if (slot != (SLOT_MAGIC | i) || !stack_ok) {
			put_str("smp: cpu ");
			put_dec((int64_t)i);
			put_str(": slot ");
			put_hex(slot);
			put_str(", stack ");
			put_hex(mark);
			put_str("\n");
			bad++;
		}
	}
	if (bad)
		return 1;
	put_str("checked in: ");
	put_dec((int64_t)num_cpus);
	put_str("\n");
	return 100 + (int)num_cpus;
}

static int run_concurrent_print(void)
{
	print_lines(0);
	uint64_t deadline = wait_deadline();
	while (!__atomic_load_n(&cpu1_done, __ATOMIC_ACQUIRE)) {
		if (rdtsc() > deadline)
			return fail("cpu 1 did not finish printing");
		cpu_relax();
	}
	return 0;
}

static int run_flood_then_exit(void)
{
	if (wait_for(&flood_lines_started, FLOOD_LINES) != 0)
		return fail("cpu 1 did not print");
	uint64_t khz = uhyve_boot_info->cpu_freq ? uhyve_boot_info->cpu_freq : FALLBACK_TSC_KHZ;
	uint64_t until = rdtsc() + 500 * khz;
	while (rdtsc() < until)
		cpu_relax();
	hc_exit(EXIT_CODE_AFTER_FLOOD);
	return EXIT_CODE_AFTER_FLOOD;
}

int main(void)
{
	struct uhyve_args args;
	if (uhyve_get_args(&args) != 0 || args.violations != 0)
		return fail("could not fetch the arguments");
	if (args.argc < 2)
		return fail("usage: smp checkin|exit_from_cpu1|concurrent_print|crash_cpu1|flood_then_exit");
	const char *name = args.argv[1];
	int selected = MODE_NONE;
	if (strcmp(name, "checkin") == 0)
		selected = MODE_CHECKIN;
	else if (strcmp(name, "exit_from_cpu1") == 0)
		selected = MODE_EXIT_FROM_CPU1;
	else if (strcmp(name, "concurrent_print") == 0)
		selected = MODE_CONCURRENT_PRINT;
	else if (strcmp(name, "crash_cpu1") == 0)
		selected = MODE_CRASH_CPU1;
	else if (strcmp(name, "flood_then_exit") == 0)
		selected = MODE_FLOOD_THEN_EXIT;
	else
		return fail("unknown mode");

	uint64_t num_cpus = uhyve_boot_info->num_cpus;
	if (num_cpus == 0 || num_cpus > MAX_CPUS)
		return fail("num_cpus in the boot info is 0 or more than 64");
	if (selected != MODE_CHECKIN && num_cpus < 2)
		return fail("this mode needs at least 2 cpus (-c 2)");

	__atomic_store_n(&mode, selected, __ATOMIC_RELAXED);
	__atomic_store_n(&released, 1, __ATOMIC_RELEASE);

	switch (selected) {
	case MODE_CHECKIN:
		return run_checkin(num_cpus);
	case MODE_CONCURRENT_PRINT:
		return run_concurrent_print();
	case MODE_FLOOD_THEN_EXIT:
		return run_flood_then_exit();
	default:
		/* exit_from_cpu1, crash_cpu1: uhyve must stop this cpu. */
		spin_forever();
	}
}
