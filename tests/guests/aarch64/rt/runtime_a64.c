/*
 * The aarch64-only part of the test guests' runtime: the exception report that the vectors of
 * rt/start.S call. Everything else (string helpers, console output, check(), argv/envp, device
 * tree) is the shared ../../rt/runtime.c, compiled for aarch64 with the transport of
 * ../uhyve_a64.h.
 *
 * The report is one line on the console:
 *   "exception: <kind> from <source>: esr <hex> elr <hex> far <hex>"
 * followed by "stopping at <hex>", the address of the store in rt/start.S with which the guest
 * then makes uhyve stop the VM.
 */
#include "../../uhyve.h"

void uhyve_rt_exception(uint64_t vector, uint64_t esr, uint64_t elr, uint64_t far);

/* Called by uhyve_rt_trap (rt/start.S) with the MMU on, on the trap stack. */
void uhyve_rt_exception(uint64_t vector, uint64_t esr, uint64_t elr, uint64_t far)
{
	/* The four vectors of each group, and the four groups (Arm ARM D1.3.1). */
	static const char *const kinds[] = {"synchronous", "IRQ", "FIQ", "SError"};
	static const char *const sources[] = {"current EL with SP_EL0", "current EL with SP_ELx",
					      "lower EL (AArch64)", "lower EL (AArch32)"};
	put_str("exception: ");
	put_str(kinds[vector & 3]);
	put_str(" from ");
	put_str(sources[(vector >> 2) & 3]);
	put_str(": esr ");
	put_hex(esr);
	put_str(" elr ");
	put_hex(elr);
	put_str(" far ");
	put_hex(far);
	put_str("\nstopping at ");
	put_hex((uint64_t)(uintptr_t)uhyve_rt_stop);
	put_str("\n");
}
