// Canary for the emulated Arm machine of run-in-vm: checks that its /dev/kvm offers what uhyve's
// aarch64 backend needs, and that a new VM really runs the code it was given.
//
//   canary [N]     (N VMs for the stale-code check, default 50)
//
// 1. KVM basics, printed: API version 12, KVM_CAP_ARM_VM_IPA_SIZE (and a VM created with that
//    IPA size), KVM_CAP_ONE_REG, KVM_CAP_ARM_PSCI_0_2, KVM_CAP_ARM_NISV_TO_USER (and enabling it
//    on a VM), a vGICv3 with distributor and redistributor placed and initialised.
// 2. Stale code: N VMs one after another in this one process, each with its own number k in
//    its code at the same guest address. The code is copied with memcpy, as a VMM copies a
//    kernel image: glibc's memcpy uses SVE stores on a CPU with SVE, and QEMU 7.2's TCG then
//    invalidates translated code only at the first byte written, so a VM can run the previous
//    VM's code from the recycled page. Each VM stores k to an address outside its RAM (an MMIO
//    exit to us), and we check it is the k we gave it.
//
// Exit status 0 when everything passed, 1 otherwise.
// Build: aarch64-linux-gnu-gcc -O2 -Wall -static -o canary canary.c
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define GUEST_RAM 0x40000000ULL    // guest-physical address of the RAM (and of the code)
#define GUEST_RAM_SIZE (1ULL << 20) // 1 MiB, of which only the first page gets touched
#define MMIO_ADDR 0x10000000ULL    // no memory there: a store exits to us as KVM_EXIT_MMIO
#define GICD_ADDR 0x08000000ULL    // vGICv3 distributor and redistributors, as on QEMU's virt
#define GICR_ADDR 0x080a0000ULL

static int kvm;
static int problems;

static void check(int ok, const char *what) {
	printf("canary: %-58s %s\n", what, ok ? "ok" : "FAILED");
	if (!ok) problems++;
}

// A check whose ioctl result is printed: fails (with errno) when the ioctl returned < 0.
static int checked_ioctl(int fd, unsigned long req, void *arg, const char *what) {
	int r = ioctl(fd, req, arg);
	if (r < 0) {
		printf("canary: %-58s FAILED (%s)\n", what, strerror(errno));
		problems++;
	}
	return r;
}

// glibc's memcpy, called through a volatile pointer: a memcpy of a constant 16 bytes would
// otherwise be inlined by the compiler as plain stores, which QEMU 7.2 handles correctly.
static void *(*volatile glibc_memcpy)(void *, const void *, size_t) = memcpy;

static void on_alarm(int sig) { (void)sig; } // only there to make a stuck KVM_RUN return EINTR

// A KVM_ONE_REG id for a 64-bit core register (a field of struct kvm_regs).
#define CORE_REG(field) \
	(KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offsetof(struct kvm_regs, field) / 4))

static int set_reg(int vcpu, uint64_t id, uint64_t value) {
	struct kvm_one_reg reg = {.id = id, .addr = (uint64_t)(uintptr_t)&value};
	return ioctl(vcpu, KVM_SET_ONE_REG, &reg);
}

// Creates a vCPU of `vm` and initialises it as the preferred target type (PSCI 0.2 enabled).
static int make_vcpu(int vm) {
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0) return -1;
	struct kvm_vcpu_init init;
	memset(&init, 0, sizeof init);
	if (ioctl(vm, KVM_ARM_PREFERRED_TARGET, &init) < 0) goto fail;
	init.features[0] |= 1u << KVM_ARM_VCPU_PSCI_0_2;
	if (ioctl(vcpu, KVM_ARM_VCPU_INIT, &init) < 0) goto fail;
	return vcpu;
fail:
	close(vcpu);
	return -1;
}

