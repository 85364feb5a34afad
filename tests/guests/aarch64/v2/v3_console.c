/*
 * v3_console (aarch64): the console hypercalls of interface v3, output and input. The same guest
 * as ../../v2/v3_console.c, built for aarch64: SerialWriteByte and SerialWriteBuffer (up to 80 KiB
 * in one call, and from the last bytes of RAM), FileWrite to fd 1 and 2; then standard input read
 * through SerialReadByte (the x86 guest's `in al`, `in ax` and `in eax` become `ldrb`, `ldrh` and
 * `ldr w` loads from 0x1040), SerialReadBuffer and FileRead on fd 0 until its end, printed as
 * "stdin: [<bytes, escaped>]", and every way of reading checked at the end of the input. Prints
 * "<case>: ok" (or FAIL) per check and exits 0 if all passed, 1 if not.
 */
#include "../../v2/v3_console.c"
