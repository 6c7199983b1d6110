/* See rust-demangle.h. The grammar is RFC 2603's; a production this reader
 * does not know makes the whole name fail, and it is shown mangled. */
#include "rust-demangle.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Names longer than this are cut short by the reports anyway; backrefs can
 * make a short symbol print long. */
#define MAX_OUT 4096
#define MAX_DEPTH 128

struct v0 {
    const char *s;  /* the symbol after "_R", which backrefs count from */
    size_t n, i;    /* its length, the next byte */
    char *out;
    size_t len, cap;
    int bad;        /* malformed, too long or out of memory */
    int quiet;      /* parsing what is not printed (an impl's own path) */
    int depth;
};

static void put(struct v0 *d, const char *p, size_t k)
{
    if (d->bad || d->quiet)
        return;
    if (d->len + k >= MAX_OUT) {
        d->bad = 1;
        return;
    }
    if (d->len + k + 1 > d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 128;
        while (cap < d->len + k + 1)
            cap *= 2;
        char *o = realloc(d->out, cap);
        if (!o) {
            d->bad = 1;
            return;
        }
        d->out = o;
        d->cap = cap;
    }
    memcpy(d->out + d->len, p, k);
    d->len += k;
    d->out[d->len] = 0;
}

static void say(struct v0 *d, const char *p) { put(d, p, strlen(p)); }

static char peek(const struct v0 *d) { return d->i < d->n ? d->s[d->i] : 0; }

static int eat(struct v0 *d, char c)
{
    if (d->bad || peek(d) != c)
        return 0;
    d->i++;
    return 1;
}

static char next(struct v0 *d)
{
    if (d->i < d->n)
        return d->s[d->i++];
    d->bad = 1;
    return 0;
}

/* <base-62-number>: "_" is 0, digits and "_" are their value + 1. */
static uint64_t base62(struct v0 *d)
{
    if (eat(d, '_'))
        return 0;
    uint64_t x = 0;
    for (;;) {
        char c = next(d);
        if (d->bad)
            return 0;
        if (c == '_')
            break;
        int v = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'z' ? c - 'a' + 10
                : c >= 'A' && c <= 'Z' ? c - 'A' + 36
                                       : -1;
        if (v < 0 || x > (UINT64_MAX - 62) / 62) {
            d->bad = 1;
            return 0;
        }
        x = x * 62 + (uint64_t)v;
    }
    return x + 1;
}

static uint64_t decimal(struct v0 *d)
{
    char c = peek(d);
    if (c < '0' || c > '9') {
        d->bad = 1;
        return 0;
    }
    if (c == '0') {
        d->i++;
        return 0;
    }
    uint64_t x = 0;
    while ((c = peek(d)) >= '0' && c <= '9') {
        if (x > (UINT64_MAX - 9) / 10) {
            d->bad = 1;
            return 0;
        }
        x = x * 10 + (uint64_t)(c - '0');
        d->i++;
    }
    return x;
}

/* "s" <base-62-number>: which of several items of one name; 0 when absent. */
static uint64_t disambiguator(struct v0 *d)
{
    return eat(d, 's') ? base62(d) + 1 : 0;
}

struct ident { const char *p; size_t len; int punycode; };

static struct ident ident(struct v0 *d)
{
    struct ident id = {NULL, 0, 0};
    id.punycode = eat(d, 'u');
    uint64_t len = decimal(d);
    eat(d, '_');  /* keeps an identifier's leading digits from the length */
    if (d->bad || len > d->n - d->i) {
        d->bad = 1;
        return id;
    }
    id.p = d->s + d->i;
    id.len = (size_t)len;
    d->i += (size_t)len;
    return id;
}

/* A non-ASCII identifier stays in its Punycode, marked as such. */
static void put_ident(struct v0 *d, struct ident id)
{
    if (id.punycode)
        say(d, "punycode{");
    put(d, id.p, id.len);
    if (id.punycode)
        say(d, "}");
}

static int enter(struct v0 *d)
{
    if (++d->depth > MAX_DEPTH)
        d->bad = 1;
    return !d->bad;
}

/* "B" <base-62-number>, its B just read: the offset it points back to. */
static size_t backref(struct v0 *d)
{
    size_t at = d->i - 1;
    uint64_t to = base62(d);
    if (!d->bad && to >= at)
        d->bad = 1;
    return d->bad ? 0 : (size_t)to;
}

static void path(struct v0 *d, int in_value);
static void type(struct v0 *d);

