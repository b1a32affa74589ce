/*
 * media/sipcheck.c: media._srtp.SipHeaderChecker, the C twin of
 * sip.message._check_headers (RFC 3261 §7.3, §20): after the tokenizer, refuse a
 * repeated single header and a missing required one, give every header that
 * sip.message._TYPED knows its typed value in headers._typed (list headers split
 * at commas first), and hold the CSeq method to the request's.
 *
 * Same results and same SipError (reason and status) in the same order as the
 * Python function, for every input: tests/test_sip_check.py compares the two on
 * the corpus and on random mutations, fuzz/fuzz_sipcheck.py under ASan.
 *
 * What C does itself: _group's grouping of the scanner's flat (key, value, ...)
 * list by key, through a small open-addressing table; then per key (the Python
 * lambda it mirrors is named in the table below): the comma split of
 * sip._abnf.split_list, _parse_list's empty element check, _single, parse_int,
 * parse_call_id, parse_token_list, the Route <> and Contact * checks, and the
 * memo lookups.  A memo is read and filled here through
 * its very _cache dict, with _Memo.__call__'s policy (hit; else its _fast, else
 * its _parse; clear when full; insert), so the two paths share their hits.
 * Any key whose _TYPED entry is not the one this object was made with (Date,
 * Retry-After, or a parser swapped since) calls the Python parser in _TYPED.
 *
 * Why C: after the C tokenizer and value fast paths, this loop of small Python
 * calls (lambdas, _single, _parse_list, memo __call__, split_list, parse_int)
 * was the largest Python cost left in parsing a message.
 *
 * Rules of this file: no state outside the SipHeaderChecker object; the values
 * are only read; what C builds that can hold no cycle (tuples of str) is
 * untracked by the cyclic GC, like the objects of sipscan.c and sipvalues.c.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdarg.h>
#include <string.h>

#include "sipcheck.h"
#include "sipscan.h" /* se_same_key */

/* ------------------------------------------------------------ characters */

enum {
    K_TOKEN = 1, /* token (§25.1, sip._abnf.TOKEN_CHARS) */
    K_WORD = 2,  /* word: token and ( ) < > : \ " / [ ] ? { } (sip.headers._CALL_ID_RE) */
};

static unsigned char ctab[128];

static void
init_table(void)
{
    const char *token = "-.!%*_+`'~";
    const char *word = "()<>:\\\"/[]?{}";
    for (int c = 0; c < 128; c++) {
        int alnum = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        ctab[c] = alnum ? (K_TOKEN | K_WORD) : 0;
    }
    for (const char *p = token; *p; p++)
        ctab[(unsigned char)*p] |= K_TOKEN | K_WORD;
    for (const char *p = word; *p; p++)
        ctab[(unsigned char)*p] |= K_WORD;
}

static int
is_kind(Py_UCS4 c, int kind)
{
    return c < 128 && (ctab[c] & kind) != 0;
}

/* ------------------------------------------------------------ the tables */

/* The memos of sip.message, by the keyword that passes them in. */
enum { M_VIA, M_NAME_ADDR, M_CONTACT, M_CSEQ, M_CONTENT_TYPE, M_COUNT };
static const char *const memo_args[M_COUNT] = {"via", "name_addr", "contact", "cseq",
                                               "content_type"};

/* How a header's typed value is made (the _TYPED lambda it mirrors). */
enum {
    P_LIST,     /* _parse_list(v, memo, what) */
    P_SINGLE,   /* memo(_single(v, what)) */
    P_CALL_ID,  /* parse_call_id(_single(v, "Call-ID")) */
    P_INT,      /* parse_int(_single(v, what), what, maximum) */
    P_TOKENS,   /* parse_token_list(v, what) */
    P_ROUTE,    /* _route_list(v) */
    P_CONTACTS, /* _contacts(v) */
};

