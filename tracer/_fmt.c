/* _fmt.c - ring-buffer bytes -> NDJSON bytes, in C.
 *
 * A pure function: it reads the records of bpf/socktrace.h (the one
 * definition of the wire format) from any bytes-like object and writes the
 * very bytes the Python reference writes for them,
 *
 *     recs, bad = records.decode(fmt, span, source)
 *     b"".join(orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE) for d in recs)
 *
 * It touches no Python object but its arguments and its result: every name
 * it prints (states, enums, errno names, the source) is copied once into C
 * storage by configure(), as ready-made JSON text.  tests/test_fmt.py
 * compares the two byte for byte; bench/fmt_speed.py times them.
 *
 * configure(wall_offset_ns, tables)
 *     wall_offset_ns  int, CLOCK_REALTIME - CLOCK_MONOTONIC in ns
 *                     (Formatter.wall_offset); must fit a signed 64-bit int.
 *     tables          dict with exactly these keys:
 *       "states"      sequence of str|None, index = TCP state number
 *                     (states.NAMES; at most 256 entries); None, or a
 *                     number past the end, is no state: a record with it
 *                     is undecodable
 *       "owner_from"  {int 0..255: str|None}   records._OWNER
 *       "role"        {int 0..255: str|None}   records._ROLE   (None -> null)
 *       "reason"      {int 0..255: str|None}   records._REASON
 *       "via"         {int 0..255: str|None}   records._VIA
 *       "end"         {int 0..255: str|None}   records._END
 *       "errno"       {int 1..255: str}        records.errno_name(n); numbers
 *                     not in it (and all outside 1..255) print as "E%d"
 *       "timed"       sequence of (str, int 0..ST_NR_STATES-1) pairs, the
 *                     "states" object of a closed record in order
 *                     (records._TIMED), names unique
 *       "source"      str, the "source" field ("bpf")
 *       "cgroups"     optional: {int id: (path, container, unit)}, each
 *                     str|None: a record's cgroup context, as
 *                     records.Formatter.where resolves it (Python owns the
 *                     resolving: a cgroup's path is in the file system)
 *     A call replaces the whole configuration, or on error leaves the old
 *     one in place.
 *
 * format(span) -> (bytes, int, tuple of ints)
 *     span is any C-contiguous bytes-like object; returns the NDJSON lines
 *     of its records and how many records could not be read.  Walks the
 *     span as records.walk does: 8-byte header (u32 length with BUSY bit 31
 *     and DISCARD bit 30, u32 page offset), the record, the next header at
 *     the next 8-aligned offset.  BUSY or DISCARD records are skipped
 *     silently; a record whose kind is unknown or whose length is not its
 *     struct's size, or which runs past the end, is counted.  So is a record
 *     the Python reference raises on (a state number past the table, an
 *     enum value or family it has no name for): see "records" below.
 *     Spans of 16 KiB and more are formatted without the GIL.  A record
 *     whose cgroup id (not 0) is not in "cgroups" stops it: it returns
 *     (b"", 0, those ids), and the caller configures again with them and
 *     asks again (new cgroups are rare: a per-record call into Python is
 *     what this module is there to avoid).
 *
 * _bounds() -> (state, closed): the longest line of each record type the
 *     current configuration allows, for the tests (output buffers are sized
 *     from these, see out_bound).
 *
 * Little-endian, like wire.py's struct formats (and every BPF host socktrace
 * runs on).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <linux/types.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "socktrace.h"

#define BUSY		(1u << 31)
#define DISCARD		(1u << 30)
#define TOK_MAX		256		/* longest name configure() takes, as JSON */
#define TIMED_MAX	64
#define NOGIL_MIN	16384		/* spans smaller than this keep the GIL */
#define STATE_FIXED	800
#define CLOSED_FIXED	1200
#define MISSING_MAX	64		/* unknown cgroup ids one format() reports */

/* ---- configuration ------------------------------------------------------- */

/* A table of JSON values (quoted strings or null) by wire number. */
typedef struct {
	uint32_t off[256];		/* into Config.arena */
	uint16_t len[256];		/* 0: no entry (Python raises) */
} Tab;

typedef struct {
	Py_ssize_t refs;		/* format() calls using it, +1 while current */
	int64_t off_sec;		/* the wall offset, floor-divided by 1e9 */
	uint32_t off_ns;		/* ... and its remainder, 0..999999999 */
	Tab states, owner, role, reason, via, end, err;
	uint8_t first[256];		/* closed_first of a state: 1 local, 2 remote */
	int ntimed;
	uint8_t timed_num[TIMED_MAX];
	uint32_t timed_off[TIMED_MAX];	/* '{"NAME":' or ',"NAME":' */
	uint16_t timed_len[TIMED_MAX];
	uint32_t tail_off, tail_len;	/* ',"source":"bpf","approx":false}\n' */
	/* cgroup id -> ',"cgroup":..,"container":..,"unit":..' (open addressing;
	 * id 0, unknown, is never in it) */
	struct cg_entry { uint64_t id; uint32_t off, len; } *cg;
	uint32_t cg_mask;		/* slots - 1; no table: cg NULL */
	uint32_t cg_maxlen;
	size_t state_max, closed_max;	/* bounds on one record's line */
	char *arena;
	size_t arena_len, arena_cap;
} Config;

static Config *current;

static void config_free(Config *c)
{
	if (c) {
		PyMem_Free(c->cg);
		PyMem_Free(c->arena);
		PyMem_Free(c);
	}
}

static void config_decref(Config *c)
{
	if (c && --c->refs == 0)
		config_free(c);
}

static int arena_put(Config *c, const char *s, size_t n)
{
	if (c->arena_len + n > c->arena_cap) {
		size_t cap = c->arena_cap ? c->arena_cap : 4096;
		char *p;

		while (cap < c->arena_len + n)
			cap *= 2;
		p = PyMem_Realloc(c->arena, cap);
		if (!p) {
			PyErr_NoMemory();
			return -1;
		}
		c->arena = p;
		c->arena_cap = cap;
	}
	memcpy(c->arena + c->arena_len, s, n);
	c->arena_len += n;
	return 0;
}

