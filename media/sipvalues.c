/*
 * media/sipvalues.c: media._srtp.SipValueParser, C fast paths for the common
 * shapes of the typed SIP header values (RFC 3261 §19.1, §20, §25).
 *
 * Each method takes the text of one header value (one element of a comma list)
 * and gives back exactly what the Python parser in sip/headers.py or sip/uri.py
 * gives for it (the same dataclass, every field equal and of the same type), or
 * None: "not a shape handled here, ask the Python parser".  None is also the
 * answer for text that Python refuses, so that the Python parser raises its
 * SipError: this file never raises a SipError and never accepts what Python
 * refuses.  tests/test_sip_values.py holds it to that on the test corpus and on
 * random mutations, fuzz/fuzz_sipvalues.py under ASan.
 *
 * The shapes are the branches of the Python parsers that carry the traffic:
 *   - via(): Via.parse's _FAST_VIA_RE branch, "SIP/2.0/UDP host:port;params"
 *     (a received= with an IPv6 address goes back to Python);
 *   - uri(): URI.parse's _FAST_SIP_RE branch, sip:/sips: with user, host, port
 *     and plain params, and the same with user:password (no escapes, IPv6 or
 *     ?headers);
 *   - name_addr(): NameAddr.parse for ["display"|tokens] <fast uri>;params and
 *     the addr-spec form fast-uri;params, header params without LWS or IPv6
 *     references, at most MAX_PARAMS of them;
 *   - contact(): Contact.parse on top of name_addr(), and "*";
 *   - cseq(): CSeq.parse.
 * Only ASCII text is handled (the grammar's common shapes are ASCII; a UTF-8
 * display name goes to Python).
 *
 * Why C: typed header values were about 12% of the proxy's CPU under sipp load;
 * a Via carries a fresh branch in every transaction, so its memo rarely hits.
 * Objects are built by writing their slots (the dataclasses only store their
 * arguments), as sipscan.c does for HeaderField.
 *
 * Rules of this file: no state outside the SipValueParser object; the text is
 * only read; each function quotes the Python code or regex it mirrors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdint.h>
#include <string.h>

#include "sipvalues.h"

/* sip.uri.MAX_URI_LENGTH: a longer URI is a 414 in Python. */
#define MAX_URI_LENGTH 4096
/* More parameters than this go to Python (the duplicate check here is quadratic). */
#define MAX_PARAMS 32

/* ------------------------------------------------------------ characters */

enum {
    K_TOKEN = 1, /* token (§25.1, sip._abnf.TOKEN_CHARS) */
    K_HOST = 2,  /* what HOSTNAME is made of: alphanum "-" "." */
    K_USER = 4,  /* _FAST_SIP_RE's user: alphanum -_.!~*'()&=+$, */
    K_PCHAR = 8, /* _FAST_PCHARS: alphanum -_.!~*'()[]/:&+$ */
    K_HEX = 16,
    K_V6 = 32, /* the tail of _BARE_IPV6: hex ":" "." */
    K_DIGIT = 64,
    K_ALNUM = 128,
};

static unsigned char ctab[256];

