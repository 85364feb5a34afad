/*
 * file_ops (aarch64): the file hypercalls. The same guest as ../file_ops.c, built for aarch64: on
 * the path given as argv[1] (under a --file-mapping) it opens with O_CREAT, writes, seeks, reads
 * back, closes, reopens and (unless argv[2] is "keep") unlinks, then tries bad fds and a missing
 * file. Prints "<step>: ok" (or "<step>: FAIL (got <value>)") per step through check(), then
 * "file_ops: all ok" and exits 0, or "file_ops: FAILED" and exits 1.
 */
#include "../file_ops.c"
