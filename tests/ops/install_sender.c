/* SPDX-License-Identifier: MIT
 * install_sender.c: `install_sender BROKER NAME ARGS_JSON` sends one task
 * with celeriac_client_new/celeriac_send, no result backend, and prints its
 * id (or the error on stderr, exit 1). It uses nothing of the SQL part, so
 * test_install.sh builds it against celeriac-client alone (a sqla+ broker
 * then fails with the message naming celeriac-client-sql) and against
 * celeriac-client-sql (a sqla+ broker works).
 */
#include <stdio.h>

#include <celeriac_client.h>

int main(int argc, char **argv)
{
    char err[256] = "", id[37];
    if (argc != 4) {
        fprintf(stderr, "usage: %s BROKER NAME ARGS_JSON\n", argv[0]);
        return 2;
    }
    struct celeriac_client *c = celeriac_client_new(argv[1], NULL, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "celeriac_client_new: %s\n", err);
        return 1;
    }
    int rc = celeriac_send(c, argv[2], argv[3], NULL, NULL, id, err, sizeof(err));
    if (rc)
        fprintf(stderr, "celeriac_send: %s\n", err);
    else
        printf("%s\n", id);
    celeriac_client_free(c);
    return rc ? 1 : 0;
}
