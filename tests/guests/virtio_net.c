/*
 * virtio_net: a minimal virtio-net driver that checks uhyve's network card from the guest side
 * (tests/net_device.rs runs it with `--net user`, so passt is on the other end).
 *
 *   virtio_net arp                the whole driver start-up (PCI identification, capabilities,
 *                                 feature negotiation, two queues, DRIVER_OK), then an ARP
 *                                 request sent and passt's reply received; exits 0
 *   virtio_net tx-outside-ram     a transmit descriptor pointing beyond RAM: the card must
 *                                 report DEVICE_NEEDS_RESET and a configuration interrupt; the
 *                                 driver then resets it and the ARP exchange must work again
 *   virtio_net tx-loop            a transmit chain whose descriptor names itself as next: the
 *                                 same, then reset and ARP
 *   virtio_net rx-read-only       receive buffers without the device-writable flag: the reply
 *                                 to the ARP request must break the card, not land in them
 *   virtio_net ring-outside-ram   a queue whose descriptor table lies beyond RAM at DRIVER_OK:
 *                                 the card must refuse to run (DEVICE_NEEDS_RESET)
 *   virtio_net suppress-flag      interrupt suppression without event indexes: with
 *                                 VRING_AVAIL_F_NO_INTERRUPT on the transmit queue the card
 *                                 raises no queue interrupt (ISR bit 0) for a used transmit
 *                                 buffer; without it on the receive queue it does for the reply
 *   virtio_net notify-100         100 transmit notifications, each for one ARP request, each
 *                                 waited for (tests/net_device.rs counts uhyve's MMIO exits:
 *                                 with KVM_IOEVENTFD the notifications make none)
 *   virtio_net event-idx          the same with VIRTIO_F_EVENT_IDX negotiated: a used_event
 *                                 far ahead suppresses the interrupt, one at the current index
 *                                 asks for it, and the card publishes avail_event (the next
 *                                 notification it wants) after taking the transmit buffer
 *
 * Prints what it checks; exits 0 when everything holds, 1 on a failed check, 100 on bad usage.
 * BAR 0 lies at 3.97 GiB, beyond the first GiB that uhyve maps for these guests: the guest maps
 * the 2 MiB around it itself. Interrupts stay disabled: the card's MSI waits pending, and the
 * guest looks at its rings.
 */
#include "uhyve.h"

#define PCI_ADDRESS 0xcf8
#define PCI_DATA 0xcfc
#define CARD (0x80000000u | (1u << 11)) /* bus 0, slot 1, function 0 */

#define STATUS_ACKNOWLEDGE 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8
#define STATUS_NEEDS_RESET 0x40

#define FEATURE_MAC (1u << 5)
#define FEATURE_EVENT_IDX (1u << 29)
#define AVAIL_NO_INTERRUPT 1
#define FEATURE_VERSION_1_HIGH 1u /* bit 32 */

#define DESC_NEXT 1
#define DESC_WRITE 2

#define QUEUE_SIZE 16
#define RX 0
#define TX 1
#define HEADER_LEN 12
#define BUFFER_LEN 2048
/* Polls of a ring or register before giving up (each a few emulated instructions). */
#define PATIENCE 3000000

struct desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct queue {
	struct desc desc[QUEUE_SIZE] __attribute__((aligned(4096)));
	struct {
		uint16_t flags, idx, ring[QUEUE_SIZE], used_event;
	} avail __attribute__((aligned(4096)));
	struct {
		uint16_t flags, idx;
		struct {
			uint32_t id, len;
		} ring[QUEUE_SIZE];
		uint16_t avail_event;
	} used __attribute__((aligned(4096)));
	uint16_t last_used;
};

static struct queue queues[2];
static uint8_t buffers[2][QUEUE_SIZE][BUFFER_LEN] __attribute__((aligned(4096)));
static uint64_t bar_pd[512] __attribute__((aligned(4096)));

static volatile uint8_t *common, *notify_base, *isr, *device_config;
static uint16_t notify_offset[2];
static uint32_t notify_multiplier;
static uint8_t mac[6];