static const char HEX[] = "0123456789abcdef";

/* orjson's escapes: the short ones it uses, \u00xx for the other controls;
 * everything else (DEL and non-ASCII included) goes out raw. */
static char *put_escaped(char *w, unsigned char ch)
{
	switch (ch) {
	case '"':  *w++ = '\\'; *w++ = '"'; break;
	case '\\': *w++ = '\\'; *w++ = '\\'; break;
	case '\n': *w++ = '\\'; *w++ = 'n'; break;
	case '\r': *w++ = '\\'; *w++ = 'r'; break;
	case '\t': *w++ = '\\'; *w++ = 't'; break;
	case '\b': *w++ = '\\'; *w++ = 'b'; break;
	case '\f': *w++ = '\\'; *w++ = 'f'; break;
	default:
		if (ch < 0x20) {
			memcpy(w, "\\u00", 4);
			w[4] = HEX[ch >> 4];
			w[5] = HEX[ch & 15];
			w += 6;
		} else {
			*w++ = ch;
		}
	}
	return w;
}

static inline int needs_escape(unsigned char ch)
{
	return ch < 0x20 || ch == '"' || ch == '\\';
}

/* A str (or None) as the JSON value orjson writes for it, appended to the
 * arena; *off and *len say where.  The str's UTF-8 is valid (CPython refuses
 * lone surrogates here, as orjson does), so only ASCII needs escaping. */
static int put_value(Config *c, PyObject *v, const char *prefix,
		     uint32_t *off, uint16_t *len)
{
	char tmp[TOK_MAX + 16], *w = tmp;
	size_t plen = strlen(prefix);
	const char *s;
	Py_ssize_t n;

	memcpy(w, prefix, plen);
	w += plen;
	if (v == Py_None) {
		memcpy(w, "null", 4);
		w += 4;
	} else if (PyUnicode_Check(v)) {
		if (!(s = PyUnicode_AsUTF8AndSize(v, &n)))
			return -1;
		*w++ = '"';
		/* stops within tmp: an escape is at most 6 bytes */
		for (Py_ssize_t i = 0; i < n && w - tmp <= TOK_MAX; i++)
			w = put_escaped(w, (unsigned char)s[i]);
		*w++ = '"';
		if (w - tmp > TOK_MAX) {
			PyErr_Format(PyExc_ValueError, "name too long: %R", v);
			return -1;
		}
	} else {
		PyErr_Format(PyExc_TypeError, "names must be str or None, not %R", v);
		return -1;
	}
	*off = (uint32_t)c->arena_len;
	*len = (uint16_t)(w - tmp);
	return arena_put(c, tmp, w - tmp);
}

static int small_int(PyObject *k, long lo, long hi, const char *what)
{
	long v = PyLong_Check(k) ? PyLong_AsLong(k) : -1;

	if (v == -1 && PyErr_Occurred())
		return -1;
	if (!PyLong_Check(k) || v < lo || v > hi) {
		PyErr_Format(PyExc_ValueError, "%s: %R is not an int in %ld..%ld",
			     what, k, lo, hi);
		return -1;
	}
	return (int)v;
}

/* {int: str|None} -> Tab */
static int parse_map(Config *c, Tab *t, PyObject *m, const char *what, long lo)
{
	PyObject *items = PyMapping_Items(m);
	Py_ssize_t n;

	if (!items)
		return -1;
	n = PyList_GET_SIZE(items);
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *kv = PyList_GET_ITEM(items, i);
		int k = small_int(PyTuple_GET_ITEM(kv, 0), lo, 255, what);

		if (k < 0 || put_value(c, PyTuple_GET_ITEM(kv, 1), "",
				       &t->off[k], &t->len[k]) < 0) {
			Py_DECREF(items);
			return -1;
		}
	}
	Py_DECREF(items);
	return 0;
}

/* states.NAMES -> Tab, and which states make closed_first local/remote. */
static int parse_states(Config *c, PyObject *seq)
{
	PyObject *fast = PySequence_Fast(seq, "states must be a sequence");
	Py_ssize_t n;

	if (!fast)
		return -1;
	n = PySequence_Fast_GET_SIZE(fast);
	if (n > 256) {
		PyErr_SetString(PyExc_ValueError, "more than 256 states");
		goto fail;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *v = PySequence_Fast_GET_ITEM(fast, i);

		/* None: no state has this number (0 is none in the kernel); a
		 * record carrying it is undecodable, as records.decode has it,
		 * not printed with a null the record contract does not allow */
		if (v == Py_None)
			continue;
		if (put_value(c, v, "", &c->states.off[i], &c->states.len[i]) < 0)
			goto fail;
		if (PyUnicode_Check(v)) {
			/* as records.closed_first tests the names */
			if (!PyUnicode_CompareWithASCIIString(v, "FIN_WAIT1") ||
			    !PyUnicode_CompareWithASCIIString(v, "CLOSING"))
				c->first[i] = 1;
			else if (!PyUnicode_CompareWithASCIIString(v, "CLOSE_WAIT"))
				c->first[i] = 2;
		}
	}
	Py_DECREF(fast);
	return 0;
fail:
	Py_DECREF(fast);
	return -1;
}

