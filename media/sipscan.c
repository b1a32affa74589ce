/*
 * media/sipscan.c: media._srtp.SipScanner, the C twin of the tokenizing half of
 * sip.message.parse_message (RFC 3261 §7, §7.3.1, §7.5, §25).
 *
 * One call takes the bytes of one message and gives back its start line, its
 * header fields (sip.message.HeaderField objects), each field's key and value in
 * one flat list, the first repeated single header and the offset of the body.
 * The Python reference is sip.message._scan (with _pairs): same results, same
 * SipError texts, in the same order of checks, which tests/test_sip_scan.py
 * proves on the test corpus and on random mutations.  Everything past tokenizing (start line, typed
 * headers, Content-Length) stays in Python.
 *
 * Why C: decode + split + regex findall + one HeaderField.__init__ per line was
 * about half of a warm parse_message, and a proxy parses every message twice
 * (in and, for responses, back).  Here one pass over the head does the CR/LF,
 * CTL and UTF-8 checks; header names hit a small cache of (name, key) strings,
 * so a known name costs no allocation; fields are written straight into their
 * slots instead of running __init__.
 *
 * Rules of this file: no state outside the SipScanner object; the head is only
 * read; every error the Python path can raise here is one of scan_reasons[].
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdint.h>
#include <string.h>

#include "sipscan.h"

/* The messages, in the order the Python path checks them (parse_message, _scan,
 * _parse_fields). */
enum {
    R_NO_EMPTY_LINE,
    R_NOT_UTF8,
    R_BARE_CRLF,
    R_CTL,
    R_TOO_MANY,
    R_TOO_LONG,
    R_FOLD_FIRST,
    R_NO_COLON,
    R_BAD_NAME,
    R_COUNT
};
static const char *const scan_reasons[R_COUNT] = {
    "no empty line after the headers",
    "headers are not UTF-8",
    "bare CR or LF in the headers",
    "control character in the headers",
    "too many header lines",
    "header line too long",
    "folded line before the first header",
    "header line without a colon",
    "malformed header name",
};

/* token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
 * (§25.1; sip._abnf.TOKEN_CHARS). */
static int
is_token_char(unsigned char c)
{
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
        return 1;
    return c != 0 && strchr("-.!%*_+`'~", c) != NULL;
}

/* What the one pass over the head looks for, by byte: a table, so that the
 * common byte (printable ASCII or HT) costs one load and one test.  B_CTL is a
 * CTL other than HT, CR and LF: legal only as the second half of a quoted-pair
 * (the Python path's _UNESCAPED_CTL_RE). */
enum { B_PLAIN = 0, B_CR, B_LF, B_CTL, B_HIGH };
#define B_ROW8(k) k, k, k, k, k, k, k, k
#define B_ROW16(k) B_ROW8(k), B_ROW8(k)
static const unsigned char byte_class[256] = {
    /* 0x00-0x0f: HT (9) plain, LF (10), CR (13) */
    B_CTL, B_CTL, B_CTL, B_CTL, B_CTL, B_CTL, B_CTL, B_CTL,
    B_CTL, B_PLAIN, B_LF, B_CTL, B_CTL, B_CR, B_CTL, B_CTL,
    B_ROW16(B_CTL),                                        /* 0x10-0x1f */
    B_ROW16(B_PLAIN), B_ROW16(B_PLAIN), B_ROW16(B_PLAIN),  /* 0x20-0x4f */
    B_ROW16(B_PLAIN), B_ROW16(B_PLAIN),                    /* 0x50-0x6f */
    B_ROW8(B_PLAIN), B_PLAIN, B_PLAIN, B_PLAIN, B_PLAIN,   /* 0x70-0x7b */
    B_PLAIN, B_PLAIN, B_PLAIN, B_CTL,                      /* 0x7c-0x7f: DEL */
    B_ROW16(B_HIGH), B_ROW16(B_HIGH), B_ROW16(B_HIGH), B_ROW16(B_HIGH),
    B_ROW16(B_HIGH), B_ROW16(B_HIGH), B_ROW16(B_HIGH), B_ROW16(B_HIGH),
};

/* The cache of header names as written: a hit costs no allocation and no token
 * check (only names that passed it get in).  Bounded like canonical_name's
 * (entries are never evicted, so borrowed pointers stay valid), and a lookup
 * probes at most NAME_PROBES slots, so names chosen to collide cost a miss,
 * never a long walk. */
#define NAME_SLOTS 2048
#define NAME_MAX_ENTRIES 1024
#define NAME_MAX_LEN 64
#define NAME_PROBES 8

typedef struct {
    PyObject *name; /* str as written (ASCII: it is a token); NULL = empty slot */
    PyObject *key;  /* its canonical_name() */
    uint32_t hash;
    int single; /* key in SINGLE_HEADERS */
} name_slot;

