/*
 * v3_hostile (aarch64): v2/v3 hypercalls with bad parameters. The same guest as
 * ../../v2/v3_hostile.c, built for aarch64; its first argument selects one attack (parameter
 * blocks, serial and file buffers outside, across and below RAM, bad paths, fds and whence,
 * Getdents and FileAttr destinations, escapes from the mapping, v1 ports, unknown addresses, and
 * on aarch64 stray stores and loads in the hypercall window). Attacks that uhyve must stop print
 * "survived" and return 42 if it lets them go on; the others print "<case>: ok" (or FAIL) per
 * check and exit 0 if all passed.
 */
#include "../../v2/v3_hostile.c"
