/*
 * v3_hostile: v2/v3 hypercalls with bad parameters, the counterpart of ../hostile.c for the
 * natural-layout interface. The first argument selects one attack; none may crash uhyve.
 * Attacks whose only sane answer is to stop the VM print "survived" and return 42 if uhyve lets
 * them continue; the others check each result, print "<case>: ok" (or FAIL) per case and exit 0
 * if all were ok. WHERE names a bad guest-physical address: `end` (the end of RAM), `straddle`
 * (4 bytes before it), `below` (8 bytes below the start of RAM), `low` (0x10000, where v1 RAM
 * would be) or `wrap` (2^64 - 4). See tests/guests_v2.rs for what each attack expects.
 *
 * Stopping the VM:
 *   params CALL WHERE        the parameter struct of CALL (serial_write, serial_read, write,
 *                            open, close, read, lseek, unlink, getdents, stat, fstat, mkdir) at
 *                            WHERE
 *   serial_write_buffer W    SerialWriteBuffer of a buffer at W (`end`, `straddle` with "TAIL"
 *                            in RAM's last 4 bytes, `below`, `low`, `wrap`) or `huge` (the last
 *                            16 bytes of RAM with len 2^64 - 1)
 *   serial_read_buffer W     SerialReadBuffer into the same buffers (maxlen 16; `huge`: 2^64 - 1)
 * Checked results (-EFAULT, -EINVAL, -EBADF, or the v3 error tag with that errno):
 *   file_buffers FILE        FileRead/FileWrite on FILE (32 bytes) with buffers at end, 2 MiB
 *                            past it, straddling it, below, low, wrapping, and lengths 2^64 - 1,
 *                            2^63 and the RAM size: EFAULT, the file position and size unchanged,
 *                            RAM before its end untouched; length 0 with a bogus buffer: 0; the
 *                            last 16 bytes of RAM as buffer: served; FileWrite to fd 1 from the
 *                            last bytes of RAM: "RAM-END-WRITE"
 *   paths DIR                FileOpen (plain and O_CREAT), FileUnlink, FileStat and Mkdir with
 *                            paths running unterminated into the end of RAM (EINVAL; only v1
 *                            unlink reads up to the end, for kernel 0.6.9), starting outside RAM
 *                            (end, below, low, wrap: EFAULT), longer than 4096 bytes (EINVAL),
 *                            not UTF-8 (EINVAL), Mkdir with a len that stops before the NUL
 *                            (EINVAL); DIR/at-end with its NUL in the last byte of RAM works
 *                            (open ENOENT, mkdir creates it, stat finds it)
 *   bad_fds                  read/write/lseek/close/fstat/getdents with fds -1, -3, INT32_MIN,
 *                            3, 1000, INT32_MAX (EBADF; close of a negative fd: 0), and the stdio
 *                            fds where the call makes no sense (read 1/2, write 0, lseek, fstat,
 *                            getdents 0-2)
 *   bad_whence FILE          FileLseek with whence 3, 7, 2^31, 2^32 - 1 and negative results
 *                            (EINVAL); the position stays 0
 *   getdents DIR FILE        Getdents with len 0, 8, 23 (EINVAL: less than one record) and buffers
 *                            at end, straddling, below, low, wrapping, or with len 2^64 - 1 near
 *                            the end of RAM (EFAULT), before any entry is read; then the listing
 *                            in 64-byte pieces with a failing call (EFAULT, EINVAL) after every
 *                            piece, printing "entry <name> <d_type>" so the test sees every name
 *                            once;
 *                            len 2^64 - 1 with 64 KiB of RAM left lists everything in one call;
 *                            a closed fd (EBADF), an fd of the file FILE (ENOTDIR)
 *   stat_attr FILE           FileStat/FileFstat with the FileAttr at end, straddling (RAM before
 *                            its end untouched), below, low, wrapping (EFAULT); exactly in the
 *                            last 120 bytes of RAM (served); kind 2 and 2^32 - 1 (EINVAL, nothing
 *                            written); a missing path with attr outside RAM (ENOENT)
 *   escapes DIR              FileStat, Mkdir and FileOpen through the sandbox's symlinks to the
 *                            outside (DIR/link -> a directory, DIR/link_file -> a file) and with
 *                            `..` above DIR or the root (errors); lstat of such a link (served);
 *                            Mkdir of an unmapped path (served, in uhyve's temp directory)
 *   close_stdio              FileClose of fds 0-2 (0), then FileWrite to fd 1 still works
 *   v1_ports                 v1 ports (Exit, Uart, SerialWriteBuffer, FileWrite, FileOpen, Cmdsize,
 *                            ...) with the struct address in EAX and RDI: ignored, structs
 *                            untouched, no "LEAK" on the console; `in` from them: all-ones
 *   unknown_ports            `out` to addresses in and around the v2 range that are no hypercall
 *                            (0x1000, 0x1011, 0x1040 written, 0x1060, 0x1200, 0x1fff, ...) with
 *                            RDI pointing at a FileWrite of "LEAK": ignored; 1/2/4-byte `in` from
 *                            them and from served addresses other than SerialReadByte (Exit,
 *                            FileWrite, Mkdir, ...): all-ones, and the guest keeps running
 *   rep_ins PORT             `rep insb` of 4 bytes from PORT (decimal): all-ones per element
 *
 * Built for aarch64 as well (../aarch64/v2/v3_hostile.c), where `out` is a store and `in` a load at
 * the virtual address = the hypercall address (uhyve_v2.h) and a v1 call a store of the struct's
 * address to the v1 port. There uhyve takes any other access to its 16 KiB hypercall window for a
 * stray one and stops the VM, so the attacks differ:
 *   v1_ports                 the same stores, but no loads from the v1 ports (see window_load)
 *   unknown_ports            stores to the v2 addresses uhyve serves no store at (SerialReadByte,
 *                            SharedMemOpen/Close): ignored; 1/2/4/8-byte loads from the v2
 *                            addresses other than SerialReadByte: all-ones
 *   window_store OFFSET      a store of a FileWrite of "LEAK" to the window offset OFFSET
 *                            (decimal), which is no hypercall address: must stop the VM
 *   window_load OFFSET       a 4-byte load from OFFSET, which is no v2 address: must stop the VM
 *   (no rep_ins: aarch64 has no string I/O)
 */
