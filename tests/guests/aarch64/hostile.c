/*
 * hostile (aarch64): hypercalls with bad parameters. argv[1] selects one attack; none of them may
 * crash uhyve. Attacks whose only sane answer is to stop the VM print "survived" and return 42 if
 * uhyve lets them continue; the others check the result uhyve hands back, print "<case>: ok" (or
 * "<case>: FAIL (got <value>)") per case through check(), and exit 0 if all were ok, 1 if not.
 * Parameter structs are guest-physical; file buffers and paths are guest-virtual, and on aarch64
 * uhyve's page tables map only [RAM base, image end) and page 0, so an address past the image is
 * unmapped even where RAM lies behind it.
 *
 *   write_param_outside_ram   FileWrite whose parameter struct starts at the end of RAM
 *   write_param_straddles_end FileWrite whose parameter struct crosses the end of RAM
 *   write_param_below_ram     FileWrite whose parameter struct lies below RAM (0x1000)
 *   exit_param_outside_ram    Exit whose parameter struct lies outside RAM
 *   read_bad_buffers FILE     FileRead into buffers outside RAM, unmapped, in the upper (TTBR1)
 *                             half, crossing the end of the identity map, with huge lengths (FILE
 *                             is a mapped file of >= 16 bytes)
 *   write_bad_buffers         FileWrite to fd 1 from buffers outside RAM, unmapped, upper half
 *   serial_bad_buffers        SerialWriteBuffer outside RAM / crossing the end of RAM / huge length
 *   open_unterminated         FileOpen/FileUnlink with paths (guest-physical) that run into the end
 *                             of RAM (the guest maps RAM's last page for that) or start outside
 *                             RAM, and a path that is not UTF-8
 *   open_must_fail PATH...    FileOpen(O_RDONLY) of each PATH must fail
 *   create_anything PATH...   FileOpen(O_CREAT|O_WRONLY) each PATH, write, close (any result)
 *   unlink_anything PATH...   FileUnlink each PATH (any result)
 *   bad_fds                   read/write/lseek/close with unknown, negative and huge fds
 *   close_stdio               close fds 0-2, then write to fd 1 again
 *   unserved_hypercalls       NetWrite, NetRead, NetStat (v1 addresses uhyve does not serve)
 *   stray_window_store        a store to offset 0x8 of the hypercall window, no hypercall address
 *   cmdval_outside_ram        Cmdval with its argv array outside RAM
 *   cmdval_bad_slots          Cmdval whose string slots run past the end of RAM
 */
#include "../uhyve.h"

#define SURVIVED 42

/* The last page of the image, reserved by rt/guest.ld: the identity map ends right after it. */
extern char uhyve_a64_tail[];
#define TAIL_SIZE 4096

/* The first guest-physical address after RAM. */
static uint64_t ram_end(void)
{
	return uhyve_boot_info->phys_addr_end;
}

/* The first virtual address after uhyve's identity map (the end of the image). */
static char *map_end(void)
{
	return uhyve_a64_tail + TAIL_SIZE;
}

/* RAM, but not mapped in stage 1: 1 GiB above the RAM base is past any test image. */
#define UNMAPPED_VA (UHYVE_A64_RAM_BASE + 0x40000000ull)
/* The upper half of the address space, translated through TTBR1_EL1, which uhyve leaves 0. */
#define UPPER_HALF_VA 0xffff000000001000ull

static int survived(void)
{
	put_str("survived\n");
	return SURVIVED;
}

static int write_param_at(uint64_t gpa)
{
	uhyve_a64_store(UHYVE_PORT_FILE_WRITE, gpa);
	return survived();
}

static int read_bad_buffers(const char *path)
{
	static char buf[64];
	int fd = hc_open(path, O_RDONLY, 0);
	check("open input", fd > 2, fd);
	if (fd <= 2)
		return 1;
	int64_t size = hc_lseek(fd, 0, SEEK_END);
	check("input size", size >= 16, size);

	hc_lseek(fd, 0, SEEK_SET);
	int64_t ret = hc_read_raw(fd, ram_end(), 16);
	check("read buf outside ram", ret < 0, ret);
	hc_lseek(fd, 0, SEEK_SET);
	ret = hc_read_raw(fd, UNMAPPED_VA, 16);
	check("read buf unmapped", ret < 0, ret);
	hc_lseek(fd, 0, SEEK_SET);
	ret = hc_read_raw(fd, UPPER_HALF_VA, 16);
	check("read buf upper half", ret < 0, ret);
	hc_lseek(fd, 0, SEEK_SET);
	/* 4 bytes of our own tail page, then the unmapped page after the image. */
	ret = hc_read(fd, map_end() - 4, 16);
	check("read buf crossing end of map", ret < 0 || ret <= 4, ret);
	hc_lseek(fd, 0, SEEK_SET);
	ret = hc_read(fd, buf, UINT64_MAX);
	check("read huge len", ret < 0 || ret <= size, ret);
	hc_lseek(fd, 0, SEEK_SET);
	ret = hc_read(fd, buf, (uint64_t)1 << 63);
	check("read len 2^63", ret < 0 || ret <= size, ret);
	/* buf + len wraps around 2^64; at EOF nothing may be written either way. */
	hc_lseek(fd, 0, SEEK_END);
	ret = hc_read_raw(fd, UINT64_MAX - 7, 16);
	check("read buf wrapping", ret <= 0, ret);

	/* The descriptor must still work normally afterwards. */
	hc_lseek(fd, 0, SEEK_SET);
	ret = hc_read(fd, buf, 16);
	check("read still works", ret == 16, ret);
	int cret = hc_close(fd);
	check("close input", cret == 0, cret);
	return check_failures != 0;
}