static void check_caps(void) {
	int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
	printf("canary: KVM_GET_API_VERSION = %d\n", api);
	check(api == KVM_API_VERSION, "KVM API version 12");

	int ipa = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_ARM_VM_IPA_SIZE);
	printf("canary: KVM_CAP_ARM_VM_IPA_SIZE = %d (bits of guest-physical address)\n", ipa);
	check(ipa >= 40, "KVM_CAP_ARM_VM_IPA_SIZE >= 40");
	if (ipa > 0) {
		int vm = ioctl(kvm, KVM_CREATE_VM, KVM_VM_TYPE_ARM_IPA_SIZE(ipa));
		check(vm >= 0, "KVM_CREATE_VM with that IPA size");
		if (vm >= 0) close(vm);
	}

	static const struct {
		long cap;
		const char *name;
	} caps[] = {
	    {KVM_CAP_ONE_REG, "KVM_CAP_ONE_REG"},
	    {KVM_CAP_ARM_PSCI_0_2, "KVM_CAP_ARM_PSCI_0_2"},
	    {KVM_CAP_ARM_NISV_TO_USER, "KVM_CAP_ARM_NISV_TO_USER"},
	};
	for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
		int value = ioctl(kvm, KVM_CHECK_EXTENSION, caps[i].cap);
		printf("canary: %s = %d\n", caps[i].name, value);
		char what[80];
		snprintf(what, sizeof what, "%s available", caps[i].name);
		check(value > 0, what);
	}
	printf("canary: KVM_CAP_NR_VCPUS = %d, KVM_CAP_MAX_VCPUS = %d\n",
	       ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_NR_VCPUS),
	       ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_MAX_VCPUS));

	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0) {
		check(0, "KVM_CREATE_VM");
		return;
	}
	struct kvm_enable_cap nisv = {.cap = KVM_CAP_ARM_NISV_TO_USER};
	if (checked_ioctl(vm, KVM_ENABLE_CAP, &nisv, "KVM_ENABLE_CAP(KVM_CAP_ARM_NISV_TO_USER)") >= 0)
		check(1, "KVM_ENABLE_CAP(KVM_CAP_ARM_NISV_TO_USER)");
	close(vm);
}

// Sets one vGIC device attribute whose value is a 64-bit number (addresses, counts).
static int vgic_attr(int dev, uint32_t group, uint64_t attr, uint64_t value, const char *what) {
	uint32_t value32 = (uint32_t)value;
	struct kvm_device_attr a = {.group = group, .attr = attr};
	a.addr = group == KVM_DEV_ARM_VGIC_GRP_NR_IRQS ? (uint64_t)(uintptr_t)&value32 : (uint64_t)(uintptr_t)&value;
	return checked_ioctl(dev, KVM_SET_DEVICE_ATTR, &a, what);
}

// The interrupt controller uhyve would give a guest: a vGICv3 (a GICv2 cannot be emulated on
// this machine's GICv3, which has no GICv2 compatibility).
static void check_vgic(void) {
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0) {
		check(0, "KVM_CREATE_VM for the vGICv3");
		return;
	}
	struct kvm_create_device dev = {.type = KVM_DEV_TYPE_ARM_VGIC_V3};
	int ok = checked_ioctl(vm, KVM_CREATE_DEVICE, &dev, "KVM_CREATE_DEVICE(KVM_DEV_TYPE_ARM_VGIC_V3)") >= 0 &&
	         vgic_attr(dev.fd, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_DIST, GICD_ADDR,
	                   "vGICv3 distributor address") >= 0 &&
	         vgic_attr(dev.fd, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_REDIST, GICR_ADDR,
	                   "vGICv3 redistributor address") >= 0 &&
	         vgic_attr(dev.fd, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, 128, "vGICv3 number of interrupts") >= 0;
	int vcpu = -1;
	if (ok) {
		vcpu = make_vcpu(vm);
		if (vcpu < 0) {
			printf("canary: vCPU for the vGICv3: %s\n", strerror(errno));
			ok = 0;
		}
	}
	ok = ok && vgic_attr(dev.fd, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT, 0,
	                     "vGICv3 KVM_DEV_ARM_VGIC_CTRL_INIT") >= 0;
	check(ok, "vGICv3 created and initialised");
	if (vcpu >= 0) close(vcpu);
	if (dev.fd > 0) close(dev.fd);
	close(vm);
}

