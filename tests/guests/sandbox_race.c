/*
 * sandbox_race: opens a path under a --file-mapping again and again while the host swaps a mapped
 * directory with a symlink leading out of the mapping, and counts what it read.
 *
 *   sandbox_race race <path> <rounds>   open <path> read-only <rounds> times; a read starting with
 *                                       "OUTSIDE" is an escape. Prints the counts; the check
 *                                       "no escapes" fails on any escape.
 *   sandbox_race fifo <path>            opening the FIFO <path> fails promptly with ENXIO.
 */
#include "uhyve.h"

#define ENXIO 6

static void race(const char *path, int64_t rounds)
{
	static char buf[16];
	int64_t inside = 0, escapes = 0, errors = 0;
	for (int64_t i = 0; i < rounds; i++) {
		int fd = hc_open(path, O_RDONLY, 0);
		if (fd < 0) {
			errors++;
			continue;
		}
		memset(buf, 0, sizeof(buf));
		int64_t got = hc_read(fd, buf, sizeof(buf));
		if (got >= 7 && memcmp(buf, "OUTSIDE", 7) == 0)
			escapes++;
		else
			inside++;
		hc_close(fd);
	}
	put_str("inside: ");
	put_dec(inside);
	put_str("\nrefused: ");
	put_dec(errors);
	put_str("\n");
	check("no escapes", escapes == 0, escapes);
}

int main(void)
{
	struct uhyve_args args;
	if (uhyve_get_args(&args) != 0 || args.argc < 3) {
		put_str("usage: sandbox_race race|fifo <path> [rounds]\n");
		return 100;
	}
	int64_t rounds = 0;
	if (strcmp(args.argv[1], "race") == 0 && args.argc > 3 && parse_int(args.argv[3], &rounds) == 0) {
		race(args.argv[2], rounds);
	} else if (strcmp(args.argv[1], "fifo") == 0) {
		int fd = hc_open(args.argv[2], O_RDONLY, 0);
		check("fifo refused", fd == -ENXIO, fd);
	} else {
		put_str("unknown mode\n");
		return 100;
	}
	return check_failures != 0;
}
