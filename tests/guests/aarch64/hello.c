/*
 * hello (aarch64): the console hypercalls. Prints "hello from aarch64 (uart)" one byte per Uart
 * hypercall (a store to virtual address 0x800), then "hello from aarch64 (serial buffer)" with one
 * SerialWriteBuffer hypercall (0x880), each line ending in a newline, and exits with code 0.
 */
#include "../uhyve.h"

static const char buffered[] = "hello from aarch64 (serial buffer)\n";

int main(void)
{
	put_str("hello from aarch64 (uart)\n");
	hc_write_buffer(buffered, sizeof(buffered) - 1);
	return 0;
}
