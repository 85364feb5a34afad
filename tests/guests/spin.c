/*
 * spin: creates a file in the guest's private temp directory, then waits for ever without any
 * exit to the host (interrupts off) — or, with argument "stdin", blocks in a FileRead of fd 0, or,
 * with argument "flood", prints lines for ever (blocking in the console write once the host's
 * stdout is full). Prints "spinning", "reading" or "flooding" first. Used to check that a host
 * signal stops uhyve cleanly.
 */
#include "uhyve.h"

int main(void)
{
	hc_open("/tmp/spin-marker", 0100 | 1, 0600); /* O_CREAT | O_WRONLY */
	struct uhyve_args args;
	const char *mode = uhyve_get_args(&args) == 0 && args.argc > 1 ? args.argv[1] : "";
	if (strcmp(mode, "stdin") == 0) {
		static char buffer[64];
		put_str("reading\n");
		int64_t got = hc_read(0, buffer, sizeof(buffer));
		put_str("read returned ");
		put_dec(got);
		put_str("\n");
		return 0;
	}
	if (strcmp(mode, "flood") == 0) {
		put_str("flooding\n");
		static const char line[] = "flood flood flood flood flood flood flood flood flood flood\n";
		for (;;)
			hc_write_buffer(line, sizeof(line) - 1);
	}
	put_str("spinning\n");
	for (;;)
		__asm__ volatile("" ::: "memory");
}
