/*
 * direct_io: file I/O shaped for O_DIRECT (uhyve --io-mode host=direct) on the path argv[1]
 * (under a --file-mapping or in the private temp directory). Creates the file, writes 8192 bytes
 * at offset 0, reads them back and compares ("aligned write N", "aligned read N", "aligned
 * compare: ok"), then reads 100 bytes at offset 0 and writes 10 bytes at offset 100 ("unaligned
 * read R", "unaligned write W": bytes, or a negative errno for the read; FileWrite of interface
 * v1 reports only the bytes written, 0 on an error). Under O_DIRECT a file system may refuse the
 * unaligned transfers (EINVAL) but must take the aligned ones: uhyve's own buffers are page
 * aligned. Exits 0 unless the file cannot be opened.
 */
#include "uhyve.h"

#define ALIGNED_LEN 8192

static uint8_t out[ALIGNED_LEN] __attribute__((aligned(4096)));
static uint8_t in[ALIGNED_LEN] __attribute__((aligned(4096)));

int main(void)
{
	struct uhyve_args args;
	if (uhyve_get_args(&args) != 0 || args.argc < 2) {
		put_str("usage: direct_io <path>\n");
		return 100;
	}
	int fd = hc_open(args.argv[1], O_CREAT | O_RDWR | O_TRUNC, 0644);
	put_str("open ");
	put_dec(fd);
	put_str("\n");
	if (fd < 3)
		return 1;
	for (size_t i = 0; i < ALIGNED_LEN; i++)
		out[i] = (uint8_t)(i * 7 + 1);

	uint64_t written = hc_write(fd, out, ALIGNED_LEN);
	put_str("aligned write ");
	put_dec((int64_t)written);
	put_str("\n");
	hc_lseek(fd, 0, SEEK_SET);
	int64_t got = hc_read(fd, in, ALIGNED_LEN);
	put_str("aligned read ");
	put_dec(got);
	put_str("\n");
	check("aligned compare", got == ALIGNED_LEN && memcmp(in, out, ALIGNED_LEN) == 0, got);

	hc_lseek(fd, 0, SEEK_SET);
	got = hc_read(fd, in, 100);
	put_str("unaligned read ");
	put_dec(got);
	put_str("\n");
	hc_lseek(fd, 100, SEEK_SET);
	written = hc_write(fd, out, 10);
	put_str("unaligned write ");
	put_dec((int64_t)written);
	put_str("\n");
	hc_close(fd);
	return 0;
}
