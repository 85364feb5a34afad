/*
 * v2_gating: a guest of interface v2 (UHYVEIF note 2). The v2 calls work; the v3-only ones
 * (Getdents 0x1160, FileStat 0x1170, FileFstat 0x1180, Mkdir 0x1190) are no hypercalls for it
 * and must do nothing at all. Argument: the guest path of a mapped directory (MNT) holding
 * existing.txt ("existing content\n").
 *
 *   v2 calls       SerialWriteBuffer, FileOpen/Write/Lseek/Read/Close/Unlink on MNT/v2.txt,
 *                  FileRead of MNT/existing.txt, SerialReadByte (no input: all-ones), and Exit
 *                  through main's return
 *   v3 calls       Mkdir of MNT/v3dir, Getdents on a directory fd, FileStat of existing.txt,
 *                  FileFstat of an open fd: each with its result preset to a marker (tag 77,
 *                  errno 77) and its buffers filled with 0x5a; afterwards the markers and buffers
 *                  are unchanged, MNT/v3dir does not exist, and the directory fd is still usable
 *   `in` on them   1, 2 and 4-byte reads of 0x1160-0x1190 give all-ones
 *   v1 calls       Exit (0x540) and FileOpen (0x440) as a v1 guest makes them: ignored
 *
 * Built for aarch64 as well (../aarch64/v2/v2_gating.c): the calls are stores and the reads loads
 * (see uhyve_v2.h), the v1 calls stores of the struct's address to the v1 port.
 */
#include "uhyve_v2.h"

UHYVE_INTERFACE_NOTES(2);

static const char *mnt;
static char path_buf[4][512];

static const char *at(const char *rel)
{
	static int next;
	char *p = path_buf[next++ % 4];
	size_t n = strlen(mnt);
	memcpy(p, mnt, n);
	p[n] = '/';
	memcpy(p + n + 1, rel, strlen(rel) + 1);
	return p;
}

static int all_bytes(const void *p, size_t n, uint8_t value)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++)
		if (b[i] != value)
			return 0;
	return 1;
}

static void v2_calls(void)
{
	static const char line[] = "v2: SerialWriteBuffer\n";
	hc_write_buffer(line, sizeof(line) - 1);

	static char buf[32];
	int fd = hc_open(at("v2.txt"), O_CREAT | O_RDWR | O_TRUNC, 0644);
	check("v2 create", fd > 2, fd);
	int64_t ret = hc_write(fd, "v2 file\n", 8);
	check("v2 write", ret == 8, ret);
	ret = hc_lseek(fd, 3, SEEK_SET);
	check("v2 lseek", ret == 3, ret);
	ret = hc_read(fd, buf, sizeof(buf));
	check("v2 read", ret == 5 && memcmp(buf, "file\n", 5) == 0, ret);
	int cret = hc_close(fd);
	check("v2 close", cret == 0, cret);
	cret = hc_unlink(at("v2.txt"));
	check("v2 unlink", cret == 0, cret);

	fd = hc_open(at("existing.txt"), O_RDONLY, 0);
	ret = hc_read(fd, buf, sizeof(buf));
	check("v2 read existing", ret == 17 && memcmp(buf, "existing content\n", 17) == 0, ret);
	hc_close(fd);

	uint32_t byte = hc_read_byte();
	check("v2 SerialReadByte without input", byte == UINT32_MAX, byte);
}

#if defined(__aarch64__)
/* A v1 hypercall as an aarch64 v1 guest makes it: the struct's address stored to the port. */
static void v1_call(uint16_t port, const void *params)
{
	uhyve_a64_store(port, gpa(params));
}
#else
/* A v1 hypercall as a v1 guest makes it (EAX = the struct's address), with RDI = it as well. */
static void v1_call(uint16_t port, const void *params)
{
	__asm__ volatile("outl %%eax, %%dx"
			 :
			 : "a"((uint32_t)gpa(params)), "d"(port), "D"(gpa(params))
			 : "memory");
}
#endif

