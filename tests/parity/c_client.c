/* SPDX-License-Identifier: MIT
 * c_client.c: a tiny program against include/celeriac_client.h, built by
 * test_c_client.sh as a user would build one. Sends NAME with ARGS_JSON and
 * waits for the result; prints the stored meta (one JSON line) and exits 0 on
 * SUCCESS, 1 on another state, 2 on a client error.
 *
 *   c_client BROKER_URL BACKEND_URL NAME ARGS_JSON [QUEUE [COUNTDOWN]]
 */
#include <celeriac_client.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    char err[256], id[37];
    char *meta = NULL;
    struct celeriac_send_options opts;
    struct celeriac_client *c;
    int rc;

    if (argc < 5) {
        fprintf(stderr, "usage: %s BROKER BACKEND NAME ARGS_JSON [QUEUE [COUNTDOWN]]\n", argv[0]);
        return 2;
    }
    memset(&opts, 0, sizeof(opts));
    opts.subscribe = true;
    if (argc > 5)
        opts.queue = argv[5];
    if (argc > 6)
        opts.countdown = atof(argv[6]);
    c = celeriac_client_new(argv[1], argv[2], err, sizeof(err));
    if (!c) {
        fprintf(stderr, "celeriac_client_new: %s\n", err);
        return 2;
    }
    if (celeriac_send(c, argv[3], argv[4], NULL, &opts, id, err, sizeof(err)) != 0) {
        fprintf(stderr, "celeriac_send: %s\n", err);
        celeriac_client_free(c);
        return 2;
    }
    fprintf(stderr, "id %s\n", id);
    if (celeriac_wait(c, id, 20, &meta, err, sizeof(err)) != 0) {
        fprintf(stderr, "celeriac_wait: %s\n", err);
        celeriac_client_free(c);
        return 2;
    }
    printf("%s\n", meta);
    rc = strstr(meta, "\"SUCCESS\"") ? 0 : 1;
    free(meta);
    celeriac_client_free(c);
    return rc;
}
