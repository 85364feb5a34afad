/*
 * v3_console: the console hypercalls of interface v3, output and input. The test pipes the host's
 * standard input (or none); tests/guests_v2.rs checks the output.
 *
 * Output:
 *   boot info                    serial_port_base is 0x1030 (SerialWriteBuffer) for v2/v3
 *   SerialWriteByte (0x1020)     every put_str of the runtime; a byte whose RDI has junk in the
 *                                upper bits ("[!]"): only the low byte counts
 *   SerialWriteBuffer (0x1030)   one line; len 0 with a buffer address outside RAM (nothing, no
 *                                stop); 80 KiB in one call (more than uhyve's 64 KiB chunk) as
 *                                1280 numbered 64-byte lines; the last 15 bytes of RAM
 *   FileWrite (0x1100)           to fd 1 and fd 2, a zero-length write with a bogus buffer
 * Input, in this order, until the end of the input:
 *   SerialReadByte (0x1040)      3 bytes with `in al`, 1 with `in ax`, 2 with `in eax` (a byte
 *                                comes zero-extended; the end reads as all-ones)
 *   SerialReadBuffer (0x1050)    maxlen 0 with a buffer outside RAM (len 0, nothing consumed), then
 *                                pieces of at most 5 bytes up to 20 bytes in all (each 1..maxlen)
 *   FileRead fd 0 (0x1130)       first into a buffer across the end of RAM (EFAULT, and no input
 *                                is lost), then pieces of at most 7 bytes until it returns 0
 * It prints "stdin: [<all bytes read, escaped>]" and checks that every way of reading reports the
 * end of the input afterwards: SerialReadByte all-ones (1, 2 and 4 bytes), SerialReadBuffer len 0
 * with its buffer untouched, FileRead 0.
 */
#include "uhyve_v2.h"

UHYVE_INTERFACE_NOTES(3);

#define BIG_LINES 1280
#define LINE 64

static char big[BIG_LINES * LINE];
static char input[4096];
static size_t input_len;

/* Line k of the big buffer: "big NNNN " padded with '.' to 63 bytes, then '\n'. */
static void fill_big(void)
{
	for (size_t k = 0; k < BIG_LINES; k++) {
		char *line = big + k * LINE;
		memset(line, '.', LINE - 1);
		memcpy(line, "big ", 4);
		line[4] = (char)('0' + k / 1000);
		line[5] = (char)('0' + k / 100 % 10);
		line[6] = (char)('0' + k / 10 % 10);
		line[7] = (char)('0' + k % 10);
		line[8] = ' ';
		line[LINE - 1] = '\n';
	}
}

static void output(void)
{
	uint16_t port = uhyve_boot_info->serial_port_base;
	check("boot info serial_port_base is SerialWriteBuffer", port == UHYVE_V2_SERIAL_WRITE_BUFFER,
	      port);
	put_str("console: SerialWriteByte\n");
	hc_putc('[');
	uhyve_v2_out(UHYVE_V2_SERIAL_WRITE_BYTE, 0xdeadbeef12345621ull);
	put_str("]\n");

	static const char line[] = "console: SerialWriteBuffer\n";
	hc_write_buffer(line, sizeof(line) - 1);
	/* An empty buffer may point anywhere. */
	hc_write_buffer_raw(v2_ram_end() + 0x1000, 0);
	hc_write_buffer_raw(UINT64_MAX, 0);
	fill_big();
	hc_write_buffer(big, sizeof(big));

	static const char tail[] = "END-OF-RAM-OK\n";
	char *at = (char *)(uintptr_t)(v2_ram_end() - (sizeof(tail) - 1));
	memcpy(at, tail, sizeof(tail) - 1);
	hc_write_buffer(at, sizeof(tail) - 1);

	static const char one[] = "console: FileWrite fd 1\n";
	static const char two[] = "console: FileWrite fd 2\n";
	int64_t ret = hc_write(1, one, sizeof(one) - 1);
	check("write fd 1", ret == sizeof(one) - 1, ret);
	ret = hc_write(2, two, sizeof(two) - 1);
	check("write fd 2", ret == sizeof(two) - 1, ret);
	ret = hc_write_raw(1, UINT64_MAX, 0);
	check("write len 0", ret == 0, ret);
}

