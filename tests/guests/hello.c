/*
 * hello: the README demo guest. Prints a greeting and its arguments (fetched with
 * Cmdsize/Cmdval), then exits with code 0.
 */
#include "uhyve.h"

int main(void)
{
	put_str("Hello from a uhyve demo guest!\n");
	struct uhyve_args args;
	if (uhyve_get_args(&args) != 0) {
		put_str("could not fetch the arguments\n");
		return 1;
	}
	for (int i = 0; i < args.argc; i++) {
		put_str("argv[");
		put_dec(i);
		put_str("] = ");
		put_str(args.argv[i]);
		put_str("\n");
	}
	return 0;
}
