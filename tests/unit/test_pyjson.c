/* SPDX-License-Identifier: MIT
 * test_pyjson.c: NaN and Infinity as Python's json reads and writes them
 * (protocol/pyjson.c).
 */
#include "common.h"
#include "protocol/pyjson.h"

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

RUN_TESTS()
