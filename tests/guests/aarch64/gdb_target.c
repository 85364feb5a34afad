/*
 * gdb_target (aarch64): the same debuggee as ../gdb_target.c, built for aarch64 with `-g -O0`
 * (tests/guest-images/build.rs), for tests/gdb_aarch64.rs.
 */
#include "../gdb_target.c"
