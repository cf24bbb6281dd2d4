/* SPDX-License-Identifier: MIT
 * util/pidfile.c: write, remove and read the worker's pid file (see pidfile.h).
 */
#include "common.h"
#include "util/pidfile.h"

#include <fcntl.h>
#include <signal.h>

pid_t pidfile_read(const char *path, struct err *e)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        err_set(e, -errno, "read pid file '%s' failed: %s", path, strerror(errno));
        return 0;
    }
    char line[32] = "";
    bool got = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    char *end;
    long pid = got ? strtol(line, &end, 10) : 0;
    if (!got || pid <= 0 || pid > INT32_MAX || (*end && *end != '\n')) {
        err_set(e, E_CONFIG, "read pid file '%s' failed: it holds no pid", path);
        return 0;
    }
    return (pid_t)pid;
}

bool pidfile_is_celeriac(pid_t pid)
{
    char path[64], comm[32] = "";
    snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    bool got = fgets(comm, sizeof(comm), f) != NULL;
    fclose(f);
    return got && !strncmp(comm, "celeriac", 8);
}

int pidfile_write(const char *path, struct err *e)
{
    struct err ignored;
    pid_t old = access(path, F_OK) ? 0 : pidfile_read(path, &ignored);
    if (old > 0 && old != getpid() && pidfile_is_celeriac(old))
        return err_set(e, E_CONFIG, "pid file '%s' names a running worker (pid %d)", path,
                       (int)old);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return err_set(e, E_CONFIG, "write pid file '%s' failed: %s", path, strerror(errno));
    char line[24];
    int n = snprintf(line, sizeof(line), "%d\n", (int)getpid());
    ssize_t w;
    do
        w = write(fd, line, (size_t)n);
    while (w < 0 && errno == EINTR);
    int saved = w == n ? 0 : w < 0 ? errno : EIO;
    close(fd);
    if (saved) {
        unlink(path);
        return err_set(e, E_CONFIG, "write pid file '%s' failed: %s", path, strerror(saved));
    }
    return 0;
}

void pidfile_remove(const char *path)
{
    struct err ignored;
    if (path && pidfile_read(path, &ignored) == getpid())
        unlink(path);
}
