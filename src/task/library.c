/* SPDX-License-Identifier: MIT
 * task/library.c: dlopen of a task library with the ABI check (see library.h).
 */
#include "common.h"
#include "task/library.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>

typedef const struct celeriac_library *(*library_init_fn)(int host_abi);

/* dlopen searches the library path for a bare name; a user passing
 * "libbooks.so" from the current directory means the file. */
static const char *as_file(const char *path, char *buf, size_t size)
{
    if (strchr(path, '/'))
        return path;
    snprintf(buf, size, "./%s", path);
    return buf;
}

/* dlopen(open_path), celeriac_library_init and the checks; messages name
 * path (what the user gave). On success fills lib, else leaves it zeroed. */
static int load_from(struct library *lib, const char *open_path, const char *path, struct err *e)
{
    void *h = dlopen(open_path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        /* dlerror names the file it opened: a copy's /proc name says nothing */
        const char *why = dlerror();
        size_t n = strlen(open_path);
        if (open_path != path && !strncmp(why, open_path, n) && !strncmp(why + n, ": ", 2))
            why += n + 2;
        return err_set(e, E_CONFIG, "load task library '%s' failed: %s", path, why);
    }
    library_init_fn init;
    *(void **)&init = dlsym(h, "celeriac_library_init");
    if (!init) {
        err_set(e, E_CONFIG, "load task library '%s' failed: no celeriac_library_init symbol",
                path);
        goto out_close;
    }
    const struct celeriac_library *desc = init(CELERIAC_ABI_VERSION);
    if (!desc) {
        err_set(e, E_CONFIG, "load task library '%s' failed: celeriac_library_init refused ABI %d",
                path, CELERIAC_ABI_VERSION);
        goto out_close;
    }
    if (desc->abi_version < CELERIAC_ABI_OLDEST || desc->abi_version > CELERIAC_ABI_VERSION) {
        err_set(e, E_CONFIG,
                "load task library '%s' failed: built for celeriac ABI %d, this worker speaks "
                "ABI %d to %d; rebuild it against this include/celeriac.h",
                path, desc->abi_version, CELERIAC_ABI_OLDEST, CELERIAC_ABI_VERSION);
        goto out_close;
    }
    size_t n = 0;
    for (const struct celeriac_task_def *t = desc->tasks; t && t->name; t++, n++) {
        if (!t->fn || !*t->name) {
            err_set(e, E_CONFIG, "load task library '%s' failed: task %zu has no %s", path, n,
                    t->fn ? "name" : "function");
            goto out_close;
        }
        for (const struct celeriac_task_def *u = desc->tasks; u != t; u++) {
            if (!strcmp(u->name, t->name)) {
                err_set(e, E_CONFIG, "load task library '%s' failed: task '%s' registered twice",
                        path, t->name);
                goto out_close;
            }
        }
    }
    if (!n) {
        err_set(e, E_CONFIG, "load task library '%s' failed: it registers no tasks", path);
        goto out_close;
    }
    lib->handle = h;
    lib->fd = -1;
    lib->path = xstrdup(path);
    lib->desc = desc;
    lib->n_tasks = n;
    return 0;

out_close:
    dlclose(h);
    return E_CONFIG;
}

int library_load(struct library *lib, const char *path, struct err *e)
{
    memset(lib, 0, sizeof(*lib));
    lib->fd = -1;
    char resolved[4096];
    path = as_file(path, resolved, sizeof(resolved));
    if (access(path, R_OK))
        return err_set(e, E_CONFIG, "load task library '%s' failed: %s", path, strerror(errno));
    return load_from(lib, path, path, e);
}

/* Copies the file at fd into a new memfd. Returns it, or -errno. */
static int copy_to_memfd(int fd)
{
    int mfd = memfd_create("celeriac-task-library", MFD_CLOEXEC);
    if (mfd < 0)
        return -errno;
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int saved = n < 0 ? errno : 0;
            if (saved) {
                close(mfd);
                return -saved;
            }
            return mfd;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(mfd, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                int saved = errno;
                close(mfd);
                return -saved;
            }
            off += w;
        }
    }
}

int library_load_fresh(struct library *lib, const char *path, struct err *e)
{
    memset(lib, 0, sizeof(*lib));
    lib->fd = -1;
    char resolved[4096];
    path = as_file(path, resolved, sizeof(resolved));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(e, E_CONFIG, "load task library '%s' failed: %s", path, strerror(errno));
    int mfd = copy_to_memfd(fd);
    close(fd);
    if (mfd < 0)
        return err_set(e, E_CONFIG, "load task library '%s' failed: copying it: %s", path,
                       strerror(-mfd));
    /* The memfd stays open while the library is loaded: its /proc name is
     * unique among loaded libraries only as long as the descriptor is ours. */
    char open_path[64];
    snprintf(open_path, sizeof(open_path), "/proc/self/fd/%d", mfd);
    int rc = load_from(lib, open_path, path, e);
    if (rc) {
        close(mfd);
        lib->fd = -1;
        return rc;
    }
    lib->fd = mfd;
    return 0;
}

void library_unload(struct library *lib)
{
    if (lib->handle) {
        dlclose(lib->handle);
        if (lib->fd >= 0)
            close(lib->fd);
    }
    free(lib->path);
    memset(lib, 0, sizeof(*lib));
    lib->fd = -1;
}

const struct celeriac_autoretry *library_autoretry(const struct library *lib, const char *task,
                                                  const char *exc_type)
{
    /* The field exists only in libraries built for ABI 2 or later. */
    if (lib->desc->abi_version < 2 || !lib->desc->autoretry)
        return NULL;
    size_t tlen = strlen(exc_type);
    for (const struct celeriac_autoretry *a = lib->desc->autoretry; a->task; a++) {
        if (strcmp(a->task, task) || !a->exc_types)
            continue;
        for (const char *p = a->exc_types; *p;) {
            size_t n = strcspn(p, ",");
            const char *w = p;
            while (n && *w == ' ') {
                w++;
                n--;
            }
            while (n && w[n - 1] == ' ')
                n--;
            if ((n == 1 && *w == '*') || (n == tlen && !strncmp(w, exc_type, n)))
                return a;
            p += strcspn(p, ",");
            if (*p)
                p++;
        }
    }
    return NULL;
}

const struct celeriac_task_def *library_find(const struct library *lib, const char *name)
{
    for (size_t i = 0; i < lib->n_tasks; i++)
        if (!strcmp(lib->desc->tasks[i].name, name))
            return &lib->desc->tasks[i];
    return NULL;
}