#include "uhyve_v2.h"

UHYVE_INTERFACE_NOTES(3);

#define SURVIVED 42
#define MIB (1ull << 20)

static int survived(void)
{
	put_str("survived\n");
	return SURVIVED;
}

static uint64_t ram_start(void)
{
	return v2_ram_start();
}

static uint64_t ram_end(void)
{
	return v2_ram_end();
}

static char *ram_tail(uint64_t n)
{
	return (char *)(uintptr_t)(ram_end() - n);
}

/* A bad address by name; 0 for an unknown name. */
static uint64_t bad_address(const char *where)
{
	if (strcmp(where, "end") == 0)
		return ram_end();
	if (strcmp(where, "straddle") == 0)
		return ram_end() - 4;
	if (strcmp(where, "below") == 0)
		return ram_start() - 8;
	if (strcmp(where, "low") == 0)
		return 0x10000;
	if (strcmp(where, "wrap") == 0)
		return UINT64_MAX - 3;
	return 0;
}

static int all_bytes(const void *p, size_t n, uint8_t value)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++)
		if (b[i] != value)
			return 0;
	return 1;
}

/* ---- Attacks that must stop the VM ---- */

static const struct {
	const char *name;
	uint16_t address;
} calls[] = {
	{"serial_write", UHYVE_V2_SERIAL_WRITE_BUFFER},
	{"serial_read", UHYVE_V2_SERIAL_READ_BUFFER},
	{"write", UHYVE_V2_FILE_WRITE},
	{"open", UHYVE_V2_FILE_OPEN},
	{"close", UHYVE_V2_FILE_CLOSE},
	{"read", UHYVE_V2_FILE_READ},
	{"lseek", UHYVE_V2_FILE_LSEEK},
	{"unlink", UHYVE_V2_FILE_UNLINK},
	{"getdents", UHYVE_V3_GETDENTS},
	{"stat", UHYVE_V3_FILE_STAT},
	{"fstat", UHYVE_V3_FILE_FSTAT},
	{"mkdir", UHYVE_V3_MKDIR},
};

static int params(const char *call, const char *where)
{
	uint64_t at = bad_address(where);
	for (size_t i = 0; i < sizeof(calls) / sizeof(calls[0]); i++) {
		if (at != 0 && strcmp(call, calls[i].name) == 0) {
			uhyve_v2_out(calls[i].address, at);
			return survived();
		}
	}
	put_str("unknown call or place\n");
	return 100;
}

/* The buffer and length of a serial attack; 0 if `where` is unknown. */
static int serial_buffer(const char *where, uint64_t *buf, uint64_t *len)
{
	*len = 16;
	if (strcmp(where, "huge") == 0) {
		*buf = ram_end() - 16;
		*len = UINT64_MAX;
		return 1;
	}
	if (strcmp(where, "straddle") == 0) {
		memcpy(ram_tail(4), "TAIL", 4);
		*buf = ram_end() - 4;
		return 1;
	}
	*buf = bad_address(where);
	return *buf != 0;
}

static int serial_write_buffer(const char *where)
{
	uint64_t buf, len;
	if (!serial_buffer(where, &buf, &len))
		return 100;
	hc_write_buffer_raw(buf, len);
	return survived();
}

static int serial_read_buffer(const char *where)
{
	uint64_t buf, len;
	if (!serial_buffer(where, &buf, &len))
		return 100;
	hc_read_buffer_raw(buf, len);
	return survived();
}

/* ---- Bad buffers of the file calls ---- */

#define FILE_LEN 32