static void
init_table(void)
{
    static const struct {
        const char *chars;
        unsigned char kind;
    } sets[] = {
        {"-.!%*_+`'~", K_TOKEN},
        {"-.", K_HOST},
        {"-_.!~*'()&=+$,", K_USER},
        {"-_.!~*'()[]/:&+$", K_PCHAR},
        {":.", K_V6},
    };
    for (int c = 0; c < 256; c++) {
        unsigned char k = 0;
        int digit = c >= '0' && c <= '9';
        int alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        if (digit || alpha)
            k |= K_ALNUM | K_TOKEN | K_HOST | K_USER | K_PCHAR;
        if (digit)
            k |= K_DIGIT;
        if (digit || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'))
            k |= K_HEX | K_V6;
        ctab[c] = k;
    }
    for (size_t i = 0; i < sizeof(sets) / sizeof(sets[0]); i++)
        for (const char *s = sets[i].chars; *s; s++)
            ctab[(unsigned char)*s] |= sets[i].kind;
}

#define IS(c, kind) (ctab[(unsigned char)(c)] & (kind))

static int
is_wsp(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* str.isspace() for ASCII: what str.strip() removes. */
static int
is_py_space(unsigned char c)
{
    return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f);
}

static Py_ssize_t
run(const unsigned char *p, Py_ssize_t i, Py_ssize_t n, int kind)
{
    while (i < n && IS(p[i], kind))
        i++;
    return i;
}

static int
eq_ci(const unsigned char *p, Py_ssize_t n, const char *lower)
{
    Py_ssize_t i;
    for (i = 0; i < n && lower[i]; i++) {
        unsigned char c = p[i];
        if (c >= 'A' && c <= 'Z')
            c += 'a' - 'A';
        if (c != (unsigned char)lower[i])
            return 0;
    }
    return i == n && lower[i] == '\0';
}

static int
same_ci(const unsigned char *a, Py_ssize_t na, const unsigned char *b, Py_ssize_t nb)
{
    if (na != nb)
        return 0;
    for (Py_ssize_t i = 0; i < na; i++) {
        unsigned char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z')
            x += 'a' - 'A';
        if (y >= 'A' && y <= 'Z')
            y += 'a' - 'A';
        if (x != y)
            return 0;
    }
    return 1;
}

/* ------------------------------------------------------------ pieces */

/* hostname = *( domainlabel "." ) toplabel [ "." ]  (sip._abnf.HOSTNAME: labels of
 * alphanum and "-", starting and ending alphanum), fullmatch of h[0:n]. */
static int
hostname_ok(const unsigned char *h, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (;;) {
        if (i >= n || !IS(h[i], K_ALNUM))
            return 0;
        while (i < n && (IS(h[i], K_ALNUM) || h[i] == '-'))
            i++;
        if (h[i - 1] == '-')
            return 0;
        if (i == n)
            return 1;
        if (h[i] != '.')
            return 0;
        if (++i == n)
            return 1; /* the optional final "." */
    }
}

/* sip._abnf.IPV4_RE.fullmatch: four octets 0-255 without leading zeros. */
static int
ipv4_ok(const unsigned char *h, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (int octet = 0;; octet++) {
        Py_ssize_t s = i;
        int v = 0;
        while (i < n && i - s < 3 && IS(h[i], K_DIGIT))
            v = v * 10 + (h[i++] - '0');
        if (i == s || (i - s > 1 && h[s] == '0') || v > 255)
            return 0;
        if (octet == 3)
            return i == n;
        if (i >= n || h[i] != '.')
            return 0;
        i++;
    }
}

/* A host of _FAST_SIP_RE / _FAST_VIA_RE that Python then keeps:
 *     if host[0].isdigit(): check_ipv4_like(host)
 * refuses digits-and-dots that are not an IPv4 address. */
static int
host_ok(const unsigned char *h, Py_ssize_t n)
{
    if (!hostname_ok(h, n))
        return 0;
    if (IS(h[0], K_DIGIT)) {
        for (Py_ssize_t i = 0; i < n; i++)
            if (!IS(h[i], K_DIGIT) && h[i] != '.')
                return 1;
        return ipv4_ok(h, n);
    }
    return 1;
}

/* parse_int(text, what, maximum) does not raise: 1*DIGIT, at most 12 of them,
 * at most maximum. */
static int
digits_ok(const unsigned char *v, Py_ssize_t n, int64_t maximum, int64_t *out)
{
    int64_t x = 0;
    if (n < 1 || n > 12)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!IS(v[i], K_DIGIT))
            return 0;
        x = x * 10 + (v[i] - '0');
    }
    if (x > maximum)
        return 0;
    if (out != NULL)
        *out = x;
    return 1;
}

/* _BARE_IPV6 = [0-9A-Fa-f]*:[0-9A-Fa-f:.]+ (fullmatch). */
static int
bare_ipv6(const unsigned char *v, Py_ssize_t n)
{
    Py_ssize_t i = run(v, 0, n, K_HEX);
    if (i >= n || v[i] != ':' || i + 1 >= n)
        return 0;
    return run(v, i + 1, n, K_V6) == n;
}

/* TOKEN or _BARE_IPV6, fullmatch: a via-param value of _FAST_VIA_RE, and the
 * unquoted gen-values handled here. */
static int
token_or_ipv6(const unsigned char *v, Py_ssize_t n)
{
    return n > 0 && (run(v, 0, n, K_TOKEN) == n || bare_ipv6(v, n));
}

/* QUOTED_STRING = "(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"
 * from p[i] == '"' (ASCII text): the index after the closing quote, or -1. */
static Py_ssize_t
quoted_end(const unsigned char *p, Py_ssize_t i, Py_ssize_t n)
{
    for (i++; i < n; i++) {
        unsigned char c = p[i];
        if (c == '"')
            return i + 1;
        if (c == '\\') {
            if (++i >= n || p[i] == '\n' || p[i] == '\r')
                return -1;
        }
        else if (c <= 0x08 || (c >= 0x0a && c <= 0x1f) || c == 0x7f)
            return -1;
    }
    return -1;
}

/* qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )  (_QVALUE_RE) */
static int
qvalue_ok(const unsigned char *v, Py_ssize_t n)
{
    if (n < 1 || (v[0] != '0' && v[0] != '1'))
        return 0;
    if (n == 1)
        return 1;
    if (v[1] != '.' || n > 5)
        return 0;
    for (Py_ssize_t i = 2; i < n; i++)
        if (v[0] == '0' ? !IS(v[i], K_DIGIT) : v[i] != '0')
            return 0;
    return 1;
}

/* One ;name[=value]: offsets into the text; va < 0 for a valueless param. */
typedef struct {
    Py_ssize_t na, nb, va, vb;
} param_span;

typedef struct {
    param_span p[MAX_PARAMS];
    int n;
} params;