static int parse_timed(Config *c, PyObject *seq)
{
	PyObject *fast = PySequence_Fast(seq, "timed must be a sequence");
	PyObject *seen = PySet_New(NULL);
	Py_ssize_t n;

	if (!fast || !seen)
		goto fail;
	n = PySequence_Fast_GET_SIZE(fast);
	if (n > TIMED_MAX) {
		PyErr_Format(PyExc_ValueError, "more than %d timed states", TIMED_MAX);
		goto fail;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *pair = PySequence_Fast_GET_ITEM(fast, i), *name, *num;
		int k;

		if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
			PyErr_SetString(PyExc_TypeError, "timed: (name, number) tuples");
			goto fail;
		}
		name = PyTuple_GET_ITEM(pair, 0);
		num = PyTuple_GET_ITEM(pair, 1);
		if (!PyUnicode_Check(name)) {
			PyErr_SetString(PyExc_TypeError, "timed: names must be str");
			goto fail;
		}
		/* a repeated key would be one key in the reference's dict */
		if (PySet_Contains(seen, name)) {
			PyErr_Format(PyExc_ValueError, "timed: %R twice", name);
			goto fail;
		}
		if (PySet_Add(seen, name) < 0)
			goto fail;
		if ((k = small_int(num, 0, ST_NR_STATES - 1, "timed")) < 0)
			goto fail;
		c->timed_num[i] = (uint8_t)k;
		if (put_value(c, name, i ? "," : "{", &c->timed_off[i], &c->timed_len[i]) < 0 ||
		    arena_put(c, ":", 1) < 0)
			goto fail;
		c->timed_len[i]++;
	}
	c->ntimed = (int)n;
	Py_DECREF(fast);
	Py_DECREF(seen);
	return 0;
fail:
	Py_XDECREF(fast);
	Py_XDECREF(seen);
	return -1;
}

/* One str (or None) as JSON appended to the arena, any length (a cgroup
 * path can be long), escaped as orjson escapes it. */
static int put_json_long(Config *c, PyObject *v)
{
	const char *s;
	Py_ssize_t n;
	char *tmp, *w;
	int r;

	if (v == Py_None)
		return arena_put(c, "null", 4);
	if (!PyUnicode_Check(v)) {
		PyErr_Format(PyExc_TypeError, "cgroups: str or None, not %R", v);
		return -1;
	}
	if (!(s = PyUnicode_AsUTF8AndSize(v, &n)))
		return -1;
	if (n > 65536) {
		PyErr_SetString(PyExc_ValueError, "cgroups: a name over 64 KiB");
		return -1;
	}
	if (!(tmp = PyMem_Malloc(6 * n + 2)))
		return (PyErr_NoMemory(), -1);
	w = tmp;
	*w++ = '"';
	for (Py_ssize_t i = 0; i < n; i++)
		w = put_escaped(w, (unsigned char)s[i]);
	*w++ = '"';
	r = arena_put(c, tmp, w - tmp);
	PyMem_Free(tmp);
	return r;
}

static const char *const CG_KEYS[3] = {",\"cgroup\":", ",\"container\":", ",\"unit\":"};

/* {int id: (path, container, unit)} -> the cgroup table */
static int parse_cgroups(Config *c, PyObject *m)
{
	PyObject *items;
	Py_ssize_t n;
	uint32_t slots = 16;

	if (!m)
		return 0;
	if (!(items = PyMapping_Items(m)))
		return -1;
	n = PyList_GET_SIZE(items);
	while (slots < 2 * (uint64_t)n + 1)
		slots *= 2;
	if (!(c->cg = PyMem_Calloc(slots, sizeof(*c->cg)))) {
		Py_DECREF(items);
		return (PyErr_NoMemory(), -1);
	}
	c->cg_mask = slots - 1;
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *kv = PyList_GET_ITEM(items, i), *k = PyTuple_GET_ITEM(kv, 0);
		PyObject *t = PyTuple_GET_ITEM(kv, 1);
		uint64_t id = PyLong_Check(k) ? PyLong_AsUnsignedLongLong(k) : 0;
		size_t start = c->arena_len;
		uint32_t h;

		if (PyErr_Occurred() || !id) {
			PyErr_Clear();
			PyErr_Format(PyExc_ValueError, "cgroups: %R is no cgroup id", k);
			goto fail;
		}
		if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
			PyErr_SetString(PyExc_TypeError, "cgroups: (path, container, unit)");
			goto fail;
		}
		for (int j = 0; j < 3; j++)
			if (arena_put(c, CG_KEYS[j], strlen(CG_KEYS[j])) < 0 ||
			    put_json_long(c, PyTuple_GET_ITEM(t, j)) < 0)
				goto fail;
		for (h = (uint32_t)(id * 0x9E3779B97F4A7C15ULL >> 32) & c->cg_mask;
		     c->cg[h].id && c->cg[h].id != id; h = (h + 1) & c->cg_mask)
			;
		c->cg[h].id = id;
		c->cg[h].off = (uint32_t)start;
		c->cg[h].len = (uint32_t)(c->arena_len - start);
		if (c->cg[h].len > c->cg_maxlen)
			c->cg_maxlen = c->cg[h].len;
	}
	Py_DECREF(items);
	return 0;
fail:
	Py_DECREF(items);
	return -1;
}

static const struct cg_entry *cg_find(const Config *c, uint64_t id)
{
	if (!c->cg)
		return NULL;
	for (uint32_t h = (uint32_t)(id * 0x9E3779B97F4A7C15ULL >> 32) & c->cg_mask;
	     c->cg[h].id; h = (h + 1) & c->cg_mask)
		if (c->cg[h].id == id)
			return &c->cg[h];
	return NULL;
}

static const char *const TABLE_KEYS[] = {
	"states", "owner_from", "role", "reason", "via", "end", "errno", "timed",
	"source", "cgroups", NULL,
};

