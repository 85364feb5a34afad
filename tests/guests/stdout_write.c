/* stdout_write: FileWrite (0x400) to fd 1 and fd 2; both reach uhyve's stdout. Exits 0. */
#include "uhyve.h"

int main(void)
{
	static const char out[] = "written to fd 1\n";
	static const char err[] = "written to fd 2\n";
	uint64_t n1 = hc_write(1, out, sizeof(out) - 1);
	uint64_t n2 = hc_write(2, err, sizeof(err) - 1);
	check("fd 1 length", n1 == sizeof(out) - 1, (int64_t)n1);
	check("fd 2 length", n2 == sizeof(err) - 1, (int64_t)n2);
	return check_failures != 0;
}