static const struct {
    const char *key;
    const char *what;
    int how;
    int memo;
    unsigned long long maximum;
} headers[] = {
    {"via", "Via", P_LIST, M_VIA, 0},
    {"from", "From", P_SINGLE, M_NAME_ADDR, 0},
    {"to", "To", P_SINGLE, M_NAME_ADDR, 0},
    {"call-id", "Call-ID", P_CALL_ID, 0, 0},
    {"cseq", "CSeq", P_SINGLE, M_CSEQ, 0},
    {"max-forwards", "Max-Forwards", P_INT, 0, 255},
    {"content-length", "Content-Length", P_INT, 0, 2147483647ULL}, /* 2**31 - 1 */
    {"content-type", "Content-Type", P_SINGLE, M_CONTENT_TYPE, 0},
    {"contact", "Contact", P_CONTACTS, M_CONTACT, 0},
    {"route", "Route", P_ROUTE, M_NAME_ADDR, 0},
    /* _route_list says "Route" for both. */
    {"record-route", "Route", P_ROUTE, M_NAME_ADDR, 0},
    {"expires", "Expires", P_INT, 0, 4294967295ULL}, /* sip.headers.MAX_DELTA_SECONDS */
    {"require", "Require", P_TOKENS, 0, 0},
    {"proxy-require", "Proxy-Require", P_TOKENS, 0, 0},
    {"supported", "Supported", P_TOKENS, 0, 0},
    {"unsupported", "Unsupported", P_TOKENS, 0, 0},
};
#define H_COUNT ((int)(sizeof(headers) / sizeof(headers[0])))

typedef struct {
    PyObject_HEAD
    int ready;
    PyObject *sip_error;    /* sip.errors.SipError */
    PyObject *request;      /* sip.message.Request */
    PyObject *parsers;      /* sip.message._TYPED, read on every check */
    PyObject *list_headers; /* sip.message.LIST_HEADERS */
    PyObject *required;     /* sip.message.REQUIRED_HEADERS (a tuple) */
    PyObject *memo[M_COUNT];
    PyObject *cache[M_COUNT]; /* memo[i]._cache: cleared, never rebound */
    PyObject *parser[H_COUNT]; /* _TYPED[key] when made: C stands in for it alone */
    PyObject *codes;           /* {key: index in headers} */
    PyObject *s_headers, *s_typed, *s_method, *s_bracketed, *s_star, *s_fast, *s_parse,
        *s_limit, *s_cseq;
} CheckObject;

/* ------------------------------------------------------------ errors */

