/* SPDX-License-Identifier: MIT
 * client/client_internal.h: what the C client's files share.
 */
#ifndef CELERIAC_CLIENT_INTERNAL_H
#define CELERIAC_CLIENT_INTERNAL_H

#include <stddef.h>

#include "celeriac_client.h"

struct buf;

/* The task message (kombu's JSON envelope) a send of `name` with these
 * arguments and options publishes; its task id goes to id. 0, or -1 with
 * the reason in err (arguments that are not JSON of the right shape). */
int client_task_envelope(struct buf *env, const char *name, const char *args_json,
                         const char *kwargs_json, const struct celeriac_send_options *o,
                         char id[37], char *err, size_t errlen);

#endif /* CELERIAC_CLIENT_INTERNAL_H */