static int file_buffers(const char *path)
{
	static char buf[64];
	int fd = hc_open(path, O_RDWR, 0);
	check("open input", fd > 2, fd);
	if (fd <= 2)
		return 1;
	memset(ram_tail(64), 0x5a, 64);
	const struct {
		const char *name;
		uint64_t buf, len;
	} bad[] = {
		{"buffer at the end of RAM", ram_end(), 16},
		{"buffer 2 MiB past RAM", ram_end() + 2 * MIB, 16},
		{"buffer straddling the end of RAM", ram_end() - 8, 16},
		{"buffer starting below RAM", ram_start() - 8, 16},
		{"buffer in low memory", 0x1000, 16},
		{"buffer wrapping around", UINT64_MAX - 7, 16},
		{"length 2^64 - 1", gpa(buf), UINT64_MAX},
		{"length 2^63", gpa(buf), 1ull << 63},
		{"length of all RAM", gpa(buf), ram_end() - ram_start()},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		put_str(bad[i].name);
		put_str("\n");
		int64_t ret = hc_read_raw(fd, bad[i].buf, bad[i].len);
		check("  read", ret == -EFAULT, ret);
		int64_t pos = hc_lseek(fd, 0, SEEK_CUR);
		check("  read: position unchanged", pos == 0, pos);
		ret = hc_write_raw(fd, bad[i].buf, bad[i].len);
		check("  write", ret == -EFAULT, ret);
		int64_t size = hc_lseek(fd, 0, SEEK_END);
		check("  write: size unchanged", size == FILE_LEN, size);
		hc_lseek(fd, 0, SEEK_SET);
		check("  RAM before its end untouched", all_bytes(ram_tail(64), 64, 0x5a), 0);
	}
	int64_t ret = hc_read_raw(fd, UINT64_MAX, 0);
	check("read length 0, bogus buffer", ret == 0, ret);
	ret = hc_write_raw(fd, ram_end(), 0);
	check("write length 0, bogus buffer", ret == 0, ret);
	ret = hc_read_raw(fd, ram_end() - 16, 16);
	check("read into the last 16 bytes of RAM",
	      ret == 16 && memcmp(ram_tail(16), "0123456789abcdef", 16) == 0, ret);
	int cret = hc_close(fd);
	check("close input", cret == 0, cret);

	static const char line[] = "RAM-END-WRITE\n";
	memcpy(ram_tail(sizeof(line) - 1), line, sizeof(line) - 1);
	ret = hc_write_raw(1, ram_end() - (sizeof(line) - 1), sizeof(line) - 1);
	check("write to fd 1 from the last bytes of RAM", ret == sizeof(line) - 1, ret);
	return check_failures != 0;
}

/* ---- Bad paths ---- */

/* Every path call on the path at `name`: open, create, unlink, stat, mkdir (len `mkdir_len`).
 * Expected: `err` for all. */
static void path_calls(const char *what, uint64_t name, uint64_t mkdir_len, int err)
{
	static struct FileAttr attr;
	put_str(what);
	put_str("\n");
	int ret = hc_open_raw(name, O_RDONLY, 0);
	check("  open", ret == -err, ret);
	ret = hc_open_raw(name, O_CREAT | O_RDWR, 0644);
	check("  create", ret == -err, ret);
	ret = hc_unlink_raw(name);
	check("  unlink", ret == -err, ret);
	struct StatusResult st = hc_stat_raw(name, STAT_FOLLOW, gpa(&attr));
	check("  stat", status_err(st, err), status_value(st));
	st = hc_mkdir_raw(name, mkdir_len);
	check("  mkdir", status_err(st, err), status_value(st));
}

static char long_path[5001];

static int paths(const char *dir)
{
	char *tail = ram_tail(64);
	memset(tail, 'A', 64);
	path_calls("unterminated at the end of RAM", gpa(tail), 64, EINVAL);
	struct StatusResult st = hc_mkdir_raw(gpa(tail), 1000);
	check("  mkdir, len past the end of RAM", status_err(st, EINVAL), status_value(st));
	path_calls("path at the end of RAM", ram_end(), 16, EFAULT);
	path_calls("path below RAM", ram_start() - 2, 16, EFAULT);
	path_calls("path in low memory", 0x1000, 16, EFAULT);
	path_calls("path wrapping around", UINT64_MAX, 16, EFAULT);
	memset(long_path, 'a', sizeof(long_path) - 1);
	long_path[0] = '/';
	path_calls("path of 5000 bytes", gpa(long_path), sizeof(long_path) - 1, EINVAL);

	static char bad_utf8[512];
	size_t n = strlen(dir);
	memcpy(bad_utf8, dir, n);
	memcpy(bad_utf8 + n, "/\xff\xfe", 4);
	path_calls("path not UTF-8", gpa(bad_utf8), n + 3, EINVAL);

	static char short_len[512];
	memcpy(short_len, dir, n);
	memcpy(short_len + n, "/short", 7);
	st = hc_mkdir_raw(gpa(short_len), n + 2);
	check("mkdir with len before the NUL", status_err(st, EINVAL), status_value(st));

	/* A good path whose NUL is the last byte of RAM. */
	char *last = ram_tail(n + sizeof("/at-end"));
	memcpy(last, dir, n);
	memcpy(last + n, "/at-end", sizeof("/at-end"));
	int ret = hc_open(last, O_RDONLY, 0);
	check("open path ending at the end of RAM", ret == -ENOENT, ret);
	st = hc_mkdir(last);
	check("mkdir path ending at the end of RAM", status_ok(st), status_value(st));
	static struct FileAttr attr;
	st = hc_stat(last, STAT_FOLLOW, &attr);
	check("stat path ending at the end of RAM", status_ok(st) && (attr.st_mode & S_IFMT) == S_IFDIR,
	      status_value(st));
	return check_failures != 0;
}