/* `len({n.lower() for n, _ in params}) != len(params)`: a duplicate name. */
static int
has_duplicate(const unsigned char *t, const params *ps)
{
    for (int i = 1; i < ps->n; i++)
        for (int j = 0; j < i; j++)
            if (same_ci(t + ps->p[i].na, ps->p[i].nb - ps->p[i].na, t + ps->p[j].na,
                        ps->p[j].nb - ps->p[j].na))
                return 1;
    return 0;
}

/* ------------------------------------------------------------ URI */

/* What URI.parse finds in the _FAST_SIP_RE branch:
 *   ([Ss][Ii][Pp][Ss]?):(?:(user-chars+)@)?(HOSTNAME)(?::([0-9]{1,5}))?
 *   ((?:;_FAST_PCHARS(?:=_FAST_PCHARS)?)*)
 * and in _parse_sip for the same shape with user:password@ (same user chars). */
typedef struct {
    int sips;
    Py_ssize_t ua, ub; /* user, ua < 0: none */
    Py_ssize_t pa, pb; /* password, pa < 0: none */
    Py_ssize_t ha, hb; /* host */
    long port;         /* -1: none */
    params ps;
} uri_spans;

/* 1 if p[a:b] is a URI that URI.parse returns from its fast branch, filling *u;
 * 0 for any other text (another branch, or an error there). */
static int
scan_uri(const unsigned char *p, Py_ssize_t a, Py_ssize_t b, uri_spans *u)
{
    Py_ssize_t i, r;
    if (b - a > MAX_URI_LENGTH || b - a < 5)
        return 0;
    if ((p[a] | 0x20) != 's' || (p[a + 1] | 0x20) != 'i' || (p[a + 2] | 0x20) != 'p')
        return 0;
    i = a + 3;
    u->sips = (p[i] | 0x20) == 's';
    i += u->sips;
    if (i >= b || p[i] != ':')
        return 0;
    i++;
    /* The user chars include every host char but none is "@": a run of them
     * followed by "@" can only be the userinfo. */
    r = run(p, i, b, K_USER);
    u->ua = u->pa = -1;
    if (r > i && r < b && p[r] == '@') {
        u->ua = i;
        u->ub = r;
        i = r + 1;
    }
    else if (r > i && r < b && p[r] == ':') {
        /* user:password@ fails _FAST_SIP_RE; URI._parse_sip splits the userinfo
         * (up to the only "@": no "@" can follow in this shape) at its first ":";
         * _PASSWORD_RE's chars are the user chars here, and it may be empty. */
        Py_ssize_t q = run(p, r + 1, b, K_USER);
        if (q < b && p[q] == '@') {
            u->ua = i;
            u->ub = r;
            u->pa = r + 1;
            u->pb = q;
            i = q + 1;
        }
    }
    r = run(p, i, b, K_HOST);
    if (r == i || !host_ok(p + i, r - i))
        return 0;
    u->ha = i;
    u->hb = r;
    i = r;
    u->port = -1;
    if (i < b && p[i] == ':') {
        long port = 0;
        r = ++i;
        while (r < b && r - i < 6 && IS(p[r], K_DIGIT))
            port = port * 10 + (p[r++] - '0');
        /* [0-9]{1,5}, then "URI port out of range" past 65535 */
        if (r == i || r - i > 5 || port > 65535)
            return 0;
        u->port = port;
        i = r;
    }
    u->ps.n = 0;
    while (i < b) {
        param_span *s;
        if (p[i] != ';' || u->ps.n == MAX_PARAMS)
            return 0;
        s = &u->ps.p[u->ps.n++];
        s->na = ++i;
        i = run(p, i, b, K_PCHAR);
        if (i == s->na)
            return 0;
        s->nb = i;
        s->va = -1;
        if (i < b && p[i] == '=') {
            s->va = ++i;
            i = run(p, i, b, K_PCHAR);
            if (i == s->va)
                return 0;
            s->vb = i;
        }
    }
    return 1;
}

/* ------------------------------------------------------------ header params */

/* *( SEMI generic-param ) as parse_params gives it, for the shape
 *   ;token[=(token / _BARE_IPV6 / quoted-string)]  ... without LWS,
 * no duplicate names.  1 if t[i:n] is that (filling *ps), else 0. */
static int
scan_header_params(const unsigned char *t, Py_ssize_t i, Py_ssize_t n, params *ps)
{
    ps->n = 0;
    while (i < n) {
        param_span *s;
        if (t[i] != ';' || ps->n == MAX_PARAMS)
            return 0;
        s = &ps->p[ps->n++];
        s->na = ++i;
        i = run(t, i, n, K_TOKEN);
        if (i == s->na)
            return 0;
        s->nb = i;
        s->va = -1;
        if (i < n && t[i] == '=') {
            Py_ssize_t r;
            s->va = ++i;
            if (i < n && t[i] == '"') {
                r = quoted_end(t, i, n);
                if (r < 0)
                    return 0;
            }
            else {
                r = i;
                while (r < n && t[r] != ';')
                    r++;
                if (!token_or_ipv6(t + i, r - i))
                    return 0;
            }
            s->vb = i = r;
        }
    }
    return !has_duplicate(t, ps);
}

