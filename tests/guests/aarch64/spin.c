/*
 * spin (aarch64): the same guest as ../spin.c, built for aarch64: creates a file in the guest's
 * private temp directory, then loops for ever without an exit to the host, blocks reading
 * stdin ("stdin") or floods the console ("flood"); prints "spinning", "reading" or "flooding"
 * first. tests/signals.rs stops it with a host signal.
 */
#include "../spin.c"
