/*
 * hostile: hypercalls with bad parameters. argv[1] selects one attack; none of them may crash
 * uhyve. Attacks whose only sane answer is to stop the VM print "survived" and return 42 if uhyve
 * lets them continue; the others check the result uhyve hands back, print "<case>: ok" per case,
 * and exit 0 if all were ok. See tests/guests.rs for what each attack expects of uhyve.
 *
 *   write_param_outside_ram   FileWrite whose parameter struct starts at the end of RAM
 *   write_param_straddles_end FileWrite whose parameter struct crosses the end of RAM
 *   exit_param_outside_ram    Exit whose parameter struct lies outside RAM
 *   read_bad_buffers FILE     FileRead into buffers outside RAM / unmapped / crossing the end of
 *                             RAM / with a huge length (FILE is a mapped file of >= 16 bytes)
 *   write_bad_buffers         FileWrite to fd 1 from buffers outside RAM or unmapped
 *   serial_bad_buffers        SerialWriteBuffer outside RAM / crossing the end of RAM, huge length
 *   open_unterminated         FileOpen/FileUnlink with paths that run into the end of RAM or
 *                             start outside it
 *   open_must_fail PATH...    FileOpen(O_RDONLY) of each PATH must fail
 *   create_anything PATH...   FileOpen(O_CREAT|O_WRONLY) each PATH, write, close (any result)
 *   unlink_anything PATH...   FileUnlink each PATH (any result)
 *   bad_fds                   read/write/lseek/close with unknown, negative and huge fds
 *   close_stdio               close fds 0-2, then write to fd 1 again
 *   unknown_ports             out/in on ports uhyve does not serve
 *   cmdval_outside_ram        Cmdval with its argv array outside RAM
 *   cmdval_bad_slots          Cmdval whose string slots run past the end of RAM
 *   rep_outs                  `rep outsb` of 2 bytes to the serial port (string port I/O)
 *   rep_ins                   `rep insb` of 4 bytes from an unknown port (must read all-ones)
 *   mmio_store                prints "store at <hex>", then `mov dword [rax], 0x1234` to the first
 *                             address after RAM (identity-mapped, no device): the crash report must
 *                             name that instruction and address, not the one after it
 */
#include "uhyve.h"

#define SURVIVED 42

/* The first guest-physical address after RAM (RAM starts at 0, identity mapped). */
static uint64_t ram_end(void)
{
	return uhyve_boot_info->phys_addr_end;
}

/* An address in a PML4 slot uhyve never maps (the identity map covers the first GiB). */
#define UNMAPPED_VA 0x0000400000000000ull
/* A non-canonical address. */
#define NONCANONICAL_VA 0x8000000000000000ull

static int survived(void)
{
	put_str("survived\n");
	return SURVIVED;
}

static int write_param_at(uint64_t gpa)
{
	uhyve_out32(UHYVE_PORT_FILE_WRITE, (uint32_t)gpa);
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
	ret = hc_read_raw(fd, ram_end() + 0x200000, 16);
	check("read buf 2 MiB past ram", ret < 0, ret);
	hc_lseek(fd, 0, SEEK_SET);
	ret = hc_read_raw(fd, UNMAPPED_VA, 16);
	check("read buf unmapped", ret < 0, ret);
	hc_lseek(fd, 0, SEEK_SET);
	ret = hc_read_raw(fd, NONCANONICAL_VA, 16);
	check("read buf noncanonical", ret < 0, ret);
	hc_lseek(fd, 0, SEEK_SET);
	ret = hc_read_raw(fd, ram_end() - 4, 16);
	check("read buf crossing end of ram", ret < 0 || ret <= 4, ret);
	hc_lseek(fd, 0, SEEK_SET);
	ret = hc_read(fd, buf, UINT64_MAX);
	check("read huge len", ret < 0 || ret <= size, ret);
	hc_lseek(fd, 0, SEEK_SET);
	ret = hc_read(fd, buf, (uint64_t)1 << 63);
	check("read len 2^63", ret < 0 || ret <= size, ret);
	/*
	 * buf + len wraps around 2^64. The top of the address space is uhyve's recursive page-table
	 * slot (PML4[511]), so reading real data there would overwrite our own PML4; read at EOF
	 * instead: nothing may be written, and the host's range arithmetic must not overflow.
	 */
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
	n = hc_write(1, (const void *)(uintptr_t)NONCANONICAL_VA, 16);
	check("write buf noncanonical", n == 0, (int64_t)n);
	return check_failures != 0;
}