static inline void outl(uint16_t port, uint32_t value)
{
	__asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint32_t inl(uint16_t port)
{
	uint32_t value;
	__asm__ volatile("inl %1, %0" : "=a"(value) : "Nd"(port));
	return value;
}

static uint32_t pci_read(uint8_t reg)
{
	outl(PCI_ADDRESS, CARD | reg);
	return inl(PCI_DATA);
}

static void pci_write(uint8_t reg, uint32_t value)
{
	outl(PCI_ADDRESS, CARD | reg);
	outl(PCI_DATA, value);
}

static int failed;

static void expect(const char *what, int ok)
{
	put_str(ok ? "ok: " : "FAILED: ");
	put_str(what);
	put_str("\n");
	if (!ok)
		failed = 1;
}

__attribute__((noreturn)) static void finish(void)
{
	put_str(failed ? "virtio_net: failed\n" : "virtio_net: all checks passed\n");
	hc_exit(failed);
}

/* Identity-maps the 2 MiB page holding `address` (in the fourth GiB). */
static void map_mmio(uint64_t address)
{
	uint64_t cr3;
	__asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
	volatile uint64_t *pml4 = (volatile uint64_t *)(uintptr_t)(cr3 & 0x000ffffffffff000ULL);
	volatile uint64_t *pdpt = (volatile uint64_t *)(uintptr_t)(pml4[0] & 0x000ffffffffff000ULL);
	uint64_t large = address & ~((2ULL << 20) - 1);
	/* present, writable, cache disabled, 2 MiB */
	bar_pd[(large >> 21) & 511] = large | 0x93;
	pdpt[(address >> 30) & 511] = (uint64_t)(uintptr_t)bar_pd | 0x3;
	__asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
}

static void w8(volatile uint8_t *base, int off, uint8_t v) { *(volatile uint8_t *)(base + off) = v; }
static void w16(volatile uint8_t *base, int off, uint16_t v) { *(volatile uint16_t *)(base + off) = v; }
static void w32(volatile uint8_t *base, int off, uint32_t v) { *(volatile uint32_t *)(base + off) = v; }
static uint8_t r8(volatile uint8_t *base, int off) { return *(volatile uint8_t *)(base + off); }
static uint16_t r16(volatile uint8_t *base, int off) { return *(volatile uint16_t *)(base + off); }
static uint32_t r32(volatile uint8_t *base, int off) { return *(volatile uint32_t *)(base + off); }

/* Finds the card and its four capabilities; maps BAR 0. */
static void find_card(void)
{
	uint32_t id = pci_read(0);
	expect("the card is at 00:01.0 with vendor 1af4, device 1041", id == 0x10411af4);
	if (id != 0x10411af4)
		finish();
	pci_write(0x04, pci_read(0x04) | 0x6); /* memory space, bus master */
	uint64_t bar = (pci_read(0x10) & ~0xfULL) | (uint64_t)pci_read(0x14) << 32;
	expect("BAR 0 is a 64-bit memory BAR at 0xfe000000", bar == 0xfe000000ULL &&
							(pci_read(0x10) & 0x6) == 0x4);
	map_mmio(bar);
	volatile uint8_t *base = (volatile uint8_t *)(uintptr_t)bar;
	int found = 0;
	for (uint8_t cap = pci_read(0x34) & 0xfc; cap != 0;) {
		uint32_t head = pci_read(cap);
		uint32_t offset = pci_read(cap + 8);
		if ((head & 0xff) == 0x09) {
			uint8_t type = (head >> 24) & 0xff;
			found |= 1 << type;
			if (type == 1)
				common = base + offset;
			else if (type == 2) {
				notify_base = base + offset;
				notify_multiplier = pci_read(cap + 16);
			} else if (type == 3)
				isr = base + offset;
			else if (type == 4)
				device_config = base + offset;
		}
		cap = (head >> 8) & 0xfc;
	}
	expect("common, notify, ISR and device capabilities", (found & 0x1e) == 0x1e);
	if ((found & 0x1e) != 0x1e)
		finish();
}

static void set_queue(int index, uint64_t desc)
{
	struct queue *q = &queues[index];
	memset(q, 0, sizeof(*q));
	w16(common, 0x16, index);
	expect("the queue offers at least 16 entries", r16(common, 0x18) >= QUEUE_SIZE);
	notify_offset[index] = r16(common, 0x1e);
	w16(common, 0x18, QUEUE_SIZE);
	w32(common, 0x20, (uint32_t)desc);
	w32(common, 0x24, (uint32_t)(desc >> 32));
	w32(common, 0x28, (uint32_t)(uintptr_t)&q->avail);
	w32(common, 0x2c, 0);
	w32(common, 0x30, (uint32_t)(uintptr_t)&q->used);
	w32(common, 0x34, 0);
	w16(common, 0x1c, 1);
}

/* Resets the card and brings it up with two queues and MAC, VERSION_1 and `extra_features`
 * (of the low word); `tx_desc` overrides where the transmit queue's descriptor table is said to
 * lie (0: where it is). Returns the status read back. */
static uint8_t start_card_with(uint64_t tx_desc, uint32_t extra_features)
{
	w8(common, 0x14, 0);
	expect("the reset status reads back 0", r8(common, 0x14) == 0);
	w8(common, 0x14, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
	w32(common, 0x00, 0);
	uint32_t low = r32(common, 0x04);
	w32(common, 0x00, 1);
	uint32_t high = r32(common, 0x04);
	expect("the card offers MAC, VERSION_1 and what else is asked for",
	       (low & FEATURE_MAC) && (high & FEATURE_VERSION_1_HIGH) &&
		       (low & extra_features) == extra_features);
	w32(common, 0x08, 0);
	w32(common, 0x0c, FEATURE_MAC | extra_features);
	w32(common, 0x08, 1);
	w32(common, 0x0c, FEATURE_VERSION_1_HIGH);
	w8(common, 0x14, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
	expect("FEATURES_OK sticks", r8(common, 0x14) & STATUS_FEATURES_OK);
	expect("the card has two queues", r16(common, 0x12) >= 2);
	set_queue(RX, (uint64_t)(uintptr_t)queues[RX].desc);
	set_queue(TX, tx_desc ? tx_desc : (uint64_t)(uintptr_t)queues[TX].desc);
	for (int i = 0; i < 6; i++)
		mac[i] = r8(device_config, i);
	w8(common, 0x14, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
	return r8(common, 0x14);
}

static uint8_t start_card(uint64_t tx_desc)
{
	return start_card_with(tx_desc, 0);
}

/* One register write per notification, as a real driver does (the offset is read at set-up). */
static void notify(int index)
{
	w16(notify_base, notify_offset[index] * notify_multiplier, index);
}

/* Makes descriptor `slot` of queue `index` available. */
static void post(int index, int slot, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	struct queue *q = &queues[index];
	q->desc[slot] = (struct desc){addr, len, flags, next};
	q->avail.ring[q->avail.idx % QUEUE_SIZE] = slot;
	__asm__ volatile("" ::: "memory");
	q->avail.idx++;
}

static void post_rx_buffers(uint16_t flags)
{
	for (int i = 0; i < 8; i++)
		post(RX, i, (uint64_t)(uintptr_t)buffers[RX][i], BUFFER_LEN, flags, 0);
	notify(RX);
}

/* An ARP request (who has 10.11.12.13, from 0.0.0.0) behind a zero virtio header. */
static uint32_t build_arp_request(uint8_t *out)
{
	memset(out, 0, HEADER_LEN + 42);
	uint8_t *f = out + HEADER_LEN;
	memset(f, 0xff, 6);
	memcpy(f + 6, mac, 6);
	f[12] = 0x08, f[13] = 0x06;
	const uint8_t arp[8] = {0, 1, 8, 0, 6, 4, 0, 1};
	memcpy(f + 14, arp, 8);
	memcpy(f + 22, mac, 6);
	const uint8_t target[4] = {10, 11, 12, 13};
	memcpy(f + 38, target, 4);
	return HEADER_LEN + 42;
}

static int wait_used(int index)
{
	volatile uint16_t *idx = &queues[index].used.idx;
	for (long i = 0; i < PATIENCE; i++)
		if (*idx != queues[index].last_used)
			return 1;
	return 0;
}

static int wait_needs_reset(void)
{
	for (long i = 0; i < PATIENCE; i++)
		if (r8(common, 0x14) & STATUS_NEEDS_RESET)
			return 1;
	return 0;
}

/* Sends an ARP request and checks passt's reply. */
static void arp_exchange(void)
{
	post_rx_buffers(DESC_WRITE);
	uint32_t len = build_arp_request(buffers[TX][0]);
	post(TX, 0, (uint64_t)(uintptr_t)buffers[TX][0], len, 0, 0);
	notify(TX);
	expect("the transmit buffer comes back used", wait_used(TX));
	queues[TX].last_used = queues[TX].used.idx;
	expect("a frame arrives in a receive buffer", wait_used(RX));
	struct queue *rx = &queues[RX];
	uint32_t id = rx->used.ring[rx->last_used % QUEUE_SIZE].id;
	uint32_t used_len = rx->used.ring[rx->last_used % QUEUE_SIZE].len;
	rx->last_used++;
	const uint8_t *f = id < 8 ? buffers[RX][id] + HEADER_LEN : buffers[RX][0] + HEADER_LEN;
	expect("it is the ARP reply for 10.11.12.13, to this card",
	       id < 8 && used_len >= HEADER_LEN + 42 && f[12] == 0x08 && f[13] == 0x06 &&
		       f[21] == 2 && f[28] == 10 && f[29] == 11 && f[30] == 12 && f[31] == 13 &&
		       memcmp(f, mac, 6) == 0);
	expect("the card is still running", !(r8(common, 0x14) & STATUS_NEEDS_RESET));
}

/* Sends the ARP request with transmit interrupts suppressed (by the flag, or by a used_event
 * far ahead) and no receive buffer posted yet, checks that no queue interrupt came, then posts
 * receive buffers with interrupts wanted and checks that the reply raises one. */
static void suppression(int event_idx)
{
	expect("the card runs after DRIVER_OK",
	       !(start_card_with(0, event_idx ? FEATURE_EVENT_IDX : 0) & STATUS_NEEDS_RESET));
	struct queue *tx = &queues[TX], *rx = &queues[RX];
	if (event_idx)
		tx->avail.used_event = 0x4000;
	else
		tx->avail.flags = AVAIL_NO_INTERRUPT;
	(void)r8(isr, 0); /* reading clears it */
	uint32_t len = build_arp_request(buffers[TX][0]);
	post(TX, 0, (uint64_t)(uintptr_t)buffers[TX][0], len, 0, 0);
	notify(TX);
	expect("the transmit buffer comes back used", wait_used(TX));
	expect("no queue interrupt for it", !(r8(isr, 0) & 1));
	if (event_idx)
		expect("the card asks for the next transmit notification (avail_event = avail idx)",
		       tx->used.avail_event == tx->avail.idx);
	/* Now the receive side, interrupts wanted: at the first used buffer. */
	rx->avail.used_event = 0;
	post_rx_buffers(DESC_WRITE);
	expect("the reply arrives", wait_used(RX));
	int interrupted = 0;
	for (long i = 0; i < 1000 && !interrupted; i++)
		interrupted = r8(isr, 0) & 1;
	expect("a queue interrupt for the reply", interrupted);
	expect("the card is still running", !(r8(common, 0x14) & STATUS_NEEDS_RESET));
}

static void expect_broken(void)
{
	expect("the card reports DEVICE_NEEDS_RESET", wait_needs_reset());
	expect("the ISR shows a configuration change", r8(isr, 0) & 2);
}

int main(void)
{
	struct uhyve_args args;
	if (uhyve_get_args(&args) != 0 || args.argc < 2) {
		put_str("usage: virtio_net arp|tx-outside-ram|tx-loop|rx-read-only|ring-outside-ram|"
			"suppress-flag|event-idx|notify-100\n");
		return 100;
	}
	const char *mode = args.argv[1];
	find_card();
	if (strcmp(mode, "ring-outside-ram") == 0) {
		uint8_t status = start_card(0x7ffffff00000ULL);
		expect("DRIVER_OK is refused with DEVICE_NEEDS_RESET", status & STATUS_NEEDS_RESET);
		expect("the ISR shows a configuration change", r8(isr, 0) & 2);
		start_card(0);
		arp_exchange();
		finish();
	}
	if (strcmp(mode, "suppress-flag") == 0 || strcmp(mode, "event-idx") == 0) {
		suppression(strcmp(mode, "event-idx") == 0);
		finish();
	}
	expect("the card runs after DRIVER_OK", !(start_card(0) & STATUS_NEEDS_RESET));
	if (strcmp(mode, "arp") == 0) {
		arp_exchange();
		finish();
	}
	if (strcmp(mode, "notify-100") == 0) {
		int all_used = 1;
		for (int i = 0; i < 100; i++) {
			uint32_t len = build_arp_request(buffers[TX][i % QUEUE_SIZE]);
			post(TX, i % QUEUE_SIZE, (uint64_t)(uintptr_t)buffers[TX][i % QUEUE_SIZE], len,
			     0, 0);
			notify(TX);
			all_used &= wait_used(TX);
			queues[TX].last_used = queues[TX].used.idx;
		}
		expect("100 transmit buffers come back used, one by one", all_used);
		finish();
	}
	if (strcmp(mode, "tx-outside-ram") == 0) {
		post(TX, 0, 0x7ffffff00000ULL, 64, 0, 0);
		notify(TX);
	} else if (strcmp(mode, "tx-loop") == 0) {
		post(TX, 0, (uint64_t)(uintptr_t)buffers[TX][0], 54, DESC_NEXT, 0);
		notify(TX);
	} else if (strcmp(mode, "rx-read-only") == 0) {
		post_rx_buffers(0);
		memset(buffers[RX], 0x5a, sizeof(buffers[RX]));
		uint32_t len = build_arp_request(buffers[TX][0]);
		post(TX, 0, (uint64_t)(uintptr_t)buffers[TX][0], len, 0, 0);
		notify(TX);
		expect_broken();
		int untouched = 1;
		for (size_t i = 0; i < sizeof(buffers[RX]); i++)
			untouched &= ((uint8_t *)buffers[RX])[i] == 0x5a;
		expect("the read-only receive buffers are untouched", untouched);
		start_card(0);
		arp_exchange();
		finish();
	} else {
		put_str("unknown mode\n");
		return 100;
	}
	expect_broken();
	start_card(0);
	arp_exchange();
	finish();
}