/* ------------------------------------------------------------ the object */

enum { T_VIA, T_URI, T_NAME_ADDR, T_CONTACT, T_CSEQ, T_COUNT };
#define MAX_FIELDS 9

/* The dataclasses' fields in order (their __init__'s positional arguments). */
static const char *const type_fields[T_COUNT][MAX_FIELDS + 1] = {
    {"transport", "host", "port", "params", "text", NULL},
    {"scheme", "user", "password", "host", "port", "params", "headers", "opaque", "text", NULL},
    {"uri", "display_name", "params", "bracketed", "text", NULL},
    {"address", "star", NULL},
    {"number", "method", NULL},
};
static const char *const type_args[T_COUNT] = {"via", "uri", "name_addr", "contact", "cseq"};

typedef struct {
    PyObject_HEAD
    PyObject *types[T_COUNT];
    /* A function per type that makes one from the same arguments, or NULL: a
     * compiled (mypyc) class cannot have its slots written, and a compiled
     * function reaches its native constructor for a fraction of the type call. */
    PyObject *factory[T_COUNT];
    int nfields[T_COUNT];
    /* Slot offsets per type, or off[t][0] == 0 to call the type instead. */
    Py_ssize_t off[T_COUNT][MAX_FIELDS];
    PyObject *sip, *sips; /* the scheme values */
    int ready;
} ValuesObject;

static PyObject *
ascii_str(const unsigned char *p, Py_ssize_t n)
{
    PyObject *s = PyUnicode_New(n, 127);
    if (s != NULL && n > 0)
        memcpy(PyUnicode_1BYTE_DATA(s), p, (size_t)n);
    return s;
}

/* A new object of type t from its field values (new references, consumed;
 * NULL in vals means an error happened while making them). */
static PyObject *
build(ValuesObject *self, int t, PyObject **vals)
{
    int n = self->nfields[t];
    PyObject *obj = NULL;
    for (int i = 0; i < n; i++)
        if (vals[i] == NULL)
            goto done;
    if (self->off[t][0] == 0) {
        PyObject *make = self->factory[t] != NULL ? self->factory[t] : self->types[t];
        obj = PyObject_Vectorcall(make, vals, (size_t)n, NULL);
        if (obj != NULL && !Py_IS_TYPE(obj, (PyTypeObject *)self->types[t])) {
            PyErr_Format(PyExc_TypeError, "the %s factory made a %.100s", type_args[t],
                         Py_TYPE(obj)->tp_name);
            Py_CLEAR(obj);
        }
    } else {
        /* A slotted dataclass's __init__ only stores its arguments: write the slots. */
        PyTypeObject *tp = (PyTypeObject *)self->types[t];
        obj = tp->tp_alloc(tp, 0);
        if (obj != NULL)
            for (int i = 0; i < n; i++)
                *(PyObject **)((char *)obj + self->off[t][i]) = Py_NewRef(vals[i]);
    }
    /* A value holds strings, numbers, None, tuples of those and other values: no
     * reference cycle can pass through it, so the cyclic GC need not visit it (a
     * proxy keeps a call's parsed values for the 32 s of its transactions). */
    if (obj != NULL)
        PyObject_GC_UnTrack(obj);
done:
    for (int i = 0; i < n; i++)
        Py_XDECREF(vals[i]);
    return obj;
}

/* tuple((name, value-or-None), ...) */
static PyObject *
params_tuple(const unsigned char *t, const params *ps)
{
    PyObject *tuple = PyTuple_New(ps->n);
    if (tuple == NULL)
        return NULL;
    for (int i = 0; i < ps->n; i++) {
        const param_span *s = &ps->p[i];
        PyObject *name = ascii_str(t + s->na, s->nb - s->na), *value, *pair;
        if (name == NULL)
            goto fail;
        value = s->va < 0 ? Py_NewRef(Py_None) : ascii_str(t + s->va, s->vb - s->va);
        if (value == NULL) {
            Py_DECREF(name);
            goto fail;
        }
        pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(name);
            Py_DECREF(value);
            goto fail;
        }
        PyTuple_SET_ITEM(pair, 0, name);
        PyTuple_SET_ITEM(pair, 1, value);
        PyObject_GC_UnTrack(pair); /* strings only: what the GC would untrack on its first pass */
        PyTuple_SET_ITEM(tuple, i, pair);
    }
    PyObject_GC_UnTrack(tuple);
    return tuple;
fail:
    Py_DECREF(tuple);
    return NULL;
}

static PyObject *
port_obj(long port)
{
    return port < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(port);
}

