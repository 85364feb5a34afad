/*
 * smp (aarch64): starting a secondary cpu with PSCI (uhyve -c 2). uhyve creates the secondaries
 * powered off; KVM serves PSCI itself. Cpu 0 prints "psci version <major>.<minor>", then starts
 * cpu 1 with CPU_ON at uhyve_a64_secondary_entry (rt/start.S) with the context SMP_CONTEXT. Cpu 1
 * runs with the MMU off: it checks that its x0 holds the context, prints "cpu 1 up" (or
 * "cpu 1: bad context") through the Uart address of the hypercall window at its physical address,
 * and switches itself off with CPU_OFF. Cpu 0 meanwhile prints nothing (the Uart takes one byte per
 * hypercall, so lines of both cpus would mix) and polls AFFINITY_INFO for cpu 1 until it reads OFF,
 * at most WAIT_SECONDS of counter time; then it prints "CPU_ON: ok" and "cpu 1 off: ok" and exits
 * 0. The two cpus share no variables (cpu 1's MMU-off accesses are not cache-coherent with
 * cpu 0's), so cpu 0 learns only through PSCI that cpu 1 ran.
 *
 * Failures print a line and exit 1: "CPU_ON failed: <PSCI error>" (with one vCPU there is no
 * cpu 1: KVM answers INVALID_PARAMETERS, -2), "AFFINITY_INFO failed: <error>", or "cpu 1 did not
 * switch off (state <n>)" after the wait.
 */
#include "../uhyve.h"

/* MPIDR of the target: Aff0 = cpu id 1 (uhyve sets MPIDR_EL1 Aff0 to the cpu id). */
#define TARGET_MPIDR 1
#define SMP_CONTEXT 0x5350u
#define WAIT_SECONDS 20
/* Bound on the polls in case the counter does not run. */
#define MAX_POLLS 10000000u

/* Cpu 1, MMU off, on its own stack; the string is read from the image as the host loaded it. */
void uhyve_a64_secondary(uint64_t context)
{
	const char *line = context == SMP_CONTEXT ? "cpu 1 up\n" : "cpu 1: bad context\n";
	for (const char *p = line; *p; p++)
		uhyve_a64_phys_store(UHYVE_PORT_UART, (uint8_t)*p);
}

int main(void)
{
	int64_t version = psci_call(PSCI_VERSION, 0, 0, 0);
	put_str("psci version ");
	put_dec((version >> 16) & 0x7fff);
	put_str(".");
	put_dec(version & 0xffff);
	put_str("\n");

	int64_t ret = psci_call(PSCI_CPU_ON, TARGET_MPIDR,
				(uint64_t)(uintptr_t)uhyve_a64_secondary_entry, SMP_CONTEXT);
	if (ret != PSCI_SUCCESS) {
		put_str("CPU_ON failed: ");
		put_dec(ret);
		put_str("\n");
		return 1;
	}

	uint64_t frequency = uhyve_a64_read_sysreg(cntfrq_el0);
	uint64_t deadline = uhyve_a64_read_sysreg(cntvct_el0) + WAIT_SECONDS * frequency;
	int64_t state = PSCI_AFFINITY_ON;
	for (uint32_t polls = 0; polls < MAX_POLLS; polls++) {
		state = psci_call(PSCI_AFFINITY_INFO, TARGET_MPIDR, 0, 0);
		if (state == PSCI_AFFINITY_OFF || state < 0)
			break;
		if (uhyve_a64_read_sysreg(cntvct_el0) > deadline)
			break;
	}
	put_str("CPU_ON: ok\n");
	if (state < 0) {
		put_str("AFFINITY_INFO failed: ");
		put_dec(state);
		put_str("\n");
		return 1;
	}
	if (state != PSCI_AFFINITY_OFF) {
		put_str("cpu 1 did not switch off (state ");
		put_dec(state);
		put_str(")\n");
		return 1;
	}
	put_str("cpu 1 off: ok\n");
	return 0;
}
