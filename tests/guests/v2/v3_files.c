/*
 * v3_files: every file hypercall of interface v3 on a mapped directory, used as a kernel would.
 * Argument: the guest path of the mapped directory (MNT, e.g. /data). The test prepares on the
 * host: MNT/existing.txt ("existing content\n", 17 bytes), the symlink MNT/to_existing ->
 * existing.txt, and a directory MNT/list with files of assorted name lengths and a subdirectory.
 *
 *   device tree             MNT is among the mount points of /uhyve,mounts
 *   open/read/lseek/close   existing.txt: partial read, SEEK_CUR/SEEK_END/SEEK_SET, read to the
 *                           end and past it, double close (EBADF), read after close (EBADF)
 *   create/write/read       new.txt: O_CREAT|O_RDWR|O_TRUNC, write, zero-length write, read back,
 *                           overwrite at SEEK_END-3, O_CREAT|O_EXCL (EEXIST), O_DIRECTORY on a
 *                           file (ENOTDIR), a missing file (ENOENT)
 *   fstat                   new.txt (regular, size, 1 link), a directory fd (S_IFDIR)
 *   unlink                  new.txt, then open and unlink again (ENOENT)
 *   kept.txt                written and left on the host for the test to read
 *   mkdir                   MNT/made (len without NUL), MNT/made2 (len with NUL), MNT/made again
 *                           (EEXIST), MNT/nope/deeper (ENOENT), MNT/existing.txt/x (ENOTDIR),
 *                           MNT and / (EEXIST); made/inner.txt created inside; FileUnlink of a
 *                           directory, of MNT and of / (EISDIR)
 *   stat                    to_existing followed (regular, 17 bytes, same inode as existing.txt
 *                           and its fstat) and not followed (symlink, 12 bytes); MNT, MNT/made
 *                           and / (directories); a missing path (ENOENT); kind 2 (EINVAL).
 *                           Prints existing.txt's inode, size, mode, links and mtime for the
 *                           test to compare
 *   getdents                MNT/list in 64-byte pieces (each call returns whole records whose
 *                           lengths add up), then EndOfDirectory twice; prints "entry <name>
 *                           <d_type>" per record for the test, which checks that every name
 *                           comes exactly once. Rewinds (lseek 0) and lists it again in one
 *                           4 KiB call; a seek into a record or SEEK_END (EINVAL); continues
 *                           from the d_off of the first record; MNT/made (".", "..",
 *                           "inner.txt"); the guest root "/" (a map-only directory, needs
 *                           O_DIRECTORY: EINVAL without) lists the mount's first component;
 *                           read on a directory (EISDIR)
 * Ends with "v3_files: all ok" and status 0 if every check passed.
 */
#include "uhyve_v2.h"

UHYVE_INTERFACE_NOTES(3);

static const char *mnt;
static char path_buf[4][512];

/* MNT + "/" + rel, in one of four rotating buffers. */
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

static void existing_file(void)
{
	static char buf[64];
	int fd = hc_open(at("existing.txt"), O_RDONLY, 0);
	check("open existing", fd > 2, fd);
	int64_t ret = hc_read(fd, buf, 4);
	check("read 4", ret == 4 && memcmp(buf, "exis", 4) == 0, ret);
	ret = hc_lseek(fd, 0, SEEK_CUR);
	check("lseek SEEK_CUR", ret == 4, ret);
	ret = hc_lseek(fd, 0, SEEK_END);
	check("lseek SEEK_END", ret == 17, ret);
	ret = hc_lseek(fd, 9, SEEK_SET);
	check("lseek SEEK_SET", ret == 9, ret);
	ret = hc_read(fd, buf, sizeof(buf));
	check("read to the end", ret == 8 && memcmp(buf, "content\n", 8) == 0, ret);
	ret = hc_read(fd, buf, sizeof(buf));
	check("read at the end", ret == 0, ret);
	int cret = hc_close(fd);
	check("close", cret == 0, cret);
	cret = hc_close(fd);
	check("close again", cret == -EBADF, cret);
	ret = hc_read(fd, buf, 1);
	check("read after close", ret == -EBADF, ret);
}