// The guest code of VM k (A64, hand-encoded; check with aarch64-linux-gnu-as + objdump):
//   0x14000001  b    .+4          the same in every VM; a branch ends a translation block, so
//                                 the next instruction starts a block of its own, one that does
//                                 not begin at the first byte the memcpy wrote
//   0xd2800000  movz x0, #k       MOVZ (64-bit, hw=0): 0xd2800000 | k << 5 | Rd (x0 = 0)
//   0xf9000020  str  x0, [x1]     STR (immediate, unsigned offset 0): Rn = x1 (1 << 5), Rt = x0
//   0x14000000  b    .            spin if we ever resumed it
// x1 holds MMIO_ADDR, so the store is a data abort with a valid syndrome, which KVM turns into a
// KVM_EXIT_MMIO carrying the 8 bytes of x0.
static int run_vm_with(uint16_t k) {
	const uint32_t code[] = {0x14000001, 0xd2800000 | (uint32_t)k << 5, 0xf9000020, 0x14000000};
	const char *step = "KVM_CREATE_VM";
	int result = -1, vcpu = -1;
	uint8_t *ram = MAP_FAILED;
	struct kvm_run *run = MAP_FAILED;
	size_t run_size = (size_t)ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0) goto out;
	step = "mmap of the guest RAM";
	ram = mmap(NULL, GUEST_RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ram == MAP_FAILED) goto out;
	glibc_memcpy(ram, code, sizeof code); // deliberately glibc's memcpy: see the top of this file
	struct kvm_userspace_memory_region region = {
	    .slot = 0,
	    .guest_phys_addr = GUEST_RAM,
	    .memory_size = GUEST_RAM_SIZE,
	    .userspace_addr = (uint64_t)(uintptr_t)ram,
	};
	step = "KVM_SET_USER_MEMORY_REGION";
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) goto out;
	step = "KVM_CREATE_VCPU/KVM_ARM_VCPU_INIT";
	if ((vcpu = make_vcpu(vm)) < 0) goto out;
	step = "mmap of kvm_run";
	run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED) goto out;
	step = "KVM_SET_ONE_REG";
	if (set_reg(vcpu, CORE_REG(regs.pc), GUEST_RAM) < 0 || set_reg(vcpu, CORE_REG(regs.regs[1]), MMIO_ADDR) < 0)
		goto out;
	step = "KVM_RUN";
	alarm(30);
	int r = ioctl(vcpu, KVM_RUN, 0);
	alarm(0);
	if (r < 0) goto out;
	step = NULL;
	if (run->exit_reason != KVM_EXIT_MMIO || !run->mmio.is_write || run->mmio.len != 8 ||
	    run->mmio.phys_addr != MMIO_ADDR) {
		printf("canary: VM %u: unexpected exit %u (MMIO address 0x%llx)\n", k, run->exit_reason,
		       (unsigned long long)run->mmio.phys_addr);
	} else {
		uint64_t value;
		memcpy(&value, run->mmio.data, 8);
		result = value <= 0xffff ? (int)value : -1;
		if (result != k) printf("canary: VM %u ran stale code: it reported %llu\n", k, (unsigned long long)value);
	}
out:
	if (step) printf("canary: VM %u: %s: %s\n", k, step, strerror(errno));
	if (run != MAP_FAILED) munmap(run, run_size);
	if (vcpu >= 0) close(vcpu);
	if (ram != MAP_FAILED) munmap(ram, GUEST_RAM_SIZE);
	if (vm >= 0) close(vm);
	return result;
}

static double seconds(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
	long n = argc > 1 ? atol(argv[1]) : 50;
	if (n < 2 || n > 0xffff) {
		fprintf(stderr, "usage: canary [N]   (2 <= N <= 65535 VMs, default 50)\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_alarm}; // no SA_RESTART: KVM_RUN returns EINTR
	sigaction(SIGALRM, &sa, NULL);
	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0) {
		printf("canary: /dev/kvm: %s\nFAILED\n", strerror(errno));
		return 1;
	}
	check_caps();
	check_vgic();

	double start = seconds();
	long wrong = 0;
	for (long k = 1; k <= n; k++)
		if (run_vm_with((uint16_t)k) != k) wrong++;
	printf("canary: %ld VMs at the same address, %ld ran code other than their own (%.1f ms per VM)\n", n,
	       wrong, (seconds() - start) * 1e3 / n);
	check(wrong == 0, "every VM ran its own code (no stale translated code)");

	printf(problems ? "canary: FAILED, %d problem(s)\n" : "canary: all passed\n", problems);
	return problems ? 1 : 0;
}