static PyObject *fmt_configure(PyObject *self, PyObject *args)
{
	PyObject *offset, *tables, *v;
	Config *c;
	long long off, rem;
	uint16_t len16;
	size_t maxtok = 14, timed = 2;	/* 14: "E-2147483648" */
	Tab *tabs[7];
	Py_ssize_t pos = 0;

	if (!PyArg_ParseTuple(args, "O!O!:configure", &PyLong_Type, &offset,
			      &PyDict_Type, &tables))
		return NULL;
	off = PyLong_AsLongLong(offset);
	if (off == -1 && PyErr_Occurred())
		return NULL;
	while (PyDict_Next(tables, &pos, &v, NULL)) {
		int known = 0;

		for (int i = 0; TABLE_KEYS[i]; i++)
			known |= PyUnicode_Check(v) && !PyUnicode_CompareWithASCIIString(v, TABLE_KEYS[i]);
		if (!known) {
			PyErr_Format(PyExc_ValueError, "configure: unknown table %R", v);
			return NULL;
		}
	}
	/* cgroups is optional: no table, every id unknown */
	for (int i = 0; TABLE_KEYS[i + 1]; i++)
		if (!PyDict_GetItemString(tables, TABLE_KEYS[i])) {
			PyErr_Format(PyExc_KeyError, "configure: no table %s", TABLE_KEYS[i]);
			return NULL;
		}

	if (!(c = PyMem_Calloc(1, sizeof(*c))))
		return PyErr_NoMemory();
	c->refs = 1;
	/* floor, as Python's divmod: the remainder is never negative */
	c->off_sec = off / 1000000000;
	rem = off % 1000000000;
	if (rem < 0) {
		rem += 1000000000;
		c->off_sec--;
	}
	c->off_ns = (uint32_t)rem;

#define TABLE(name) PyDict_GetItemString(tables, name)
	if (parse_states(c, TABLE("states")) < 0 ||
	    parse_map(c, &c->owner, TABLE("owner_from"), "owner_from", 0) < 0 ||
	    parse_map(c, &c->role, TABLE("role"), "role", 0) < 0 ||
	    parse_map(c, &c->reason, TABLE("reason"), "reason", 0) < 0 ||
	    parse_map(c, &c->via, TABLE("via"), "via", 0) < 0 ||
	    parse_map(c, &c->end, TABLE("end"), "end", 0) < 0 ||
	    parse_map(c, &c->err, TABLE("errno"), "errno", 1) < 0 ||
	    parse_timed(c, TABLE("timed")) < 0 ||
	    parse_cgroups(c, TABLE("cgroups")) < 0)
		goto fail;
	v = TABLE("source");
	if (!PyUnicode_Check(v)) {
		PyErr_SetString(PyExc_TypeError, "source must be str");
		goto fail;
	}
	if (arena_put(c, ",\"source\":", 10) < 0 ||
	    put_value(c, v, "", &c->tail_off, &len16) < 0 ||
	    arena_put(c, ",\"approx\":false}\n", 17) < 0)
		goto fail;
#undef TABLE
	c->tail_off -= 10;
	c->tail_len = 10 + len16 + 17;

	/* format() writes into a buffer sized from these, unchecked.  Fixed
	 * text (keys, timestamps, conn, addresses, numbers, a comm of 16 bytes
	 * escaped as \u00xx each) is under 500 bytes in a state record and
	 * under 600 in a closed one (STATE_FIXED, CLOSED_FIXED leave room);
	 * then the names: 6 in a state record; 21 in a closed one (16 path
	 * states with a comma each, owner_from, role, end, error, reason), and
	 * its timed states with a number of up to 20 digits each. */
	tabs[0] = &c->states; tabs[1] = &c->owner; tabs[2] = &c->role;
	tabs[3] = &c->reason; tabs[4] = &c->via; tabs[5] = &c->end; tabs[6] = &c->err;
	for (int t = 0; t < 7; t++)
		for (int i = 0; i < 256; i++)
			if (tabs[t]->len[i] > maxtok)
				maxtok = tabs[t]->len[i];
	for (int i = 0; i < c->ntimed; i++)
		timed += c->timed_len[i] + 20;
	/* and the context of a cgroup, at its longest */
	c->state_max = STATE_FIXED + 6 * maxtok + c->tail_len + c->cg_maxlen;
	c->closed_max = CLOSED_FIXED + 21 * (maxtok + 1) + timed + c->tail_len + c->cg_maxlen;

	config_decref(current);
	current = c;
	Py_RETURN_NONE;
fail:
	config_free(c);
	return NULL;
}

/* ---- output -------------------------------------------------------------- */

static inline char *put(char *w, const char *s, size_t n)
{
	memcpy(w, s, n);
	return w + n;
}

#define LIT(w, lit) put(w, lit, sizeof(lit) - 1)

static inline char *put_tok(char *w, const Config *c, const Tab *t, unsigned i)
{
	return put(w, c->arena + t->off[i], t->len[i]);
}

static const char DIGITS2[201] =
	"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
	"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
	"8081828384858687888990919293949596979899";

static inline char *put_u64(char *w, uint64_t v)
{
	char tmp[20];
	int i = 20;

	while (v >= 100) {
		unsigned d = (unsigned)(v % 100) * 2;

		v /= 100;
		tmp[--i] = DIGITS2[d + 1];
		tmp[--i] = DIGITS2[d];
	}
	if (v >= 10) {
		tmp[--i] = DIGITS2[v * 2 + 1];
		tmp[--i] = DIGITS2[v * 2];
	} else {
		tmp[--i] = '0' + (char)v;
	}
	return put(w, tmp + i, 20 - i);
}

/* "%x" % conn */
static inline char *put_hex(char *w, uint64_t v)
{
	char tmp[16];
	int i = 16;

	do {
		tmp[--i] = HEX[v & 15];
		v >>= 4;
	} while (v);
	return put(w, tmp + i, 16 - i);
}

static inline char *put_bool(char *w, int b)
{
	return b ? LIT(w, "true") : LIT(w, "false");
}

/* Formatter.ts: wall = mono + offset, floor-divided into a second (as
 * time.gmtime + strftime("%Y-%m-%dT%H:%M:%S") give it) and microseconds.
 * gmtime runs once per second and slot: a batch's records, and the start_ts
 * of closed records, come from a few seconds. */