static void const_value(struct v0 *d)
{
    if (!enter(d))
        return;
    if (eat(d, 'B')) {
        size_t to = backref(d), back = d->i;
        if (!d->bad) {
            d->i = to;
            const_value(d);
            d->i = back;
        }
    } else if (eat(d, 'p')) {
        say(d, "_");
    } else {
        char t = next(d);
        int negative = eat(d, 'n');
        uint64_t v = 0;
        int digits = 0;
        char c;
        while (!d->bad && (c = next(d)) != '_') {
            int x = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
            if (x < 0 || ++digits > 16) {
                d->bad = 1;
                break;
            }
            v = v << 4 | (uint64_t)x;
        }
        char buf[32];
        if (t == 'b' && v <= 1)
            say(d, v ? "true" : "false");
        else if (t == 'c' && v >= 0x20 && v < 0x7f && v != '\'' && v != '\\')
            snprintf(buf, sizeof buf, "'%c'", (char)v), say(d, buf);
        else if (t == 'c')
            snprintf(buf, sizeof buf, "'\\u{%llx}'", (unsigned long long)v), say(d, buf);
        else if (strchr("hmjyotnasilx", t) && t)
            snprintf(buf, sizeof buf, "%s%llu", negative ? "-" : "", (unsigned long long)v),
                say(d, buf);
        else
            d->bad = 1;  /* a constant of another type (a struct): not read */
    }
    d->depth--;
}

/* "<" and the arguments up to "E"; the ">" when close (a dyn trait's
 * bindings may follow inside). */
static void generic_args(struct v0 *d, int close)
{
    say(d, "<");
    for (int k = 0; !d->bad && !eat(d, 'E'); k++) {
        if (k)
            say(d, ", ");
        if (eat(d, 'L')) {
            base62(d);
            say(d, "'_");
        } else if (eat(d, 'K')) {
            const_value(d);
        } else {
            type(d);
        }
    }
    if (close)
        say(d, ">");
}

/* A trait's path, its generic arguments left open: 1 when they are. */
static int trait_path(struct v0 *d)
{
    if (!enter(d))
        return 0;
    int open = 0;
    if (eat(d, 'B')) {
        size_t to = backref(d), back = d->i;
        if (!d->bad) {
            d->i = to;
            open = trait_path(d);
            d->i = back;
        }
    } else if (eat(d, 'I')) {
        path(d, 0);
        generic_args(d, 0);
        open = 1;
    } else {
        path(d, 0);
    }
    d->depth--;
    return open;
}

static void fn_sig(struct v0 *d)
{
    if (eat(d, 'G'))
        base62(d);  /* bound lifetimes: not shown */
    if (eat(d, 'U'))
        say(d, "unsafe ");
    if (eat(d, 'K')) {
        say(d, "extern \"");
        if (eat(d, 'C')) {
            say(d, "C");
        } else {
            struct ident abi = ident(d);
            for (size_t k = 0; k < abi.len; k++)
                put(d, abi.p[k] == '_' ? "-" : &abi.p[k], 1);  /* "_" is "-" */
        }
        say(d, "\" ");
    }
    say(d, "fn(");
    for (int k = 0; !d->bad && !eat(d, 'E'); k++) {
        if (k)
            say(d, ", ");
        type(d);
    }
    say(d, ")");
    if (eat(d, 'u'))
        return;  /* returns () */
    say(d, " -> ");
    type(d);
}

static void dyn_bounds(struct v0 *d)
{
    if (eat(d, 'G'))
        base62(d);
    say(d, "dyn ");
    for (int k = 0; !d->bad && !eat(d, 'E'); k++) {
        if (k)
            say(d, " + ");
        int open = trait_path(d);
        while (eat(d, 'p')) {  /* Iterator<Item = T> */
            say(d, open ? ", " : "<");
            open = 1;
            put_ident(d, ident(d));
            say(d, " = ");
            type(d);
        }
        if (open)
            say(d, ">");
    }
    if (!eat(d, 'L'))
        d->bad = 1;
    else
        base62(d);  /* the object's lifetime */
}

static const char *basic_type(char c)
{
    switch (c) {
    case 'a': return "i8";
    case 'b': return "bool";
    case 'c': return "char";
    case 'd': return "f64";
    case 'e': return "str";
    case 'f': return "f32";
    case 'h': return "u8";
    case 'i': return "isize";
    case 'j': return "usize";
    case 'l': return "i32";
    case 'm': return "u32";
    case 'n': return "i128";
    case 'o': return "u128";
    case 'p': return "_";
    case 's': return "i16";
    case 't': return "u16";
    case 'u': return "()";
    case 'v': return "...";
    case 'x': return "i64";
    case 'y': return "u64";
    case 'z': return "!";
    }
    return NULL;
}

