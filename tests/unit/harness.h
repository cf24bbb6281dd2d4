/* SPDX-License-Identifier: MIT
 * harness.h: the unit-test harness, header only. A test file defines cases with
 * TEST(name) and ends with RUN_TESTS(); each case prints "ok - <file>: <name>" or
 * "not ok - <file>: <name>" with the failed assertion, both sides and file:line
 * on "# " lines before it. The binary exits 1 if any case failed. Arguments, if
 * given, select cases by exact name. No network, database, sleep or threads.
 */
#ifndef CELERIAC_TEST_HARNESS_H
#define CELERIAC_TEST_HARNESS_H

#include "common.h"

#include <math.h>
#include <setjmp.h>
#include <signal.h>

#define HARNESS_MAX_TESTS 512
#define HARNESS_UNUSED __attribute__((unused))

struct harness_case {
    const char *file;  /* basename of the defining file */
    const char *name;  /* the TEST() name */
    void (*fn)(void);
};

static struct harness_case harness_cases[HARNESS_MAX_TESTS] HARNESS_UNUSED;
static size_t harness_ncases HARNESS_UNUSED;
static jmp_buf harness_jmp HARNESS_UNUSED;
static const struct harness_case *volatile harness_current HARNESS_UNUSED;

static inline const char *harness_basename(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static inline void harness_register(const char *file, const char *name, void (*fn)(void))
{
    if (harness_ncases == HARNESS_MAX_TESTS) {
        fprintf(stderr, "harness: more than %d tests in %s\n", HARNESS_MAX_TESTS, file);
        abort();
    }
    harness_cases[harness_ncases].file = harness_basename(file);
    harness_cases[harness_ncases].name = name;
    harness_cases[harness_ncases].fn = fn;
    harness_ncases++;
}

/* Defines a test case and registers it before main() runs. */
#define TEST(name)                                                              \
    static void test_##name(void);                                              \
    __attribute__((constructor)) static void harness_register_##name(void)      \
    {                                                                           \
        harness_register(__FILE__, #name, test_##name);                         \
    }                                                                           \
    static void test_##name(void)

/* Reports a failed assertion and leaves the current case. */
ATTR_PRINTF(3, 4) ATTR_NORETURN
static inline void harness_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("# %s:%d: ", harness_basename(file), line);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    longjmp(harness_jmp, 1);
}

/* Prints s quoted, with control and non-ASCII bytes as \xNN; NULL as (null). */
static inline void harness_print_str(const char *s, size_t len)
{
    if (!s) {
        printf("(null)");
        return;
    }
    putchar('"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            printf("\\x%02x", c);
        else
            putchar(c);
        if (i == 400 && len > 440) {
            printf("...(%zu bytes)", len);
            break;
        }
    }
    putchar('"');
}

ATTR_NORETURN
static inline void harness_fail_str(const char *file, int line, const char *what,
                                    const char *ea, const char *eb, const char *a, size_t alen,
                                    const char *b, size_t blen)
{
    printf("# %s:%d: %s(%s, %s) failed\n#   left:  ", harness_basename(file), line, what, ea, eb);
    harness_print_str(a, alen);
    printf("\n#   right: ");
    harness_print_str(b, blen);
    printf("\n");
    fflush(stdout);
    longjmp(harness_jmp, 1);
}

static inline size_t harness_strlen(const char *s)
{
    return s ? strlen(s) : 0;
}

#define ASSERT_TRUE(c)                                                          \
    do {                                                                        \
        if (!(c))                                                               \
            harness_fail(__FILE__, __LINE__, "ASSERT_TRUE(%s) failed", #c);     \
    } while (0)

#define ASSERT_FALSE(c)                                                         \
    do {                                                                        \
        if (c)                                                                  \
            harness_fail(__FILE__, __LINE__, "ASSERT_FALSE(%s) failed", #c);    \
    } while (0)

/* Compares two integers as long long with operator op (==, !=, <, <=, >, >=). */
#define ASSERT_CMP_INT(a, op, b)                                                \
    do {                                                                        \
        long long harness_a_ = (long long)(a), harness_b_ = (long long)(b);     \
        if (!(harness_a_ op harness_b_))                                        \
            harness_fail(__FILE__, __LINE__,                                    \
                         "ASSERT(%s %s %s) failed: left %lld, right %lld", #a,  \
                         #op, #b, harness_a_, harness_b_);                      \
    } while (0)

#define ASSERT_EQ_INT(a, b) ASSERT_CMP_INT(a, ==, b)
#define ASSERT_NE_INT(a, b) ASSERT_CMP_INT(a, !=, b)
#define ASSERT_LT_INT(a, b) ASSERT_CMP_INT(a, <, b)
#define ASSERT_LE_INT(a, b) ASSERT_CMP_INT(a, <=, b)
#define ASSERT_GT_INT(a, b) ASSERT_CMP_INT(a, >, b)
#define ASSERT_GE_INT(a, b) ASSERT_CMP_INT(a, >=, b)

#define ASSERT_EQ_SIZE(a, b)                                                    \
    do {                                                                        \
        size_t harness_a_ = (size_t)(a), harness_b_ = (size_t)(b);              \
        if (harness_a_ != harness_b_)                                           \
            harness_fail(__FILE__, __LINE__,                                    \
                         "ASSERT_EQ_SIZE(%s, %s) failed: left %zu, right %zu",  \
                         #a, #b, harness_a_, harness_b_);                       \
    } while (0)

/* |a - b| <= eps, printed with full double precision. */
#define ASSERT_NEAR(a, b, eps)                                                  \
    do {                                                                        \
        double harness_a_ = (double)(a), harness_b_ = (double)(b);              \
        if (!(fabs(harness_a_ - harness_b_) <= (double)(eps)))                  \
            harness_fail(__FILE__, __LINE__,                                    \
                         "ASSERT_NEAR(%s, %s, %s) failed: left %.17g, right "   \
                         "%.17g, diff %.3g",                                    \
                         #a, #b, #eps, harness_a_, harness_b_,                  \
                         harness_a_ - harness_b_);                              \
    } while (0)

/* Both NUL-terminated and equal; NULL equals only NULL. */
#define ASSERT_EQ_STR(a, b)                                                     \
    do {                                                                        \
        const char *harness_a_ = (a), *harness_b_ = (b);                        \
        if (harness_a_ != harness_b_ &&                                         \
            (!harness_a_ || !harness_b_ || strcmp(harness_a_, harness_b_)))     \
            harness_fail_str(__FILE__, __LINE__, "ASSERT_EQ_STR", #a, #b,       \
                             harness_a_, harness_strlen(harness_a_),            \
                             harness_b_, harness_strlen(harness_b_));           \
    } while (0)

/* Byte ranges (a, alen) and (b, blen) are equal. */
#define ASSERT_EQ_MEM(a, alen, b, blen)                                         \
    do {                                                                        \
        const char *harness_a_ = (const char *)(a);                             \
        const char *harness_b_ = (const char *)(b);                             \
        size_t harness_al_ = (alen), harness_bl_ = (blen);                      \
        if (harness_al_ != harness_bl_ ||                                       \
            (harness_al_ && memcmp(harness_a_, harness_b_, harness_al_)))       \
            harness_fail_str(__FILE__, __LINE__, "ASSERT_EQ_MEM", #a, #b,       \
                             harness_a_, harness_al_, harness_b_, harness_bl_); \
    } while (0)

/* needle occurs (CONTAINS) / does not occur (NOT_CONTAINS) in haystack. */
#define ASSERT_CONTAINS(hay, needle)                                            \
    do {                                                                        \
        const char *harness_a_ = (hay), *harness_b_ = (needle);                 \
        if (!harness_a_ || !strstr(harness_a_, harness_b_))                     \
            harness_fail_str(__FILE__, __LINE__, "ASSERT_CONTAINS", #hay,       \
                             #needle, harness_a_, harness_strlen(harness_a_),   \
                             harness_b_, strlen(harness_b_));                   \
    } while (0)

#define ASSERT_NOT_CONTAINS(hay, needle)                                        \
    do {                                                                        \
        const char *harness_a_ = (hay), *harness_b_ = (needle);                 \
        if (harness_a_ && strstr(harness_a_, harness_b_))                       \
            harness_fail_str(__FILE__, __LINE__, "ASSERT_NOT_CONTAINS", #hay,   \
                             #needle, harness_a_, strlen(harness_a_),           \
                             harness_b_, strlen(harness_b_));                   \
    } while (0)

#define ASSERT_NULL(p)                                                          \
    do {                                                                        \
        const void *harness_p_ = (p);                                           \
        if (harness_p_)                                                         \
            harness_fail(__FILE__, __LINE__, "ASSERT_NULL(%s) failed: %p", #p,  \
                         harness_p_);                                           \
    } while (0)

#define ASSERT_NOT_NULL(p)                                                      \
    do {                                                                        \
        if (!(p))                                                               \
            harness_fail(__FILE__, __LINE__, "ASSERT_NOT_NULL(%s) failed", #p); \
    } while (0)

/* Fails the current case with a message. */
#define FAIL(...) harness_fail(__FILE__, __LINE__, __VA_ARGS__)

/* Without a sanitizer (which reports crashes itself) a crash in a case is
 * reported as that case failing before the process dies with the signal. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define HARNESS_CATCH_CRASHES 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define HARNESS_CATCH_CRASHES 0
#endif
#endif
#ifndef HARNESS_CATCH_CRASHES
#define HARNESS_CATCH_CRASHES 1
#endif

static inline void harness_write_str(const char *s)
{
    size_t len = strlen(s);
    while (len) {
        ssize_t n = write(STDOUT_FILENO, s, len);
        if (n <= 0)
            return;
        s += n;
        len -= (size_t)n;
    }
}

static inline void harness_on_crash(int sig)
{
    const struct harness_case *c = harness_current;
    if (c) {
        harness_write_str("# crashed with signal ");
        char num[4] = {(char)('0' + sig / 10 % 10), (char)('0' + sig % 10), '\n', 0};
        harness_write_str(num);
        harness_write_str("not ok - ");
        harness_write_str(c->file);
        harness_write_str(": ");
        harness_write_str(c->name);
        harness_write_str("\n");
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static inline bool harness_selected(int argc, char **argv, const char *name)
{
    if (argc < 2)
        return true;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], name))
            return true;
    return false;
}

static inline int harness_main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (HARNESS_CATCH_CRASHES) {
        static const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
        for (size_t i = 0; i < ARRAY_SIZE(sigs); i++)
            signal(sigs[i], harness_on_crash);
    }
    volatile size_t passed = 0, failed = 0;
    for (volatile size_t i = 0; i < harness_ncases; i++) {
        const struct harness_case *c = &harness_cases[i];
        if (!harness_selected(argc, argv, c->name))
            continue;
        harness_current = c;
        if (setjmp(harness_jmp) == 0) {
            c->fn();
            printf("ok - %s: %s\n", c->file, c->name);
            passed++;
        } else {
            printf("not ok - %s: %s\n", c->file, c->name);
            failed++;
        }
        harness_current = NULL;
        fflush(stdout);
    }
    if (!passed && !failed) {
        printf("# no test case matched\n");
        return 2;
    }
    printf("# %s: %zu passed, %zu failed\n",
           harness_ncases ? harness_cases[0].file : "?", (size_t)passed, (size_t)failed);
    return failed ? 1 : 0;
}

/* The test binary's main(): runs every registered case, or those named in argv. */
#define RUN_TESTS()                                                             \
    int main(int argc, char **argv)                                             \
    {                                                                           \
        return harness_main(argc, argv);                                        \
    }

#endif /* CELERIAC_TEST_HARNESS_H */