typedef struct {
	int64_t sec;
	char text[19];
} TsSlot;

#define TS_SLOTS 4

static char *put_ts(char *w, const Config *c, TsSlot *cache, uint64_t mono)
{
	int64_t sec = (int64_t)(mono / 1000000000) + c->off_sec;
	uint32_t frac = (uint32_t)(mono % 1000000000) + c->off_ns;
	uint32_t us;
	TsSlot *s;

	if (frac >= 1000000000) {
		frac -= 1000000000;
		sec++;
	}
	s = &cache[sec & (TS_SLOTS - 1)];
	if (s->sec != sec) {
		struct tm tm;
		time_t t = (time_t)sec;
		char tmp[32];

		/* A 64-bit offset keeps years in 1677..2850: always 4 digits, as
		 * glibc's %Y prints them.  Anything else is refused, not guessed. */
		if (!gmtime_r(&t, &tm) || tm.tm_year < 1000 - 1900 || tm.tm_year > 9999 - 1900)
			return NULL;
		snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02d",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
			 tm.tm_hour, tm.tm_min, tm.tm_sec);
		memcpy(s->text, tmp, 19);
		s->sec = sec;
	}
	*w++ = '"';
	w = put(w, s->text, 19);
	*w++ = '.';
	us = frac / 1000;
	w = put(w, DIGITS2 + (us / 10000) * 2, 2);
	w = put(w, DIGITS2 + (us / 100 % 100) * 2, 2);
	w = put(w, DIGITS2 + (us % 100) * 2, 2);
	return LIT(w, "Z\"");
}

/* socket.inet_ntop: IPv4 from the last 4 bytes (glibc prints "%u.%u.%u.%u",
 * done by hand here), IPv6 by glibc itself, which Python calls too. */
static char *put_addr(char *w, int family, const __u8 raw[16])
{
	*w++ = '"';
	if (family == 4) {
		for (int i = 12; i < 16; i++) {
			if (i > 12)
				*w++ = '.';
			w = put_u64(w, raw[i]);
		}
	} else {
		if (!inet_ntop(AF_INET6, raw, w, INET6_ADDRSTRLEN))
			return NULL;
		w += strlen(w);
	}
	*w++ = '"';
	return w;
}

/* Length of the valid UTF-8 sequence at s (s[0] >= 0x80, n >= 1 bytes
 * left), or minus the length of its maximal invalid subpart: CPython's
 * decoder hands each such subpart to its error handler (Unicode's
 * "maximal subparts"), a truncated but valid start included. */
static inline int utf8_seq(const unsigned char *s, size_t n)
{
	unsigned c = s[0], lo = 0x80, hi = 0xBF;
	int need;

	if (c < 0xC2)			/* continuation byte, or overlong C0/C1 */
		return -1;
	if (c < 0xE0) {
		need = 1;
	} else if (c < 0xF0) {
		need = 2;
		if (c == 0xE0)
			lo = 0xA0;	/* no overlong 3-byte forms */
		else if (c == 0xED)
			hi = 0x9F;	/* no surrogates */
	} else if (c < 0xF5) {
		need = 3;
		if (c == 0xF0)
			lo = 0x90;	/* no overlong 4-byte forms */
		else if (c == 0xF4)
			hi = 0x8F;	/* nothing past U+10FFFF */
	} else {
		return -1;
	}
	for (int k = 1; k <= need; k++) {
		if ((size_t)k >= n || s[k] < lo || s[k] > hi)
			return -k;
		lo = 0x80;		/* only the second byte has a narrower range */
		hi = 0xBF;
	}
	return need + 1;
}

/* records.Formatter.comm (tracer/text.py decode): up to the first NUL,
 * decoded with "backslashreplace", then as orjson writes the str.  At most
 * 2 + 16 * 6 bytes. */
static char *put_comm(char *w, const char raw[ST_COMM_LEN])
{
	const unsigned char *s = (const unsigned char *)raw;
	const unsigned char *nul = memchr(s, 0, ST_COMM_LEN);
	size_t n = nul ? (size_t)(nul - s) : ST_COMM_LEN, i = 0;

	*w++ = '"';
	while (i < n) {
		int k;

		if (s[i] < 0x80) {
			if (needs_escape(s[i]))
				w = put_escaped(w, s[i]);
			else
				*w++ = s[i];
			i++;
			continue;
		}
		k = utf8_seq(s + i, n - i);
		if (k > 0) {
			w = put(w, (const char *)s + i, k);
			i += k;
		} else {
			/* "backslashreplace": \xNN for each byte of the
			 * invalid subpart, the backslash escaped for JSON */
			for (; k < 0; k++, i++) {
				*w++ = '\\';
				*w++ = '\\';
				*w++ = 'x';
				*w++ = "0123456789abcdef"[s[i] >> 4];
				*w++ = "0123456789abcdef"[s[i] & 15];
			}
		}
	}
	*w++ = '"';
	return w;
}

/* ---- records --------------------------------------------------------------
 *
 * Each writer returns the end of what it wrote, or NULL for a record the
 * Python reference raises on: records.state/closed look the raw numbers up
 * in the named states and the enum dicts (KeyError) and
 * Formatter.addr knows families 4 and 6 only (KeyError).  The caller then
 * takes the record back and counts it undecodable.
 */

static char *put_owner(char *w, const Config *c, __u32 pid, const char *comm,
		       unsigned owner_from, unsigned role)
{
	w = LIT(w, ",\"pid\":");
	if (pid) {
		w = put_u64(w, pid);
		w = LIT(w, ",\"comm\":");
		w = put_comm(w, comm);
	} else {
		w = LIT(w, "null,\"comm\":null");
	}
	w = LIT(w, ",\"owner_from\":");
	w = put_tok(w, c, &c->owner, owner_from);
	w = LIT(w, ",\"role\":");
	return put_tok(w, c, &c->role, role);
}

