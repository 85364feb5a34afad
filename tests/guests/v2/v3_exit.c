/*
 * v3_exit: the Exit hypercall (0x1010) of interface v3, whose argument is the exit code itself in
 * RDI. Prints nothing.
 *
 *   v3_exit CODE       exits with the (signed decimal) CODE as Hermit passes it: the i32
 *                      zero-extended into RDI
 *   v3_exit raw VALUE  puts the signed 64-bit VALUE into RDI unchanged (sign-extended negative
 *                      codes, junk in the upper half): uhyve must use the low 32 bits only
 *   v3_exit return CODE  returns CODE from main (the runtime calls Exit with it)
 *
 * The arguments come from the device tree's /chosen/bootargs, the only way a v2+ guest gets
 * them; without a usable argument the guest exits with 100.
 */
#include "uhyve_v2.h"

UHYVE_INTERFACE_NOTES(3);

int main(void)
{
	char **argv;
	int argc = uhyve_v2_args(&argv);
	int64_t value;
	if (argc == 1 && parse_int(argv[0], &value) == 0)
		hc_exit((int)value);
	if (argc == 2 && parse_int(argv[1], &value) == 0) {
		if (strcmp(argv[0], "raw") == 0) {
			uhyve_v2_out(UHYVE_V2_EXIT, (uint64_t)value);
			put_str("survived\n");
			return 42;
		}
		if (strcmp(argv[0], "return") == 0)
			return (int)value;
	}
	return 100;
}