/* Raise SipError(reason) (status 400, as every check of _check_headers); NULL. */
static PyObject *
sip_error(CheckObject *self, const char *format, ...)
{
    va_list va;
    PyObject *reason, *exc;
    va_start(va, format);
    reason = PyUnicode_FromFormatV(format, va);
    va_end(va);
    if (reason == NULL)
        return NULL;
    exc = PyObject_CallOneArg(self->sip_error, reason);
    Py_DECREF(reason);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* ------------------------------------------------------------ text */

#define AT(i) PyUnicode_READ(kind, data, (i))

/* text[a:b].strip(): str.strip() with no argument strips what Py_UNICODE_ISSPACE says. */
static PyObject *
strip(PyObject *text, Py_ssize_t a, Py_ssize_t b)
{
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    while (a < b && Py_UNICODE_ISSPACE(AT(a)))
        a++;
    while (b > a && Py_UNICODE_ISSPACE(AT(b - 1)))
        b--;
    return PyUnicode_Substring(text, a, b);
}

static int
append_strip(PyObject *out, PyObject *text, Py_ssize_t a, Py_ssize_t b)
{
    PyObject *part = strip(text, a, b);
    int rc;
    if (part == NULL)
        return -1;
    rc = PyList_Append(out, part);
    Py_DECREF(part);
    return rc;
}

/* Where sip._abnf._LIST_ELEMENT_RE.match(value, p) ends:
 *   (?:"(?:[^"\\]|\\.)*"|<[^>]*>|[^,"<])*   (re.S)
 * The repetition never needs to backtrack (nothing follows it), and inside each
 * alternative the first closing quote or bracket ends it; an unterminated one
 * ends the whole match where it opened. */
static Py_ssize_t
element_end(int kind, const void *data, Py_ssize_t p, Py_ssize_t n)
{
    while (p < n) {
        Py_UCS4 c = AT(p);
        if (c == '"') {
            Py_ssize_t q = p + 1;
            for (;;) {
                Py_UCS4 e;
                if (q >= n)
                    return p;
                e = AT(q);
                if (e == '"')
                    break;
                if (e == '\\') {
                    if (q + 1 >= n)
                        return p;
                    q += 2;
                } else {
                    q++;
                }
            }
            p = q + 1;
        } else if (c == '<') {
            Py_ssize_t q = p + 1;
            while (q < n && AT(q) != '>')
                q++;
            if (q >= n)
                return p;
            p = q + 1;
        } else if (c == ',') {
            return p;
        } else {
            p++;
        }
    }
    return p;
}

/* out.extend(split_list(value)), step by step as sip._abnf.split_list. */
static int
split_into(PyObject *out, PyObject *value)
{
    int kind, comma = 0, quote_or_angle = 0;
    const void *data;
    Py_ssize_t n, i, pos, end, had;

    if (!PyUnicode_Check(value)) {
        PyErr_Format(PyExc_TypeError, "header values must be str, not %.100s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    kind = PyUnicode_KIND(value);
    data = PyUnicode_DATA(value);
    n = PyUnicode_GET_LENGTH(value);
    if (kind == PyUnicode_1BYTE_KIND) {
        /* Nearly every value: memchr, and the quote test only where a comma is. */
        comma = memchr(data, ',', (size_t)n) != NULL;
        quote_or_angle = comma && (memchr(data, '"', (size_t)n) != NULL
                                   || memchr(data, '<', (size_t)n) != NULL);
    }
    else {
        for (i = 0; i < n; i++) {
            Py_UCS4 c = AT(i);
            comma |= c == ',';
            quote_or_angle |= c == '"' || c == '<';
        }
    }
    /* if "," not in value: return [value.strip()] */
    if (!comma)
        return append_strip(out, value, 0, n);
    /* if '"' not in value and "<" not in value: split at every comma */
    if (!quote_or_angle) {
        pos = 0;
        for (i = 0; i < n; i++) {
            if (AT(i) == ',') {
                if (append_strip(out, value, pos, i) < 0)
                    return -1;
                pos = i + 1;
            }
        }
        return append_strip(out, value, pos, n);
    }
    /* Elements by the regex, while each one ends at a comma or the end. */
    had = PyList_GET_SIZE(out);
    pos = 0;
    for (;;) {
        end = element_end(kind, data, pos, n);
        if (end == n)
            return append_strip(out, value, pos, n);
        if (AT(end) != ',')
            break; /* an unterminated quote or bracket: _split_list_slow decides */
        if (append_strip(out, value, pos, end) < 0)
            return -1;
        pos = end + 1;
    }
    if (PyList_SetSlice(out, had, PyList_GET_SIZE(out), NULL) < 0)
        return -1;
    /* _split_list_slow: a quote or bracket state machine over the whole value. */
    {
        int in_quote = 0, in_angle = 0;
        Py_ssize_t start = 0;
        for (i = 0; i < n; i++) {
            Py_UCS4 c = AT(i);
            if (in_quote) {
                if (c == '\\')
                    i++;
                else if (c == '"')
                    in_quote = 0;
            } else if (c == '"') {
                in_quote = 1;
            } else if (c == '<') {
                in_angle = 1;
            } else if (c == '>') {
                in_angle = 0;
            } else if (c == ',' && !in_angle) {
                if (append_strip(out, value, start, i) < 0)
                    return -1;
                start = i + 1;
            }
        }
        return append_strip(out, value, start, n);
    }
}

/* ------------------------------------------------------------ parsers */

/* _Memo.__call__(text) on the memo's own dict. */
static PyObject *
memo_get(CheckObject *self, int m, PyObject *text)
{
    PyObject *cache = self->cache[m], *memo = self->memo[m];
    PyObject *value, *fast, *parse, *limit_obj;
    Py_ssize_t limit;

    value = PyDict_GetItemWithError(cache, text);
    if (value != NULL)
        return Py_NewRef(value);
    if (PyErr_Occurred())
        return NULL;
    /* value = fast(text) if fast is not None else None */
    fast = PyObject_GetAttr(memo, self->s_fast);
    if (fast == NULL)
        return NULL;
    if (fast != Py_None) {
        value = PyObject_CallOneArg(fast, text);
        if (value == NULL) {
            Py_DECREF(fast);
            return NULL;
        }
        if (value == Py_None)
            Py_CLEAR(value);
    }
    Py_DECREF(fast);
    /* if value is None: value = self._parse(text) */
    if (value == NULL) {
        parse = PyObject_GetAttr(memo, self->s_parse);
        if (parse == NULL)
            return NULL;
        value = PyObject_CallOneArg(parse, text);
        Py_DECREF(parse);
        if (value == NULL)
            return NULL;
    }
    /* if len(self._cache) >= self._limit: self._cache.clear() */
    limit_obj = PyObject_GetAttr(memo, self->s_limit);
    if (limit_obj == NULL)
        goto error;
    limit = PyLong_AsSsize_t(limit_obj);
    Py_DECREF(limit_obj);
    if (limit == -1 && PyErr_Occurred())
        goto error;
    if (PyDict_GET_SIZE(cache) >= limit)
        PyDict_Clear(cache);
    if (PyDict_SetItem(cache, text, value) < 0)
        goto error;
    return value;
error:
    Py_DECREF(value);
    return NULL;
}

/* sip.headers.parse_int: strip, ASCII digits only, at most 12 of them, bounded. */
static PyObject *
parse_int(CheckObject *self, PyObject *text, const char *what, unsigned long long maximum)
{
    int kind;
    const void *data;
    Py_ssize_t a = 0, b;
    unsigned long long value = 0;

    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "header values must be str");
        return NULL;
    }
    kind = PyUnicode_KIND(text);
    data = PyUnicode_DATA(text);
    b = PyUnicode_GET_LENGTH(text);
    while (a < b && Py_UNICODE_ISSPACE(AT(a)))
        a++;
    while (b > a && Py_UNICODE_ISSPACE(AT(b - 1)))
        b--;
    /* not text.isascii() or not text.isdigit(): the empty text is not digits */
    if (a == b)
        return sip_error(self, "malformed %s", what);
    for (Py_ssize_t i = a; i < b; i++) {
        Py_UCS4 c = AT(i);
        if (c < '0' || c > '9')
            return sip_error(self, "malformed %s", what);
    }
    if (b - a > 12)
        return sip_error(self, "%s out of range", what);
    for (Py_ssize_t i = a; i < b; i++)
        value = value * 10 + (AT(i) - '0');
    if (value > maximum)
        return sip_error(self, "%s out of range", what);
    return PyLong_FromUnsignedLongLong(value);
}

/* sip.headers.parse_call_id: the stripped text if it is word [ "@" word ]. */
static PyObject *
parse_call_id(CheckObject *self, PyObject *text)
{
    PyObject *value = strip(text, 0, PyUnicode_GET_LENGTH(text));
    int kind, at = 0;
    const void *data;
    Py_ssize_t n, run = 0;

    if (value == NULL)
        return NULL;
    kind = PyUnicode_KIND(value);
    data = PyUnicode_DATA(value);
    n = PyUnicode_GET_LENGTH(value);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = AT(i);
        if (c == '@' && !at && run > 0) {
            at = 1;
            run = 0;
        } else if (is_kind(c, K_WORD)) {
            run++;
        } else {
            run = 0;
            break;
        }
    }
    if (run == 0) {
        Py_DECREF(value);
        return sip_error(self, "malformed Call-ID");
    }
    return value;
}