static int write_bad_buffers(void)
{
	uint64_t n = hc_write(1, (const void *)(uintptr_t)ram_end(), 16);
	check("write buf outside ram", n == 0, (int64_t)n);
	n = hc_write(1, (const void *)(uintptr_t)UNMAPPED_VA, 16);
	check("write buf unmapped", n == 0, (int64_t)n);
	n = hc_write(1, (const void *)(uintptr_t)UPPER_HALF_VA, 16);
	check("write buf upper half", n == 0, (int64_t)n);
	return check_failures != 0;
}

static int serial_bad_buffers(void)
{
	/* Guest-physical buffers: past RAM, far past it, at the top, and crossing the end of RAM. */
	hc_write_buffer((const void *)(uintptr_t)ram_end(), 16);
	hc_write_buffer((const void *)(uintptr_t)(ram_end() + 0x200000), 16);
	hc_write_buffer((const void *)(uintptr_t)UINT64_MAX, 16);
	hc_write_buffer((const void *)(uintptr_t)(ram_end() - 4), 64);
	hc_write_buffer((const void *)(uintptr_t)(ram_end() - 4), UINT64_MAX);
	return survived();
}

static int open_unterminated(void)
{
	/* Paths are guest-physical: 64 bytes of 'A' up to the last byte of RAM, no NUL before its
	 * end. uhyve maps nothing there, so the guest maps that page first. */
	uint64_t last_page = ram_end() - 4096;
	if (uhyve_a64_map_page(last_page, UHYVE_A64_PAGE_NORMAL) != 0) {
		put_str("cannot map the last page of RAM\n");
		return 1;
	}
	char *tail = (char *)(uintptr_t)(ram_end() - 64);
	memset(tail, 'A', 64);
	int ret = hc_open(tail, O_RDONLY, 0);
	check("open path unterminated at end of ram", ret < 0, ret);
	ret = hc_open(tail, O_CREAT | O_RDWR, 0644);
	check("create path unterminated at end of ram", ret < 0, ret);
	ret = hc_unlink(tail);
	check("unlink path unterminated at end of ram", ret < 0, ret);
	ret = hc_open((const char *)(uintptr_t)ram_end(), O_RDONLY, 0);
	check("open path outside ram", ret < 0, ret);
	ret = hc_unlink((const char *)(uintptr_t)ram_end());
	check("unlink path outside ram", ret < 0, ret);

	/* Not valid UTF-8. */
	static const char bad_utf8[] = "data/\xff\xfe";
	ret = hc_open(bad_utf8, O_RDONLY, 0);
	check("open non-utf8 path", ret < 0, ret);
	return check_failures != 0;
}

static int for_each_path(const struct uhyve_args *args, int mode)
{
	for (int i = 2; i < args->argc; i++) {
		const char *path = args->argv[i];
		if (mode == 0) {
			int fd = hc_open(path, O_RDONLY, 0);
			put_str("open ");
			put_str(path);
			check("", fd < 0, fd);
		} else if (mode == 1) {
			int fd = hc_open(path, O_CREAT | O_WRONLY, 0644);
			put_str("create ");
			put_str(path);
			put_str(": ");
			put_dec(fd);
			put_str("\n");
			if (fd >= 0) {
				hc_write(fd, "pwned\n", 6);
				hc_close(fd);
			}
		} else {
			int ret = hc_unlink(path);
			put_str("unlink ");
			put_str(path);
			put_str(": ");
			put_dec(ret);
			put_str("\n");
		}
	}
	return check_failures != 0;
}

