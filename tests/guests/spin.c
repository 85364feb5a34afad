/*
 * spin: creates a file in the guest's private temp directory, prints "spinning", then loops
 * forever without any exit to the host (interrupts off). Used to check that a host signal stops
 * uhyve cleanly.
 */
#include "uhyve.h"

int main(void)
{
	hc_open("/tmp/spin-marker", 0100 | 1, 0600); /* O_CREAT | O_WRONLY */
	put_str("spinning\n");
	for (;;)
		__asm__ volatile("" ::: "memory");
}
