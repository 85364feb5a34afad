/*
 * pit: talks to an i8254 programmable interval timer through its ports. Programs channel 0 (0x43
 * = 0x34: channel 0, low then high byte, mode 2; reload 0xffff through port 0x40), reads its
 * status back (0x43 = 0xe2: latch the status of channel 0), then latches (0x43 = 0x00) and reads
 * the counter, low byte then high byte, until it differs from the first reading (at most 1000
 * times), and reads port 0x61 (speaker gate and channel 2 output). Prints "status 0x..",
 * "counter 0x.. 0x..", "reads N" (how many readings it took; 1000 = never changed) and
 * "port61 0x..", then exits 0. With an in-kernel PIT (--pit) KVM answers ports 0x40-0x43 (but
 * not 0x61: uhyve creates the PIT without KVM's dummy speaker); without one, uhyve ignores the
 * writes and reads as all-ones.
 */
#include "uhyve.h"

static inline void outb(uint16_t port, uint8_t value)
{
	__asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t value;
	__asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port) : "memory");
	return value;
}

/* The counter of channel 0, latched and read low byte then high byte. */
static uint16_t read_counter(void)
{
	outb(0x43, 0x00);
	uint8_t low = inb(0x40);
	uint8_t high = inb(0x40);
	return (uint16_t)(low | (high << 8));
}

int main(void)
{
	outb(0x43, 0x34);
	outb(0x40, 0xff);
	outb(0x40, 0xff);
	outb(0x43, 0xe2);
	uint8_t status = inb(0x40);
	uint16_t first = read_counter();
	uint16_t last = first;
	int reads = 1;
	while (reads < 1000 && last == first) {
		last = read_counter();
		reads++;
	}
	put_str("status ");
	put_hex(status);
	put_str("\ncounter ");
	put_hex(first);
	put_str(" ");
	put_hex(last);
	put_str("\nreads ");
	put_dec(reads);
	put_str("\nport61 ");
	put_hex(inb(0x61));
	put_str("\n");
	return 0;
}