static void type(struct v0 *d)
{
    if (!enter(d))
        return;
    char c = peek(d);
    const char *basic = basic_type(c);
    if (basic) {
        d->i++;
        say(d, basic);
        d->depth--;
        return;
    }
    switch (c) {
    case 'R':
    case 'Q':
        d->i++;
        say(d, c == 'R' ? "&" : "&mut ");
        if (eat(d, 'L'))
            base62(d);  /* lifetimes: not shown */
        type(d);
        break;
    case 'P':
    case 'O':
        d->i++;
        say(d, c == 'P' ? "*const " : "*mut ");
        type(d);
        break;
    case 'A':
        d->i++;
        say(d, "[");
        type(d);
        say(d, "; ");
        const_value(d);
        say(d, "]");
        break;
    case 'S':
        d->i++;
        say(d, "[");
        type(d);
        say(d, "]");
        break;
    case 'T': {
        d->i++;
        say(d, "(");
        int k = 0;
        for (; !d->bad && !eat(d, 'E'); k++) {
            if (k)
                say(d, ", ");
            type(d);
        }
        say(d, k == 1 ? ",)" : ")");
        break;
    }
    case 'F':
        d->i++;
        fn_sig(d);
        break;
    case 'D':
        d->i++;
        dyn_bounds(d);
        break;
    case 'B': {
        d->i++;
        size_t to = backref(d), back = d->i;
        if (!d->bad) {
            d->i = to;
            type(d);
            d->i = back;
        }
        break;
    }
    default:
        path(d, 0);
    }
    d->depth--;
}

/* A path; in_value: a function's (its generic arguments come after "::"). */
static void path(struct v0 *d, int in_value)
{
    if (!enter(d))
        return;
    char c = next(d);
    switch (c) {
    case 'C':  /* a crate's root */
        disambiguator(d);
        put_ident(d, ident(d));
        break;
    case 'N': {  /* parent::name */
        char ns = next(d);
        path(d, in_value);
        uint64_t dis = disambiguator(d);
        struct ident id = ident(d);
        if (ns >= 'A' && ns <= 'Z') {  /* {closure#0}, {shim:vtable#0} */
            char buf[32];
            say(d, "::{");
            say(d, ns == 'C' ? "closure" : ns == 'S' ? "shim" : (char[2]){ns, 0});
            if (id.len) {
                say(d, ":");
                put_ident(d, id);
            }
            snprintf(buf, sizeof buf, "#%llu}", (unsigned long long)dis);
            say(d, buf);
        } else if (ns >= 'a' && ns <= 'z') {
            if (id.len) {
                say(d, "::");
                put_ident(d, id);
            }
        } else {
            d->bad = 1;
        }
        break;
    }
    case 'M':  /* <Type>: an inherent impl, whose own path is not shown */
    case 'X':  /* <Type as Trait> */
        disambiguator(d);
        d->quiet++;
        path(d, 0);
        d->quiet--;
        /* fall through */
    case 'Y':  /* <Type as Trait>, the trait's own item */
        say(d, "<");
        type(d);
        if (c != 'M') {
            say(d, " as ");
            path(d, 0);
        }
        say(d, ">");
        break;
    case 'I':  /* path<args> */
        path(d, in_value);
        if (in_value)
            say(d, "::");
        generic_args(d, 1);
        break;
    case 'B': {
        size_t to = backref(d), back = d->i;
        if (!d->bad) {
            d->i = to;
            path(d, in_value);
            d->i = back;
        }
        break;
    }
    default:
        d->bad = 1;
    }
    d->depth--;
}

char *mt_rust_v0_demangle(const char *name)
{
    if (strncmp(name, "_R", 2) != 0)
        return NULL;
    struct v0 d = {0};
    d.s = name + 2;
    d.n = strcspn(d.s, ".$");  /* ".llvm.123" and vendor suffixes */
    if (d.n && d.s[0] >= '0' && d.s[0] <= '9')
        return NULL;  /* an encoding version after 0 */
    path(&d, 1);
    if (!d.bad && d.i < d.n) {  /* the instantiating crate: not shown */
        d.quiet++;
        path(&d, 0);
        d.quiet--;
    }
    if (d.bad || d.i != d.n || !d.out) {
        free(d.out);
        return NULL;
    }
    return d.out;
}