/* URI(scheme.lower(), user, password, host, port, params, (), None, text) */
static PyObject *
build_uri(ValuesObject *self, const unsigned char *p, const uri_spans *u, PyObject *text)
{
    PyObject *vals[9];
    vals[0] = Py_NewRef(u->sips ? self->sips : self->sip);
    vals[1] = u->ua < 0 ? Py_NewRef(Py_None) : ascii_str(p + u->ua, u->ub - u->ua);
    vals[2] = u->pa < 0 ? Py_NewRef(Py_None) : ascii_str(p + u->pa, u->pb - u->pa);
    vals[3] = ascii_str(p + u->ha, u->hb - u->ha);
    vals[4] = port_obj(u->port);
    vals[5] = params_tuple(p, &u->ps);
    vals[6] = PyTuple_New(0);
    vals[7] = Py_NewRef(Py_None);
    vals[8] = text;
    return build(self, T_URI, vals);
}

/* The ASCII bytes of a str argument, or NULL with *skip set (not ASCII) or an
 * exception (not a str). */
static const unsigned char *
ascii_arg(ValuesObject *self, PyObject *text, Py_ssize_t *n, int *skip)
{
    *skip = 0;
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "SipValueParser is not initialised");
        return NULL;
    }
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "expected str, got %.100s", Py_TYPE(text)->tp_name);
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(text)) {
        *skip = 1;
        return NULL;
    }
    *n = PyUnicode_GET_LENGTH(text);
    return PyUnicode_1BYTE_DATA(text);
}

#define ARG_OR_RETURN(p, self, text, n)                                                        \
    do {                                                                                       \
        int skip_;                                                                             \
        p = ascii_arg(self, text, &n, &skip_);                                                 \
        if (p == NULL)                                                                         \
            return skip_ ? Py_NewRef(Py_None) : NULL;                                          \
    } while (0)

/* ------------------------------------------------------------ Via */

PyDoc_STRVAR(via_doc, "via(text, /)\n\n"
                      "Via.parse(text) for the common shape, or None (ask Via.parse).");

/* Via.parse's fast branch:
 *   SIP/2\.0/(TOKEN) (HOSTNAME)(?::([0-9]{1,5}))?
 *   ((?:;TOKEN(?:=(?:TOKEN|[0-9A-Fa-f]*:[0-9A-Fa-f:.]+))?)*)
 * then the duplicate check, check_ipv4_like, _port and Via._check_params. */
static PyObject *
Values_via(ValuesObject *self, PyObject *text)
{
    const unsigned char *p;
    Py_ssize_t n, i, r, ta, tb, ha, hb;
    long port = -1;
    params ps;
    PyObject *vals[5];

    ARG_OR_RETURN(p, self, text, n);
    if (n < 9 || memcmp(p, "SIP/2.0/", 8) != 0)
        Py_RETURN_NONE;
    ta = 8;
    tb = run(p, ta, n, K_TOKEN);
    if (tb == ta || tb >= n || p[tb] != ' ')
        Py_RETURN_NONE;
    ha = tb + 1;
    hb = run(p, ha, n, K_HOST);
    if (hb == ha || !host_ok(p + ha, hb - ha))
        Py_RETURN_NONE;
    i = hb;
    if (i < n && p[i] == ':') {
        r = ++i;
        port = 0;
        while (r < n && r - i < 6 && IS(p[r], K_DIGIT))
            port = port * 10 + (p[r++] - '0');
        if (r == i || r - i > 5 || port > 65535)
            Py_RETURN_NONE;
        i = r;
    }
    ps.n = 0;
    while (i < n) {
        param_span *s;
        if (p[i] != ';' || ps.n == MAX_PARAMS)
            Py_RETURN_NONE;
        s = &ps.p[ps.n++];
        s->na = ++i;
        i = run(p, i, n, K_TOKEN);
        if (i == s->na)
            Py_RETURN_NONE;
        s->nb = i;
        s->va = -1;
        if (i < n && p[i] == '=') {
            s->va = ++i;
            while (i < n && p[i] != ';')
                i++;
            if (!token_or_ipv6(p + s->va, i - s->va))
                Py_RETURN_NONE;
            s->vb = i;
        }
    }
    if (has_duplicate(p, &ps))
        Py_RETURN_NONE;
    /* Via._check_params */
    for (int k = 0; k < ps.n; k++) {
        const param_span *s = &ps.p[k];
        const unsigned char *name = p + s->na, *v = p + s->va;
        Py_ssize_t nn = s->nb - s->na, vn = s->vb - s->va;
        if (eq_ci(name, nn, "branch") || eq_ci(name, nn, "maddr")) {
            if (s->va < 0) /* a token or an IPv6 address never starts with '"' */
                Py_RETURN_NONE;
        }
        else if (eq_ci(name, nn, "received")) {
            /* is_ip_literal: an IPv6 address is left to the ipaddress module */
            if (s->va < 0 || !ipv4_ok(v, vn))
                Py_RETURN_NONE;
        }
        else if (eq_ci(name, nn, "rport")) {
            if (s->va >= 0 && !digits_ok(v, vn, 65535, NULL))
                Py_RETURN_NONE;
        }
        else if (eq_ci(name, nn, "ttl")) {
            if (s->va < 0 || !digits_ok(v, vn, 255, NULL))
                Py_RETURN_NONE;
        }
    }
    vals[0] = ascii_str(p + ta, tb - ta); /* transport.upper() */
    if (vals[0] != NULL) {
        Py_UCS1 *c = PyUnicode_1BYTE_DATA(vals[0]);
        for (Py_ssize_t k = 0; k < tb - ta; k++)
            if (c[k] >= 'a' && c[k] <= 'z')
                c[k] -= 'a' - 'A';
    }
    vals[1] = ascii_str(p + ha, hb - ha);
    vals[2] = port_obj(port);
    vals[3] = params_tuple(p, &ps);
    vals[4] = Py_NewRef(text);
    return build(self, T_VIA, vals);
}