static void keep(const void *data, size_t n)
{
	if (n > sizeof(input) - input_len)
		n = sizeof(input) - input_len;
	memcpy(input + input_len, data, n);
	input_len += n;
}

/* Stops at the end of the input; clears *zero_extended if a wider `in` had upper bits set. */
static void input_bytes(int *zero_extended)
{
	/* 3 x `in al`: the test's input holds no 0xff there, so 0xff is the end. */
	for (int i = 0; i < 3; i++) {
		uint8_t byte = uhyve_in8(UHYVE_V2_SERIAL_READ_BYTE);
		if (byte == 0xff)
			return;
		keep(&byte, 1);
	}
	uint16_t word = uhyve_in16(UHYVE_V2_SERIAL_READ_BYTE);
	if (word == 0xffff)
		return;
	*zero_extended &= word <= 0xff;
	uint8_t low = (uint8_t)word;
	keep(&low, 1);
	for (int i = 0; i < 2; i++) {
		uint32_t value = hc_read_byte();
		if (value == UINT32_MAX)
			return;
		*zero_extended &= value <= 0xff;
		low = (uint8_t)value;
		keep(&low, 1);
	}
}

static void input_buffer(void)
{
	uint64_t got = hc_read_buffer_raw(v2_ram_end() + 0x1000, 0);
	check("SerialReadBuffer maxlen 0", got == 0, (int64_t)got);
	size_t total = 0;
	int sizes_ok = 1;
	while (total < 20) {
		char piece[5];
		uint64_t want = 20 - total < sizeof(piece) ? 20 - total : sizeof(piece);
		got = hc_read_buffer(piece, want);
		if (got == 0)
			break;
		sizes_ok &= got <= want;
		if (got > want)
			break;
		keep(piece, got);
		total += got;
	}
	check("SerialReadBuffer piece sizes", sizes_ok, (int64_t)got);
}

static void input_file_read(void)
{
	/* A bad buffer fails before anything is read: no input is lost. */
	int64_t got = hc_read_raw(0, v2_ram_end() - 2, 7);
	check("FileRead fd 0 into a buffer across the end of RAM", got == -EFAULT, got);
	int sizes_ok = 1;
	for (;;) {
		char piece[7];
		got = hc_read(0, piece, sizeof(piece));
		if (got <= 0)
			break;
		sizes_ok &= got <= (int64_t)sizeof(piece);
		keep(piece, (size_t)got);
	}
	check("FileRead fd 0 ends with 0", got == 0, got);
	check("FileRead fd 0 piece sizes", sizes_ok, got);
}

static void input_end(void)
{
	uint8_t byte = uhyve_in8(UHYVE_V2_SERIAL_READ_BYTE);
	check("end: SerialReadByte al", byte == 0xff, byte);
	uint16_t word = uhyve_in16(UHYVE_V2_SERIAL_READ_BYTE);
	check("end: SerialReadByte ax", word == 0xffff, word);
	uint32_t value = hc_read_byte();
	check("end: SerialReadByte eax", value == UINT32_MAX, value);
	value = hc_read_byte();
	check("end: SerialReadByte eax again", value == UINT32_MAX, value);

	static char buf[8];
	memset(buf, 0x5a, sizeof(buf));
	uint64_t got = hc_read_buffer(buf, sizeof(buf));
	int untouched = 1;
	for (size_t i = 0; i < sizeof(buf); i++)
		untouched &= buf[i] == 0x5a;
	check("end: SerialReadBuffer len 0", got == 0, (int64_t)got);
	check("end: SerialReadBuffer buffer untouched", untouched, untouched);
	int64_t ret = hc_read(0, buf, sizeof(buf));
	check("end: FileRead fd 0", ret == 0, ret);
}

int main(void)
{
	output();
	int zero_extended = 1;
	input_bytes(&zero_extended);
	check("SerialReadByte zero-extends", zero_extended, zero_extended);
	input_buffer();
	input_file_read();
	put_str("stdin: [");
	put_escaped(input, input_len);
	put_str("]\n");
	input_end();
	return check_failures != 0;
}
