/*
 * The greeter cell: `hello` with {"name": "..."} replies {"greeting":"Hello, ...!"}.
 *
 * A libc-free core module (clang --target=wasm32 -nostdlib) that exports the `cell`
 * world of contracts/wit/cell.wit by a hand-written canonical ABI; build.sh turns it
 * into the component greeter.wasm. It imports nothing: no WASI, no log, no call.
 *
 * The canonical ABI of
 *   handle: func(verb: string, payload: string) -> result<string, cell-error>
 * is the core function (verb_ptr, verb_len, payload_ptr, payload_len) -> i32, where the
 * i32 points at the result (32 bytes, alignment 4):
 *
 *   +0   u8   discriminant: 0 ok, 1 err
 *   ok:
 *   +4   u32  payload pointer
 *   +8   u32  payload length
 *   err (record cell-error { code: error-code, message: string,
 *                            details: option<string>, retryable: bool }):
 *   +4   u8   code (enum index; bad-request = 0)
 *   +8   u32  message pointer
 *   +12  u32  message length
 *   +16  u8   details discriminant: 0 none, 1 some
 *   +20  u32  details pointer
 *   +24  u32  details length
 *   +28  u8   retryable
 *
 * Every address is a 32-bit offset into linear memory (`wptr`); `P()` turns one into a
 * C pointer. On wasm32 that is the identity; compiled natively (-DGREETER_NATIVE, see
 * greeter_test.c beside this file) offsets are into a static arena, so the same code can
 * be tested with the host's compiler.
 */

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long uptr;
typedef u32 wptr;

#ifdef GREETER_NATIVE
#define EXPORT(name)
#define ARENA_SIZE (1u << 20)
u8 greeter_arena[ARENA_SIZE];
#define P(off) (greeter_arena + (off))
static wptr heap = 16; /* offset 0 stays unused, like a null pointer */
#else
#define EXPORT(name) __attribute__((export_name(name)))
#define P(off) ((u8 *)(uptr)(off))
extern u8 __heap_base; /* first byte past the data and the stack, from wasm-ld */
static wptr heap;      /* 0 until the first allocation */
#endif

/* Error codes of cellbus:cell/types (enum index). */
enum { ERR_BAD_REQUEST = 0 };

/* ---- memory ------------------------------------------------------------------------ */

/*
 * cabi_realloc(old_ptr, old_size, align, new_size): a bump allocator. A fresh instance
 * serves each request, so nothing is ever freed; a realloc copies into a new block.
 * Memory grows as needed; when it cannot, the instance traps.
 */
EXPORT("cabi_realloc")
wptr cabi_realloc(wptr old_ptr, u32 old_size, u32 align, u32 new_size) {
#ifndef GREETER_NATIVE
    if (heap == 0) heap = (wptr)(uptr)&__heap_base;
#endif
    if (align == 0) align = 1;
    wptr ptr = (heap + (align - 1)) & ~(align - 1);
    if (ptr < heap) __builtin_trap(); /* overflow */
    wptr end = ptr + new_size;
    if (end < ptr) __builtin_trap();
#ifdef GREETER_NATIVE
    if (end > ARENA_SIZE) __builtin_trap();
#else
    uptr have = __builtin_wasm_memory_size(0) * 65536ul;
    if (end > have) {
        uptr pages = ((uptr)end - have + 65535ul) / 65536ul;
        if (__builtin_wasm_memory_grow(0, pages) == (uptr)-1) __builtin_trap();
    }
#endif
    heap = end;
    if (old_ptr != 0 && old_size != 0) {
        /* volatile so -O2 neither drops the copy nor turns it into a memcpy call */
        volatile u8 *dst = P(ptr);
        const u8 *src = P(old_ptr);
        u32 n = old_size < new_size ? old_size : new_size;
        for (u32 i = 0; i < n; i++) dst[i] = src[i];
    }
    return ptr;
}

static wptr alloc(u32 size, u32 align) { return cabi_realloc(0, 0, align, size); }

static void put8(wptr at, u8 v) { *(volatile u8 *)P(at) = v; }

static void put32(wptr at, u32 v) { *(volatile u32 *)P(at) = v; }

/* Copies n bytes to `at` and returns the offset just past them. */
static wptr put_bytes(wptr at, const u8 *src, u32 n) {
    volatile u8 *dst = P(at);
    for (u32 i = 0; i < n; i++) dst[i] = src[i];
    return at + n;
}

static u32 cstr_len(const char *s) {
    u32 n = 0;
    while (s[n]) n++;
    return n;
}

/* ---- JSON scanning ----------------------------------------------------------------- */

/*
 * A cursor over the payload. The runtime validated the payload against the verb's input
 * schema before the call, but the scanner still refuses anything it does not understand
 * instead of reading past the end.
 */
typedef struct {
    const u8 *s;
    u32 len;
    u32 i;
} cursor;

static void skip_ws(cursor *c) {
    while (c->i < c->len) {
        u8 ch = c->s[c->i];
        if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r') break;
        c->i++;
    }
}

/*
 * Reads a string token at the cursor. On success its raw (still escaped) content is
 * s[*start .. *start + *n) and the cursor is past the closing quote.
 */