/* sip.headers.parse_token_list over the split values: empty ones skipped. */
static PyObject *
parse_tokens(CheckObject *self, PyObject *parts, const char *what)
{
    Py_ssize_t n = PyList_GET_SIZE(parts), count = 0, j = 0;
    PyObject *out;

    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *part = PyList_GET_ITEM(parts, i);
        int kind = PyUnicode_KIND(part);
        const void *data = PyUnicode_DATA(part);
        Py_ssize_t len = PyUnicode_GET_LENGTH(part);
        if (len == 0)
            continue;
        for (Py_ssize_t k = 0; k < len; k++) {
            if (!is_kind(AT(k), K_TOKEN))
                return sip_error(self, "malformed %s", what);
        }
        count++;
    }
    out = PyTuple_New(count);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *part = PyList_GET_ITEM(parts, i);
        if (PyUnicode_GET_LENGTH(part) != 0)
            PyTuple_SET_ITEM(out, j++, Py_NewRef(part));
    }
    /* Strings only: no cycle can pass through it. */
    if (PyObject_GC_IsTracked(out))
        PyObject_GC_UnTrack(out);
    return out;
}

/* _parse_list(parts, memo, what): a list of the memo's values, no empty element. */
static PyObject *
parse_list(CheckObject *self, PyObject *parts, int m, const char *what)
{
    Py_ssize_t n = PyList_GET_SIZE(parts);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *part = PyList_GET_ITEM(parts, i), *value;
        if (PyUnicode_GET_LENGTH(part) == 0) {
            Py_DECREF(out);
            return sip_error(self, "empty %s element", what);
        }
        value = memo_get(self, m, part);
        if (value == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, value);
    }
    /* Parsed values only (Vias, addresses: untracked, media/sipvalues.c), and what
     * sip.message adds to a parsed list later is a value too: no cycle can pass
     * through the list, which lives as long as its message. */
    PyObject_GC_UnTrack(out);
    return out;
}

/* bool(getattr(obj, name)), or -1. */
static int
flag(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    int rc;
    if (v == NULL)
        return -1;
    rc = PyObject_IsTrue(v);
    Py_DECREF(v);
    return rc;
}

/* ------------------------------------------------------------ groups */

/* The fields of one key, from the flat (key, value, ...) list, in the order
 * _group gives them: a key's group is numbered when the key first appears. */
