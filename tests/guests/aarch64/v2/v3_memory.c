/*
 * v3_memory (aarch64): a v3 guest with more than 3 GiB of RAM. The same guest as
 * ../../v2/v3_memory.c, built for aarch64 (linked, like the x86 one, 4 MiB into RAM at 4 GiB):
 * checks the RAM range in the boot info and the device tree, writes and reads back words across
 * all of RAM (mapped by the runtime with 2 MiB blocks), and makes file and console hypercalls
 * with buffers and paths at the end of RAM. Prints "<case>: ok" (or FAIL) per check, the RAM
 * range and the highest word touched, and ends with "v3_memory: all ok" and status 0.
 */
#include "../../v2/v3_memory.c"