static int read_string(cursor *c, u32 *start, u32 *n) {
    if (c->i >= c->len || c->s[c->i] != '"') return 0;
    c->i++;
    u32 from = c->i;
    while (c->i < c->len) {
        u8 ch = c->s[c->i];
        if (ch == '\\') {
            c->i += 2; /* the escaped character (or the `u` of \uXXXX) */
            continue;
        }
        if (ch == '"') {
            *start = from;
            *n = c->i - from;
            c->i++;
            return 1;
        }
        if (ch < 0x20) return 0; /* raw control characters are not valid JSON */
        c->i++;
    }
    return 0;
}

/* Skips one value of any type (strings, numbers, literals, nested objects and arrays). */
static int skip_value(cursor *c) {
    skip_ws(c);
    if (c->i >= c->len) return 0;
    u8 ch = c->s[c->i];
    if (ch == '"') {
        u32 a, b;
        return read_string(c, &a, &b);
    }
    if (ch == '{' || ch == '[') {
        u32 depth = 0;
        while (c->i < c->len) {
            ch = c->s[c->i];
            if (ch == '"') {
                u32 a, b;
                if (!read_string(c, &a, &b)) return 0;
                continue;
            }
            if (ch == '{' || ch == '[') depth++;
            if (ch == '}' || ch == ']') {
                depth--;
                if (depth == 0) {
                    c->i++;
                    return 1;
                }
            }
            c->i++;
        }
        return 0;
    }
    /* number, true, false, null */
    u32 from = c->i;
    while (c->i < c->len) {
        ch = c->s[c->i];
        if (ch == ',' || ch == '}' || ch == ']' || ch == ' ' || ch == '\t' || ch == '\n' ||
            ch == '\r')
            break;
        c->i++;
    }
    return c->i > from;
}

static int key_is(const u8 *s, u32 start, u32 n, const char *key) {
    u32 k = cstr_len(key);
    if (n != k) return 0;
    for (u32 i = 0; i < n; i++)
        if (s[start + i] != (u8)key[i]) return 0;
    return 1;
}

/*
 * Finds the top-level member `key` of the JSON object in s[0..len) whose value is a
 * string; on success its raw content is s[*start .. *start + *n).
 */
static int find_string_member(const u8 *s, u32 len, const char *key, u32 *start, u32 *n) {
    cursor c = {s, len, 0};
    skip_ws(&c);
    if (c.i >= c.len || s[c.i] != '{') return 0;
    c.i++;
    skip_ws(&c);
    if (c.i < c.len && s[c.i] == '}') return 0; /* empty object */
    for (;;) {
        u32 ks, kn;
        skip_ws(&c);
        if (!read_string(&c, &ks, &kn)) return 0;
        skip_ws(&c);
        if (c.i >= c.len || s[c.i] != ':') return 0;
        c.i++;
        skip_ws(&c);
        if (key_is(s, ks, kn, key) && c.i < c.len && s[c.i] == '"')
            return read_string(&c, start, n);
        if (!skip_value(&c)) return 0;
        skip_ws(&c);
        if (c.i >= c.len) return 0;
        if (s[c.i] == ',') {
            c.i++;
            continue;
        }
        return 0; /* `}` (key not found) or garbage */
    }
}

/* ---- results ----------------------------------------------------------------------- */

static wptr result_ok(wptr payload, u32 len) {
    wptr r = alloc(32, 4);
    put8(r + 0, 0);
    put32(r + 4, payload);
    put32(r + 8, len);
    return r;
}

static wptr result_err(u8 code, const char *message) {
    u32 n = cstr_len(message);
    wptr msg = alloc(n, 1);
    put_bytes(msg, (const u8 *)message, n);
    wptr r = alloc(32, 4);
    put8(r + 0, 1);
    put8(r + 4, code);
    put32(r + 8, msg);
    put32(r + 12, n);
    put8(r + 16, 0); /* details: none */
    put32(r + 20, 0);
    put32(r + 24, 0);
    put8(r + 28, 0); /* retryable: false */
    return r;
}

/* ---- the export -------------------------------------------------------------------- */

EXPORT("handle")
wptr handle(wptr verb_ptr, u32 verb_len, wptr payload_ptr, u32 payload_len) {
    if (!key_is(P(verb_ptr), 0, verb_len, "hello"))
        return result_err(ERR_BAD_REQUEST, "greeter knows only the verb `hello`");

    u32 start, n;
    if (!find_string_member(P(payload_ptr), payload_len, "name", &start, &n))
        return result_err(ERR_BAD_REQUEST, "payload needs a string member `name`");

    static const char head[] = "{\"greeting\":\"Hello, ";
    static const char tail[] = "!\"}";
    u32 hn = sizeof head - 1, tn = sizeof tail - 1;
    u32 total = hn + n + tn;
    if (total < n) __builtin_trap();
    wptr out = alloc(total, 1);
    wptr at = put_bytes(out, (const u8 *)head, hn);
    /* The name's escaped content verbatim: still valid inside a JSON string. */
    at = put_bytes(at, P(payload_ptr) + start, n);
    put_bytes(at, (const u8 *)tail, tn);
    return result_ok(out, total);
}