/* ---- Bad descriptors and whence ---- */

static int bad_fds(void)
{
	static const int32_t fds[] = {-1, -3, INT32_MIN, 3, 1000, INT32_MAX};
	static char buf[16];
	static struct FileAttr attr;
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		int32_t fd = fds[i];
		put_str("fd ");
		put_dec(fd);
		put_str("\n");
		int64_t ret = hc_read(fd, buf, sizeof(buf));
		check("  read", ret == -EBADF, ret);
		ret = hc_write(fd, "x", 1);
		check("  write", ret == -EBADF, ret);
		ret = hc_lseek(fd, 0, SEEK_SET);
		check("  lseek", ret == -EBADF, ret);
		int cret = hc_close(fd);
		check("  close", fd < 0 ? cret == 0 : cret == -EBADF, cret);
		struct StatusResult st = hc_fstat(fd, &attr);
		check("  fstat", status_err(st, EBADF), status_value(st));
		struct GetdentResult r = hc_getdents(fd, buf, sizeof(buf));
		check("  getdents", getdent_err(r, EBADF), getdent_value(r));
	}
	put_str("stdio\n");
	int64_t ret = hc_read(1, buf, sizeof(buf));
	check("  read fd 1", ret == -EBADF, ret);
	ret = hc_read(2, buf, sizeof(buf));
	check("  read fd 2", ret == -EBADF, ret);
	ret = hc_write(0, "x", 1);
	check("  write fd 0", ret == -EBADF, ret);
	for (int fd = 0; fd < 3; fd++) {
		ret = hc_lseek(fd, 0, SEEK_CUR);
		check("  lseek", ret == -EBADF, ret);
		struct StatusResult st = hc_fstat(fd, &attr);
		check("  fstat", status_err(st, EBADF), status_value(st));
		struct GetdentResult r = hc_getdents(fd, buf, sizeof(buf));
		check("  getdents", getdent_err(r, EBADF), getdent_value(r));
	}
	return check_failures != 0;
}

static int bad_whence(const char *path)
{
	int fd = hc_open(path, O_RDONLY, 0);
	check("open input", fd > 2, fd);
	static const uint32_t whences[] = {3, 7, 0x80000000u, UINT32_MAX};
	for (size_t i = 0; i < sizeof(whences) / sizeof(whences[0]); i++) {
		int64_t ret = hc_lseek(fd, 0, whences[i]);
		check("whence", ret == -EINVAL, ret);
	}
	int64_t ret = hc_lseek(fd, -1, SEEK_SET);
	check("SEEK_SET -1", ret == -EINVAL, ret);
	ret = hc_lseek(fd, -100, SEEK_CUR);
	check("SEEK_CUR -100", ret == -EINVAL, ret);
	ret = hc_lseek(fd, INT64_MIN, SEEK_END);
	check("SEEK_END INT64_MIN", ret == -EINVAL, ret);
	ret = hc_lseek(fd, 0, SEEK_CUR);
	check("position unchanged", ret == 0, ret);
	hc_close(fd);
	return check_failures != 0;
}

/* ---- Getdents ---- */

static char dents[4096] __attribute__((aligned(8)));

/* Prints "entry <name> <d_type>" for each of the `bytes` bytes of records at `records`; returns
 * their number, or -1 if they are malformed. */
static int print_records(const char *records, uint64_t bytes)
{
	int count = 0;
	uint64_t pos = 0;
	while (pos < bytes) {
		const struct Dirent64 *d = (const struct Dirent64 *)(records + pos);
		size_t room = d->d_reclen >= 19 ? d->d_reclen - 19u : 0;
		if (d->d_reclen < 24 || d->d_reclen % 8 != 0 || pos + d->d_reclen > bytes ||
		    strnlen(d->d_name, room) >= room)
			return -1;
		put_str("entry ");
		put_str(d->d_name);
		put_str(" ");
		put_dec(d->d_type);
		put_str("\n");
		count++;
		pos += d->d_reclen;
	}
	return count;
}