static int bad_fds(void)
{
	static const int32_t fds[] = {-1, -3, INT32_MIN, 3, 1000, INT32_MAX};
	char buf[16];
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		int32_t fd = fds[i];
		put_str("fd ");
		put_dec(fd);
		put_str("\n");
		int64_t ret = hc_read(fd, buf, sizeof(buf));
		check("  read", ret < 0, ret);
		uint64_t n = hc_write(fd, "x", 1);
		check("  write", n == 0, (int64_t)n);
		ret = hc_lseek(fd, 0, SEEK_SET);
		check("  lseek", ret == -1, ret);
		int cret = hc_close(fd);
		/* Closing a negative fd may be ignored (0) or refused (-EBADF). */
		check("  close", fd < 0 ? cret == 0 || cret == -EBADF : cret == -EBADF, cret);
	}
	return check_failures != 0;
}

static int close_stdio(void)
{
	for (int fd = 0; fd < 3; fd++) {
		int ret = hc_close(fd);
		check("close stdio", ret == 0, ret);
	}
	static const char line[] = "fd 1 still works\n";
	uint64_t n = hc_write(1, line, sizeof(line) - 1);
	check("write after close", n == sizeof(line) - 1, (int64_t)n);
	return check_failures != 0;
}

static int unserved_hypercalls(void)
{
	static const uint16_t addresses[] = {UHYVE_PORT_NETWRITE, UHYVE_PORT_NETREAD,
					     UHYVE_PORT_NETSTAT};
	static char scratch[64];
	for (size_t i = 0; i < sizeof(addresses) / sizeof(addresses[0]); i++) {
		uhyve_a64_store(addresses[i], (uint64_t)(uintptr_t)scratch);
		uhyve_a64_store(addresses[i], 0);
	}
	put_str("unserved hypercalls: ok\n");
	return 0;
}

static int stray_window_store(void)
{
	uhyve_a64_store(0x8, 0x5354);
	return survived();
}

static int cmdval_outside_ram(void)
{
	static struct CmdsizeParams sizes;
	memset(&sizes, 0, sizeof(sizes));
	hc_cmdsize(&sizes);
	static struct CmdvalParams val;
	val.argv = ram_end();
	val.envp = ram_end() + 0x1000;
	hc_cmdval(&val);
	return survived();
}

static int cmdval_bad_slots(void)
{
	static struct CmdsizeParams sizes;
	memset(&sizes, 0, sizeof(sizes));
	hc_cmdsize(&sizes);
	static uint64_t slots[UHYVE_MAX_ARGC_ENVC];
	/* Every item points 2 bytes before the end of RAM: any item longer than 1 byte overruns. */
	for (int i = 0; i < UHYVE_MAX_ARGC_ENVC; i++)
		slots[i] = ram_end() - 2;
	static struct CmdvalParams val;
	val.argv = (uintptr_t)slots;
	val.envp = (uintptr_t)slots;
	hc_cmdval(&val);
	return survived();
}

int main(void)
{
	struct uhyve_args args;
	if (uhyve_get_args(&args) != 0 || args.argc < 2) {
		put_str("usage: hostile <attack> [args]\n");
		return 100;
	}
	const char *attack = args.argv[1];
	if (strcmp(attack, "write_param_outside_ram") == 0)
		return write_param_at(ram_end());
	if (strcmp(attack, "write_param_straddles_end") == 0)
		return write_param_at(ram_end() - 8);
	if (strcmp(attack, "write_param_below_ram") == 0)
		return write_param_at(0x1000);
	if (strcmp(attack, "exit_param_outside_ram") == 0) {
		uhyve_a64_store(UHYVE_PORT_EXIT, ram_end());
		return survived();
	}
	if (strcmp(attack, "read_bad_buffers") == 0 && args.argc > 2)
		return read_bad_buffers(args.argv[2]);
	if (strcmp(attack, "write_bad_buffers") == 0)
		return write_bad_buffers();
	if (strcmp(attack, "serial_bad_buffers") == 0)
		return serial_bad_buffers();
	if (strcmp(attack, "open_unterminated") == 0)
		return open_unterminated();
	if (strcmp(attack, "open_must_fail") == 0)
		return for_each_path(&args, 0);
	if (strcmp(attack, "create_anything") == 0)
		return for_each_path(&args, 1);
	if (strcmp(attack, "unlink_anything") == 0)
		return for_each_path(&args, 2);
	if (strcmp(attack, "bad_fds") == 0)
		return bad_fds();
	if (strcmp(attack, "close_stdio") == 0)
		return close_stdio();
	if (strcmp(attack, "unserved_hypercalls") == 0)
		return unserved_hypercalls();
	if (strcmp(attack, "stray_window_store") == 0)
		return stray_window_store();
	if (strcmp(attack, "cmdval_outside_ram") == 0)
		return cmdval_outside_ram();
	if (strcmp(attack, "cmdval_bad_slots") == 0)
		return cmdval_bad_slots();
	put_str("unknown attack\n");
	return 100;
}