/* The cache of whole header lines: a line seen before ("CSeq: 1 INVITE", "Max-Forwards:
 * 70", a Contact, a trunk's Record-Route) gets the HeaderField built for it then, with
 * its value string.  The hit saves two strings and a field (made now, freed with the
 * message), and the value's hash, cached in the shared string, spares the checker's
 * memo a hash over it.  A field is never changed once built (sip.message edits a
 * header by replacing its field), so messages may share one.  Two ways per set, the
 * most recent first: a new line takes the first way and pushes the other out, so two
 * lines of one message that share a set both stay, and distinct lines (branches,
 * tags, Call-IDs) cost a hash and a store, never a walk. */
#define LINE_SLOTS 1024
#define LINE_MAX_LEN 256

typedef struct {
    PyObject *field; /* HeaderField; NULL = empty slot */
    PyObject *value; /* its value */
    PyObject *raw;   /* its raw text (ASCII), what a line is compared with */
    uint32_t hash;
} line_slot;

typedef struct {
    PyObject_HEAD
    PyObject *field_type; /* sip.message.HeaderField */
    PyObject *factory;    /* what makes a field when its slots cannot be written */
    PyObject *error_type; /* sip.errors.SipError */
    PyObject *single;     /* SINGLE_HEADERS */
    PyObject *compact[26]; /* COMPACT_FORMS by letter, or NULL */
    PyObject *reasons[R_COUNT];
    /* Offsets of HeaderField's name, key, value, raw slots, or all 0 to call
     * the type instead. */
    Py_ssize_t off[4];
    name_slot *names;
    int n_names;
    line_slot *lines;
    Py_ssize_t line_hits;
} ScannerObject;

/* Word-at-a-time byte tests (SWAR): a byte value in every byte of a word, and the
 * high bit of every byte. */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* One header field while the head is being scanned: offsets into the head. */
typedef struct {
    PyObject *name, *key; /* owned */
    int single;
    Py_ssize_t line, value, value_end, raw_end;
    int folded;
} field_span;

static uint32_t
fnv1a(const unsigned char *p, Py_ssize_t n)
{
    uint32_t h = 2166136261u;
    for (Py_ssize_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

/* A header line's hash for the line cache: a word at a time (a line averages
 * 40-80 bytes).  Not keyed: lines chosen to collide only evict each other. */
static uint32_t
line_hash(const unsigned char *p, Py_ssize_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)n, w;
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 29;
    }
    if (n > 0) {
        w = 0;
        memcpy(&w, p, (size_t)n);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 29;
    }
    return (uint32_t)(h ^ (h >> 32));
}

/* Index of the first CR in p[from:to], or to. */
static Py_ssize_t
find_cr(const unsigned char *p, Py_ssize_t from, Py_ssize_t to)
{
    const unsigned char *cr;
    if (to <= from)
        return to;
    cr = memchr(p + from, '\r', (size_t)(to - from));
    return cr != NULL ? cr - p : to;
}

