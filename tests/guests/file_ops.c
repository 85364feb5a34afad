/*
 * file_ops: the file hypercalls on one path given as argv[1] (a path under a --file-mapping).
 * Creates the file, writes, seeks, reads back, compares, closes, reopens read-only, and (unless
 * argv[2] is "keep") unlinks it; then the error cases: bad fds, a missing file, O_CREAT|O_DIRECTORY.
 * Prints "<step>: ok" per step and exits 0 if every step passed, 1 otherwise.
 */
#include "uhyve.h"

static const char payload[] = "hello file\n";
#define PAYLOAD_LEN ((int64_t)sizeof(payload) - 1)

int main(void)
{
	struct uhyve_args args;
	if (uhyve_get_args(&args) != 0 || args.argc < 2) {
		put_str("usage: file_ops <path> [keep]\n");
		return 100;
	}
	const char *path = args.argv[1];
	int keep = args.argc > 2 && strcmp(args.argv[2], "keep") == 0;
	char buf[64];

	int fd = hc_open(path, O_CREAT | O_RDWR | O_TRUNC, 0644);
	check("open", fd > 2, fd);
	uint64_t written = hc_write(fd, payload, PAYLOAD_LEN);
	check("write", written == (uint64_t)PAYLOAD_LEN, (int64_t)written);
	int64_t end = hc_lseek(fd, 0, SEEK_END);
	check("lseek end", end == PAYLOAD_LEN, end);
	int64_t pos = hc_lseek(fd, 0, SEEK_SET);
	check("lseek set", pos == 0, pos);
	memset(buf, 0, sizeof(buf));
	int64_t got = hc_read(fd, buf, sizeof(buf));
	check("read", got == PAYLOAD_LEN, got);
	check("compare", memcmp(buf, payload, PAYLOAD_LEN) == 0, 0);
	got = hc_read(fd, buf, sizeof(buf));
	check("read at eof", got == 0, got);
	pos = hc_lseek(fd, 6, SEEK_SET);
	check("lseek middle", pos == 6, pos);
	memset(buf, 0, sizeof(buf));
	got = hc_read(fd, buf, 4);
	check("read middle", got == 4 && memcmp(buf, "file", 4) == 0, got);
	int ret = hc_close(fd);
	check("close", ret == 0, ret);

	fd = hc_open(path, O_RDONLY, 0);
	check("reopen", fd > 2, fd);
	memset(buf, 0, sizeof(buf));
	got = hc_read(fd, buf, sizeof(buf));
	check("reread", got == PAYLOAD_LEN && memcmp(buf, payload, PAYLOAD_LEN) == 0, got);
	ret = hc_close(fd);
	check("close again", ret == 0, ret);
	ret = hc_close(fd);
	check("double close", ret == -EBADF, ret);

	if (!keep) {
		ret = hc_unlink(path);
		check("unlink", ret == 0, ret);
		fd = hc_open(path, O_RDONLY, 0);
		check("open after unlink", fd < 0, fd);
	}

	/* Error cases. */
	got = hc_read(1234, buf, sizeof(buf));
	check("read bad fd", got < 0, got);
	ret = hc_close(1234);
	check("close unknown fd", ret == -EBADF, ret);
	pos = hc_lseek(1234, 0, SEEK_SET);
	check("lseek bad fd", pos == -1, pos);

	static char missing[512];
	size_t len = strnlen(path, sizeof(missing) - 16);
	memcpy(missing, path, len);
	memcpy(missing + len, ".missing", 9);
	fd = hc_open(missing, O_RDONLY, 0);
	check("open missing", fd < 0, fd);
	ret = hc_unlink(missing);
	check("unlink missing", ret < 0, ret);
	fd = hc_open(missing, O_CREAT | O_DIRECTORY | O_RDWR, 0644);
	check("open creat|directory", fd == -EINVAL, fd);

	put_str(check_failures == 0 ? "file_ops: all ok\n" : "file_ops: FAILED\n");
	return check_failures != 0;
}
