/*
 * args_env (aarch64): Cmdsize/Cmdval. The same guest as ../args_env.c, built for aarch64: prints
 * "argc=<n>", one "arg=<argument>" line per argument, "envc=<n>" and one "env=<entry>" line per
 * environment entry, then "sizes respected: ok" if uhyve wrote every item within its announced size
 * and terminated it. Exits 0, or 1 if not.
 */
#include "../args_env.c"
