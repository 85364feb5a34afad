/* serial_byte: prints one line byte by byte through the Uart port (0x800), exits 0. */
#include "uhyve.h"

int main(void)
{
	static const char line[] = "serial byte output works\n";
	for (size_t i = 0; i < sizeof(line) - 1; i++)
		uhyve_out8(UHYVE_PORT_UART, (uint8_t)line[i]);
	return 0;
}
