/*
 * triple_fault: loads an IDT with limit 0 and executes ud2. The #UD cannot be delivered, the
 * resulting #DF cannot either, so the CPU shuts down (triple fault). uhyve must report a crash
 * (non-zero status, a message on stderr), not a clean exit. Prints a line before and (if the
 * impossible happens) after.
 */
#include "uhyve.h"

int main(void)
{
	static const struct __attribute__((packed)) {
		uint16_t limit;
		uint64_t base;
	} empty_idt = {0, 0};

	put_str("about to triple fault\n");
	__asm__ volatile("lidt %0\n\tud2" : : "m"(empty_idt) : "memory");
	put_str("survived the triple fault\n");
	return 0;
}