/* cgroup ids format() met that the table does not hold */
typedef struct {
	uint64_t ids[MISSING_MAX];
	int n;
} Missing;

/* records.Formatter.where: netns, uid, and the cgroup's three fields. */
static char *put_where(char *w, const Config *c, Missing *miss, __u32 netns, __u32 uid,
		       __u64 cgroup)
{
	const struct cg_entry *e;

	w = LIT(w, ",\"netns\":");
	w = netns ? put_u64(w, netns) : LIT(w, "null");
	w = LIT(w, ",\"uid\":");
	w = uid != ST_NONE_U32 ? put_u64(w, uid) : LIT(w, "null");
	if (cgroup && (e = cg_find(c, cgroup)))
		return put(w, c->arena + e->off, e->len);
	if (cgroup) {
		/* to be resolved by the caller, who then asks again */
		int i = 0;

		while (i < miss->n && miss->ids[i] != cgroup)
			i++;
		if (i == miss->n && miss->n < MISSING_MAX)
			miss->ids[miss->n++] = cgroup;
	}
	return LIT(w, ",\"cgroup\":null,\"container\":null,\"unit\":null");
}

/* "ts", "conn" and the 4-tuple, common to both records. */
static char *put_head(char *w, const Config *c, TsSlot *tc, __u64 ts, __u64 conn,
		      int family, const __u8 *saddr, __u16 sport,
		      const __u8 *daddr, __u16 dport)
{
	if (!(w = put_ts(w, c, tc, ts)))
		return NULL;
	w = LIT(w, ",\"conn\":\"");
	w = put_hex(w, conn);
	w = LIT(w, "\",\"family\":");
	w = put_u64(w, family);
	w = LIT(w, ",\"laddr\":");
	if (!(w = put_addr(w, family, saddr)))
		return NULL;
	w = LIT(w, ",\"lport\":");
	w = put_u64(w, sport);
	w = LIT(w, ",\"raddr\":");
	if (!(w = put_addr(w, family, daddr)))
		return NULL;
	w = LIT(w, ",\"rport\":");
	return put_u64(w, dport);
}

/* records.state */
static char *put_state(char *w, const Config *c, TsSlot *tc, Missing *miss,
		       const struct st_state *r)
{
	if ((r->family != 4 && r->family != 6) ||
	    !c->states.len[r->oldstate] || !c->states.len[r->newstate] ||
	    !c->owner.len[r->owner_from] || !c->role.len[r->role] ||
	    !c->via.len[r->via] || !c->reason.len[r->reason])
		return NULL;

	w = LIT(w, "{\"type\":\"state\",\"ts\":");
	if (!(w = put_head(w, c, tc, r->ts_ns, r->conn, r->family,
			   r->saddr, r->sport, r->daddr, r->dport)))
		return NULL;
	w = LIT(w, ",\"old\":");
	w = put_tok(w, c, &c->states, r->oldstate);
	w = LIT(w, ",\"new\":");
	w = put_tok(w, c, &c->states, r->newstate);
	w = LIT(w, ",\"in_old_ns\":");
	if (r->flags & ST_F_IN_OLD)
		w = put_u64(w, r->in_old_ns);
	else
		w = LIT(w, "null");
	w = LIT(w, ",\"lower_bound\":");
	w = put_bool(w, r->flags & ST_F_LOWER);
	w = put_owner(w, c, r->pid, r->comm, r->owner_from, r->role);
	w = put_where(w, c, miss, r->netns, r->uid, r->cgroup);
	w = LIT(w, ",\"via\":");
	w = put_tok(w, c, &c->via, r->via);
	w = LIT(w, ",\"reason\":");
	w = put_tok(w, c, &c->reason, r->reason);
	return put(w, c->arena + c->tail_off, c->tail_len);
}