static int getdents(const char *dir)
{
	int fd = hc_open(dir, O_RDONLY | O_DIRECTORY, 0);
	check("open directory", fd > 2, fd);
	if (fd <= 2)
		return 1;
	static const uint64_t short_lens[] = {0, 8, 23};
	for (size_t i = 0; i < sizeof(short_lens) / sizeof(short_lens[0]); i++) {
		struct GetdentResult r = hc_getdents(fd, dents, short_lens[i]);
		check("buffer shorter than a record", getdent_err(r, EINVAL), getdent_value(r));
	}
	const struct {
		const char *name;
		uint64_t buf, len;
	} bad[] = {
		{"buffer at the end of RAM", ram_end(), 4096},
		{"buffer straddling the end of RAM", ram_end() - 16, 4096},
		{"buffer starting below RAM", ram_start() - 64, 4096},
		{"buffer in low memory", 0x1000, 4096},
		{"buffer wrapping around", UINT64_MAX - 8, 4096},
		{"length 2^64 - 1 near the end of RAM", ram_end() - 1024, UINT64_MAX},
	};
	memset(ram_tail(1024), 0x5a, 1024);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct GetdentResult r = hc_getdents_raw(fd, bad[i].buf, bad[i].len);
		check(bad[i].name, getdent_err(r, EFAULT), getdent_value(r));
	}
	check("RAM before its end untouched", all_bytes(ram_tail(1024), 1024, 0x5a), 0);

	int listed = 0, failures_ok = 1;
	for (;;) {
		struct GetdentResult r = hc_getdents(fd, dents, 64);
		if (r.tag == GETDENT_END_OF_DIRECTORY)
			break;
		int n = r.tag == GETDENT_SUCCESS ? print_records(dents, r.value) : -1;
		if (n <= 0) {
			check("getdents piece", 0, getdent_value(r));
			break;
		}
		listed += n;
		r = hc_getdents_raw(fd, ram_end() - 8, 64);
		failures_ok &= getdent_err(r, EFAULT);
		r = hc_getdents(fd, dents, 8);
		failures_ok &= getdent_err(r, EINVAL) || r.tag == GETDENT_END_OF_DIRECTORY;
	}
	put_str("listed ");
	put_dec(listed);
	put_str(" entries\n");
	check("failing calls between pieces", failures_ok, failures_ok);

	int64_t off = hc_lseek(fd, 0, SEEK_SET);
	check("rewind", off == 0, off);
	char *window = ram_tail(64 * 1024);
	struct GetdentResult r = hc_getdents(fd, window, UINT64_MAX);
	int again = -1;
	if (r.tag == GETDENT_SUCCESS && r.value <= 64 * 1024) {
		/* Count without printing: copy the records where print_records could see them. */
		again = 0;
		for (uint64_t pos = 0; pos < r.value; again++)
			pos += ((const struct Dirent64 *)(window + pos))->d_reclen;
	}
	check("length 2^64 - 1 with 64 KiB left lists everything", again == listed, again);

	int cret = hc_close(fd);
	check("close directory", cret == 0, cret);
	r = hc_getdents(fd, dents, sizeof(dents));
	check("closed fd", getdent_err(r, EBADF), getdent_value(r));
	return check_failures != 0;
}

static int getdents_file(const char *path)
{
	int fd = hc_open(path, O_RDONLY, 0);
	struct GetdentResult r = hc_getdents(fd, dents, sizeof(dents));
	check("getdents on a file", getdent_err(r, ENOTDIR), getdent_value(r));
	hc_close(fd);
	return check_failures != 0;
}

/* ---- FileAttr destinations ---- */

static int stat_attr(const char *path)
{
	const struct {
		const char *name;
		uint64_t attr;
	} bad[] = {
		{"attr at the end of RAM", ram_end()},
		{"attr straddling the end of RAM", ram_end() - 60},
		{"attr starting below RAM", ram_start() - 8},
		{"attr in low memory", 0x1000},
		{"attr wrapping around", UINT64_MAX - 7},
	};
	int fd = hc_open(path, O_RDONLY, 0);
	check("open input", fd > 2, fd);
	memset(ram_tail(60), 0x5a, 60);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		put_str(bad[i].name);
		put_str("\n");
		struct StatusResult st = hc_stat_raw(gpa(path), STAT_FOLLOW, bad[i].attr);
		check("  stat", status_err(st, EFAULT), status_value(st));
		st = hc_stat_raw(gpa(path), STAT_NO_FOLLOW, bad[i].attr);
		check("  lstat", status_err(st, EFAULT), status_value(st));
		st = hc_fstat_raw(fd, bad[i].attr);
		check("  fstat", status_err(st, EFAULT), status_value(st));
		check("  RAM before its end untouched", all_bytes(ram_tail(60), 60, 0x5a), 0);
	}
	struct FileAttr *last = (struct FileAttr *)ram_tail(sizeof(struct FileAttr));
	memset(last, 0, sizeof(*last));
	struct StatusResult st = hc_stat(path, STAT_FOLLOW, last);
	check("stat into the last 120 bytes of RAM", status_ok(st) && last->st_size == FILE_LEN,
	      status_value(st));
	memset(last, 0, sizeof(*last));
	st = hc_fstat(fd, last);
	check("fstat into the last 120 bytes of RAM", status_ok(st) && last->st_size == FILE_LEN,
	      status_value(st));

	static struct FileAttr attr;
	memset(&attr, 0x5a, sizeof(attr));
	st = hc_stat(path, 2, &attr);
	check("kind 2", status_err(st, EINVAL), status_value(st));
	st = hc_stat(path, UINT32_MAX, &attr);
	check("kind 2^32 - 1", status_err(st, EINVAL), status_value(st));
	check("attr untouched after EINVAL", all_bytes(&attr, sizeof(attr), 0x5a), 0);
	st = hc_stat_raw(gpa("/no/such/file"), STAT_FOLLOW, ram_end());
	check("missing path, attr outside RAM", status_err(st, ENOENT), status_value(st));
	hc_close(fd);
	return check_failures != 0;
}