static void new_file(void)
{
	static char buf[64];
	static struct FileAttr attr;
	int fd = hc_open(at("new.txt"), O_CREAT | O_RDWR | O_TRUNC, 0644);
	check("create new.txt", fd > 2, fd);
	int64_t ret = hc_write(fd, "hello v3\n", 9);
	check("write", ret == 9, ret);
	ret = hc_write(fd, "", 0);
	check("write 0 bytes", ret == 0, ret);
	ret = hc_lseek(fd, 0, SEEK_SET);
	check("rewind", ret == 0, ret);
	ret = hc_read(fd, buf, sizeof(buf));
	check("read back", ret == 9 && memcmp(buf, "hello v3\n", 9) == 0, ret);
	ret = hc_lseek(fd, -3, SEEK_END);
	check("lseek SEEK_END -3", ret == 6, ret);
	ret = hc_write(fd, "V3\n", 3);
	check("overwrite", ret == 3, ret);
	memset(&attr, 0, sizeof(attr));
	struct StatusResult st = hc_fstat(fd, &attr);
	check("fstat new.txt", status_ok(st), status_value(st));
	check("fstat new.txt mode", (attr.st_mode & S_IFMT) == S_IFREG, attr.st_mode);
	check("fstat new.txt size", attr.st_size == 9, attr.st_size);
	check("fstat new.txt links", attr.st_nlink == 1, (int64_t)attr.st_nlink);
	ret = hc_lseek(fd, 0, SEEK_SET);
	ret = hc_read(fd, buf, sizeof(buf));
	check("read overwritten", ret == 9 && memcmp(buf, "hello V3\n", 9) == 0, ret);
	int cret = hc_close(fd);
	check("close new.txt", cret == 0, cret);

	int bad = hc_open(at("new.txt"), O_CREAT | O_EXCL | O_WRONLY, 0644);
	check("O_EXCL on existing", bad == -EEXIST, bad);
	bad = hc_open(at("new.txt"), O_RDONLY | O_DIRECTORY, 0);
	check("O_DIRECTORY on a file", bad == -ENOTDIR, bad);
	bad = hc_open(at("missing.txt"), O_RDONLY, 0);
	check("open missing", bad == -ENOENT, bad);

	cret = hc_unlink(at("new.txt"));
	check("unlink", cret == 0, cret);
	bad = hc_open(at("new.txt"), O_RDONLY, 0);
	check("open unlinked", bad == -ENOENT, bad);
	cret = hc_unlink(at("new.txt"));
	check("unlink again", cret == -ENOENT, cret);

	static const char kept[] = "kept by the v3 guest\n";
	fd = hc_open(at("kept.txt"), O_CREAT | O_WRONLY | O_TRUNC, 0644);
	check("create kept.txt", fd > 2, fd);
	ret = hc_write(fd, kept, sizeof(kept) - 1);
	check("write kept.txt", ret == sizeof(kept) - 1, ret);
	cret = hc_close(fd);
	check("close kept.txt", cret == 0, cret);
}

static void directories(void)
{
	struct StatusResult st = hc_mkdir(at("made"));
	check("mkdir", status_ok(st), status_value(st));
	const char *made2 = at("made2");
	st = hc_mkdir_raw(gpa(made2), strlen(made2) + 1);
	check("mkdir, len with NUL", status_ok(st), status_value(st));
	st = hc_mkdir(at("made"));
	check("mkdir existing", status_err(st, EEXIST), status_value(st));
	st = hc_mkdir(at("nope/deeper"));
	check("mkdir missing parent", status_err(st, ENOENT), status_value(st));
	st = hc_mkdir(at("existing.txt/x"));
	check("mkdir below a file", status_err(st, ENOTDIR), status_value(st));
	st = hc_mkdir(mnt);
	check("mkdir of the mount", status_err(st, EEXIST), status_value(st));
	st = hc_mkdir("/");
	check("mkdir of /", status_err(st, EEXIST), status_value(st));
	int ret = hc_unlink(at("made2"));
	check("unlink a directory", ret == -EISDIR, ret);
	ret = hc_unlink(mnt);
	check("unlink the mount", ret == -EISDIR, ret);
	ret = hc_unlink("/");
	check("unlink /", ret == -EISDIR, ret);

	int fd = hc_open(at("made/inner.txt"), O_CREAT | O_WRONLY, 0644);
	check("create made/inner.txt", fd > 2, fd);
	int64_t written = hc_write(fd, "inner\n", 6);
	check("write made/inner.txt", written == 6, written);
	int cret = hc_close(fd);
	check("close made/inner.txt", cret == 0, cret);
}

