/* SPDX-License-Identifier: MIT
 * sentinel_client.c: `sentinel_client BROKER RESULTS MASTER_NAME` opens the C
 * client with celeriac_client_new_with_transport_options on sentinel://
 * lists, sends rel.pid [0], waits for its result and prints its status; then
 * prints the lines the API gives for a bad option value and for a
 * sentinel:// URL without master_name (both must fail before connecting).
 * test_sentinel.sh builds it against libceleriac-client.a alone.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <celeriac_client.h>

/* Opens with one broker option list; prints "refused: <err>" or "opened". */
static void try_open(const char *broker, const char *const *broker_options)
{
    char err[256] = "";
    struct celeriac_client *c =
        celeriac_client_new_with_transport_options(broker, NULL, broker_options, NULL, err,
                                                   sizeof(err));
    if (c)
        printf("opened\n");
    else
        printf("refused: %s\n", err);
    celeriac_client_free(c);
}

int main(int argc, char **argv)
{
    char err[256] = "", id[37], master[160];
    if (argc != 4) {
        fprintf(stderr, "usage: %s BROKER RESULTS MASTER_NAME\n", argv[0]);
        return 2;
    }
    snprintf(master, sizeof(master), "master_name=%s", argv[3]);
    const char *const options[] = {master, "socket_timeout=10", "socket_connect_timeout=2", NULL};
    struct celeriac_client *c = celeriac_client_new_with_transport_options(
        argv[1], argv[2], options, options, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "celeriac_client_new_with_transport_options: %s\n", err);
        return 1;
    }
    struct celeriac_send_options send = {.subscribe = true};
    char *meta = NULL;
    int rc = celeriac_send(c, "rel.pid", "[0]", NULL, &send, id, err, sizeof(err));
    if (rc)
        fprintf(stderr, "celeriac_send: %s\n", err);
    else if ((rc = celeriac_wait(c, id, 20, &meta, err, sizeof(err))))
        fprintf(stderr, "celeriac_wait %s: %s\n", id, err);
    else
        printf("%s\n", strstr(meta, "\"SUCCESS\"") ? "SUCCESS" : meta);
    free(meta);
    celeriac_client_free(c);

    const char *const bad_value[] = {master, "socket_timeout=soon", NULL};
    try_open(argv[1], bad_value);
    try_open(argv[1], NULL);
    return rc ? 1 : 0;
}
