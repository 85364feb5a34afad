/*
 * v3_exit (aarch64): the Exit hypercall (0x1010) of interface v3, whose argument is the exit code
 * itself. The same guest as ../../v2/v3_exit.c, built for aarch64: the code is the value stored to
 * the Exit address (`v3_exit CODE`: the i32 zero-extended; `v3_exit raw VALUE`: any 64-bit value,
 * of which uhyve must use the low 32 bits; `v3_exit return CODE`: main's return value). Prints
 * nothing; exits with 100 without a usable argument.
 */
#include "../../v2/v3_exit.c"
