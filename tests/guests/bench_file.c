/*
 * bench_file: the file-throughput benchmark's guest (benches/uhyve_bench.rs).
 *
 *   bench_file read <path> <chunk> <total> <passes>    FileRead `total` bytes of `path` in `chunk`s
 *   bench_file write <path> <chunk> <total> <passes>   FileWrite `total` bytes to `path` (created,
 *                                                      truncated) in `chunk`s
 *
 * Each pass starts at offset 0 again (Lseek), so `passes` passes move `passes * total` bytes
 * through the same file; 0 passes only open and close it. `chunk` is at most 1 MiB (the size of
 * the static buffer). The guest never looks at the data (every guest instruction costs about 1 us
 * on the project's KVM). Exits 0 when every byte moved,
 * 2 if the open failed, 3 on a short or failed transfer, 100 on bad usage.
 */
#include "uhyve.h"

#define BUFFER_SIZE (1 << 20)
#define USAGE "usage: bench_file read|write <path> <chunk> <total> <passes>\n"

static unsigned char buffer[BUFFER_SIZE] __attribute__((aligned(4096)));

/* One pass: `total` bytes from offset 0. Returns 0, or 3 on a short or failed transfer. */
static int pass(int fd, int write, uint64_t chunk, uint64_t total)
{
	if (hc_lseek(fd, 0, SEEK_SET) != 0)
		return 3;
	uint64_t remaining = total;
	while (remaining > 0) {
		uint64_t want = remaining < chunk ? remaining : chunk;
		uint64_t moved;
		if (write) {
			moved = hc_write(fd, buffer, want);
		} else {
			int64_t got = hc_read(fd, buffer, want);
			moved = got > 0 ? (uint64_t)got : 0;
		}
		if (moved == 0 || moved > want)
			return 3;
		remaining -= moved;
	}
	return 0;
}

static int transfer(int write, const char *path, uint64_t chunk, uint64_t total, uint64_t passes)
{
	int fd = write ? hc_open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644) : hc_open(path, O_RDONLY, 0);
	if (fd < 0)
		return 2;
	int result = 0;
	for (uint64_t i = 0; i < passes && result == 0; i++)
		result = pass(fd, write, chunk, total);
	if (hc_close(fd) != 0 && result == 0)
		result = 3;
	return result;
}

int main(void)
{
	struct uhyve_args args;
	int64_t chunk, total, passes;
	if (uhyve_get_args(&args) != 0 || args.argc < 6 || parse_int(args.argv[3], &chunk) != 0 ||
	    parse_int(args.argv[4], &total) != 0 || parse_int(args.argv[5], &passes) != 0 ||
	    chunk < 1 || chunk > BUFFER_SIZE || total < 0 || passes < 0) {
		put_str(USAGE);
		return 100;
	}
	int write = strcmp(args.argv[1], "write") == 0;
	if (write || strcmp(args.argv[1], "read") == 0)
		return transfer(write, args.argv[2], (uint64_t)chunk, (uint64_t)total, (uint64_t)passes);
	put_str(USAGE);
	return 100;
}
