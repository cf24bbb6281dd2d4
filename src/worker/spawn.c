/* SPDX-License-Identifier: MIT
 * worker/spawn.c: fork with a clean signal state on both sides (see spawn.h).
 */
#include "common.h"
#include "util/self.h"
#include "worker/child.h"
#include "worker/signals.h"
#include "worker/spawn.h"

pid_t spawn_child(const struct worker_config *cfg, struct scoreboard *sb, int index,
                  const int deathwatch[2])
{
    sigset_t old;
    signals_block_all(&old);
    /* Flush so the child does not inherit and re-emit buffered output. */
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        int saved = errno;
        signals_restore(&old);
        return -saved;
    }
    if (pid == 0) {
        self_pid_reset();
        signals_child_install();
        close(deathwatch[1]);
        signals_restore(&old);
        child_main(cfg, &sb->slots[index], index, deathwatch[0]);
    }
    signals_restore(&old);
    return pid;
}