/* ---- Ways out of the mapping ---- */

static char escape_buf[8][512];

static const char *in_dir(const char *dir, const char *rel)
{
	static int next;
	char *p = escape_buf[next++ % 8];
	size_t n = strlen(dir);
	memcpy(p, dir, n);
	memcpy(p + n, rel, strlen(rel) + 1);
	return p;
}

static int escapes(const char *dir)
{
	static struct FileAttr attr;
	static const char *const stats[] = {"/link/secret", "/link_file", "/../outside/secret",
					   "/link/../secret"};
	for (size_t i = 0; i < sizeof(stats) / sizeof(stats[0]); i++) {
		const char *path = in_dir(dir, stats[i]);
		struct StatusResult st = hc_stat(path, STAT_FOLLOW, &attr);
		put_str("stat ");
		put_str(path);
		check("", st.tag == STATUS_ERROR, status_value(st));
	}
	struct StatusResult st = hc_stat(in_dir(dir, "/link_file"), STAT_NO_FOLLOW, &attr);
	check("lstat of a link to the outside", status_ok(st) && (attr.st_mode & S_IFMT) == S_IFLNK,
	      status_value(st));
	static const char *const mkdirs[] = {"/link/made", "/link/sub/made", "/../../made",
					    "/link_file/made"};
	for (size_t i = 0; i < sizeof(mkdirs) / sizeof(mkdirs[0]); i++) {
		const char *path = in_dir(dir, mkdirs[i]);
		st = hc_mkdir(path);
		put_str("mkdir ");
		put_str(path);
		check("", st.tag == STATUS_ERROR, status_value(st));
	}
	int fd = hc_open(in_dir(dir, "/link"), O_RDONLY | O_DIRECTORY, 0);
	check("open a symlinked directory outside", fd < 0, fd);
	st = hc_mkdir("/unmapped-dir");
	check("mkdir of an unmapped path", status_ok(st), status_value(st));
	st = hc_stat("/unmapped-dir", STAT_FOLLOW, &attr);
	check("stat of it", status_ok(st) && (attr.st_mode & S_IFMT) == S_IFDIR, status_value(st));
	return check_failures != 0;
}

/* ---- stdio, ports ---- */

static int close_stdio(void)
{
	for (int fd = 0; fd < 3; fd++) {
		int ret = hc_close(fd);
		check("close stdio", ret == 0, ret);
	}
	static const char line[] = "fd 1 still works\n";
	int64_t n = hc_write(1, line, sizeof(line) - 1);
	check("write after close", n == sizeof(line) - 1, n);
	return check_failures != 0;
}

#if defined(__aarch64__)
/* A v1 hypercall as an aarch64 v1 guest makes it: the struct's address stored to the port. */
static void v1_call(uint16_t port, const void *params)
{
	uhyve_a64_store(port, gpa(params));
}
#else
/* A v1-style hypercall: EAX = the low 32 bits of the struct address, RDI = all of it. */
static void v1_call(uint16_t port, const void *params)
{
	__asm__ volatile("outl %%eax, %%dx"
			 :
			 : "a"((uint32_t)gpa(params)), "d"(port), "D"(gpa(params))
			 : "memory");
}
#endif