typedef struct {
    PyObject *key; /* owned */
    Py_hash_t hash;
    Py_ssize_t first; /* its first pair */
    Py_ssize_t count;
} group_t;

/* [value of each pair of group g], a new list. */
static PyObject *
group_list(PyObject *const *vals, const int *group_of, Py_ssize_t n, int g, const group_t *grp)
{
    PyObject *out = PyList_New(grp->count);
    Py_ssize_t j = 0;
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = grp->first; i < n && j < grp->count; i++) {
        if (group_of[i] == g)
            PyList_SET_ITEM(out, j++, Py_NewRef(vals[i]));
    }
    return out;
}

/* [part for value in group g for part in split_list(value)] */
static PyObject *
group_split(PyObject *const *vals, const int *group_of, Py_ssize_t n, int g, const group_t *grp)
{
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = grp->first; i < n; i++) {
        if (group_of[i] == g && split_into(out, vals[i]) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* se_same_key, with the hashes compared first. */
static int
same_key(PyObject *a, Py_hash_t ha, PyObject *b, Py_hash_t hb)
{
    return a == b || (ha == hb && se_same_key(a, b));
}

/* ------------------------------------------------------------ check */

/* The _TYPED lambda of headers[h] on group g. */
static PyObject *
typed_value(CheckObject *self, int h, PyObject *const *vals, const int *group_of, Py_ssize_t n,
            int g, const group_t *grp)
{
    const char *what = headers[h].what;
    PyObject *parts, *out;
    int how = headers[h].how;

    if (how == P_SINGLE || how == P_CALL_ID || how == P_INT) {
        /* _single(v, what): a group has at least one value. */
        if (grp->count != 1)
            return sip_error(self, "%s must appear once", what);
        PyObject *one = vals[grp->first];
        if (how == P_SINGLE)
            return memo_get(self, headers[h].memo, one);
        if (how == P_CALL_ID)
            return parse_call_id(self, one);
        return parse_int(self, one, what, headers[h].maximum);
    }
    parts = group_split(vals, group_of, n, g, grp);
    if (parts == NULL)
        return NULL;
    if (how == P_TOKENS) {
        out = parse_tokens(self, parts, what);
        Py_DECREF(parts);
        return out;
    }
    out = parse_list(self, parts, headers[h].memo, what);
    Py_DECREF(parts);
    if (out == NULL)
        return NULL;
    if (how == P_ROUTE) {
        /* Every element parses first, then each needs its <>. */
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(out); i++) {
            int bracketed = flag(PyList_GET_ITEM(out, i), self->s_bracketed);
            if (bracketed <= 0) {
                Py_DECREF(out);
                return bracketed < 0 ? NULL
                                     : sip_error(self, "Route and Record-Route values need <>");
            }
        }
    } else if (how == P_CONTACTS && PyList_GET_SIZE(out) > 1) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(out); i++) {
            int star = flag(PyList_GET_ITEM(out, i), self->s_star);
            if (star != 0) {
                Py_DECREF(out);
                return star < 0 ? NULL : sip_error(self, "Contact * must stand alone");
            }
        }
    }
    return out;
}

/* One key of _group(pairs): typed[key] = parser(values) unless known already
 * (``prefilled``: typed had entries before this check, which only they can be). */
