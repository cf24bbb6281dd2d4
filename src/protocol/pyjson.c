/* SPDX-License-Identifier: MIT
 * protocol/pyjson.c: NaN and Infinity as Python's json reads and writes them
 * (see pyjson.h).
 */
#include "common.h"
#include "protocol/pyjson.h"
#include "util/buf.h"

#include <math.h>

#define MARK "\xEF\xB7\x90" /* U+FDD0 in UTF-8 */
#define MARK_LEN 3

static const struct {
    const char *token;
    size_t len;
} specials[] = {
    {"-Infinity", 9},
    {"Infinity", 8},
    {"NaN", 3},
};

/* Rewrites the tokens outside strings as marked strings. True when any was. */
static bool mark_specials(const char *text, size_t len, struct buf *out)
{
    bool in_string = false, changed = false;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (in_string) {
            if (c == '\\' && i + 1 < len) {
                buf_add(out, text + i, 2);
                i++;
                continue;
            }
            in_string = c != '"';
        } else if (c == '"') {
            in_string = true;
        } else {
            size_t k = 0;
            while (k < ARRAY_SIZE(specials) &&
                   !(len - i >= specials[k].len && !memcmp(text + i, specials[k].token,
                                                           specials[k].len)))
                k++;
            if (k < ARRAY_SIZE(specials)) {
                buf_addf(out, "\"" MARK "%s\"", specials[k].token);
                i += specials[k].len - 1;
                changed = true;
                continue;
            }
        }
        buf_addch(out, c);
    }
    return changed;
}

json_t *pyjson_loadb(const char *text, size_t len, size_t flags, json_error_t *err)
{
    json_t *v = json_loadb(text, len, flags, err);
    if (v)
        return v;
    struct buf marked = BUF_INIT;
    if (mark_specials(text, len, &marked))
        v = json_loadb(marked.data, marked.len, flags, err);
    buf_release(&marked);
    return v;
}

char *pyjson_dumps(const json_t *v, size_t flags)
{
    char *s = json_dumps(v, flags);
    if (!s || !strstr(s, "\"" MARK))
        return s;
    struct buf out = BUF_INIT;
    for (const char *p = s; *p;) {
        size_t k = ARRAY_SIZE(specials);
        if (p[0] == '"' && !memcmp(p + 1, MARK, MARK_LEN))
            for (k = 0; k < ARRAY_SIZE(specials); k++)
                if (!strncmp(p + 1 + MARK_LEN, specials[k].token, specials[k].len) &&
                    p[1 + MARK_LEN + specials[k].len] == '"')
                    break;
        if (k < ARRAY_SIZE(specials)) {
            buf_adds(&out, specials[k].token);
            p += 2 + MARK_LEN + specials[k].len;
        } else {
            buf_addch(&out, *p++);
        }
    }
    free(s);
    return buf_detach(&out, NULL);
}

json_t *pyjson_real(double d)
{
    if (isfinite(d))
        return json_real(d);
    return json_string(isnan(d) ? MARK "NaN" : d > 0 ? MARK "Infinity" : MARK "-Infinity");
}

bool pyjson_is_special(const json_t *v)
{
    const char *s = json_string_value(v);
    if (!s || strncmp(s, MARK, MARK_LEN))
        return false;
    for (size_t k = 0; k < ARRAY_SIZE(specials); k++)
        if (!strcmp(s + MARK_LEN, specials[k].token))
            return true;
    return false;
}

bool pyjson_number(const json_t *v, double *out)
{
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return true;
    }
    if (!pyjson_is_special(v))
        return false;
    const char *s = json_string_value(v) + MARK_LEN;
    *out = !strcmp(s, "NaN") ? NAN : s[0] == '-' ? -INFINITY : INFINITY;
    return true;
}

/* Python's str repr: single quotes unless the text has a single quote and no
 * double one; backslash, the quote and control characters escaped. */
static void repr_string(struct buf *out, const char *s, size_t len)
{
    char q = memchr(s, '\'', len) && !memchr(s, '"', len) ? '"' : '\'';
    buf_addch(out, q);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\' || c == (unsigned char)q)
            buf_addf(out, "\\%c", c);
        else if (c == '\n')
            buf_adds(out, "\\n");
        else if (c == '\r')
            buf_adds(out, "\\r");
        else if (c == '\t')
            buf_adds(out, "\\t");
        else if (c < 0x20 || c == 0x7f)
            buf_addf(out, "\\x%02x", c);
        else
            buf_addch(out, (char)c);
    }
    buf_addch(out, q);
}

void pyjson_repr(struct buf *out, const json_t *v)
{
    double d;
    size_t i;
    const char *key;
    json_t *item;
    if (pyjson_is_special(v)) {
        pyjson_number(v, &d);
        buf_adds(out, isnan(d) ? "nan" : d > 0 ? "inf" : "-inf");
        return;
    }
    switch (json_typeof(v)) {
    case JSON_STRING:
        repr_string(out, json_string_value(v), json_string_length(v));
        return;
    case JSON_ARRAY:
        buf_addch(out, '[');
        json_array_foreach(v, i, item) {
            if (i)
                buf_adds(out, ", ");
            pyjson_repr(out, item);
        }
        buf_addch(out, ']');
        return;
    case JSON_OBJECT:
        buf_addch(out, '{');
        i = 0;
        json_object_foreach((json_t *)v, key, item) {
            if (i++)
                buf_adds(out, ", ");
            repr_string(out, key, strlen(key));
            buf_adds(out, ": ");
            pyjson_repr(out, item);
        }
        buf_addch(out, '}');
        return;
    case JSON_TRUE:
        buf_adds(out, "True");
        return;
    case JSON_FALSE:
        buf_adds(out, "False");
        return;
    case JSON_NULL:
        buf_adds(out, "None");
        return;
    default: {
        char *text = json_dumps(v, JSON_ENCODE_ANY);
        buf_adds(out, text ? text : "?");
        free(text);
    }
    }
}

void pyjson_exc_repr(struct buf *out, const json_t *exc)
{
    const char *type = json_string_value(json_object_get(exc, "exc_type"));
    json_t *args = json_object_get(exc, "exc_message");
    if (!type) {
        pyjson_repr(out, exc);
        return;
    }
    buf_addf(out, "%s(", type);
    size_t i;
    json_t *item;
    if (json_is_array(args)) {
        json_array_foreach(args, i, item) {
            if (i)
                buf_adds(out, ", ");
            pyjson_repr(out, item);
        }
    } else if (args && !json_is_null(args)) {
        pyjson_repr(out, args);
    }
    buf_addch(out, ')');
}