static int v1_ports(void)
{
	struct ExitParams exit = {.arg = 77};
	v1_call(UHYVE_PORT_EXIT, &exit);
	check("v1 Exit ignored", 1, 0);

	static const char leak[] = "LEAK\n";
	for (size_t i = 0; i < sizeof(leak) - 1; i++)
#if defined(__aarch64__)
		uhyve_a64_store(UHYVE_PORT_UART, (uint8_t)leak[i]);
#else
		uhyve_out8(UHYVE_PORT_UART, (uint8_t)leak[i]);
#endif
	struct SerialWriteBufferParams serial = {.buf = gpa(leak), .len = sizeof(leak) - 1};
	v1_call(UHYVE_PORT_SERIAL_WRITE_BUFFER, &serial);
	struct WriteParams write = {.fd = 1, .buf = gpa(leak), .len = sizeof(leak) - 1};
	v1_call(UHYVE_PORT_FILE_WRITE, &write);
	check("v1 FileWrite untouched", write.len == sizeof(leak) - 1, (int64_t)write.len);

	struct OpenParams open = {.name = gpa("/"), .flags = O_RDONLY | O_DIRECTORY, .ret = HC_UNSET};
	v1_call(UHYVE_PORT_FILE_OPEN, &open);
	check("v1 FileOpen untouched", open.ret == HC_UNSET, open.ret);
	struct CloseParams close = {.fd = 1, .ret = HC_UNSET};
	v1_call(UHYVE_PORT_FILE_CLOSE, &close);
	check("v1 FileClose untouched", close.ret == HC_UNSET, close.ret);
	static char buf[8];
	struct ReadParams read = {.fd = 0, .buf = gpa(buf), .len = sizeof(buf), .ret = HC_UNSET};
	v1_call(UHYVE_PORT_FILE_READ, &read);
	check("v1 FileRead untouched", read.ret == HC_UNSET, read.ret);
	struct LseekParams lseek = {.fd = 1, .offset = 5, .whence = SEEK_SET};
	v1_call(UHYVE_PORT_FILE_LSEEK, &lseek);
	check("v1 FileLseek untouched", lseek.offset == 5, lseek.offset);
	struct UnlinkParams unlink = {.name = gpa("/nothing"), .ret = HC_UNSET};
	v1_call(UHYVE_PORT_FILE_UNLINK, &unlink);
	check("v1 FileUnlink untouched", unlink.ret == HC_UNSET, unlink.ret);
	static struct CmdsizeParams sizes;
	memset(&sizes, 0, sizeof(sizes));
	sizes.argc = -7;
	v1_call(UHYVE_PORT_CMDSIZE, &sizes);
	check("v1 Cmdsize untouched", sizes.argc == -7 && sizes.argsz[0] == 0, sizes.argc);
	static uint64_t slots[4];
	struct CmdvalParams val = {.argv = gpa(slots), .envp = gpa(slots)};
	v1_call(UHYVE_PORT_CMDVAL, &val);
	check("v1 Cmdval untouched", all_bytes(slots, sizeof(slots), 0), 0);

#if !defined(__aarch64__)
	static const uint16_t ports[] = {UHYVE_PORT_UART, UHYVE_PORT_EXIT, UHYVE_PORT_FILE_READ};
	int ones = 1;
	for (size_t i = 0; i < sizeof(ports) / sizeof(ports[0]); i++)
		ones &= uhyve_in8(ports[i]) == 0xff && uhyve_in32(ports[i]) == UINT32_MAX;
	check("in from v1 ports: all-ones", ones, ones);
#endif
	return check_failures != 0;
}

#if defined(__aarch64__)
static int unknown_ports(void)
{
	static const char leak[] = "LEAK\n";
	/* v2 addresses, but none that uhyve serves by a store. */
	static const uint16_t stores[] = {UHYVE_V2_SERIAL_READ_BYTE, UHYVE_V2_SHARED_MEM_OPEN,
					  UHYVE_V2_SHARED_MEM_CLOSE};
	int untouched = 1;
	for (size_t i = 0; i < sizeof(stores) / sizeof(stores[0]); i++) {
		struct WriteParamsV2 p = {.len = sizeof(leak) - 1, .ret = HC_UNSET, .buf = gpa(leak), .fd = 1};
		uhyve_v2_out(stores[i], gpa(&p));
		untouched &= p.ret == HC_UNSET && p.len == sizeof(leak) - 1;
	}
	check("stores to v2 addresses without a store: ignored", untouched, untouched);

	/* Every v2 address but SerialReadByte: served loads that read all-ones. */
	static const uint16_t loads[] = {UHYVE_V2_EXIT, UHYVE_V2_SERIAL_WRITE_BYTE,
					 UHYVE_V2_SERIAL_WRITE_BUFFER, UHYVE_V2_SERIAL_READ_BUFFER,
					 UHYVE_V2_FILE_WRITE, UHYVE_V2_FILE_OPEN, UHYVE_V2_FILE_CLOSE,
					 UHYVE_V2_FILE_READ, UHYVE_V2_FILE_LSEEK, UHYVE_V2_FILE_UNLINK,
					 UHYVE_V3_GETDENTS, UHYVE_V3_FILE_STAT, UHYVE_V3_FILE_FSTAT,
					 UHYVE_V3_MKDIR, UHYVE_V2_SHARED_MEM_OPEN,
					 UHYVE_V2_SHARED_MEM_CLOSE};
	for (size_t i = 0; i < sizeof(loads) / sizeof(loads[0]); i++) {
		uint8_t b = uhyve_in8(loads[i]);
		uint16_t h = uhyve_in16(loads[i]);
		uint32_t w = uhyve_in32(loads[i]);
		uint64_t x = uhyve_in64(loads[i]);
		put_str("load ");
		put_hex(loads[i]);
		check("", b == 0xff && h == 0xffff && w == UINT32_MAX && x == UINT64_MAX, (int64_t)x);
	}
	put_str("unknown ports: still running\n");
	return check_failures != 0;
}

/* A window offset given in decimal, 8-byte aligned and inside the 16 KiB window; -1 if not. */
static int64_t window_offset(const char *text)
{
	int64_t offset;
	if (parse_int(text, &offset) != 0 || offset < 0 || offset >= 0x4000 || offset % 8 != 0)
		return -1;
	return offset;
}

static int window_store(const char *offset_text)
{
	int64_t offset = window_offset(offset_text);
	if (offset < 0)
		return 100;
	static const char leak[] = "LEAK\n";
	struct WriteParamsV2 p = {.len = sizeof(leak) - 1, .ret = HC_UNSET, .buf = gpa(leak), .fd = 1};
	uhyve_a64_store((uint64_t)offset, gpa(&p));
	return survived();
}

