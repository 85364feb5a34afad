/* exit_code: exits with the (signed decimal) code given as argv[1]; prints nothing else. */
#include "uhyve.h"

int main(void)
{
	struct uhyve_args args;
	int64_t code;
	if (uhyve_get_args(&args) != 0 || args.argc < 2 || parse_int(args.argv[1], &code) != 0) {
		put_str("usage: exit_code <code>\n");
		return 100;
	}
	hc_exit((int)code);
}