static void stats(void)
{
	static struct FileAttr link, nofollow, existing, by_fd;
	struct StatusResult st = hc_stat(at("to_existing"), STAT_FOLLOW, &link);
	check("stat link", status_ok(st), status_value(st));
	check("stat link: regular", (link.st_mode & S_IFMT) == S_IFREG, link.st_mode);
	check("stat link: size", link.st_size == 17, link.st_size);
	st = hc_stat(at("to_existing"), STAT_NO_FOLLOW, &nofollow);
	check("lstat link", status_ok(st), status_value(st));
	check("lstat link: symlink", (nofollow.st_mode & S_IFMT) == S_IFLNK, nofollow.st_mode);
	check("lstat link: size", nofollow.st_size == 12, nofollow.st_size);
	check("lstat link: own inode", nofollow.st_ino != link.st_ino, (int64_t)nofollow.st_ino);
	st = hc_stat(at("existing.txt"), STAT_NO_FOLLOW, &existing);
	check("stat existing", status_ok(st), status_value(st));
	check("stat existing: inode of the link target", existing.st_ino == link.st_ino,
	      (int64_t)existing.st_ino);
	int fd = hc_open(at("existing.txt"), O_RDONLY, 0);
	st = hc_fstat(fd, &by_fd);
	check("fstat existing", status_ok(st), status_value(st));
	check("fstat equals stat", memcmp(&by_fd, &existing, sizeof(existing)) == 0,
	      (int64_t)by_fd.st_ino);
	hc_close(fd);
	put_str("existing.txt: ino=");
	put_dec((int64_t)existing.st_ino);
	put_str(" size=");
	put_dec(existing.st_size);
	put_str(" mode=");
	put_dec(existing.st_mode);
	put_str(" nlink=");
	put_dec((int64_t)existing.st_nlink);
	put_str(" mtime=");
	put_dec(existing.st_mtim.tv_sec);
	put_str(".");
	put_dec(existing.st_mtim.tv_nsec);
	put_str("\n");

	static struct FileAttr dir;
	st = hc_stat(mnt, STAT_FOLLOW, &dir);
	check("stat mount", status_ok(st) && (dir.st_mode & S_IFMT) == S_IFDIR, dir.st_mode);
	st = hc_stat(at("made"), STAT_FOLLOW, &dir);
	check("stat made", status_ok(st) && (dir.st_mode & S_IFMT) == S_IFDIR, dir.st_mode);
	st = hc_stat("/", STAT_FOLLOW, &dir);
	check("stat /", status_ok(st) && (dir.st_mode & S_IFMT) == S_IFDIR, dir.st_mode);
	st = hc_stat(at("missing.txt"), STAT_FOLLOW, &dir);
	check("stat missing", status_err(st, ENOENT), status_value(st));
	st = hc_stat(at("existing.txt"), 2, &dir);
	check("stat kind 2", status_err(st, EINVAL), status_value(st));
}

static char dents[4096] __attribute__((aligned(8)));

/*
 * Walks the records of one Getdents result; prints them if `print`. Returns their number, or -1
 * if they are malformed (a length not a multiple of 8, a name running out of its record, lengths
 * not adding up to `bytes`). Stores the d_off of the first record in *first_off if non-NULL.
 */
static int walk(uint64_t bytes, int print, int64_t *first_off)
{
	int count = 0;
	uint64_t pos = 0;
	while (pos < bytes) {
		const struct Dirent64 *d = (const struct Dirent64 *)(dents + pos);
		if (d->d_reclen < 24 || d->d_reclen % 8 != 0 || pos + d->d_reclen > bytes)
			return -1;
		size_t room = d->d_reclen - offsetof(struct Dirent64, d_name);
		if (strnlen(d->d_name, room) >= room)
			return -1;
		if (count == 0 && first_off != NULL)
			*first_off = d->d_off;
		if (print) {
			put_str("entry ");
			put_str(d->d_name);
			put_str(" ");
			put_dec(d->d_type);
			put_str("\n");
		}
		count++;
		pos += d->d_reclen;
	}
	return count;
}