/* ------------------------------------------------------------ URI */

PyDoc_STRVAR(uri_doc, "uri(text, /)\n\n"
                      "URI.parse(text) for a plain sip:/sips: URI, or None (ask URI.parse).");

static PyObject *
Values_uri(ValuesObject *self, PyObject *text)
{
    const unsigned char *p;
    Py_ssize_t n;
    uri_spans u;
    ARG_OR_RETURN(p, self, text, n);
    if (!scan_uri(p, 0, n, &u))
        Py_RETURN_NONE;
    return build_uri(self, p, &u, Py_NewRef(text));
}

/* ------------------------------------------------------------ NameAddr */

/* unquote(): the quoted-string p[a:b] without its DQUOTEs and quoted-pairs. */
static PyObject *
unquoted(const unsigned char *p, Py_ssize_t a, Py_ssize_t b)
{
    Py_ssize_t n = 0;
    PyObject *s;
    Py_UCS1 *out;
    a++, b--;
    for (Py_ssize_t i = a; i < b; i++, n++)
        i += p[i] == '\\';
    s = PyUnicode_New(n, 127);
    if (s == NULL)
        return NULL;
    out = PyUnicode_1BYTE_DATA(s);
    for (Py_ssize_t i = a; i < b; i++) {
        i += p[i] == '\\';
        *out++ = p[i];
    }
    return s;
}

/* NameAddr.parse for the shapes above: 1 with *out set (and *ps, its header
 * params), 0 (not handled), -1 (error).
 *
 *   _NAME_ADDR_RE = SWS(?:(?P<quoted>QUOTED_STRING)|(?P<tokens>TOKEN(?:[ \t]+TOKEN)*))?SWS<
 *
 * matched at the start decides between name-addr and addr-spec.  Each of its
 * parts can only match one way (a quoted-string ends at its first unescaped
 * DQUOTE, the tokens at the last token before SWS "<"), so it is walked once. */
static int
parse_name_addr(ValuesObject *self, PyObject *text, const unsigned char *t, Py_ssize_t n,
                PyObject **out, params *ps)
{
    Py_ssize_t i = 0, da = -1, db = -1, gt, semi;
    int quoted = 0;
    uri_spans u;
    PyObject *vals[5];

    while (i < n && is_wsp(t[i]))
        i++;
    if (i < n && t[i] == '"') {
        da = i;
        db = i = quoted_end(t, i, n);
        if (i < 0)
            return 0; /* Python: "unterminated quoted display name" or another error */
        quoted = 1;
        while (i < n && is_wsp(t[i]))
            i++;
        if (i >= n || t[i] != '<')
            return 0;
    }
    else if (i < n && IS(t[i], K_TOKEN)) {
        Py_ssize_t j;
        da = i;
        for (;;) {
            db = i = run(t, i, n, K_TOKEN);
            for (j = i; j < n && is_wsp(t[j]); j++)
                ;
            i = j;
            if (j == db || j >= n || !IS(t[j], K_TOKEN))
                break;
        }
        if (i >= n || t[i] != '<')
            da = -1; /* no match: the addr-spec form */
    }
    if (i < n && t[i] == '<' && (da >= 0 || !quoted)) {
        /* name-addr: the URI runs to the first ">", no LWS inside */
        const unsigned char *g = memchr(t + i + 1, '>', (size_t)(n - i - 1));
        if (g == NULL)
            return 0;
        gt = g - t;
        if (!scan_uri(t, i + 1, gt, &u) || !scan_header_params(t, gt + 1, n, ps))
            return 0;
        vals[0] = build_uri(self, t, &u, ascii_str(t + i + 1, gt - i - 1));
        if (da < 0)
            vals[1] = Py_NewRef(Py_None);
        else
            vals[1] = quoted ? unquoted(t, da, db) : ascii_str(t + da, db - da);
        vals[2] = params_tuple(t, ps);
        vals[3] = Py_NewRef(Py_True);
    }
    else {
        /* addr-spec: stripped = text.strip(); the URI ends at the first ";" and
         * may not hold ' \t,?"<>' (the URI's own chars exclude all but ","). */
        const unsigned char *sc;
        if (n == 0 || is_py_space(t[0]) || is_py_space(t[n - 1]) || t[0] == '"')
            return 0;
        sc = memchr(t, ';', (size_t)n);
        semi = sc != NULL ? sc - t : n;
        if (memchr(t, ',', (size_t)semi) != NULL || !scan_uri(t, 0, semi, &u)
            || !scan_header_params(t, semi, n, ps))
            return 0;
        vals[0] = build_uri(self, t, &u, ascii_str(t, semi));
        vals[1] = Py_NewRef(Py_None);
        vals[2] = params_tuple(t, ps);
        vals[3] = Py_NewRef(Py_False);
    }
    vals[4] = Py_NewRef(text);
    *out = build(self, T_NAME_ADDR, vals);
    return *out != NULL ? 1 : -1;
}

