/*
 * env_array: fetches its environment the way Hermit kernels up to 0.8 do, with their bug. The
 * array handed to the program is a Vec of envc + 1 pointers: a header {capacity, pointer, length}
 * and a buffer whose last slot the kernel never writes (here it holds a stale value); Cmdval gets
 * a separate copy of the item pointers. A second Vec whose length does not match stands nearby.
 *
 * With no arguments it checks that uhyve wrote the missing null into the spare slot and left the
 * other Vec alone. With arguments it first builds a second Vec identical to the first, so two
 * arrays match, and checks that uhyve, unable to tell which is the kernel's, writes neither.
 * Exits 0 when every check holds, 1 otherwise.
 */
#include "uhyve.h"

#define MAX_ITEMS 8
#define ITEM_SIZE 512
#define STALE 0x7375206e6f697372ull /* "rsion us": what kernel 0.6.9 left there */

static char args[MAX_ITEMS][ITEM_SIZE];
static char env[MAX_ITEMS][ITEM_SIZE];
static uint64_t argv_copy[MAX_ITEMS + 1];

/* The kernel's Vec: buffer and header {capacity, pointer, length}, then the copy for Cmdval. */
static uint64_t env_array[MAX_ITEMS + 1];
static uint64_t env_header[3];
static uint64_t env_copy[MAX_ITEMS + 1];
/* The Vec that must be left alone, and the twin that makes the search ambiguous. */
static uint64_t other_array[MAX_ITEMS + 1];
static uint64_t other_header[3];
static uint64_t twin_array[MAX_ITEMS + 1];
static uint64_t twin_header[3];

static void make_vec(uint64_t *array, uint64_t *header, int envc, int length)
{
	for (int i = 0; i < envc; i++)
		array[i] = (uintptr_t)env[i];
	array[envc] = STALE;
	header[0] = (uint64_t)envc + 1;
	header[1] = (uintptr_t)array;
	header[2] = (uint64_t)length;
}

int main(void)
{
	static struct CmdsizeParams sizes;
	hc_cmdsize(&sizes);
	int argc = sizes.argc, envc = sizes.envc;
	if (argc < 1 || argc > MAX_ITEMS || envc < 0 || envc > MAX_ITEMS) {
		put_str("env_array: counts out of range\n");
		return 1;
	}
	for (int i = 0; i < argc; i++)
		if (sizes.argsz[i] > ITEM_SIZE)
			return 1;
	for (int i = 0; i < envc; i++)
		if (sizes.envsz[i] > ITEM_SIZE)
			return 1;
	int ambiguous = argc > 1;

	for (int i = 0; i < argc; i++)
		argv_copy[i] = (uintptr_t)args[i];
	make_vec(env_array, env_header, envc, envc);
	make_vec(other_array, other_header, envc, envc + 1);
	if (ambiguous)
		make_vec(twin_array, twin_header, envc, envc);
	for (int i = 0; i < envc; i++)
		env_copy[i] = (uintptr_t)env[i];
	env_copy[envc] = STALE;

	struct CmdvalParams val = {.argv = (uintptr_t)argv_copy, .envp = (uintptr_t)env_copy};
	hc_cmdval(&val);

	put_str("envc=");
	put_dec(envc);
	put_str("\n");
	if (ambiguous) {
		check("two matching arrays: first left alone", env_array[envc] == STALE,
		      (int64_t)env_array[envc]);
		check("two matching arrays: second left alone", twin_array[envc] == STALE,
		      (int64_t)twin_array[envc]);
	} else {
		check("spare slot nulled", env_array[envc] == 0, (int64_t)env_array[envc]);
	}
	check("other vec left alone", other_array[envc] == STALE, (int64_t)other_array[envc]);
	check("copy left alone", env_copy[envc] == STALE, (int64_t)env_copy[envc]);
	check("header left alone",
	      env_header[0] == (uint64_t)envc + 1 && env_header[2] == (uint64_t)envc, 0);
	return check_failures != 0;
}