/* Lists `fd` to its end in `piece`-byte calls; returns the number of records, -1 on failure. */
static int list(int fd, uint64_t piece, int print)
{
	int total = 0;
	for (;;) {
		struct GetdentResult r = hc_getdents(fd, dents, piece);
		if (r.tag == GETDENT_END_OF_DIRECTORY)
			return total;
		if (r.tag != GETDENT_SUCCESS || r.value == 0 || r.value > piece) {
			check("getdents piece", 0, getdent_value(r));
			return -1;
		}
		int n = walk(r.value, print, NULL);
		if (n <= 0) {
			check("getdents records", 0, n);
			return -1;
		}
		total += n;
	}
}

static void listing(void)
{
	int fd = hc_open(at("list"), O_RDONLY | O_DIRECTORY, 0);
	check("open list", fd > 2, fd);
	int listed = list(fd, 64, 1);
	put_str("listed ");
	put_dec(listed);
	put_str(" entries\n");
	check("list in 64-byte pieces", listed > 2, listed);
	struct GetdentResult r = hc_getdents(fd, dents, sizeof(dents));
	check("end of directory", r.tag == GETDENT_END_OF_DIRECTORY, getdent_value(r));
	r = hc_getdents(fd, dents, sizeof(dents));
	check("end of directory again", r.tag == GETDENT_END_OF_DIRECTORY, getdent_value(r));

	int64_t off = hc_lseek(fd, 0, SEEK_SET);
	check("rewind directory", off == 0, off);
	r = hc_getdents(fd, dents, sizeof(dents));
	int64_t first_off = -1;
	int all = r.tag == GETDENT_SUCCESS ? walk(r.value, 0, &first_off) : -1;
	check("list in one call", all == listed, all);
	off = hc_lseek(fd, 1, SEEK_SET);
	check("seek into a record", off == -EINVAL, off);
	off = hc_lseek(fd, 0, SEEK_END);
	check("SEEK_END on a directory", off == -EINVAL, off);
	off = hc_lseek(fd, first_off, SEEK_SET);
	check("seek to the first d_off", off == first_off, off);
	int rest = list(fd, 4096, 0);
	check("list from the first d_off", rest == listed - 1, rest);

	static struct FileAttr attr;
	struct StatusResult st = hc_fstat(fd, &attr);
	check("fstat directory", status_ok(st) && (attr.st_mode & S_IFMT) == S_IFDIR, attr.st_mode);
	int64_t ret = hc_read(fd, dents, 16);
	check("read a directory", ret == -EISDIR, ret);
	int cret = hc_close(fd);
	check("close list", cret == 0, cret);

	fd = hc_open(at("made"), O_RDONLY | O_DIRECTORY, 0);
	check("open made", fd > 2, fd);
	put_str("made:\n");
	int made = list(fd, 4096, 1);
	check("list made", made == 3, made);
	hc_close(fd);

	fd = hc_open("/", O_RDONLY, 0);
	check("open / without O_DIRECTORY", fd == -EINVAL, fd);
	fd = hc_open("/", O_RDONLY | O_DIRECTORY, 0);
	check("open /", fd > 2, fd);
	put_str("root:\n");
	int root = list(fd, 4096, 1);
	check("list /", root >= 1, root);
	hc_close(fd);
}

int main(void)
{
	char **argv;
	if (uhyve_v2_args(&argv) != 1) {
		put_str("usage: v3_files MOUNT\n");
		return 100;
	}
	mnt = argv[0];
	uint32_t len = 0;
	const char *mounts = fdt_property("uhyve,mounts", "mounts", &len);
	int announced = 0;
	for (uint32_t at = 0; mounts != NULL && at < len;) {
		size_t n = strnlen(mounts + at, len - at);
		announced |= n == strlen(mnt) && memcmp(mounts + at, mnt, n) == 0;
		at += (uint32_t)n + 1;
	}
	check("device tree announces the mount", announced, len);
	existing_file();
	new_file();
	directories();
	stats();
	listing();
	if (check_failures == 0)
		put_str("v3_files: all ok\n");
	return check_failures != 0;
}