static int
check_group(CheckObject *self, PyObject *typed, int prefilled, PyObject *const *vals,
            const int *group_of, Py_ssize_t n, int g, const group_t *grp)
{
    PyObject *key = grp->key, *parser, *code, *arg, *value;
    int rc, h = -1;

    parser = PyDict_GetItemWithError(self->parsers, key);
    if (parser == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (prefilled) {
        rc = PyDict_Contains(typed, key);
        if (rc != 0)
            return rc < 0 ? -1 : 0;
    }
    code = PyDict_GetItemWithError(self->codes, key);
    if (code != NULL)
        h = (int)PyLong_AsLong(code);
    else if (PyErr_Occurred())
        return -1;
    if (h >= 0 && self->parser[h] == parser) {
        value = typed_value(self, h, vals, group_of, n, g, grp);
    } else {
        /* Not one of ours (or replaced): the Python parser, on what it is given there. */
        Py_INCREF(parser);
        rc = PySet_Contains(self->list_headers, key);
        arg = rc > 0    ? group_split(vals, group_of, n, g, grp)
              : rc == 0 ? group_list(vals, group_of, n, g, grp)
                        : NULL;
        value = arg != NULL ? PyObject_CallOneArg(parser, arg) : NULL;
        Py_XDECREF(arg);
        Py_DECREF(parser);
    }
    if (value == NULL)
        return -1;
    rc = PyDict_SetItem(typed, key, value);
    Py_DECREF(value);
    return rc;
}

/* The value (vals, new references, *held of them) and group (group_of) of each
 * pair, the groups in order of first appearance (*ngroups, their keys new
 * references); 0 or -1.  Keys are found through an open-addressing table of
 * ``mask + 1`` slots (at least twice the pairs), so a message of many distinct
 * names costs no more per name than one of a few.  Owning what it reads, the
 * check is safe from a Python parser that changes the list. */
static int
make_groups(PyObject *pairs, Py_ssize_t n, PyObject **vals, Py_ssize_t *held, int *group_of,
            group_t *groups, int *ngroups, int *table, Py_ssize_t mask)
{
    memset(table, 0xff, (size_t)(mask + 1) * sizeof(int));
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(pairs, 2 * i), *value = PyList_GET_ITEM(pairs, 2 * i + 1);
        if (!PyUnicode_Check(key) || !PyUnicode_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "header keys and values must be str");
            return -1;
        }
        Py_hash_t hash = PyObject_Hash(key);
        if (hash == -1)
            return -1;
        Py_ssize_t s = (Py_ssize_t)((size_t)hash & (size_t)mask);
        for (;; s = (s + 1) & mask) {
            int g = table[s];
            if (g < 0) {
                g = table[s] = (*ngroups)++;
                groups[g] = (group_t){Py_NewRef(key), hash, i, 0};
            } else if (!same_key(groups[g].key, groups[g].hash, key, hash)) {
                continue;
            }
            vals[(*held)++] = Py_NewRef(value);
            group_of[i] = g;
            groups[g].count++;
            break;
        }
    }
    return 0;
}

#define STACK_PAIRS 64

PyDoc_STRVAR(check_doc, "check(msg, pairs, duplicate, /)\n\n"
                        "sip.message._check_headers(msg, pairs, duplicate): fills\n"
                        "msg.headers._typed or raises the same SipError.");

static PyObject *
Check_check(CheckObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *msg, *pairs, *duplicate, *headers_obj = NULL, *typed = NULL, *result = NULL;
    int stack_group_of[STACK_PAIRS], stack_table[4 * STACK_PAIRS];
    PyObject *stack_vals[STACK_PAIRS], **vals = stack_vals;
    group_t stack_groups[STACK_PAIRS];
    int *group_of = stack_group_of, *table = stack_table;
    group_t *groups = stack_groups;
    Py_ssize_t n = 0, held = 0, mask;
    int rc, ngroups = 0, prefilled;

    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "SipHeaderChecker is not initialised");
        return NULL;
    }
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "check() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    msg = args[0];
    pairs = args[1];
    duplicate = args[2];
    if (!PyList_Check(pairs) || PyList_GET_SIZE(pairs) % 2 != 0) {
        PyErr_SetString(PyExc_TypeError, "pairs must be a list of keys and values");
        return NULL;
    }
    if (duplicate != Py_None)
        return sip_error(self, "%S must appear once", duplicate);
    n = PyList_GET_SIZE(pairs) / 2;
    if (n > STACK_PAIRS) {
        for (mask = 1; mask < 2 * n; mask <<= 1)
            ;
        mask--;
        group_of = PyMem_Malloc((size_t)n * sizeof(int));
        vals = PyMem_Malloc((size_t)n * sizeof(PyObject *));
        groups = PyMem_Malloc((size_t)n * sizeof(group_t));
        table = PyMem_Malloc((size_t)(mask + 1) * sizeof(int));
        if (group_of == NULL || vals == NULL || groups == NULL || table == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    } else {
        /* Few pairs: a table of twice as many slots, from the stack. */
        for (mask = 16; mask < 2 * n; mask <<= 1)
            ;
        mask--;
    }
    if (make_groups(pairs, n, vals, &held, group_of, groups, &ngroups, table, mask) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(self->required); i++) {
        PyObject *req = PyTuple_GET_ITEM(self->required, i);
        Py_hash_t hash = PyObject_Hash(req);
        int found = 0;
        if (hash == -1)
            goto done;
        for (Py_ssize_t s = (Py_ssize_t)((size_t)hash & (size_t)mask); table[s] >= 0;
             s = (s + 1) & mask) {
            const group_t *grp = &groups[table[s]];
            if (same_key(grp->key, grp->hash, req, hash)) {
                found = 1;
                break;
            }
        }
        if (!found) {
            sip_error(self, "missing %S header", req);
            goto done;
        }
    }
    headers_obj = PyObject_GetAttr(msg, self->s_headers);
    if (headers_obj == NULL)
        goto done;
    typed = PyObject_GetAttr(headers_obj, self->s_typed);
    if (typed == NULL)
        goto done;
    if (!PyDict_Check(typed)) {
        PyErr_SetString(PyExc_TypeError, "headers._typed must be a dict");
        goto done;
    }
    prefilled = PyDict_GET_SIZE(typed) != 0;
    for (int g = 0; g < ngroups; g++) {
        if (check_group(self, typed, prefilled, vals, group_of, n, g, &groups[g]) < 0)
            goto done;
    }
    /* isinstance(msg, Request) and typed["cseq"].method != msg.method */
    rc = PyObject_IsInstance(msg, self->request);
    if (rc < 0)
        goto done;
    if (rc) {
        PyObject *cseq, *a, *b;
        cseq = PyDict_GetItemWithError(typed, self->s_cseq);
        if (cseq == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, self->s_cseq);
            goto done;
        }
        Py_INCREF(cseq);
        a = PyObject_GetAttr(cseq, self->s_method);
        Py_DECREF(cseq);
        if (a == NULL)
            goto done;
        b = PyObject_GetAttr(msg, self->s_method);
        if (b == NULL) {
            Py_DECREF(a);
            goto done;
        }
        rc = PyObject_RichCompareBool(a, b, Py_NE);
        Py_DECREF(a);
        Py_DECREF(b);
        if (rc < 0)
            goto done;
        if (rc) {
            sip_error(self, "CSeq method does not match the request method");
            goto done;
        }
    }
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(typed);
    Py_XDECREF(headers_obj);
    for (Py_ssize_t i = 0; i < held; i++)
        Py_DECREF(vals[i]);
    for (int g = 0; g < ngroups; g++)
        Py_DECREF(groups[g].key);
    if (group_of != stack_group_of) {
        PyMem_Free(vals);
        PyMem_Free(group_of);
        PyMem_Free(groups);
        PyMem_Free(table);
    }
    return result;
}