static void v1_calls(void)
{
	struct ExitParams exit = {.arg = 77};
	v1_call(UHYVE_PORT_EXIT, &exit);
	const char *path = at("existing.txt");
	struct OpenParams open = {.name = gpa(path), .flags = O_RDONLY, .ret = HC_UNSET};
	v1_call(UHYVE_PORT_FILE_OPEN, &open);
	check("v1 Exit and FileOpen ignored", open.ret == HC_UNSET, open.ret);
}

#define MARK 77

static void v3_calls(void)
{
	const char *dir = at("v3dir");
	struct MkdirParams mkdir = {.path = gpa(dir), .len = strlen(dir), .ret = {MARK, MARK}};
	uhyve_v2_out(UHYVE_V3_MKDIR, gpa(&mkdir));
	check("Mkdir ignored", mkdir.ret.tag == MARK && mkdir.ret.err == MARK, mkdir.ret.tag);
	int fd = hc_open(dir, O_RDONLY | O_DIRECTORY, 0);
	check("no directory created", fd == -ENOENT, fd);

	static char dents[512];
	memset(dents, 0x5a, sizeof(dents));
	int dirfd = hc_open(mnt, O_RDONLY | O_DIRECTORY, 0);
	check("open mount directory", dirfd > 2, dirfd);
	struct GetdentParams getdents = {
		.fd = dirfd, .buf = gpa(dents), .len = sizeof(dents), .ret = {.tag = MARK, .value = MARK}};
	uhyve_v2_out(UHYVE_V3_GETDENTS, gpa(&getdents));
	check("Getdents ignored", getdents.ret.tag == MARK && getdents.ret.value == MARK,
	      getdents.ret.tag);
	check("Getdents buffer untouched", all_bytes(dents, sizeof(dents), 0x5a), 0);
	int64_t offset = hc_lseek(dirfd, 0, SEEK_CUR);
	check("directory position unchanged", offset == 0, offset);
	int cret = hc_close(dirfd);
	check("close directory", cret == 0, cret);

	static struct FileAttr attr;
	memset(&attr, 0x5a, sizeof(attr));
	const char *existing = at("existing.txt");
	struct StatParams stat = {
		.name = gpa(existing), .kind = STAT_FOLLOW, .attr = gpa(&attr), .ret = {MARK, MARK}};
	uhyve_v2_out(UHYVE_V3_FILE_STAT, gpa(&stat));
	check("FileStat ignored", stat.ret.tag == MARK && stat.ret.err == MARK, stat.ret.tag);
	check("FileStat attr untouched", all_bytes(&attr, sizeof(attr), 0x5a), 0);

	fd = hc_open(existing, O_RDONLY, 0);
	struct FstatParams fstat = {.fd = fd, .attr = gpa(&attr), .ret = {MARK, MARK}};
	uhyve_v2_out(UHYVE_V3_FILE_FSTAT, gpa(&fstat));
	check("FileFstat ignored", fstat.ret.tag == MARK && fstat.ret.err == MARK, fstat.ret.tag);
	check("FileFstat attr untouched", all_bytes(&attr, sizeof(attr), 0x5a), 0);
	hc_close(fd);

	static const uint16_t v3_only[] = {UHYVE_V3_GETDENTS, UHYVE_V3_FILE_STAT, UHYVE_V3_FILE_FSTAT,
					   UHYVE_V3_MKDIR};
	int ones = 1;
	for (size_t i = 0; i < sizeof(v3_only) / sizeof(v3_only[0]); i++)
		ones &= uhyve_in8(v3_only[i]) == 0xff && uhyve_in16(v3_only[i]) == 0xffff &&
			uhyve_in32(v3_only[i]) == UINT32_MAX;
	check("in from v3 addresses: all-ones", ones, ones);
}

int main(void)
{
	char **argv;
	if (uhyve_v2_args(&argv) != 1) {
		put_str("usage: v2_gating MOUNT\n");
		return 100;
	}
	mnt = argv[0];
	v2_calls();
	v1_calls();
	v3_calls();
	if (check_failures == 0)
		put_str("v2_gating: all ok\n");
	return check_failures != 0;
}
