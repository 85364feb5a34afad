/*
 * args_env: prints argc, each argument and each environment entry (one per line), fetched with
 * Cmdsize/Cmdval into arena buffers of exactly the announced sizes, followed by whether the host
 * stayed inside those sizes. Exits 0, or 1 if the host overran or failed to terminate an item.
 */
#include "uhyve.h"

int main(void)
{
	struct uhyve_args args;
	if (uhyve_get_args(&args) != 0) {
		put_str("cmdsize: bad sizes\n");
		return 1;
	}
	put_str("argc=");
	put_dec(args.argc);
	put_str("\n");
	for (int i = 0; i < args.argc; i++) {
		put_str("arg=");
		put_str(args.argv[i]);
		put_str("\n");
	}
	put_str("envc=");
	put_dec(args.envc);
	put_str("\n");
	for (int i = 0; i < args.envc; i++) {
		put_str("env=");
		put_str(args.envp[i]);
		put_str("\n");
	}
	check("sizes respected", args.violations == 0, args.violations);
	return check_failures != 0;
}
