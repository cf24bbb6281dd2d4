/* SPDX-License-Identifier: MIT
 * worker/statedb.c: revoked ids that outlive a restart (see statedb.h).
 */
#include "common.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/time.h"
#include "worker/scoreboard.h"
#include "worker/statedb.h"

#include <fcntl.h>

/* One line: "<unix time> <id>". False for anything else. */
static bool parse_line(char *line, double *when, char **id)
{
    char *end = NULL;
    *when = strtod(line, &end);
    if (end == line || *end != ' ')
        return false;
    *id = end + 1;
    (*id)[strcspn(*id, "\r\n")] = '\0';
    size_t n = strlen(*id);
    return n > 0 && n < 40;
}

int statedb_load(const char *path, struct scoreboard *sb, struct err *e)
{
    FILE *f = fopen(path, "re");
    if (!f && errno == ENOENT)
        return 0;
    if (!f)
        return err_set(e, -errno, "open of --statedb '%s' failed: %s", path, strerror(errno));
    double now = time_now();
    struct buf keep = BUF_INIT;
    char line[128];
    int loaded = 0;
    while (fgets(line, sizeof(line), f)) {
        double when;
        char *id;
        if (!parse_line(line, &when, &id) || now - when >= REVOKED_EXPIRES_S)
            continue;
        scoreboard_revoke_at(sb, id, when);
        buf_addf(&keep, "%.3f %s\n", when, id);
        loaded++;
    }
    fclose(f);
    /* Compact: write what is still live to a temporary file, then rename. */
    struct buf tmp = BUF_INIT;
    buf_addf(&tmp, "%s.tmp", path);
    int fd = open(tmp.data, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int rc = fd < 0 ? -errno : 0;
    if (!rc && write(fd, keep.data, keep.len) != (ssize_t)keep.len)
        rc = -EIO;
    if (fd >= 0 && close(fd) && !rc)
        rc = -errno;
    if (!rc && rename(tmp.data, path))
        rc = -errno;
    if (rc)
        err_set(e, rc, "rewriting --statedb '%s' failed: %s", path, strerror(-rc));
    buf_release(&tmp);
    buf_release(&keep);
    return rc ? rc : loaded;
}

void statedb_append(const char *path, const char *id, double when)
{
    static bool failing;
    char line[96];
    int n = snprintf(line, sizeof(line), "%.3f %s\n", when, id);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    bool ok = fd >= 0 && n > 0 && write(fd, line, (size_t)n) == n;
    int saved = errno;
    if (fd >= 0)
        close(fd);
    if (!ok && !failing)
        log_error("recording revoke of %s in --statedb '%s' failed: %s; it holds until this "
                  "worker stops (further failures are not logged)", id, path, strerror(saved));
    else if (ok && failing)
        log_info("recording revokes in --statedb '%s' works again", path);
    failing = !ok;
}