PyDoc_STRVAR(name_addr_doc,
             "name_addr(text, /)\n\n"
             "NameAddr.parse(text) for the common shapes, or None (ask NameAddr.parse).");

static PyObject *
Values_name_addr(ValuesObject *self, PyObject *text)
{
    const unsigned char *p;
    Py_ssize_t n;
    PyObject *out = NULL;
    params ps;
    int rc;
    ARG_OR_RETURN(p, self, text, n);
    rc = parse_name_addr(self, text, p, n, &out, &ps);
    if (rc < 0)
        return NULL;
    return rc == 0 ? Py_NewRef(Py_None) : out;
}

/* ------------------------------------------------------------ Contact */

PyDoc_STRVAR(contact_doc,
             "contact(text, /)\n\n"
             "Contact.parse(text) for the common shapes, or None (ask Contact.parse).");

static PyObject *
Values_contact(ValuesObject *self, PyObject *text)
{
    const unsigned char *p;
    Py_ssize_t n, a = 0, b;
    PyObject *addr = NULL, *vals[2];
    params ps;
    int rc;

    ARG_OR_RETURN(p, self, text, n);
    b = n;
    while (a < b && is_py_space(p[a]))
        a++;
    while (b > a && is_py_space(p[b - 1]))
        b--;
    if (b - a == 1 && p[a] == '*') { /* text.strip() == "*" */
        vals[0] = Py_NewRef(Py_None);
        vals[1] = Py_NewRef(Py_True);
        return build(self, T_CONTACT, vals);
    }
    rc = parse_name_addr(self, text, p, n, &addr, &ps);
    if (rc <= 0)
        return rc < 0 ? NULL : Py_NewRef(Py_None);
    /* Contact.parse: expires must be delta-seconds, q a qvalue. */
    for (int k = 0; k < ps.n; k++) {
        const param_span *s = &ps.p[k];
        const unsigned char *name = p + s->na, *v = p + s->va;
        Py_ssize_t nn = s->nb - s->na, vn = s->vb - s->va;
        int ok = 1;
        if (eq_ci(name, nn, "expires"))
            ok = s->va >= 0 && digits_ok(v, vn, 4294967295LL, NULL);
        else if (eq_ci(name, nn, "q"))
            ok = s->va >= 0 && qvalue_ok(v, vn);
        if (!ok) {
            Py_DECREF(addr);
            Py_RETURN_NONE;
        }
    }
    vals[0] = addr;
    vals[1] = Py_NewRef(Py_False);
    return build(self, T_CONTACT, vals);
}

/* ------------------------------------------------------------ CSeq */

PyDoc_STRVAR(cseq_doc, "cseq(text, /)\n\nCSeq.parse(text), or None (ask CSeq.parse).");

/* _CSEQ_RE = SWS(?P<number>[0-9]+)[ \t]+(?P<method>TOKEN)SWS  (fullmatch), then
 * parse_int(number, "CSeq", MAX_CSEQ). */
static PyObject *
Values_cseq(ValuesObject *self, PyObject *text)
{
    const unsigned char *p;
    Py_ssize_t n, i = 0, na, nb, ma, mb;
    int64_t number;
    PyObject *vals[2];

    ARG_OR_RETURN(p, self, text, n);
    while (i < n && is_wsp(p[i]))
        i++;
    na = i;
    nb = i = run(p, i, n, K_DIGIT);
    if (nb == na || i >= n || !is_wsp(p[i]))
        Py_RETURN_NONE;
    while (i < n && is_wsp(p[i]))
        i++;
    ma = i;
    mb = i = run(p, i, n, K_TOKEN);
    while (i < n && is_wsp(p[i]))
        i++;
    if (mb == ma || i != n || !digits_ok(p + na, nb - na, 2147483647LL, &number))
        Py_RETURN_NONE;
    vals[0] = PyLong_FromLongLong(number);
    vals[1] = ascii_str(p + ma, mb - ma);
    return build(self, T_CSEQ, vals);
}

/* ------------------------------------------------------------ the type */

/* The offset of a plain __slots__ member, or 0. */
static Py_ssize_t
slot_offset(PyObject *type, const char *attr)
{
    PyObject *descr = PyObject_GetAttrString(type, attr);
    Py_ssize_t off = 0;
    if (descr == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type == T_OBJECT_EX && !(m->flags & READONLY))
            off = m->offset;
    }
    Py_DECREF(descr);
    return off;
}