/* records.closed */
static char *put_closed(char *w, const Config *c, TsSlot *tc, Missing *miss,
			const struct st_closed *r)
{
	/* path[:path_len] of a 16-byte path, as Python slices it */
	unsigned npath = r->path_len < ST_PATH_LEN ? r->path_len : ST_PATH_LEN;
	int first = 0;

	if ((r->family != 4 && r->family != 6) ||
	    !c->owner.len[r->owner_from] || !c->role.len[r->role] ||
	    !c->end.len[r->end] || !c->reason.len[r->reason])
		return NULL;
	for (unsigned i = 0; i < npath; i++)
		if (!c->states.len[r->path[i]])
			return NULL;

	w = LIT(w, "{\"type\":\"closed\",\"ts\":");
	if (!(w = put_head(w, c, tc, r->ts_ns, r->conn, r->family,
			   r->saddr, r->sport, r->daddr, r->dport)))
		return NULL;
	w = put_owner(w, c, r->pid, r->comm, r->owner_from, r->role);
	w = put_where(w, c, miss, r->netns, r->uid, r->cgroup);
	w = LIT(w, ",\"start_ts\":");
	if (!(w = put_ts(w, c, tc, r->start_ns)))
		return NULL;
	w = LIT(w, ",\"lifetime_ns\":");
	w = put_u64(w, r->ts_ns > r->start_ns ? r->ts_ns - r->start_ns : 0);
	w = LIT(w, ",\"states\":");
	for (int i = 0; i < c->ntimed; i++) {
		w = put(w, c->arena + c->timed_off[i], c->timed_len[i]);
		w = put_u64(w, r->spent[c->timed_num[i]]);
	}
	w = c->ntimed ? LIT(w, "}") : LIT(w, "{}");
	w = LIT(w, ",\"path\":[");
	for (unsigned i = 0; i < npath; i++) {
		w = put_tok(w, c, &c->states, r->path[i]);
		*w++ = ',';
		/* records.closed_first: local wins wherever it is in the path */
		if (c->first[r->path[i]] == 1 || (c->first[r->path[i]] == 2 && !first))
			first = c->first[r->path[i]];
	}
	w = LIT(w, "\"CLOSE\"],\"closed_first\":");
	if (first == 1)
		w = LIT(w, "\"local\"");
	else if (first == 2)
		w = LIT(w, "\"remote\"");
	else
		w = LIT(w, "null");
	w = LIT(w, ",\"end\":");
	w = put_tok(w, c, &c->end, r->end);
	w = LIT(w, ",\"error\":");
	if (!r->error) {
		w = LIT(w, "null");
	} else if (r->error > 0 && r->error < 256 && c->err.len[r->error]) {
		w = put_tok(w, c, &c->err, r->error);
	} else {
		w += sprintf(w, "\"E%d\"", (int)r->error);	/* errno_name's fallback */
	}
	/* records.reset_of */
	w = LIT(w, ",\"reset\":");
	if (r->flags & ST_F_RST_RECV)
		w = r->flags & ST_F_RST_SENT ? LIT(w, "\"both\"") : LIT(w, "\"received\"");
	else
		w = r->flags & ST_F_RST_SENT ? LIT(w, "\"sent\"") : LIT(w, "null");
	w = LIT(w, ",\"reason\":");
	w = put_tok(w, c, &c->reason, r->reason);
	w = LIT(w, ",\"lower_bound\":");
	w = put_bool(w, r->flags & ST_F_LOWER);
	/* records.closed_record's health, in its order; null unless read */
	{
		static const char *const key[8] = {
			",\"bytes_sent\":", ",\"bytes_received\":", ",\"segs_out\":",
			",\"segs_in\":", ",\"retrans\":", ",\"rtt_us\":", ",\"rttvar_us\":",
			",\"syn_retrans\":",
		};
		const uint64_t val[8] = {
			r->bytes_acked, r->bytes_received, r->segs_out, r->segs_in, r->retrans,
			r->srtt_us, r->rttvar_us, r->syn_retrans,
		};
		int known = r->flags & ST_F_HEALTH;

		for (int i = 0; i < 8; i++) {
			w = put(w, key[i], strlen(key[i]));
			if (known && !(i == 7 && r->syn_retrans == ST_NONE_U32))
				w = put_u64(w, val[i]);
			else
				w = LIT(w, "null");
		}
	}
	return put(w, c->arena + c->tail_off, c->tail_len);
}

/* records.walk + decode: the lines of the span's records, written at out
 * (room for out_bound() bytes); returns their length. */
static size_t format_span(const Config *c, const unsigned char *p, size_t end,
			  char *out, Py_ssize_t *bad, Py_ssize_t *lines, Missing *miss)
{
	TsSlot tc[TS_SLOTS];
	char *w = out;
	size_t off = 0;

	for (int i = 0; i < TS_SLOTS; i++)
		tc[i].sec = INT64_MIN;	/* no second put_ts can ask for */
	/* off only grows, by at most 2^30 + 15 a step: no overflow */
	while (off + 8 <= end) {
		__u32 length, kind;
		size_t size, body = off + 8;
		char *next = NULL;

		memcpy(&length, p + off, 4);
		size = length & ~(BUSY | DISCARD);
		off = (body + size + 7) & ~(size_t)7;
		if (length & (BUSY | DISCARD))
			continue;		/* not committed, or dropped: silently */
		if (size >= 4 && body + size <= end)
			memcpy(&kind, p + body, 4);
		else
			kind = 0;
		/* copied out: the span need not be aligned */
		if (kind == ST_KIND_STATE && size == sizeof(struct st_state)) {
			struct st_state r;

			memcpy(&r, p + body, sizeof(r));
			next = put_state(w, c, tc, miss, &r);
		} else if (kind == ST_KIND_CLOSED && size == sizeof(struct st_closed)) {
			struct st_closed r;

			memcpy(&r, p + body, sizeof(r));
			next = put_closed(w, c, tc, miss, &r);
		}
		if (next) {
			w = next;
			++*lines;
		} else {
			++*bad;		/* whatever it wrote is overwritten */
		}
	}
	return w - out;
}

/* What format_span can write for a span of len bytes: each record that
 * makes a line takes its struct's size and an 8-byte header of the span,
 * so no more lines than that fit, at their longest. */
static Py_ssize_t out_bound(const Config *c, Py_ssize_t len)
{
	size_t per_state = c->state_max / (8 + sizeof(struct st_state)) + 1;
	size_t per_closed = c->closed_max / (8 + sizeof(struct st_closed)) + 1;
	size_t per = per_state > per_closed ? per_state : per_closed;
	size_t fixed = c->state_max > c->closed_max ? c->state_max : c->closed_max;

	if ((size_t)len > ((size_t)PY_SSIZE_T_MAX - fixed) / per)
		return -1;
	return (Py_ssize_t)((size_t)len * per + fixed);
}

/* Where lines go.  Fresh pages cost a page fault each (several us in a VM)
 * and glibc maps every large allocation afresh, so a small or middling span
 * is written into a buffer kept between calls, then copied into a bytes
 * object of its exact size (which malloc then serves from pages it has);
 * a large one straight into a bytes object of the bound, shrunk in place
 * afterwards: its pages are fresh either way, so no copy. */
#define SCRATCH_MAX	(16 << 20)

static char *scratch;
static size_t scratch_cap;
static int scratch_busy;		/* a call without the GIL has it */

