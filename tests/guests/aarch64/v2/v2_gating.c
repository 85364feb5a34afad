/*
 * v2_gating (aarch64): a guest of interface v2 cannot reach the v3 calls or the v1 ports. The
 * same guest as ../../v2/v2_gating.c, built for aarch64: the v2 calls on the mount given as its
 * argument work; stores to the v3-only addresses (Getdents, FileStat, FileFstat, Mkdir) leave
 * their results and buffers untouched and create nothing; loads from them read all-ones; v1 Exit
 * and FileOpen (the struct's address stored to 0x540 and 0x440) are ignored. Prints "<case>: ok"
 * (or FAIL) per check, "v2_gating: all ok" and exits 0 if all passed.
 */
#include "../../v2/v2_gating.c"
