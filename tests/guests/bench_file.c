/*
 * bench_file: the file-throughput benchmark's guest (benches/uhyve_bench.rs).
 *
 *   bench_file read <path> <chunk> <total>    FileRead `total` bytes of `path` in `chunk`s
 *   bench_file write <path> <chunk> <total>   FileWrite `total` bytes to `path` (created/truncated)
 *
 * `chunk` is at most 1 MiB (the size of the static buffer). The guest never looks at the data
 * (every guest instruction costs about 1 us on the project's KVM). Exits 0 when every byte moved,
 * 2 if the open failed, 3 on a short or failed transfer, 100 on bad usage.
 */
#include "uhyve.h"

#define BUFFER_SIZE (1 << 20)

static unsigned char buffer[BUFFER_SIZE] __attribute__((aligned(4096)));

static int transfer(int write, const char *path, uint64_t chunk, uint64_t total)
{
	int fd = write ? hc_open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644) : hc_open(path, O_RDONLY, 0);
	if (fd < 0)
		return 2;
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
		if (moved == 0 || moved > want) {
			hc_close(fd);
			return 3;
		}
		remaining -= moved;
	}
	return hc_close(fd) == 0 ? 0 : 3;
}

int main(void)
{
	struct uhyve_args args;
	int64_t chunk, total;
	if (uhyve_get_args(&args) != 0 || args.argc < 5 || parse_int(args.argv[3], &chunk) != 0 ||
	    parse_int(args.argv[4], &total) != 0 || chunk < 1 || chunk > BUFFER_SIZE || total < 0) {
		put_str("usage: bench_file read|write <path> <chunk> <total>\n");
		return 100;
	}
	if (strcmp(args.argv[1], "read") == 0)
		return transfer(0, args.argv[2], (uint64_t)chunk, (uint64_t)total);
	if (strcmp(args.argv[1], "write") == 0)
		return transfer(1, args.argv[2], (uint64_t)chunk, (uint64_t)total);
	put_str("usage: bench_file read|write <path> <chunk> <total>\n");
	return 100;
}