static PyObject *
scan_error(ScannerObject *self, int reason)
{
    PyObject *exc = PyObject_CallOneArg(self->error_type, self->reasons[reason]);
    if (exc != NULL) {
        PyErr_SetObject(self->error_type, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* A str from bytes of the head cut at ASCII boundaries (valid UTF-8: the whole
 * head was checked). */
static PyObject *
make_str(const unsigned char *p, Py_ssize_t n, int ascii)
{
    PyObject *s;
    if (!ascii)
        return PyUnicode_DecodeUTF8((const char *)p, n, "strict");
    s = PyUnicode_New(n, 127);
    if (s != NULL && n > 0)
        memcpy(PyUnicode_1BYTE_DATA(s), p, (size_t)n);
    return s;
}

/* Declared in sipscan.h. */
int
se_same_key(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    return n == PyUnicode_GET_LENGTH(b) && PyUnicode_KIND(a) == PyUnicode_KIND(b)
           && memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * PyUnicode_KIND(a)) == 0;
}

/* Name and key of a header name (already known to be a token), with its
 * single flag; new references in *name and *key. */
static int
lookup_name(ScannerObject *self, const unsigned char *p, Py_ssize_t n, PyObject **name,
            PyObject **key, int *single)
{
    char lower[NAME_MAX_LEN];
    char *buf = lower;
    uint32_t h = 0;
    name_slot *free_slot = NULL;
    int rc;

    if (n <= NAME_MAX_LEN) {
        h = fnv1a(p, n);
        for (int i = 0; i < NAME_PROBES; i++) {
            name_slot *s = &self->names[(h + (uint32_t)i) & (NAME_SLOTS - 1)];
            if (s->name == NULL) {
                free_slot = s;
                break;
            }
            if (s->hash == h && PyUnicode_GET_LENGTH(s->name) == n
                && memcmp(PyUnicode_1BYTE_DATA(s->name), p, (size_t)n) == 0) {
                *name = Py_NewRef(s->name);
                *key = Py_NewRef(s->key);
                *single = s->single;
                return 0;
            }
        }
    }

    *name = make_str(p, n, 1);
    if (*name == NULL)
        return -1;
    if (n > NAME_MAX_LEN) {
        buf = PyMem_Malloc((size_t)n);
        if (buf == NULL) {
            Py_CLEAR(*name);
            PyErr_NoMemory();
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++)
        buf[i] = (char)(p[i] >= 'A' && p[i] <= 'Z' ? p[i] + ('a' - 'A') : p[i]);
    if (n == 1 && buf[0] >= 'a' && buf[0] <= 'z' && self->compact[buf[0] - 'a'] != NULL)
        *key = Py_NewRef(self->compact[buf[0] - 'a']);
    else
        *key = make_str((const unsigned char *)buf, n, 1);
    if (buf != lower)
        PyMem_Free(buf);
    if (*key == NULL) {
        Py_CLEAR(*name);
        return -1;
    }
    rc = PySet_Contains(self->single, *key);
    if (rc < 0) {
        Py_CLEAR(*name);
        Py_CLEAR(*key);
        return -1;
    }
    *single = rc;
    if (free_slot != NULL && self->n_names < NAME_MAX_ENTRIES) {
        /* Interned: the dict lookups of the typed headers then compare by identity. */
        PyUnicode_InternInPlace(key);
        free_slot->name = Py_NewRef(*name);
        free_slot->key = Py_NewRef(*key);
        free_slot->hash = h;
        free_slot->single = rc;
        self->n_names++;
    }
    return 0;
}

static int
is_wsp(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* The value of a folded field as _parse_fields builds it: the pieces (first
 * line's value, then each continuation line stripped of SP/HT), the non-empty
 * ones joined by one space. */
static PyObject *
folded_value(const unsigned char *head, const field_span *f, int ascii)
{
    Py_ssize_t cap = f->raw_end - f->line, n = 0, i;
    unsigned char *out = PyMem_Malloc((size_t)cap + 1);
    PyObject *s;
    if (out == NULL)
        return PyErr_NoMemory();
    memcpy(out, head + f->value, (size_t)(f->value_end - f->value));
    n = f->value_end - f->value;
    /* The first line's CRLF: the raw text from the value on has no other CR. */
    i = f->value_end;
    while (head[i] != '\r')
        i++;
    while (i < f->raw_end) {
        Py_ssize_t a = i + 2, b, e = find_cr(head, a, f->raw_end);
        b = e;
        while (a < b && is_wsp(head[a]))
            a++;
        while (b > a && is_wsp(head[b - 1]))
            b--;
        if (b > a) {
            if (n > 0)
                out[n++] = ' ';
            memcpy(out + n, head + a, (size_t)(b - a));
            n += b - a;
        }
        i = e;
    }
    s = make_str(out, n, ascii);
    PyMem_Free(out);
    return s;
}

static PyObject *
make_field(ScannerObject *self, PyObject *name, PyObject *key, PyObject *value, PyObject *raw)
{
    PyObject *obj;
    PyObject *vals[4] = {name, key, value, raw};
    if (self->off[0] == 0) {
        /* No slots to write (the mypyc-compiled HeaderField, sip/_compiled.py): the
         * factory (the type itself unless one was given: a compiled function calls
         * the compiled constructor for about a third of what calling the type from
         * C costs), and the field untracked all the same (see below). */
        obj = PyObject_Vectorcall(self->factory, vals, 4, NULL);
        if (obj != NULL && PyObject_IS_GC(obj))
            PyObject_GC_UnTrack(obj);
        return obj;
    }
    /* HeaderField.__init__ only stores its four arguments: write the slots. */
    obj = ((PyTypeObject *)self->field_type)->tp_alloc((PyTypeObject *)self->field_type, 0);
    if (obj == NULL)
        return NULL;
    for (int i = 0; i < 4; i++)
        *(PyObject **)((char *)obj + self->off[i]) = Py_NewRef(vals[i]);
    /* Four strings (or None) can never be part of a reference cycle, so the cyclic GC
     * need not look at the field: a proxy keeps a call's messages for the 32 s of
     * its transactions, and each GC pass over them costs about a microsecond a field. */
    PyObject_GC_UnTrack(obj);
    return obj;
}

#define STACK_FIELDS 48
#define MAX_SINGLES 16

PyDoc_STRVAR(scan_doc,
             "scan(data, max_headers, max_line_length, /)\n\n"
             "(start_line, fields, pairs, duplicate, body_start) of one message, as\n"
             "sip.message._scan and _pairs give them, or SipError.");

static PyObject *
Scanner_scan(ScannerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer buf;
    const unsigned char *data, *head;
    Py_ssize_t size, start = 0, end, hlen, max_headers, max_line, crlfs = 0, nfields = 0;
    Py_ssize_t line_end, i;
    int ascii = 1, bare = 0, ctl = 0;
    field_span stack_fields[STACK_FIELDS], *fields = stack_fields;
    Py_ssize_t singles[MAX_SINGLES]; /* the single fields seen, while no repeat */
    int nsingles = 0;
    PyObject *start_line = NULL, *list = NULL, *pairs = NULL, *dup = Py_None, *result = NULL;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scan() takes 3 arguments");
        return NULL;
    }
    max_headers = PyLong_AsSsize_t(args[1]);
    if (max_headers == -1 && PyErr_Occurred())
        return NULL;
    max_line = PyLong_AsSsize_t(args[2]);
    if (max_line == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[0], &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    data = buf.buf;
    size = buf.len;

    /* §7.5: CRLFs before the start line are ignored. */
    while (start + 1 < size && data[start] == '\r' && data[start + 1] == '\n')
        start += 2;
    for (end = start;; end++) {
        const unsigned char *cr = memchr(data + end, '\r', (size_t)(size - end));
        if (cr == NULL || size - (cr - data) < 4) {
            scan_error(self, R_NO_EMPTY_LINE);
            goto done;
        }
        end = cr - data;
        if (memcmp(cr, "\r\n\r\n", 4) == 0)
            break;
    }
    head = data + start;
    hlen = end - start;

    /* One pass for what the Python path checks on the decoded text: eight bytes at
     * a time while they are all printable ASCII (most of a head), byte by byte
     * through a word that holds anything else (a CRLF, a tab, UTF-8). */
    for (i = 0; i < hlen;) {
        Py_ssize_t stop = hlen;
        if (hlen - i >= 8) {
            uint64_t w, d;
            memcpy(&w, head + i, 8);
            d = w ^ (ONES * 0x7f);
            /* A byte with the high bit, below 0x20 or equal to 0x7f (DEL); each
             * test is exact about whether any byte of the word has it. */
            if (((w & HIGHS) | ((w - ONES * 0x20) & ~w & HIGHS) | ((d - ONES) & ~d & HIGHS))
                == 0) {
                i += 8;
                continue;
            }
            stop = i + 8;
        }
        for (; i < stop; i++) {
            unsigned char k = byte_class[head[i]];
            if (k == B_PLAIN)
                continue;
            if (k == B_HIGH)
                ascii = 0;
            else if (k == B_CR) {
                if (i + 1 < hlen && head[i + 1] == '\n') {
                    crlfs++;
                    i++;
                }
                else
                    bare = 1;
            }
            else if (k == B_LF)
                bare = 1;
            else if (i == 0 || head[i - 1] != '\\')
                ctl = 1;
        }
    }
    if (!ascii) {
        PyObject *text = PyUnicode_DecodeUTF8((const char *)head, hlen, "strict");
        if (text == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                goto done;
            PyErr_Clear();
            scan_error(self, R_NOT_UTF8);
            goto done;
        }
        Py_DECREF(text);
    }
    if (bare || ctl || crlfs > max_headers) {
        scan_error(self, bare ? R_BARE_CRLF : ctl ? R_CTL : R_TOO_MANY);
        goto done;
    }
    if (crlfs > STACK_FIELDS) {
        fields = PyMem_Malloc(sizeof(field_span) * (size_t)crlfs);
        if (fields == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }

    line_end = find_cr(head, 0, hlen);
    start_line = make_str(head, line_end, ascii);
    if (start_line == NULL)
        goto done;

    /* The header lines, as _parse_fields takes them. */
    while (line_end < hlen) {
        Py_ssize_t ls = line_end + 2, le, chars, colon, name_end, vs, ve;
        field_span *f;
        le = find_cr(head, ls, hlen);
        line_end = le;
        chars = le - ls;
        if (!ascii) /* the limit counts characters: skip UTF-8 continuation bytes */
            for (i = ls; i < le; i++)
                chars -= (head[i] & 0xc0) == 0x80;
        if (chars > max_line) {
            scan_error(self, R_TOO_LONG);
            goto done;
        }
        if (le > ls && is_wsp(head[ls])) {
            /* Folding (§7.3.1): the continuation joins the field above. */
            if (nfields == 0) {
                scan_error(self, R_FOLD_FIRST);
                goto done;
            }
            fields[nfields - 1].raw_end = le;
            fields[nfields - 1].folded = 1;
            continue;
        }
        {
            const unsigned char *c = memchr(head + ls, ':', (size_t)(le - ls));
            colon = c != NULL ? c - head : -1;
        }
        if (colon <= ls) {
            scan_error(self, R_NO_COLON);
            goto done;
        }
        name_end = colon;
        while (name_end > ls && is_wsp(head[name_end - 1]))
            name_end--;
        f = &fields[nfields];
        for (i = ls; i < name_end && is_token_char(head[i]); i++)
            ;
        if (i == ls || i < name_end) {
            scan_error(self, R_BAD_NAME);
            goto done;
        }
        if (lookup_name(self, head + ls, name_end - ls, &f->name, &f->key, &f->single) < 0)
            goto done;
        nfields++;
        vs = colon + 1;
        ve = le;
        while (vs < ve && is_wsp(head[vs]))
            vs++;
        while (ve > vs && is_wsp(head[ve - 1]))
            ve--;
        f->line = ls;
        f->value = vs;
        f->value_end = ve;
        f->raw_end = le;
        f->folded = 0;
    }

    list = PyList_New(nfields);
    pairs = PyList_New(2 * nfields);
    if (list == NULL || pairs == NULL)
        goto done;
    /* The message's fields (sip.message.Headers keeps the list): header fields only,
     * now and after any edit, and a field holds strings, so the list cannot be part
     * of a cycle either. */
    PyObject_GC_UnTrack(list);
    for (i = 0; i < nfields; i++) {
        field_span *f = &fields[i];
        PyObject *value, *raw, *field;
        Py_ssize_t raw_len = f->raw_end - f->line;
        line_slot *set = NULL;
        uint32_t h = 0;
        if (ascii && !f->folded && raw_len <= LINE_MAX_LEN) {
            h = line_hash(head + f->line, raw_len);
            set = &self->lines[h & (LINE_SLOTS - 2)];
            for (int way = 0; way < 2; way++) {
                line_slot *slot = &set[way];
                if (slot->field != NULL && slot->hash == h
                    && PyUnicode_GET_LENGTH(slot->raw) == raw_len
                    && memcmp(PyUnicode_1BYTE_DATA(slot->raw), head + f->line,
                              (size_t)raw_len) == 0) {
                    PyList_SET_ITEM(list, i, Py_NewRef(slot->field));
                    value = Py_NewRef(slot->value);
                    if (way == 1) { /* most recent first */
                        line_slot hit = set[1];
                        set[1] = set[0];
                        set[0] = hit;
                    }
                    self->line_hits++;
                    goto pair;
                }
            }
        }
        value = f->folded ? folded_value(head, f, ascii)
                          : make_str(head + f->value, f->value_end - f->value, ascii);
        if (value == NULL)
            goto done;
        raw = make_str(head + f->line, raw_len, ascii);
        if (raw == NULL) {
            Py_DECREF(value);
            goto done;
        }
        field = make_field(self, f->name, f->key, value, raw);
        if (field == NULL) {
            Py_DECREF(raw);
            Py_DECREF(value);
            goto done;
        }
        if (set != NULL) {
            line_slot old = set[1];
            set[1] = set[0];
            set[0].field = Py_NewRef(field);
            set[0].value = Py_NewRef(value);
            set[0].raw = Py_NewRef(raw);
            set[0].hash = h;
            Py_XDECREF(old.field);
            Py_XDECREF(old.value);
            Py_XDECREF(old.raw);
        }
        Py_DECREF(raw);
        PyList_SET_ITEM(list, i, field);
    pair:
        /* _pairs: key and value, flat; the first single header seen twice. */
        PyList_SET_ITEM(pairs, 2 * i, Py_NewRef(f->key));
        PyList_SET_ITEM(pairs, 2 * i + 1, Py_NewRef(value));
        if (dup == Py_None && f->single) {
            /* Against the single fields before it: at most one of each key comes
             * before the first repeat, so few (SINGLE_HEADERS is small). */
            if (nsingles < MAX_SINGLES) {
                for (int j = 0; j < nsingles && dup == Py_None; j++)
                    if (se_same_key(fields[singles[j]].key, f->key))
                        dup = f->key;
                singles[nsingles++] = i;
            } else { /* more single keys than MAX_SINGLES: every field before */
                for (Py_ssize_t j = 0; j < i && dup == Py_None; j++)
                    if (fields[j].single && se_same_key(fields[j].key, f->key))
                        dup = f->key;
            }
        }
        Py_DECREF(value);
    }
    {
        PyObject *body = PyLong_FromSsize_t(end + 4);
        if (body != NULL) {
            result = PyTuple_Pack(5, start_line, list, pairs, dup, body);
            Py_DECREF(body);
        }
    }

done:
    for (i = 0; i < nfields; i++) {
        Py_DECREF(fields[i].name);
        Py_DECREF(fields[i].key);
    }
    if (fields != stack_fields)
        PyMem_Free(fields);
    Py_XDECREF(start_line);
    Py_XDECREF(list);
    Py_XDECREF(pairs);
    PyBuffer_Release(&buf);
    return result;
}

/* ---------------------------------------------------------------- the type */

/* The offset of a plain __slots__ member of the HeaderField type, or 0. */
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

PyDoc_STRVAR(Scanner_doc,
             "SipScanner(header_field, sip_error, compact_forms, single_headers, direct=True,\n"
             "           factory=None)\n\n"
             "The C tokenizer of sip.message.parse_message; sip.message makes the one\n"
             "instance.  direct=False calls header_field(name, key, value, raw) for each\n"
             "field instead of writing its slots (a benchmark's comparison); so does a\n"
             "header_field without plain slots.  factory, a callable taking the same four\n"
             "arguments and returning a header_field, is called instead of the type.");

static int
Scanner_init(ScannerObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"header_field", "sip_error", "compact_forms", "single_headers",
                             "direct", "factory", NULL};
    PyObject *field_type, *error_type, *compact, *single, *k, *v, *factory = Py_None;
    int direct = 1;
    Py_ssize_t pos = 0;

    if (self->names != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SipScanner is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O|pO", kwlist, &PyType_Type, &field_type,
                                     &PyType_Type, &error_type, &PyDict_Type, &compact, &single,
                                     &direct, &factory))
        return -1;
    if (factory == Py_None)
        factory = field_type;
    else if (!PyCallable_Check(factory)) {
        PyErr_SetString(PyExc_TypeError, "factory must be callable or None");
        return -1;
    }
    if (!PyAnySet_Check(single)) {
        PyErr_SetString(PyExc_TypeError, "single_headers must be a set or frozenset");
        return -1;
    }
    while (PyDict_Next(compact, &pos, &k, &v)) {
        Py_UCS4 c;
        if (!PyUnicode_Check(k) || PyUnicode_GET_LENGTH(k) != 1 || !PyUnicode_Check(v)) {
            PyErr_SetString(PyExc_ValueError, "compact_forms maps one letter to a name");
            return -1;
        }
        c = PyUnicode_READ_CHAR(k, 0);
        if (c < 'a' || c > 'z') {
            PyErr_SetString(PyExc_ValueError, "compact_forms keys are lower-case letters");
            return -1;
        }
        Py_XSETREF(self->compact[c - 'a'], Py_NewRef(v));
    }
    for (int i = 0; i < R_COUNT; i++) {
        Py_XSETREF(self->reasons[i], PyUnicode_InternFromString(scan_reasons[i]));
        if (self->reasons[i] == NULL)
            return -1;
    }
    Py_XSETREF(self->field_type, Py_NewRef(field_type));
    Py_XSETREF(self->factory, Py_NewRef(factory));
    Py_XSETREF(self->error_type, Py_NewRef(error_type));
    Py_XSETREF(self->single, Py_NewRef(single));
    if (direct && ((PyTypeObject *)field_type)->tp_dictoffset == 0) {
        static const char *const attrs[4] = {"name", "key", "value", "raw"};
        for (int i = 0; i < 4; i++)
            self->off[i] = slot_offset(field_type, attrs[i]);
        if (!self->off[0] || !self->off[1] || !self->off[2] || !self->off[3])
            memset(self->off, 0, sizeof(self->off));
    }
    self->names = PyMem_Calloc(NAME_SLOTS, sizeof(name_slot));
    self->lines = PyMem_Calloc(LINE_SLOTS, sizeof(line_slot));
    if (self->names == NULL || self->lines == NULL) {
        PyMem_Free(self->names);
        PyMem_Free(self->lines);
        self->names = NULL;
        self->lines = NULL;
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int
Scanner_traverse(ScannerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->field_type);
    Py_VISIT(self->factory);
    Py_VISIT(self->error_type);
    Py_VISIT(self->single);
    return 0;
}

static int
Scanner_clear(ScannerObject *self)
{
    Py_CLEAR(self->field_type);
    Py_CLEAR(self->factory);
    Py_CLEAR(self->error_type);
    Py_CLEAR(self->single);
    return 0;
}

static void
Scanner_dealloc(ScannerObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Scanner_clear(self);
    for (int i = 0; i < 26; i++)
        Py_CLEAR(self->compact[i]);
    for (int i = 0; i < R_COUNT; i++)
        Py_CLEAR(self->reasons[i]);
    if (self->names != NULL) {
        for (int i = 0; i < NAME_SLOTS; i++) {
            Py_XDECREF(self->names[i].name);
            Py_XDECREF(self->names[i].key);
        }
        PyMem_Free(self->names);
    }
    if (self->lines != NULL) {
        for (int i = 0; i < LINE_SLOTS; i++) {
            Py_XDECREF(self->lines[i].field);
            Py_XDECREF(self->lines[i].value);
            Py_XDECREF(self->lines[i].raw);
        }
        PyMem_Free(self->lines);
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
Scanner_scan_checked(ScannerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (self->names == NULL || self->lines == NULL || self->field_type == NULL
        || self->factory == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SipScanner is not initialised");
        return NULL;
    }
    return Scanner_scan(self, args, nargs);
}

static PyObject *
Scanner_direct(ScannerObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->off[0] != 0);
}

static PyObject *
Scanner_cached_names(ScannerObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->n_names);
}

static PyObject *
Scanner_line_hits(ScannerObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->line_hits);
}

static PyMethodDef Scanner_methods[] = {
    {"scan", (PyCFunction)(void (*)(void))Scanner_scan_checked, METH_FASTCALL, scan_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Scanner_getset[] = {
    {"direct", (getter)Scanner_direct, NULL, "True if fields are built by writing their slots",
     NULL},
    {"cached_names", (getter)Scanner_cached_names, NULL, "header names in the name cache", NULL},
    {"line_hits", (getter)Scanner_line_hits, NULL,
     "header lines whose field came from the line cache", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Scanner_slots[] = {
    {Py_tp_doc, (void *)Scanner_doc},
    {Py_tp_init, Scanner_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, Scanner_dealloc},
    {Py_tp_traverse, Scanner_traverse},
    {Py_tp_clear, Scanner_clear},
    {Py_tp_methods, Scanner_methods},
    {Py_tp_getset, Scanner_getset},
    {0, NULL},
};

static PyType_Spec Scanner_spec = {
    .name = "media._srtp.SipScanner",
    .basicsize = sizeof(ScannerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Scanner_slots,
};

/* ------------------------------------------------------------ sip_join */

PyDoc_STRVAR(sip_join_doc,
             "sip_join(lines, body, /)\n\n"
             "'\\r\\n'.join(lines).encode() + body: a message's bytes from its lines\n"
             "(sip.message.Message.serialize), in one allocation when every line is ASCII.");

static PyObject *
sip_join(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *lines, *body, *out, *joined, *encoded;
    Py_ssize_t n, total;
    char *w;

    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "sip_join() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    lines = args[0];
    body = args[1];
    if (!PyList_Check(lines) || !PyBytes_Check(body)) {
        PyErr_SetString(PyExc_TypeError, "sip_join() takes a list of str and bytes");
        return NULL;
    }
    n = PyList_GET_SIZE(lines);
    total = PyBytes_GET_SIZE(body) + (n > 0 ? 2 * (n - 1) : 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *line = PyList_GET_ITEM(lines, i);
        if (!PyUnicode_CheckExact(line) || !PyUnicode_IS_ASCII(line))
            goto general; /* UTF-8, and the errors str.join and encode raise */
        total += PyUnicode_GET_LENGTH(line);
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    w = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *line = PyList_GET_ITEM(lines, i);
        Py_ssize_t len = PyUnicode_GET_LENGTH(line);
        if (i > 0) {
            *w++ = '\r';
            *w++ = '\n';
        }
        memcpy(w, PyUnicode_1BYTE_DATA(line), (size_t)len);
        w += len;
    }
    memcpy(w, PyBytes_AS_STRING(body), (size_t)PyBytes_GET_SIZE(body));
    return out;

general:
    {
        PyObject *sep = PyUnicode_FromString("\r\n");
        if (sep == NULL)
            return NULL;
        joined = PyUnicode_Join(sep, lines);
        Py_DECREF(sep);
    }
    if (joined == NULL)
        return NULL;
    encoded = PyUnicode_AsUTF8String(joined);
    Py_DECREF(joined);
    if (encoded == NULL)
        return NULL;
    out = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(encoded) + PyBytes_GET_SIZE(body));
    if (out != NULL) {
        memcpy(PyBytes_AS_STRING(out), PyBytes_AS_STRING(encoded),
               (size_t)PyBytes_GET_SIZE(encoded));
        memcpy(PyBytes_AS_STRING(out) + PyBytes_GET_SIZE(encoded), PyBytes_AS_STRING(body),
               (size_t)PyBytes_GET_SIZE(body));
    }
    Py_DECREF(encoded);
    return out;
}

/* ------------------------------------------------------------ untrack_value */

/* Whether o is still one the cyclic GC tracks after untrack_tuple. */
static int
still_tracked(PyObject *o);

/* A tuple whose items are all untracked (or not GC objects at all) can never be part
 * of a reference cycle: untracked, as CPython's GC itself does on its first pass over
 * it (_PyTuple_MaybeUntrack).  Nested tuples first. */
static void
untrack_tuple(PyObject *t)
{
    Py_ssize_t n = PyTuple_GET_SIZE(t);
    for (Py_ssize_t i = 0; i < n; i++)
        if (still_tracked(PyTuple_GET_ITEM(t, i)))
            return;
    PyObject_GC_UnTrack(t);
}

/* PyObject_IS_GC without the call: the type's flag, and tp_is_gc where a type has one
 * (type objects: a static type is not a GC object). */
static inline int
is_gc(PyObject *o)
{
    PyTypeObject *tp = Py_TYPE(o);
    return PyType_IS_GC(tp) && (tp->tp_is_gc == NULL || tp->tp_is_gc(o));
}

static int
still_tracked(PyObject *o)
{
    /* The strings and numbers a value holds stop at the type's flag. */
    if (!is_gc(o) || !PyObject_GC_IsTracked(o))
        return 0;
    if (PyTuple_CheckExact(o)) {
        untrack_tuple(o);
        return PyObject_GC_IsTracked(o);
    }
    return 1;
}

static int
visit_untrack(PyObject *o, void *arg)
{
    if (still_tracked(o))
        *(int *)arg = 1;
    return 0;
}

PyDoc_STRVAR(untrack_value_doc,
             "untrack_value(obj, /)\n\n"
             "obj, taken out of the cyclic GC's view when nothing it refers to is in it\n"
             "(str, int, None, bytes, tuples of those: such an object can never be part of\n"
             "a reference cycle).  Tuples it holds go first, by the same rule.  Lists, dicts\n"
             "and sets are left as they are: they may take a container later.");

static PyObject *
untrack_value(PyObject *Py_UNUSED(module), PyObject *obj)
{
    /* Why: a proxy keeps a call's messages and addresses for the 32 s of its
     * transactions, and every gen-0 pass while calls accumulate walks each tracked
     * one (about half a microsecond an object on this VM, cache misses mostly). */
    if (is_gc(obj) && PyObject_GC_IsTracked(obj)) {
        if (PyTuple_CheckExact(obj)) {
            untrack_tuple(obj);
        } else if (!PyList_Check(obj) && !PyDict_Check(obj) && !PyAnySet_CheckExact(obj)
                   && !PyByteArray_CheckExact(obj)) {
            /* (Lists and dicts by their type flags, sets by type: no MRO walk per call.) */
            traverseproc traverse = Py_TYPE(obj)->tp_traverse;
            int tracked = 0;
            if (traverse != NULL && traverse(obj, visit_untrack, &tracked) == 0 && !tracked)
                PyObject_GC_UnTrack(obj);
        }
    }
    return Py_NewRef(obj);
}

/* ------------------------------------------------------------ untrack_graph */

/* How deep untrack_graph follows references: a message is message -> headers ->
 * typed dict -> list -> value, and a deeper graph is not one of ours. */
#define GRAPH_DEPTH 6

typedef struct {
    PyObject *types; /* a tuple of exact types */
    int depth;
} graph_walk;

static int
graph_type(PyObject *types, PyObject *o)
{
    PyObject *tp = (PyObject *)Py_TYPE(o);
    Py_ssize_t n = PyTuple_GET_SIZE(types);
    for (Py_ssize_t i = 0; i < n; i++)
        if (PyTuple_GET_ITEM(types, i) == tp)
            return 1;
    return 0;
}

static int
visit_graph(PyObject *o, void *arg)
{
    graph_walk *walk = (graph_walk *)arg;
    if (!is_gc(o) || !PyObject_GC_IsTracked(o) || !graph_type(walk->types, o))
        return 0;
    /* Untracked before its referents: an object reached twice is walked once, and a
     * cycle (which the caller promises there is none of) would not loop. */
    PyObject_GC_UnTrack(o);
    if (walk->depth < GRAPH_DEPTH) {
        traverseproc traverse = Py_TYPE(o)->tp_traverse;
        walk->depth++;
        if (traverse != NULL)
            traverse(o, visit_graph, walk);
        walk->depth--;
    }
    return 0;
}

PyDoc_STRVAR(untrack_graph_doc,
             "untrack_graph(obj, types, /)\n\n"
             "obj and what it refers to, followed through objects whose exact type is in\n"
             "the tuple types (a few levels deep), taken out of the cyclic GC's view.\n"
             "Anything of another type is left as it is, and so is what it refers to.  For\n"
             "graphs that are acyclic by construction (a parsed message: its headers, their\n"
             "lists and dicts): a cycle through an untracked object would never be freed.\n"
             "A dict takes itself back into the GC's view when a tracked value goes in.");

static PyObject *
untrack_graph(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    /* Why: a proxy keeps a call's messages for the 32 s of its transactions, and
     * each pass of the collector walks every tracked object: with the messages'
     * containers (about two thirds of what a live call keeps) in its view, a gen-1
     * pass at the end of a ramp to 2000 calls/s stalled the loop for a second. */
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "untrack_graph(obj, types): types is a tuple");
        return NULL;
    }
    graph_walk walk = {args[1], 0};
    visit_graph(args[0], &walk);
    return Py_NewRef(args[0]);
}

static PyMethodDef sipscan_functions[] = {
    {"sip_join", (PyCFunction)(void (*)(void))sip_join, METH_FASTCALL, sip_join_doc},
    {"untrack_value", (PyCFunction)untrack_value, METH_O, untrack_value_doc},
    {"untrack_graph", (PyCFunction)(void (*)(void))untrack_graph, METH_FASTCALL,
     untrack_graph_doc},
    {NULL, NULL, 0, NULL},
};

int
se_sipscan_register(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &Scanner_spec, NULL);
    int rc;
    if (type == NULL)
        return -1;
    rc = PyModule_AddObjectRef(module, "SipScanner", type);
    Py_DECREF(type);
    if (rc == 0)
        rc = PyModule_AddFunctions(module, sipscan_functions);
    return rc;
}