/* ------------------------------------------------------------ the type */

PyDoc_STRVAR(Check_doc,
             "SipHeaderChecker(sip_error, request, typed, list_headers, required,\n"
             "                 via, name_addr, contact, cseq, content_type)\n\n"
             "The C twin of sip.message._check_headers: sip_error, the Request class,\n"
             "the _TYPED parsers, LIST_HEADERS, REQUIRED_HEADERS and the _Memo objects\n"
             "of Via, NameAddr, Contact, CSeq and Content-Type are passed in.");

static int
Check_clear(CheckObject *self)
{
    self->ready = 0;
    Py_CLEAR(self->sip_error);
    Py_CLEAR(self->request);
    Py_CLEAR(self->parsers);
    Py_CLEAR(self->list_headers);
    Py_CLEAR(self->required);
    Py_CLEAR(self->codes);
    for (int m = 0; m < M_COUNT; m++) {
        Py_CLEAR(self->memo[m]);
        Py_CLEAR(self->cache[m]);
    }
    for (int h = 0; h < H_COUNT; h++)
        Py_CLEAR(self->parser[h]);
    return 0;
}

static int
Check_init(CheckObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"sip_error", "request", "typed", "list_headers", "required",
                             "via", "name_addr", "contact", "cseq", "content_type", NULL};
    PyObject *err, *request, *parsers, *list_headers, *required, *memos[M_COUNT];
    static const char *names[] = {"headers", "_typed", "method", "bracketed", "star",
                                  "_fast", "_parse", "_limit", "cseq"};
    PyObject **slots[] = {&self->s_headers, &self->s_typed, &self->s_method,
                          &self->s_bracketed, &self->s_star, &self->s_fast,
                          &self->s_parse, &self->s_limit, &self->s_cseq};

    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "SipHeaderChecker is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O!O!O!OOOOO", kwlist, &err, &PyType_Type,
                                     &request, &PyDict_Type, &parsers, &PyFrozenSet_Type,
                                     &list_headers, &PyTuple_Type, &required, &memos[0],
                                     &memos[1], &memos[2], &memos[3], &memos[4]))
        return -1;
    Check_clear(self); /* a second try after a failed first one */
    self->sip_error = Py_NewRef(err);
    self->request = Py_NewRef(request);
    self->parsers = Py_NewRef(parsers);
    self->list_headers = Py_NewRef(list_headers);
    self->required = Py_NewRef(required);
    for (int m = 0; m < M_COUNT; m++) {
        PyObject *cache = PyObject_GetAttrString(memos[m], "_cache");
        if (cache == NULL)
            return -1;
        if (!PyDict_CheckExact(cache)) {
            Py_DECREF(cache);
            PyErr_Format(PyExc_TypeError, "%s._cache must be a dict", memo_args[m]);
            return -1;
        }
        self->memo[m] = Py_NewRef(memos[m]);
        self->cache[m] = cache;
    }
    self->codes = PyDict_New();
    if (self->codes == NULL)
        return -1;
    for (int h = 0; h < H_COUNT; h++) {
        PyObject *key = PyUnicode_InternFromString(headers[h].key), *index, *parser;
        if (key == NULL)
            return -1;
        index = PyLong_FromLong(h);
        if (index == NULL || PyDict_SetItem(self->codes, key, index) < 0) {
            Py_XDECREF(index);
            Py_DECREF(key);
            return -1;
        }
        Py_DECREF(index);
        parser = PyDict_GetItemWithError(parsers, key);
        Py_DECREF(key);
        if (parser == NULL && PyErr_Occurred())
            return -1;
        self->parser[h] = Py_XNewRef(parser);
    }
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (*slots[i] == NULL && (*slots[i] = PyUnicode_InternFromString(names[i])) == NULL)
            return -1;
    }
    self->ready = 1;
    return 0;
}

