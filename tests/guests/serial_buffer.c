/*
 * serial_buffer: SerialWriteBuffer (0x880). Writes one line, an empty buffer, and then a
 * 8 KiB block of 128 lines of 63 characters that starts 100 bytes before a page boundary (so the
 * host must handle a buffer spanning three 4 KiB pages). Exits 0.
 */
#include "uhyve.h"

static char block[3 * 4096] __attribute__((aligned(4096)));

int main(void)
{
	static const char line[] = "serial buffer output works\n";
	hc_write_buffer(line, sizeof(line) - 1);
	hc_write_buffer(line, 0);

	char *start = block + 4096 - 100;
	for (int l = 0; l < 128; l++) {
		for (int c = 0; c < 63; c++)
			start[l * 64 + c] = (char)('0' + (l + c) % 64);
		start[l * 64 + 63] = '\n';
	}
	hc_write_buffer(start, 128 * 64);
	return 0;
}
