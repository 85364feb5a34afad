/*
 * spin: creates a file in the guest's private temp directory, then waits for ever without any
 * exit to the host (interrupts off) — or, with argument "stdin", blocks in a FileRead of fd 0.
 * Prints "spinning" or "reading" first. Used to check that a host signal stops uhyve cleanly.
 */
#include "uhyve.h"

int main(void)
{
	hc_open("/tmp/spin-marker", 0100 | 1, 0600); /* O_CREAT | O_WRONLY */
	struct uhyve_args args;
	if (uhyve_get_args(&args) == 0 && args.argc > 1 && strcmp(args.argv[1], "stdin") == 0) {
		static char buffer[64];
		put_str("reading\n");
		int64_t got = hc_read(0, buffer, sizeof(buffer));
		put_str("read returned ");
		put_dec(got);
		put_str("\n");
		return 0;
	}
	put_str("spinning\n");
	for (;;)
		__asm__ volatile("" ::: "memory");
}
