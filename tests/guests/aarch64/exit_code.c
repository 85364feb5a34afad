/*
 * exit_code (aarch64): the Exit hypercall. The same guest as ../exit_code.c, built for aarch64:
 * fetches argv with Cmdsize/Cmdval, exits with the signed decimal code given as argv[1] and
 * prints nothing else (without a valid argv[1] it prints a usage line and exits with 100).
 */
#include "../exit_code.c"