static int
Check_traverse(CheckObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->sip_error);
    Py_VISIT(self->request);
    Py_VISIT(self->parsers);
    Py_VISIT(self->list_headers);
    Py_VISIT(self->required);
    Py_VISIT(self->codes);
    for (int m = 0; m < M_COUNT; m++) {
        Py_VISIT(self->memo[m]);
        Py_VISIT(self->cache[m]);
    }
    for (int h = 0; h < H_COUNT; h++)
        Py_VISIT(self->parser[h]);
    return 0;
}

static void
Check_dealloc(CheckObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Check_clear(self);
    Py_CLEAR(self->s_headers);
    Py_CLEAR(self->s_typed);
    Py_CLEAR(self->s_method);
    Py_CLEAR(self->s_bracketed);
    Py_CLEAR(self->s_star);
    Py_CLEAR(self->s_fast);
    Py_CLEAR(self->s_parse);
    Py_CLEAR(self->s_limit);
    Py_CLEAR(self->s_cseq);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
Check_handled(CheckObject *self, void *Py_UNUSED(closure))
{
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (int h = 0; h < H_COUNT; h++) {
        PyObject *key = PyUnicode_FromString(headers[h].key), *now;
        if (key == NULL)
            goto error;
        now = PyDict_GetItemWithError(self->parsers, key);
        if ((now == NULL && PyErr_Occurred())
            || (now != NULL && now == self->parser[h] && PyList_Append(out, key) < 0)) {
            Py_DECREF(key);
            goto error;
        }
        Py_DECREF(key);
    }
    return out;
error:
    Py_DECREF(out);
    return NULL;
}

PyDoc_STRVAR(split_doc, "split(value, /)\n\n"
                        "sip._abnf.split_list(value), as check() splits list headers.");

static PyObject *
Check_split(CheckObject *Py_UNUSED(self), PyObject *value)
{
    PyObject *out = PyList_New(0);
    if (out != NULL && split_into(out, value) < 0)
        Py_CLEAR(out);
    return out;
}

static PyMethodDef Check_methods[] = {
    {"check", (PyCFunction)(void (*)(void))Check_check, METH_FASTCALL, check_doc},
    {"split", (PyCFunction)Check_split, METH_O, split_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Check_getset[] = {
    {"handled", (getter)Check_handled, NULL,
     "[keys whose typed value C makes while _TYPED keeps the parser it had]", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Check_slots[] = {
    {Py_tp_doc, (void *)Check_doc},
    {Py_tp_init, Check_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, Check_dealloc},
    {Py_tp_traverse, Check_traverse},
    {Py_tp_clear, Check_clear},
    {Py_tp_methods, Check_methods},
    {Py_tp_getset, Check_getset},
    {0, NULL},
};

static PyType_Spec Check_spec = {
    .name = "media._srtp.SipHeaderChecker",
    .basicsize = sizeof(CheckObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Check_slots,
};

int
se_sipcheck_register(PyObject *module)
{
    PyObject *type;
    int rc;
    init_table();
    type = PyType_FromModuleAndSpec(module, &Check_spec, NULL);
    if (type == NULL)
        return -1;
    rc = PyModule_AddObjectRef(module, "SipHeaderChecker", type);
    Py_DECREF(type);
    return rc;
}