PyDoc_STRVAR(Values_doc,
             "SipValueParser(via, uri, name_addr, contact, cseq, direct=True, factories=None)\n\n"
             "C fast paths of Via.parse, URI.parse, NameAddr.parse, Contact.parse and\n"
             "CSeq.parse (the classes are passed in); each method returns what the\n"
             "Python parser returns, or None to ask it.  direct=False calls the classes\n"
             "instead of writing their slots (a test's comparison); factories, a tuple of\n"
             "five callables (or None each) taking the classes' arguments, are called\n"
             "instead of the classes whose slots are not written.");

static int
Values_init(ValuesObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"via",    "uri",    "name_addr", "contact", "cseq",
                             "direct", "factories", NULL};
    PyObject *types[T_COUNT], *factories = Py_None;
    int direct = 1;

    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "SipValueParser is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!O!|pO", kwlist, &PyType_Type,
                                     &types[0], &PyType_Type, &types[1], &PyType_Type, &types[2],
                                     &PyType_Type, &types[3], &PyType_Type, &types[4], &direct,
                                     &factories))
        return -1;
    if (factories != Py_None
        && (!PyTuple_Check(factories) || PyTuple_GET_SIZE(factories) != T_COUNT)) {
        PyErr_SetString(PyExc_TypeError, "factories must be None or a tuple of five");
        return -1;
    }
    for (int t = 0; t < T_COUNT; t++) {
        PyObject *f = factories == Py_None ? Py_None : PyTuple_GET_ITEM(factories, t);
        if (f != Py_None && !PyCallable_Check(f)) {
            PyErr_Format(PyExc_TypeError, "the %s factory is not callable", type_args[t]);
            return -1;
        }
        Py_XSETREF(self->factory[t], f == Py_None ? NULL : Py_NewRef(f));
    }
    for (int t = 0; t < T_COUNT; t++) {
        int n = 0, all = 1;
        while (type_fields[t][n] != NULL)
            n++;
        self->nfields[t] = n;
        Py_XSETREF(self->types[t], Py_NewRef(types[t]));
        memset(self->off[t], 0, sizeof(self->off[t]));
        if (!direct || ((PyTypeObject *)types[t])->tp_dictoffset != 0)
            continue;
        for (int i = 0; i < n; i++) {
            self->off[t][i] = slot_offset(types[t], type_fields[t][i]);
            all &= self->off[t][i] != 0;
        }
        if (!all)
            memset(self->off[t], 0, sizeof(self->off[t]));
    }
    Py_XSETREF(self->sip, PyUnicode_InternFromString("sip"));
    Py_XSETREF(self->sips, PyUnicode_InternFromString("sips"));
    if (self->sip == NULL || self->sips == NULL)
        return -1;
    self->ready = 1;
    return 0;
}

static int
Values_traverse(ValuesObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    for (int t = 0; t < T_COUNT; t++) {
        Py_VISIT(self->types[t]);
        Py_VISIT(self->factory[t]);
    }
    return 0;
}

static int
Values_clear(ValuesObject *self)
{
    self->ready = 0;
    for (int t = 0; t < T_COUNT; t++) {
        Py_CLEAR(self->types[t]);
        Py_CLEAR(self->factory[t]);
    }
    return 0;
}

static void
Values_dealloc(ValuesObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Values_clear(self);
    Py_CLEAR(self->sip);
    Py_CLEAR(self->sips);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
Values_direct(ValuesObject *self, void *Py_UNUSED(closure))
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    for (int t = 0; t < T_COUNT; t++) {
        if (PyDict_SetItemString(d, type_args[t], self->off[t][0] != 0 ? Py_True : Py_False)
            < 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

static PyMethodDef Values_methods[] = {
    {"via", (PyCFunction)Values_via, METH_O, via_doc},
    {"uri", (PyCFunction)Values_uri, METH_O, uri_doc},
    {"name_addr", (PyCFunction)Values_name_addr, METH_O, name_addr_doc},
    {"contact", (PyCFunction)Values_contact, METH_O, contact_doc},
    {"cseq", (PyCFunction)Values_cseq, METH_O, cseq_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Values_getset[] = {
    {"direct", (getter)Values_direct, NULL,
     "{type: True if its objects are built by writing their slots}", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Values_slots[] = {
    {Py_tp_doc, (void *)Values_doc},
    {Py_tp_init, Values_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, Values_dealloc},
    {Py_tp_traverse, Values_traverse},
    {Py_tp_clear, Values_clear},
    {Py_tp_methods, Values_methods},
    {Py_tp_getset, Values_getset},
    {0, NULL},
};

static PyType_Spec Values_spec = {
    .name = "media._srtp.SipValueParser",
    .basicsize = sizeof(ValuesObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Values_slots,
};

int
se_sipvalues_register(PyObject *module)
{
    PyObject *type;
    int rc;
    init_table();
    type = PyType_FromModuleAndSpec(module, &Values_spec, NULL);
    if (type == NULL)
        return -1;
    rc = PyModule_AddObjectRef(module, "SipValueParser", type);
    Py_DECREF(type);
    return rc;
}