static int window_load(const char *offset_text)
{
	int64_t offset = window_offset(offset_text);
	if (offset < 0)
		return 100;
	uint32_t value = uhyve_in32((uint16_t)offset);
	put_hex(value);
	put_str("\n");
	return survived();
}
#else
static int unknown_ports(void)
{
	static const char leak[] = "LEAK\n";
	static const uint16_t outs[] = {0x1000, 0x1011, 0x1018, UHYVE_V2_SERIAL_READ_BYTE, 0x1060,
					0x10f0, 0x1101, 0x11a0, UHYVE_V2_SHARED_MEM_OPEN,
					UHYVE_V2_SHARED_MEM_CLOSE, 0x1300, 0x1fff, 0xffff};
	int untouched = 1;
	for (size_t i = 0; i < sizeof(outs) / sizeof(outs[0]); i++) {
		struct WriteParamsV2 p = {.len = sizeof(leak) - 1, .ret = HC_UNSET, .buf = gpa(leak), .fd = 1};
		uhyve_v2_out(outs[i], gpa(&p));
		untouched &= p.ret == HC_UNSET && p.len == sizeof(leak) - 1;
	}
	check("out to addresses that are no hypercall", untouched, untouched);

	static const uint16_t ins[] = {0x1000, 0x1011, 0x1060, 0x11a0, UHYVE_V2_SHARED_MEM_OPEN,
				       UHYVE_V2_SHARED_MEM_CLOSE, 0x1fff, UHYVE_V2_EXIT,
				       UHYVE_V2_SERIAL_WRITE_BYTE, UHYVE_V2_SERIAL_WRITE_BUFFER,
				       UHYVE_V2_SERIAL_READ_BUFFER, UHYVE_V2_FILE_WRITE,
				       UHYVE_V2_FILE_OPEN, UHYVE_V3_GETDENTS, UHYVE_V3_MKDIR};
	for (size_t i = 0; i < sizeof(ins) / sizeof(ins[0]); i++) {
		uint8_t b = uhyve_in8(ins[i]);
		uint16_t w = uhyve_in16(ins[i]);
		uint32_t l = uhyve_in32(ins[i]);
		put_str("in ");
		put_hex(ins[i]);
		check("", b == 0xff && w == 0xffff && l == UINT32_MAX, l);
	}
	put_str("unknown ports: still running\n");
	return check_failures != 0;
}

static int rep_ins(const char *port_text)
{
	int64_t port;
	if (parse_int(port_text, &port) != 0 || port < 0 || port > 0xffff)
		return 100;
	static char bytes[4];
	char *to = bytes;
	uint64_t count = 4;
	__asm__ volatile("rep insb" : "+D"(to), "+c"(count) : "d"((uint16_t)port) : "memory");
	check("rep_ins all-ones", all_bytes(bytes, sizeof(bytes), 0xff), (uint8_t)bytes[0]);
	return check_failures != 0;
}
#endif /* !__aarch64__ */

int main(void)
{
	char **argv;
	int argc = uhyve_v2_args(&argv);
	if (argc < 1) {
		put_str("usage: v3_hostile <attack> [args]\n");
		return 100;
	}
	const char *attack = argv[0];
	if (strcmp(attack, "params") == 0 && argc == 3)
		return params(argv[1], argv[2]);
	if (strcmp(attack, "serial_write_buffer") == 0 && argc == 2)
		return serial_write_buffer(argv[1]);
	if (strcmp(attack, "serial_read_buffer") == 0 && argc == 2)
		return serial_read_buffer(argv[1]);
	if (strcmp(attack, "file_buffers") == 0 && argc == 2)
		return file_buffers(argv[1]);
	if (strcmp(attack, "paths") == 0 && argc == 2)
		return paths(argv[1]);
	if (strcmp(attack, "bad_fds") == 0)
		return bad_fds();
	if (strcmp(attack, "bad_whence") == 0 && argc == 2)
		return bad_whence(argv[1]);
	if (strcmp(attack, "getdents") == 0 && argc == 3)
		return getdents(argv[1]) | getdents_file(argv[2]);
	if (strcmp(attack, "stat_attr") == 0 && argc == 2)
		return stat_attr(argv[1]);
	if (strcmp(attack, "escapes") == 0 && argc == 2)
		return escapes(argv[1]);
	if (strcmp(attack, "close_stdio") == 0)
		return close_stdio();
	if (strcmp(attack, "v1_ports") == 0)
		return v1_ports();
	if (strcmp(attack, "unknown_ports") == 0)
		return unknown_ports();
#if defined(__aarch64__)
	if (strcmp(attack, "window_store") == 0 && argc == 2)
		return window_store(argv[1]);
	if (strcmp(attack, "window_load") == 0 && argc == 2)
		return window_load(argv[1]);
#else
	if (strcmp(attack, "rep_ins") == 0 && argc == 2)
		return rep_ins(argv[1]);
#endif
	put_str("unknown attack\n");
	return 100;
}
