/*
 * Native test of greeter.c's canonical-ABI logic, run with the host's C compiler:
 *
 *   gcc -O2 -Wall -DGREETER_NATIVE greeter_test.c -o /tmp/greeter_test && /tmp/greeter_test
 *
 * It plays the host: copies the arguments in with cabi_realloc, calls handle and reads
 * the result area back by the layout documented in greeter.c.
 */
#include <stdio.h>
#include <string.h>

#include "greeter.c"

static int failed, passed;

static u32 get32(wptr at) {
    u32 v;
    memcpy(&v, P(at), 4);
    return v;
}

static wptr copy_in(const char *s) {
    u32 n = (u32)strlen(s);
    wptr p = cabi_realloc(0, 0, 1, n);
    memcpy(P(p), s, n);
    return p;
}

static wptr call(const char *verb, const char *payload) {
    wptr v = copy_in(verb);
    wptr p = copy_in(payload);
    wptr r = handle(v, (u32)strlen(verb), p, (u32)strlen(payload));
    if (r % 4 != 0) {
        printf("FAIL result area %u is not 4-aligned\n", r);
        failed++;
    }
    return r;
}

static void expect_ok(const char *verb, const char *payload, const char *want) {
    wptr r = call(verb, payload);
    u32 len = get32(r + 8);
    if (*P(r) != 0 || len != strlen(want) || memcmp(P(get32(r + 4)), want, len) != 0) {
        printf("FAIL %s %s: disc=%u got %.*s want %s\n", verb, payload, *P(r), (int)len,
               (const char *)P(get32(r + 4)), want);
        failed++;
    } else {
        passed++;
    }
}

static void expect_err(const char *verb, const char *payload) {
    wptr r = call(verb, payload);
    u32 mlen = get32(r + 12);
    int ok = *P(r) == 1 && *P(r + 4) == ERR_BAD_REQUEST && mlen > 0 && *P(r + 16) == 0 &&
             *P(r + 28) == 0;
    if (!ok) {
        printf("FAIL %s %s: expected bad-request error (disc=%u code=%u)\n", verb, payload,
               *P(r), *P(r + 4));
        failed++;
    } else {
        printf("  err %-6s %-28s -> %.*s\n", verb, payload, (int)mlen,
               (const char *)P(get32(r + 8)));
        passed++;
    }
}

int main(void) {
    expect_ok("hello", "{\"name\":\"Ada\"}", "{\"greeting\":\"Hello, Ada!\"}");
    expect_ok("hello", " { \"name\" : \"Ada Lovelace\" } ",
              "{\"greeting\":\"Hello, Ada Lovelace!\"}");
    expect_ok("hello", "{\"name\":\"\"}", "{\"greeting\":\"Hello, !\"}");
    /* escapes are copied verbatim, so the output stays valid JSON */
    expect_ok("hello", "{\"name\":\"a\\\"b\\\\c\\u00e9\"}",
              "{\"greeting\":\"Hello, a\\\"b\\\\c\\u00e9!\"}");
    expect_ok("hello", "{\"name\":\"Zo\xc3\xab\"}", "{\"greeting\":\"Hello, Zo\xc3\xab!\"}");
    /* other members before it are skipped, including ones whose values mention "name" */
    expect_ok("hello", "{\"x\":{\"name\":\"no\"},\"y\":[1,\"name\"],\"z\":null,\"name\":\"yes\"}",
              "{\"greeting\":\"Hello, yes!\"}");
    expect_ok("hello", "{\"nick\":\"name\",\"name\":\"Bo\"}", "{\"greeting\":\"Hello, Bo!\"}");

    expect_err("hi", "{\"name\":\"Ada\"}");
    expect_err("hell", "{\"name\":\"Ada\"}");
    expect_err("hello!", "{\"name\":\"Ada\"}");
    expect_err("hello", "{}");
    expect_err("hello", "");
    expect_err("hello", "{\"name\":42}");
    expect_err("hello", "{\"name\":\"unterminated");
    expect_err("hello", "{\"name\":\"ends in backslash\\");
    expect_err("hello", "{\"other\":\"Ada\"}");
    expect_err("hello", "[\"name\",\"Ada\"]");

    /* realloc keeps the old bytes */
    wptr a = copy_in("abcdef");
    wptr b = cabi_realloc(a, 6, 1, 12);
    if (memcmp(P(b), "abcdef", 6) != 0) {
        printf("FAIL realloc lost data\n");
        failed++;
    } else {
        passed++;
    }
    wptr c = cabi_realloc(0, 0, 8, 3);
    if (c % 8 != 0) {
        printf("FAIL alignment 8 not honoured\n");
        failed++;
    } else {
        passed++;
    }

    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
