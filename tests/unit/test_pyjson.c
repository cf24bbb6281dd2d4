/* SPDX-License-Identifier: MIT
 * test_pyjson.c: NaN and Infinity as Python's json reads and writes them
 * (protocol/pyjson.c).
 */
#include "common.h"
#include "protocol/pyjson.h"
#include "util/buf.h"

#include <math.h>

#include "harness.h"

static void round_trip(const char *in, const char *want)
{
    json_error_t jerr;
    json_t *v = pyjson_loadb(in, strlen(in), JSON_DECODE_ANY, &jerr);
    if (!v)
        FAIL("%s refused: %s", in, jerr.text);
    char *out = pyjson_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    ASSERT_EQ_STR(out, want);
    free(out);
    json_decref(v);
}

TEST(specials_round_trip_as_python_writes_them)
{
    round_trip("[NaN, Infinity, -Infinity, 1.5]", "[NaN,Infinity,-Infinity,1.5]");
    round_trip("{\"a\": {\"b\": [NaN]}}", "{\"a\":{\"b\":[NaN]}}");
    round_trip("NaN", "NaN");
}

TEST(tokens_inside_strings_are_left_alone)
{
    round_trip("[\"NaN\", \"Infinity\", \"a\\\"NaN\"]", "[\"NaN\",\"Infinity\",\"a\\\"NaN\"]");
    round_trip("[\"x\", NaN]", "[\"x\",NaN]");
}

TEST(values_read_back)
{
    json_error_t jerr;
    json_t *v = pyjson_loadb("[NaN, Infinity, -Infinity, 2, \"NaN\"]", 36, 0, &jerr);
    ASSERT_NOT_NULL(v);
    double d = 0;
    ASSERT_TRUE(pyjson_number(json_array_get(v, 0), &d) && isnan(d));
    ASSERT_TRUE(pyjson_number(json_array_get(v, 1), &d) && isinf(d) && d > 0);
    ASSERT_TRUE(pyjson_number(json_array_get(v, 2), &d) && isinf(d) && d < 0);
    ASSERT_TRUE(pyjson_number(json_array_get(v, 3), &d) && d == 2);
    ASSERT_FALSE(pyjson_number(json_array_get(v, 4), &d)); /* a string, not a float */
    ASSERT_TRUE(pyjson_is_special(json_array_get(v, 0)));
    ASSERT_FALSE(pyjson_is_special(json_array_get(v, 4)));
    json_decref(v);
}

TEST(reals_made_from_doubles)
{
    const double in[] = {NAN, INFINITY, -INFINITY, 0.25};
    const char *want[] = {"NaN", "Infinity", "-Infinity", "0.25"};
    for (size_t i = 0; i < ARRAY_SIZE(in); i++) {
        json_t *v = pyjson_real(in[i]);
        char *s = pyjson_dumps(v, JSON_ENCODE_ANY);
        ASSERT_EQ_STR(s, want[i]);
        free(s);
        json_decref(v);
    }
}

TEST(invalid_json_stays_invalid)
{
    json_error_t jerr;
    ASSERT_NULL(pyjson_loadb("[NaNa]", 6, 0, &jerr));
    ASSERT_NULL(pyjson_loadb("[nan]", 5, 0, &jerr));
    ASSERT_NULL(pyjson_loadb("[Infinit]", 9, 0, &jerr));
}

static void repr_is(const char *json, const char *want, bool exc)
{
    json_error_t jerr;
    json_t *v = pyjson_loadb(json, strlen(json), JSON_DECODE_ANY, &jerr);
    ASSERT_NOT_NULL(v);
    struct buf out = BUF_INIT;
    if (exc)
        pyjson_exc_repr(&out, v);
    else
        pyjson_repr(&out, v);
    ASSERT_EQ_STR(out.data, want);
    buf_release(&out);
    json_decref(v);
}

TEST(repr_as_python_prints_it)
{
    repr_is("\"boom\"", "'boom'", false);
    repr_is("\"it's\"", "\"it's\"", false);
    repr_is("\"a'b\\\"c\"", "'a\\'b\"c'", false);
    repr_is("\"l1\\nl2\\\\\"", "'l1\\nl2\\\\'", false);
    repr_is("[1, 2.5, null, true, false, NaN, -Infinity]", "[1, 2.5, None, True, False, nan, -inf]",
            false);
    repr_is("{\"k\": [\"v\"]}", "{'k': ['v']}", false);
}

TEST(exception_repr_as_python_prints_it)
{
    repr_is("{\"exc_type\": \"ValueError\", \"exc_message\": [\"c-boom\"], \"exc_module\": "
            "\"builtins\"}", "ValueError('c-boom')", true);
    repr_is("{\"exc_type\": \"KeyError\", \"exc_message\": [\"a\", 1]}", "KeyError('a', 1)", true);
    repr_is("{\"exc_type\": \"RuntimeError\", \"exc_message\": []}", "RuntimeError()", true);
}

RUN_TESTS()