static PyObject *fmt_format(PyObject *self, PyObject *arg)
{
	Py_buffer view;
	Config *c = current;
	Py_ssize_t bad = 0, lines = 0, bound;
	PyObject *bytes = NULL;
	Missing miss;
	char *out;
	size_t n;
	int use_scratch;

	if (!c) {
		PyErr_SetString(PyExc_RuntimeError, "tracer._fmt: configure() first");
		return NULL;
	}
	if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
		return NULL;
	if ((bound = out_bound(c, view.len)) < 0) {
		PyBuffer_Release(&view);
		return PyErr_NoMemory();
	}
	use_scratch = bound <= SCRATCH_MAX && !scratch_busy;
	if (use_scratch && scratch_cap < (size_t)bound) {
		char *p = PyMem_RawRealloc(scratch, bound);

		if (!p) {
			PyBuffer_Release(&view);
			return PyErr_NoMemory();
		}
		scratch = p;
		scratch_cap = bound;
	}
	if (use_scratch) {
		out = scratch;
		scratch_busy = 1;
	} else if ((bytes = PyBytes_FromStringAndSize(NULL, bound))) {
		out = PyBytes_AS_STRING(bytes);		/* nobody else sees it yet */
	} else {
		PyBuffer_Release(&view);
		return NULL;
	}
	miss.n = 0;
	c->refs++;			/* a configure() meanwhile must not free it */
	if (view.len >= NOGIL_MIN) {
		Py_BEGIN_ALLOW_THREADS			/* view pins the span */
		n = format_span(c, view.buf, view.len, out, &bad, &lines, &miss);
		Py_END_ALLOW_THREADS
	} else {
		n = format_span(c, view.buf, view.len, out, &bad, &lines, &miss);
	}
	if (miss.n) {
		/* nothing of it: the caller resolves these and asks again */
		n = 0;
		bad = 0;
		lines = 0;
	}
	config_decref(c);
	PyBuffer_Release(&view);
	if (use_scratch) {
		scratch_busy = 0;
		bytes = PyBytes_FromStringAndSize(scratch, n);
	} else {
		_PyBytes_Resize(&bytes, n);
	}
	if (!bytes)
		return NULL;
	PyObject *ids = PyTuple_New(miss.n);
	if (!ids) {
		Py_DECREF(bytes);
		return NULL;
	}
	for (int i = 0; i < miss.n; i++) {
		PyObject *v = PyLong_FromUnsignedLongLong(miss.ids[i]);

		if (!v) {
			Py_DECREF(ids);
			Py_DECREF(bytes);
			return NULL;
		}
		PyTuple_SET_ITEM(ids, i, v);
	}
	return Py_BuildValue("(NnNn)", bytes, bad, ids, lines);
}

/* How many bytes of a ring buffer's unread span hold committed records:
 * headers are followed up to the first record a producer has reserved
 * but not yet committed (BUSY), or one that does not fit in the span.
 * The reader releases that much to the producers.  A loop per record in
 * Python cost 0.17 us a record, a third of the consumer's time. */
static PyObject *fmt_committed(PyObject *self, PyObject *arg)
{
	Py_buffer view;
	size_t off = 0, end;
	const char *p;

	if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
		return NULL;
	p = view.buf;
	end = (size_t)view.len;
	while (off + 8 <= end) {
		__u32 length;
		size_t next;

		memcpy(&length, p + off, 4);
		if (length & BUSY)
			break;
		next = (off + 8 + (length & ~(BUSY | DISCARD)) + 7) & ~(size_t)7;
		if (next > end)
			break;
		off = next;
	}
	PyBuffer_Release(&view);
	return PyLong_FromSize_t(off);
}

/* For tests/test_fmt.py: no line may be longer than these. */
static PyObject *fmt_bounds(PyObject *self, PyObject *unused)
{
	if (!current) {
		PyErr_SetString(PyExc_RuntimeError, "tracer._fmt: configure() first");
		return NULL;
	}
	return Py_BuildValue("(nn)", (Py_ssize_t)current->state_max,
			     (Py_ssize_t)current->closed_max);
}

PyDoc_STRVAR(configure_doc,
"configure(wall_offset_ns, tables)\n--\n\n"
"Copy the names format() prints into C storage; see the module docstring\n"
"for the shape of tables.");

PyDoc_STRVAR(format_doc,
"format(span)\n--\n\n"
"(NDJSON bytes, undecodable count, missing cgroup ids, lines) for a span\n"
"of ring-buffer bytes, the same bytes as orjson.dumps of records.decode's\n"
"dicts; lines: how many records it holds (counting the newlines again\n"
"cost a quarter of the consumer's CPU).  When cgroup ids are missing\n"
"from the configured table, nothing is formatted (b'', 0, ids, 0):\n"
"configure again with them, then ask again.");

static PyMethodDef methods[] = {
	{"configure", fmt_configure, METH_VARARGS, configure_doc},
	{"format", fmt_format, METH_O, format_doc},
	{"committed", fmt_committed, METH_O,
	 "committed(span) -> bytes of it that hold committed records"},
	{"_bounds", fmt_bounds, METH_NOARGS, "(state, closed): longest line of each"},
	{NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_fmt",
	"Ring-buffer records -> NDJSON, in C (see tracer/_fmt.c).\n\n"
	"configure(wall_offset_ns, tables): wall_offset_ns an int (signed 64-bit);\n"
	"tables a dict: states (sequence of str|None by state number),\n"
	"owner_from/role/reason/via/end ({int 0..255: str|None}), errno\n"
	"({int 1..255: str}), timed (sequence of (str, int) pairs), source (str).\n"
	"format(span) -> (bytes, undecodable count, missing cgroup ids).\n"
	"committed(span) -> bytes of a ring buffer's unread span, up to the first\n"
	"record not yet committed.",
	-1, methods,
};

PyMODINIT_FUNC PyInit__fmt(void)
{
	PyObject *m = PyModule_Create(&module);

	if (!m)
		return NULL;
	if (PyModule_AddIntConstant(m, "STATE_SIZE", sizeof(struct st_state)) < 0 ||
	    PyModule_AddIntConstant(m, "CLOSED_SIZE", sizeof(struct st_closed)) < 0 ||
	    PyModule_AddIntConstant(m, "KIND_STATE", ST_KIND_STATE) < 0 ||
	    PyModule_AddIntConstant(m, "KIND_CLOSED", ST_KIND_CLOSED) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
