/*
 * v3_files (aarch64): every file hypercall of interface v3 on a mapped directory. The same guest
 * as ../../v2/v3_files.c, built for aarch64: on the mount given as its argument it opens, reads,
 * seeks, writes, creates, unlinks, makes directories, stats (following links or not) and fstats,
 * and lists directories with Getdents in pieces and at once. Prints "<case>: ok" (or FAIL) per
 * check, "entry <name> <d_type>" per listed record and the stat of existing.txt, and ends with
 * "v3_files: all ok" and status 0 if every check passed.
 */
#include "../../v2/v3_files.c"
