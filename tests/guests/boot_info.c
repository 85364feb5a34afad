/*
 * boot_info: prints the boot-info fields uhyve filled in (one "name=value" per line) so the tests
 * can compare them with the command line (-m, -c). Exits 0.
 */
#include "uhyve.h"

static void field(const char *name, uint64_t value)
{
	put_str(name);
	put_str("=");
	put_hex(value);
	put_str("\n");
}

int main(void)
{
	const struct uhyve_boot_info *bi = uhyve_boot_info;
	field("phys_addr_start", bi->phys_addr_start);
	field("phys_addr_end", bi->phys_addr_end);
	field("serial_port_base", bi->serial_port_base);
	field("kernel_image_addr_start", bi->kernel_image_addr_start);
	field("platform", bi->platform);
	field("num_cpus", bi->num_cpus);
	field("cpu_freq", bi->cpu_freq);
	field("device_tree", bi->device_tree);
	/* The device tree starts with the big-endian magic 0xd00dfeed. */
	check("fdt magic", bi->device_tree != 0 &&
		*(const volatile uint32_t *)(uintptr_t)bi->device_tree == 0xedfe0dd0u, 0);
	check("boot_time set", bi->boot_time_lo != 0 || bi->boot_time_hi != 0, 0);
	return check_failures != 0;
}
