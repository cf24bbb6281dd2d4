/* SPDX-License-Identifier: MIT
 * install_tasks.c: a task library the install and deb tests build against an
 * installed celeriac with `pkg-config --cflags --libs celeriac` and nothing
 * else, as a user's library is built.
 */
#include <celeriac.h>

#include <string.h>

/* ops.add(x, y) -> x + y */
static int add(struct celeriac_task *t)
{
    int64_t x, y;
    if (celeriac_arg_int(t, 0, "x", &x) || celeriac_arg_int(t, 1, "y", &y))
        return CELERIAC_FAILED;
    celeriac_return_int(t, x + y);
    return CELERIAC_OK;
}

/* ops.hello(name) -> "hello NAME" */
static int hello(struct celeriac_task *t)
{
    const char *name;
    size_t len;
    if (celeriac_arg_str(t, 0, "name", &name, &len))
        return CELERIAC_FAILED;
    char *out = celeriac_alloc(t, len + 7);
    memcpy(out, "hello ", 6);
    memcpy(out + 6, name, len);
    celeriac_return_str(t, out, len + 6);
    return CELERIAC_OK;
}

static const struct celeriac_task_def tasks[] = {
    {"ops.add", add, CELERIAC_ACKS_LATE},
    {"ops.hello", hello, 0},
    {NULL, NULL, 0},
};

static const struct celeriac_library lib = {
    .abi_version = CELERIAC_ABI_VERSION,
    .name = "ops",
    .tasks = tasks,
};

const struct celeriac_library *celeriac_library_init(int host_abi)
{
    (void)host_abi;
    return &lib;
}