static int serial_bad_buffers(void)
{
	hc_write_buffer((const void *)(uintptr_t)ram_end(), 16);
	hc_write_buffer((const void *)(uintptr_t)(ram_end() + 0x200000), 16);
	hc_write_buffer((const void *)(uintptr_t)UINT64_MAX, 16);
	/* Four visible bytes at the very end of RAM, then ask for far more than that. */
	char *tail = (char *)(uintptr_t)(ram_end() - 4);
	memcpy(tail, "END\n", 4);
	hc_write_buffer(tail, 64);
	hc_write_buffer(tail, UINT64_MAX);
	return survived();
}

static int open_unterminated(void)
{
	/* 64 bytes of 'A' up to the last byte of RAM: no NUL before the end. */
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

static int unknown_ports(void)
{
	static const uint16_t ports[] = {UHYVE_PORT_NETWRITE, UHYVE_PORT_NETREAD, UHYVE_PORT_NETSTAT,
					 0x3f8, 0x70, 0x1234, 0xffff};
	for (size_t i = 0; i < sizeof(ports) / sizeof(ports[0]); i++) {
		uhyve_out32(ports[i], 0x1000);
		uhyve_out8(ports[i], 0x41);
		uint32_t value;
		__asm__ volatile("inl %1, %0" : "=a"(value) : "Nd"(ports[i]) : "memory");
		uint8_t byte;
		__asm__ volatile("inb %1, %0" : "=a"(byte) : "Nd"(ports[i]) : "memory");
		(void)value;
		(void)byte;
	}
	put_str("unknown ports: ok\n");
	return 0;
}

static int cmdval_outside_ram(void)
{
	struct CmdsizeParams sizes;
	memset(&sizes, 0, sizeof(sizes));
	hc_cmdsize(&sizes);
	struct CmdvalParams val = {.argv = ram_end(), .envp = ram_end() + 0x1000};
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
	struct CmdvalParams val = {.argv = (uintptr_t)slots, .envp = (uintptr_t)slots};
	hc_cmdval(&val);
	return survived();
}

static int rep_outs(void)
{
	static const char bytes[2] = {'A', 'B'};
	const char *from = bytes;
	uint64_t count = 2;
	__asm__ volatile("rep outsb" : "+S"(from), "+c"(count) : "d"((uint16_t)UHYVE_PORT_UART) : "memory");
	put_str("\nrep_outs: ok\n");
	return 0;
}

static int rep_ins(void)
{
	static char bytes[4];
	char *to = bytes;
	uint64_t count = 4;
	__asm__ volatile("rep insb" : "+D"(to), "+c"(count) : "d"((uint16_t)0x3f0) : "memory");
	/* No device at that port: every element reads as all-ones. */
	int all_ones = 1;
	for (int i = 0; i < 4; i++)
		all_ones &= (uint8_t)bytes[i] == 0xff;
	check("rep_ins all-ones", all_ones, (uint8_t)bytes[0]);
	return check_failures != 0;
}

static int mmio_store(void)
{
	extern char hostile_mmio_store[];
	put_str("store at ");
	put_hex((uint64_t)(uintptr_t)hostile_mmio_store);
	put_str("\n");
	/* Encoded by hand so the instruction is exactly c7 00 34 12 00 00 whatever the compiler does. */
	__asm__ volatile(".globl hostile_mmio_store\n"
			 "hostile_mmio_store: .byte 0xc7, 0x00, 0x34, 0x12, 0x00, 0x00\n"
			 "nop"
			 :
			 : "a"(ram_end())
			 : "memory");
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
	if (strcmp(attack, "exit_param_outside_ram") == 0) {
		uhyve_out32(UHYVE_PORT_EXIT, (uint32_t)ram_end());
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
	if (strcmp(attack, "unknown_ports") == 0)
		return unknown_ports();
	if (strcmp(attack, "cmdval_outside_ram") == 0)
		return cmdval_outside_ram();
	if (strcmp(attack, "cmdval_bad_slots") == 0)
		return cmdval_bad_slots();
	if (strcmp(attack, "rep_outs") == 0)
		return rep_outs();
	if (strcmp(attack, "rep_ins") == 0)
		return rep_ins();
	if (strcmp(attack, "mmio_store") == 0)
		return mmio_store();
	put_str("unknown attack\n");
	return 100;
}
