/* _native.c - the eBPF backend's per-record hot path, in C.
 *
 * What it replaces, for a batch of ring-buffer records and no user-space
 * filter: records.decode -> ConnTable.apply -> orjson, i.e. Pipeline.feed
 * and JsonSink.  It reads struct st_event from bpf/socktrace.h (the one
 * definition of the wire format) and updates the *same* Python connection
 * table (ConnTable.live/tw/exits, Conn and Reservoir slots), so every view
 * of the table (dumps, summary, report) stays Python's and sees one table.
 *
 * Only the common records are handled here: a transition of a socket the
 * table knows, or the first transition of a new socket whose owner the
 * kernel gave.  Anything else (a socket older than the tracer, an owner
 * learnt late, a lower-bound duration, a connection's end with its
 * ``closed`` summary, a full table) goes to the Python code it would have
 * gone to anyway, record by record and in order, before the table is
 * touched.  tests/test_native.py feeds both paths the same records and
 * compares every output byte and the tables they leave.
 *
 * Why C: Python spends ~3 us a record building a dict, updating the table
 * and serialising it (bench/hotpath.py); under a storm that competes with
 * the storm for the same two cores (bench/README.md).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <arpa/inet.h>
#include <linux/types.h>
#include <stdint.h>
#include <string.h>

#include "socktrace.h"

/* A slot of a __slots__ class, found by its member descriptor's offset. */
#define SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))

static void slot_set(PyObject *o, Py_ssize_t off, PyObject *v)
{
	PyObject *old = SLOT(o, off);
	Py_INCREF(v);
	SLOT(o, off) = v;
	Py_XDECREF(old);
}

typedef struct {
	char *p;
	size_t len, cap;
} Buf;

static int buf_grow(Buf *b, size_t more)
{
	size_t cap = b->cap ? b->cap : 65536;
	char *p;

	while (cap < b->len + more)
		cap *= 2;
	if (cap == b->cap)
		return 0;
	p = PyMem_Realloc(b->p, cap);
	if (!p) {
		PyErr_NoMemory();
		return -1;
	}
	b->p = p;
	b->cap = cap;
	return 0;
}

static inline void put(Buf *b, const char *s, size_t n)
{
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

#define PUTS(b, lit) put(b, lit, sizeof(lit) - 1)

static inline void put_u64(Buf *b, unsigned long long v)
{
	char tmp[20];
	int i = 20;

	do {
		tmp[--i] = '0' + v % 10;
		v /= 10;
	} while (v);
	put(b, tmp + i, 20 - i);
}

static inline void put_hex(Buf *b, unsigned long long v)
{
	static const char digits[] = "0123456789abcdef";
	char tmp[16];
	int i = 16;

	do {
		tmp[--i] = digits[v & 15];
		v >>= 4;
	} while (v);
	put(b, tmp + i, 16 - i);
}

/* Text JSON carries as is: printable ASCII without quote or backslash. */
static int plain(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] < 0x20 || s[i] > 0x7e || s[i] == '"' || s[i] == '\\')
			return 0;
	return 1;
}

/* A pre-encoded JSON string ("...", quotes included) per index. */
typedef struct {
	char text[40];
	size_t len;
} Lit;

#define MAX_ENUM 16

typedef struct {
	PyObject_HEAD
	PyObject *table, *fmt;
	PyObject *live, *tw, *exits, *meta_cache;
	PyObject *addrs[2], *comms;		/* Formatter caches: [v4, v6], comm */
	PyObject *names, *owners, *ports;	/* tuples indexed by wire numbers */
	PyObject *slow, *unpack_from, *dumps, *conn_type;
	PyObject *role_client, *role_listener, *role_server;	/* Conn roles */
	Py_ssize_t c_laddr, c_lport, c_raddr, c_rport, c_meta, c_state, c_blob;
	Py_ssize_t x_num, x_to, x_dur, r_count, r_max, r_due;
	long long cap, wall_offset;
	int st_close, st_listen, st_syn_sent, st_syn_recv;
	int st_fin_wait1, st_fin_wait2, st_close_wait, st_time_wait, st_last_ack;
	Lit name[MAX_ENUM], owner[MAX_ENUM], via[MAX_ENUM], reason[MAX_ENUM], source;
	int n_names, n_owners, n_via, n_reason;
	/* Formatter's millisecond cache, copied (see Formatter.ts) */
	long long ms_ns;
	char ms_text[40];
	size_t ms_len;
	int ms_valid;
	Buf out;			/* a batch's lines, kept between batches */
} Feeder;

static int slot_offset(PyObject *type, const char *name, Py_ssize_t *off)
{
	PyObject *d = PyObject_GetAttrString(type, name);

	if (!d)
		return -1;
	if (!Py_IS_TYPE(d, &PyMemberDescr_Type) ||
	    ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
		PyErr_Format(PyExc_TypeError, "%R.%s is not a __slots__ member", type, name);
		Py_DECREF(d);
		return -1;
	}
	*off = ((PyMemberDescrObject *)d)->d_member->offset;
	Py_DECREF(d);
	return 0;
}

/* seq[i] (str or None) -> JSON literals; *n = len(seq). */
static int literals(PyObject *dumps, PyObject *seq, Lit *out, int *n)
{
	Py_ssize_t len = PySequence_Size(seq);

	if (len < 0)
		return -1;
	if (len > MAX_ENUM) {
		PyErr_SetString(PyExc_ValueError, "enum too large");
		return -1;
	}
	for (Py_ssize_t i = 0; i < len; i++) {
		PyObject *v = PySequence_GetItem(seq, i), *j;

		if (!v)
			return -1;
		j = PyObject_CallOneArg(dumps, v);
		Py_DECREF(v);
		if (!j)
			return -1;
		if (PyBytes_GET_SIZE(j) >= (Py_ssize_t)sizeof(out[i].text)) {
			Py_DECREF(j);
			PyErr_SetString(PyExc_ValueError, "enum name too long");
			return -1;
		}
		out[i].len = PyBytes_GET_SIZE(j);
		memcpy(out[i].text, PyBytes_AS_STRING(j), out[i].len);
		Py_DECREF(j);
	}
	*n = (int)len;
	return 0;
}

static long long attr_ll(PyObject *o, const char *name)
{
	PyObject *v = PyObject_GetAttrString(o, name);
	long long r;

	if (!v)
		return -1;
	r = PyLong_AsLongLong(v);
	Py_DECREF(v);
	return r;
}

static int state_num(PyObject *numbers, const char *name, int *out)
{
	PyObject *v = PyDict_GetItemString(numbers, name);

	if (!v) {
		PyErr_Format(PyExc_KeyError, "%s", name);
		return -1;
	}
	*out = (int)PyLong_AsLong(v);
	return 0;
}

/* Feeder(table, fmt, slow, unpack_from, dumps, conn_type, exits_type,
 *        reservoir_type, meta_cache, numbers, names, owners, vias, reasons,
 *        ports, source) */
static int Feeder_init(Feeder *f, PyObject *args, PyObject *kw)
{
	PyObject *table, *fmt, *slow, *unpack_from, *dumps, *conn_type, *exits_type;
	PyObject *res_type, *meta_cache, *numbers, *names, *owners, *vias, *reasons;
	PyObject *ports, *source, *addrs, *src;
	Lit src_lit[1];
	int n;

	if (!PyArg_ParseTuple(args, "OOOOOOOOO!O!O!OOOO!U", &table, &fmt, &slow,
			      &unpack_from, &dumps, &conn_type, &exits_type, &res_type,
			      &PyDict_Type, &meta_cache, &PyDict_Type, &numbers,
			      &PyTuple_Type, &names, &owners, &vias, &reasons,
			      &PyTuple_Type, &ports, &source))
		return -1;
	if (!PyType_Check(conn_type) || PyTuple_GET_SIZE(ports) != 65536) {
		PyErr_SetString(PyExc_TypeError, "bad conn_type or ports");
		return -1;
	}
#define KEEP(field, value) do { Py_INCREF(value); Py_XSETREF(f->field, value); } while (0)
	KEEP(table, table);
	KEEP(fmt, fmt);
	KEEP(slow, slow);
	KEEP(unpack_from, unpack_from);
	KEEP(dumps, dumps);
	KEEP(conn_type, conn_type);
	KEEP(meta_cache, meta_cache);
	KEEP(names, names);
	KEEP(ports, ports);
	Py_XSETREF(f->role_client, PyUnicode_InternFromString("client"));
	Py_XSETREF(f->role_listener, PyUnicode_InternFromString("listener"));
	Py_XSETREF(f->role_server, PyUnicode_InternFromString("server"));
	if (!f->role_client || !f->role_listener || !f->role_server)
		return -1;
#define TAKE(field, obj, name) do { PyObject *v_ = PyObject_GetAttrString(obj, name); \
		if (!v_) \
			return -1; \
		Py_XSETREF(f->field, v_); \
	} while (0)
	TAKE(live, table, "live");
	TAKE(tw, table, "tw");
	TAKE(exits, table, "exits");
	TAKE(comms, fmt, "_comms");
	if (!PyDict_Check(f->live) || !PyDict_Check(f->tw) || !PyDict_Check(f->exits) ||
	    !PyDict_Check(f->comms)) {
		PyErr_SetString(PyExc_TypeError, "table/formatter caches must be dicts");
		return -1;
	}
	addrs = PyObject_GetAttrString(fmt, "_addrs");
	if (!addrs)
		return -1;
	for (int i = 0; i < 2; i++) {
		PyObject *fam = PyLong_FromLong(i ? 6 : 4);
		PyObject *d = PyObject_GetItem(addrs, fam);

		Py_DECREF(fam);
		if (!d || !PyDict_Check(d)) {
			Py_XDECREF(d);
			Py_DECREF(addrs);
			PyErr_SetString(PyExc_TypeError, "Formatter._addrs must hold dicts");
			return -1;
		}
		Py_XSETREF(f->addrs[i], d);
	}
	Py_DECREF(addrs);
	KEEP(owners, owners);
	if (slot_offset(conn_type, "laddr", &f->c_laddr) ||
	    slot_offset(conn_type, "lport", &f->c_lport) ||
	    slot_offset(conn_type, "raddr", &f->c_raddr) ||
	    slot_offset(conn_type, "rport", &f->c_rport) ||
	    slot_offset(conn_type, "meta", &f->c_meta) ||
	    slot_offset(conn_type, "state", &f->c_state) ||
	    slot_offset(conn_type, "blob", &f->c_blob) ||
	    slot_offset(exits_type, "num", &f->x_num) ||
	    slot_offset(exits_type, "to", &f->x_to) ||
	    slot_offset(exits_type, "durations", &f->x_dur) ||
	    slot_offset(res_type, "count", &f->r_count) ||
	    slot_offset(res_type, "max", &f->r_max) ||
	    slot_offset(res_type, "due", &f->r_due))
		return -1;
	if (state_num(numbers, "CLOSE", &f->st_close) ||
	    state_num(numbers, "LISTEN", &f->st_listen) ||
	    state_num(numbers, "SYN_SENT", &f->st_syn_sent) ||
	    state_num(numbers, "SYN_RECV", &f->st_syn_recv) ||
	    state_num(numbers, "FIN_WAIT1", &f->st_fin_wait1) ||
	    state_num(numbers, "FIN_WAIT2", &f->st_fin_wait2) ||
	    state_num(numbers, "CLOSE_WAIT", &f->st_close_wait) ||
	    state_num(numbers, "TIME_WAIT", &f->st_time_wait) ||
	    state_num(numbers, "LAST_ACK", &f->st_last_ack))
		return -1;
	if (literals(dumps, names, f->name, &f->n_names) ||
	    literals(dumps, owners, f->owner, &f->n_owners) ||
	    literals(dumps, vias, f->via, &f->n_via) ||
	    literals(dumps, reasons, f->reason, &f->n_reason))
		return -1;
	src = PyTuple_Pack(1, source);
	if (!src || literals(dumps, src, src_lit, &n)) {
		Py_XDECREF(src);
		return -1;
	}
	Py_DECREF(src);
	f->source = src_lit[0];
	f->cap = attr_ll(table, "cap");
	f->wall_offset = attr_ll(fmt, "wall_offset");
	if (PyErr_Occurred())
		return -1;
	f->ms_valid = 0;
	return 0;
}

static int Feeder_traverse(Feeder *f, visitproc visit, void *arg)
{
	Py_VISIT(f->table);
	Py_VISIT(f->fmt);
	Py_VISIT(f->slow);
	return 0;
}

static int Feeder_clear(Feeder *f)
{
	Py_CLEAR(f->table);
	Py_CLEAR(f->fmt);
	Py_CLEAR(f->live);
	Py_CLEAR(f->tw);
	Py_CLEAR(f->exits);
	Py_CLEAR(f->meta_cache);
	Py_CLEAR(f->addrs[0]);
	Py_CLEAR(f->addrs[1]);
	Py_CLEAR(f->comms);
	Py_CLEAR(f->names);
	Py_CLEAR(f->owners);
	Py_CLEAR(f->ports);
	Py_CLEAR(f->slow);
	Py_CLEAR(f->unpack_from);
	Py_CLEAR(f->dumps);
	Py_CLEAR(f->conn_type);
	Py_CLEAR(f->role_client);
	Py_CLEAR(f->role_listener);
	Py_CLEAR(f->role_server);
	return 0;
}

static void Feeder_dealloc(Feeder *f)
{
	PyObject_GC_UnTrack(f);
	Feeder_clear(f);
	PyMem_Free(f->out.p);
	Py_TYPE(f)->tp_free((PyObject *)f);
}

/* Re-read the Formatter's millisecond cache (Python code may have moved it). */
static int load_ms(Feeder *f)
{
	PyObject *ns = PyObject_GetAttrString(f->fmt, "_ms_ns");
	PyObject *text;
	int overflow = 0;
	Py_ssize_t len;
	const char *s;

	if (!ns)
		return -1;
	f->ms_ns = PyLong_AsLongLongAndOverflow(ns, &overflow);
	Py_DECREF(ns);
	if (PyErr_Occurred())
		return -1;
	text = PyObject_GetAttrString(f->fmt, "_ms_text");
	if (!text)
		return -1;
	s = PyUnicode_AsUTF8AndSize(text, &len);
	if (!s || len >= (Py_ssize_t)sizeof(f->ms_text)) {
		Py_DECREF(text);
		if (!PyErr_Occurred())
			PyErr_SetString(PyExc_ValueError, "bad Formatter._ms_text");
		return -1;
	}
	memcpy(f->ms_text, s, len);
	f->ms_len = len;
	Py_DECREF(text);
	f->ms_valid = !overflow;
	return 0;
}

/* The record's microseconds past f->ms_text (Formatter.ts, inlined). */
static int ts_us(Feeder *f, unsigned long long ts_ns)
{
	long long wall = (long long)ts_ns + f->wall_offset;
	long long diff = wall - f->ms_ns;
	PyObject *r;
	long us;

	if (f->ms_valid && diff >= 0 && diff < 1000000)
		return (int)(diff / 1000);
	r = PyObject_CallMethod(f->fmt, "_new_ms", "L", wall);
	if (!r)
		return -1;
	us = PyLong_AsLong(r);
	Py_DECREF(r);
	if (us < 0 || us >= 1000 || load_ms(f) < 0) {
		if (!PyErr_Occurred())
			PyErr_SetString(PyExc_ValueError, "Formatter._new_ms out of range");
		return -1;
	}
	return (int)us;
}

/* Formatter.addr / Formatter.comm through their caches: new references. */
static PyObject *cached(PyObject *cache, PyObject *fmt, const char *method,
			int family, const __u8 *raw, Py_ssize_t n)
{
	PyObject *key = PyBytes_FromStringAndSize((const char *)raw, n);
	PyObject *v;

	if (!key)
		return NULL;
	v = PyDict_GetItemWithError(cache, key);
	if (v) {
		Py_INCREF(v);
	} else if (!PyErr_Occurred()) {
		v = family ? PyObject_CallMethod(fmt, method, "iO", family, key)
			   : PyObject_CallMethod(fmt, method, "O", key);
	}
	Py_DECREF(key);
	return v;
}

/* A JSON string for a Python str: as is when plain, else orjson's. */
static int put_str(Feeder *f, Buf *b, PyObject *s)
{
	Py_ssize_t n;
	const char *u = PyUnicode_AsUTF8AndSize(s, &n);
	PyObject *j;

	if (!u)
		return -1;
	if (plain(u, n)) {
		if (buf_grow(b, n + 2))
			return -1;
		PUTS(b, "\"");
		put(b, u, n);
		PUTS(b, "\"");
		return 0;
	}
	j = PyObject_CallOneArg(f->dumps, s);
	if (!j)
		return -1;
	n = PyBytes_GET_SIZE(j);
	if (buf_grow(b, n) == 0)
		put(b, PyBytes_AS_STRING(j), n);
	Py_DECREF(j);
	return PyErr_Occurred() ? -1 : 0;
}

static int put_addr(Buf *b, int family, const __u8 *raw)
{
	char text[INET6_ADDRSTRLEN];

	PUTS(b, "\"");
	if (family == 4) {
		/* inet_ntop's own IPv4 text goes through sprintf: 4x slower */
		for (int i = 12; i < 16; i++) {
			put_u64(b, raw[i]);
			if (i < 15)
				PUTS(b, ".");
		}
	} else {
		if (!inet_ntop(AF_INET6, raw, text, sizeof(text))) {
			PyErr_SetFromErrno(PyExc_OSError);
			return -1;
		}
		put(b, text, strlen(text));
	}
	PUTS(b, "\"");
	return 0;
}

static inline void put_lit(Buf *b, const Lit *l)
{
	put(b, l->text, l->len);
}

/* A new Conn, as ConnTable._new makes it for a socket born while we watch. */
static PyObject *new_conn(Feeder *f, const struct st_event *e, PyObject *role)
{
	PyTypeObject *tp = (PyTypeObject *)f->conn_type;
	PyObject *conn = tp->tp_alloc(tp, 0), *v, *key, *meta, *pid, *comm, *owner, *fam;
	char *p;

	if (!conn)
		return NULL;
	if (!(v = cached(f->addrs[e->family == 6], f->fmt, "addr", e->family, e->saddr, 16)))
		goto fail;
	SLOT(conn, f->c_laddr) = v;
	if (!(v = cached(f->addrs[e->family == 6], f->fmt, "addr", e->family, e->daddr, 16)))
		goto fail;
	SLOT(conn, f->c_raddr) = v;
	slot_set(conn, f->c_lport, PyTuple_GET_ITEM(f->ports, e->sport));
	slot_set(conn, f->c_rport, PyTuple_GET_ITEM(f->ports, e->dport));
	slot_set(conn, f->c_state, PyTuple_GET_ITEM(f->names, e->oldstate));
	comm = cached(f->comms, f->fmt, "comm", 0, (const __u8 *)e->comm, ST_COMM_LEN);
	if (!comm)
		goto fail;
	pid = PyLong_FromUnsignedLong(e->pid);
	fam = PyLong_FromLong(e->family);
	owner = PyTuple_GET_ITEM(f->owners, e->owner_from);
	key = pid && fam ? PyTuple_Pack(6, pid, comm, owner, fam, role, Py_False) : NULL;
	Py_XDECREF(pid);
	Py_XDECREF(fam);
	Py_DECREF(comm);
	if (!key)
		goto fail;
	meta = PyDict_SetDefault(f->meta_cache, key, key);	/* interned: table._meta */
	Py_DECREF(key);
	if (!meta)
		goto fail;
	slot_set(conn, f->c_meta, meta);
	v = PyBytes_FromStringAndSize(NULL, 16);		/* table._HEAD: sk, since */
	if (!v)
		goto fail;
	p = PyBytes_AS_STRING(v);
	memcpy(p, &e->skaddr, 8);
	memcpy(p + 8, &e->ts_ns, 8);
	SLOT(conn, f->c_blob) = v;
	return conn;
fail:
	Py_DECREF(conn);
	return NULL;
}

/* ,"ts":..,"sk":..,"family":..,"laddr":..,"lport":..,"raddr":..,"rport":.. */
static int put_head(Buf *b, Feeder *f, const struct st_event *e, int us, long family)
{
	char t[4] = {'0' + us / 100, '0' + us / 10 % 10, '0' + us % 10, 'Z'};

	PUTS(b, ",\"ts\":\"");
	put(b, f->ms_text, f->ms_len);
	put(b, t, 4);
	PUTS(b, "\",\"sk\":\"");
	put_hex(b, e->skaddr);
	PUTS(b, "\",\"family\":");
	put_u64(b, family);
	PUTS(b, ",\"laddr\":");
	if (put_addr(b, e->family, e->saddr) < 0)
		return -1;
	PUTS(b, ",\"lport\":");
	put_u64(b, e->sport);
	PUTS(b, ",\"raddr\":");
	if (put_addr(b, e->family, e->daddr) < 0)
		return -1;
	PUTS(b, ",\"rport\":");
	put_u64(b, e->dport);
	return 0;
}

/* ,"pid":..,"comm":..,"owner_from":..  -- the record's own owner, else (a
 * softirq transition) the one the table knows for the socket (meta). */
static int put_owner(Buf *b, Feeder *f, const struct st_event *e, PyObject *meta)
{
	PUTS(b, ",\"pid\":");
	if (e->pid) {
		size_t clen = strnlen(e->comm, ST_COMM_LEN);

		put_u64(b, e->pid);
		PUTS(b, ",\"comm\":");
		if (plain(e->comm, clen)) {
			PUTS(b, "\"");
			put(b, e->comm, clen);
			PUTS(b, "\"");
		} else {
			PyObject *c = cached(f->comms, f->fmt, "comm", 0,
					     (const __u8 *)e->comm, ST_COMM_LEN);
			int r = c ? put_str(f, b, c) : -1;

			Py_XDECREF(c);
			if (r < 0 || buf_grow(b, 512) < 0)
				return -1;
		}
		PUTS(b, ",\"owner_from\":");
		put_lit(b, &f->owner[e->owner_from]);
	} else if (PyTuple_GET_ITEM(meta, 0) != Py_None) {
		PyObject *pid = PyTuple_GET_ITEM(meta, 0);

		if (!PyLong_Check(pid)) {
			PyErr_SetString(PyExc_TypeError, "pid is not an int");
			return -1;
		}
		put_u64(b, PyLong_AsUnsignedLongLong(pid));
		PUTS(b, ",\"comm\":");
		if (put_str(f, b, PyTuple_GET_ITEM(meta, 1)) < 0 || buf_grow(b, 512) < 0)
			return -1;
		PUTS(b, ",\"owner_from\":");
		if (put_str(f, b, PyTuple_GET_ITEM(meta, 2)) < 0 || buf_grow(b, 512) < 0)
			return -1;
	} else {
		PUTS(b, "null,\"comm\":null,\"owner_from\":");
		put_lit(b, &f->owner[e->owner_from]);
	}
	return 0;
}

/* The ``closed`` record of a connection that just ended: ConnTable._closed,
 * read from the Conn's blob (its steps: state number, ns spent). */
static int put_closed(Buf *b, Feeder *f, const struct st_event *e, int us,
		      PyObject *conn, PyObject *meta)
{
	PyObject *blob = SLOT(conn, f->c_blob), *role = PyTuple_GET_ITEM(meta, 4);
	const unsigned char *steps = (const unsigned char *)PyBytes_AS_STRING(blob) + 8;
	Py_ssize_t nsteps = (PyBytes_GET_SIZE(blob) - 16) / 9;
	unsigned long long spent[MAX_ENUM] = {0}, lifetime = 0, ns;
	int order[MAX_ENUM], nseen = 0, seen[MAX_ENUM] = {0}, last = e->oldstate;
	int local = 0, remote = 0;
	const char *end;

	if (role == f->role_listener ||
	    (role != Py_None && PyUnicode_Check(role) &&
	     PyUnicode_Compare(role, f->role_listener) == 0))
		return 0;				/* a listener's end is no connection's */
	if (buf_grow(b, 1024 + nsteps * 24) < 0)
		return -1;
	for (Py_ssize_t i = 0; i < nsteps; i++) {
		int num = steps[i * 9];

		if (num >= f->n_names || num == 0) {
			PyErr_SetString(PyExc_ValueError, "bad state in a Conn blob");
			return -1;
		}
		memcpy(&ns, steps + i * 9 + 1, 8);
		if (!seen[num]++)
			order[nseen++] = num;
		spent[num] += ns;
		lifetime += ns;
		local |= num == f->st_fin_wait1;
		remote |= num == f->st_close_wait;
		last = num;
	}
	if (last == f->st_syn_sent)
		end = (e->flags & ST_F_IN_OLD ? e->in_old_ns : 0) < 3000000000ULL ?
		      "\"refused\"" : "\"timeout\"";
	else if (last == f->st_time_wait || last == f->st_last_ack)
		end = "\"normal\"";
	else if (last == f->st_fin_wait2 && e->reason == ST_REASON_EXPIRED)
		end = "\"timeout\"";
	else if (last == f->st_fin_wait2 && e->reason == ST_REASON_REUSED)
		end = "\"normal\"";
	else
		end = "\"reset\"";
	PUTS(b, "{\"type\":\"closed\"");
	if (put_head(b, f, e, us, PyLong_AsLong(PyTuple_GET_ITEM(meta, 3))) < 0 ||
	    put_owner(b, f, e, meta) < 0)
		return -1;
	PUTS(b, ",\"role\":");
	if (role == Py_None)
		PUTS(b, "null");
	else if (put_str(f, b, role) < 0)
		return -1;
	/* room for the rest: 13 states and their sums, the path, the tail */
	if (buf_grow(b, 1024 + nsteps * 24) < 0)
		return -1;
	PUTS(b, ",\"lifetime_ns\":");
	put_u64(b, lifetime);
	PUTS(b, ",\"states\":{");
	for (int i = 0; i < nseen; i++) {
		if (i)
			PUTS(b, ",");
		put_lit(b, &f->name[order[i]]);
		PUTS(b, ":");
		put_u64(b, spent[order[i]]);
	}
	PUTS(b, "},\"path\":[");
	for (Py_ssize_t i = 0; i < nsteps; i++) {
		put_lit(b, &f->name[steps[i * 9]]);
		PUTS(b, ",");
	}
	put_lit(b, &f->name[f->st_close]);
	PUTS(b, "],\"closed_first\":");
	if (local)
		PUTS(b, "\"local\"");
	else if (remote)
		PUTS(b, "\"remote\"");
	else
		PUTS(b, "null");
	PUTS(b, ",\"end\":");
	put(b, end, strlen(end));
	PUTS(b, ",\"source\":");
	put_lit(b, &f->source);
	if (PyObject_IsTrue(PyTuple_GET_ITEM(meta, 5)))
		PUTS(b, ",\"lower_bound\":true");
	PUTS(b, "}\n");
	return 0;
}

/* One record through the table, its line appended to *b.  Returns 1 when
 * the record must go the Python way instead (nothing was touched), 0 when
 * done, -1 on error. */
static int feed_one(Feeder *f, Buf *b, const struct st_event *e)
{
	int state = e->kind == ST_KIND_STATE, in_old = e->flags & ST_F_IN_OLD;
	int old = e->oldstate, new = e->newstate, us, ret = -1;
	PyObject *skk = NULL, *twk = NULL, *conn, *meta, *old_name, *new_name;
	PyObject *ex = NULL, *to, *res, *n, *blob, *nb;
	Py_ssize_t blen;
	PyObject *held = NULL;		/* our reference to conn */
	int from_live = 0, born = 0;

	/* -- what only Python handles: decided before anything changes -- */
	if ((!state && e->kind != ST_KIND_HANDOFF) || (e->family != 4 && e->family != 6) ||
	    !old || old >= f->n_names || !new || new >= f->n_names ||
	    e->owner_from >= f->n_owners || e->via >= f->n_via || e->reason >= f->n_reason)
		return 1;
	old_name = PyTuple_GET_ITEM(f->names, old);
	new_name = PyTuple_GET_ITEM(f->names, new);
	if (!(skk = PyLong_FromUnsignedLongLong(e->skaddr)))
		return -1;
	if (e->twaddr) {
		if (!(twk = PyLong_FromUnsignedLongLong(e->twaddr)))
			goto out;
		conn = PyDict_GetItemWithError(f->tw, twk);
		if (!conn && !PyErr_Occurred()) {
			conn = PyDict_GetItemWithError(f->live, skk);
			from_live = conn != NULL;
		}
	} else {
		conn = PyDict_GetItemWithError(f->live, skk);
	}
	if (PyErr_Occurred())
		goto out;
	if (conn) {
		if (Py_TYPE(conn) != (PyTypeObject *)f->conn_type)
			goto python;
		meta = SLOT(conn, f->c_meta);
		if (!meta || !PyTuple_CheckExact(meta) || PyTuple_GET_SIZE(meta) != 6)
			goto python;
		if (e->pid && PyTuple_GET_ITEM(meta, 0) == Py_None)
			goto python;				/* Conn.set_owner */
		if (!in_old && PyTuple_GET_ITEM(meta, 5) != Py_False)
			goto python;				/* a lower bound */
		Py_INCREF(conn);
	} else {
		PyObject *role;

		if (!e->pid || !state)
			goto python;
		if (old == f->st_close)
			role = new == f->st_syn_sent ? f->role_client :
			       new == f->st_listen ? f->role_listener : Py_None;
		else if (old == f->st_listen && new == f->st_syn_recv)
			role = f->role_server;
		else
			goto python;				/* older than the tracer */
		if (PyDict_GET_SIZE(f->live) + PyDict_GET_SIZE(f->tw) >= f->cap)
			goto python;				/* ConnTable._evict */
		if (!(conn = new_conn(f, e, role)))
			goto out;
		born = 1;
		meta = SLOT(conn, f->c_meta);
	}
	held = conn;

	/* -- the table: ConnTable.apply -- */
	if (born || from_live) {
		if (from_live && PyDict_DelItem(f->live, skk) < 0)
			goto out;
		if (PyDict_SetItem(twk ? f->tw : f->live, twk ? twk : skk, conn) < 0)
			goto out;
	}
	if (!state) {
		ret = 0;		/* a hand-off: the socket now lives on as a timewait */
		goto out;
	}
	ex = PyDict_GetItemWithError(f->exits, old_name);
	if (ex)
		Py_INCREF(ex);
	else if (PyErr_Occurred() || !(ex = PyObject_CallMethod(f->table, "_exits", "O", old_name)))
		goto out;
	to = SLOT(ex, f->x_to);
	n = PyDict_GetItemWithError(to, new_name);
	if (!n && PyErr_Occurred())
		goto out;
	n = PyLong_FromLongLong(n ? PyLong_AsLongLong(n) + 1 : 1);
	if (!n || PyDict_SetItem(to, new_name, n) < 0) {
		Py_XDECREF(n);
		goto out;
	}
	Py_DECREF(n);
	res = SLOT(ex, f->x_dur);
	blob = SLOT(conn, f->c_blob);
	blen = PyBytes_GET_SIZE(blob);
	if (in_old && res != Py_None) {
		/* adding to the Reservoir: count, max, take() when due */
		long long count = PyLong_AsLongLong(SLOT(res, f->r_count)) + 1;
		unsigned long long max = PyLong_AsUnsignedLongLong(SLOT(res, f->r_max));
		long long due = PyLong_AsLongLong(SLOT(res, f->r_due));

		if (PyErr_Occurred())
			goto out;
		if (!(n = PyLong_FromLongLong(count)))
			goto out;
		slot_set(res, f->r_count, n);
		Py_DECREF(n);
		if (e->in_old_ns > max) {
			if (!(n = PyLong_FromUnsignedLongLong(e->in_old_ns)))
				goto out;
			slot_set(res, f->r_max, n);
			Py_DECREF(n);
		}
		if (count >= due) {
			n = PyObject_CallMethod(res, "take", "K", (unsigned long long)e->in_old_ns);
			if (!n)
				goto out;
			Py_DECREF(n);
		}
		/* the blob's since becomes a step, then the new since */
		long num = PyLong_AsLong(SLOT(ex, f->x_num));
		char *p;

		if (PyErr_Occurred() || !(nb = PyBytes_FromStringAndSize(NULL, blen + 9)))
			goto out;
		p = PyBytes_AS_STRING(nb);
		memcpy(p, PyBytes_AS_STRING(blob), blen - 8);
		p[blen - 8] = (char)num;
		memcpy(p + blen - 7, &e->in_old_ns, 8);
		memcpy(p + blen + 1, &e->ts_ns, 8);
	} else {
		if (!(nb = PyBytes_FromStringAndSize(NULL, blen)))
			goto out;
		memcpy(PyBytes_AS_STRING(nb), PyBytes_AS_STRING(blob), blen - 8);
		memcpy(PyBytes_AS_STRING(nb) + blen - 8, &e->ts_ns, 8);
	}
	slot_set(conn, f->c_blob, nb);
	Py_DECREF(nb);
	slot_set(conn, f->c_state, new_name);

	/* -- the line: records.decode's fields, in the schema's order -- */
	if ((us = ts_us(f, e->ts_ns)) < 0 || buf_grow(b, 512) < 0)
		goto out;
	PUTS(b, "{\"type\":\"state\"");
	if (put_head(b, f, e, us, e->family) < 0)
		goto out;
	PUTS(b, ",\"old\":");
	put_lit(b, &f->name[old]);
	PUTS(b, ",\"new\":");
	put_lit(b, &f->name[new]);
	PUTS(b, ",\"in_old_ns\":");
	if (in_old)
		put_u64(b, e->in_old_ns);
	else
		PUTS(b, "null");
	if (put_owner(b, f, e, meta) < 0)
		goto out;
	PUTS(b, ",\"source\":");
	put_lit(b, &f->source);
	if (e->via) {
		PUTS(b, ",\"via\":");
		put_lit(b, &f->via[e->via]);
	}
	if (e->reason) {
		PUTS(b, ",\"reason\":");
		put_lit(b, &f->reason[e->reason]);
	}
	PUTS(b, "}\n");
	if (new == f->st_close) {
		/* the connection ends: out of the table, and its summary */
		if (twk) {
			if (PyDict_DelItem(f->tw, twk) < 0)
				goto out;
		} else if (PyDict_GetItemWithError(f->live, skk) == conn) {
			if (PyDict_DelItem(f->live, skk) < 0)
				goto out;
		} else if (PyErr_Occurred()) {
			goto out;
		}
		if (put_closed(b, f, e, us, conn, meta) < 0)
			goto out;
	}
	ret = 0;
out:
	Py_XDECREF(ex);
	Py_XDECREF(held);
	Py_XDECREF(skk);
	Py_XDECREF(twk);
	return ret;
python:
	ret = 1;
	goto out;
}

/* The Python way for one record: Pipeline's own code, its lines appended. */
static int python_way(Feeder *f, Buf *b, PyObject *data, Py_ssize_t off)
{
	PyObject *item = PyObject_CallFunction(f->unpack_from, "On", data, off);
	PyObject *lines;
	int r = -1;

	if (!item)
		return -1;
	lines = PyObject_CallOneArg(f->slow, item);
	Py_DECREF(item);
	if (!lines)
		return -1;
	if (!PyBytes_Check(lines)) {
		PyErr_SetString(PyExc_TypeError, "slow() must return bytes");
	} else if (buf_grow(b, PyBytes_GET_SIZE(lines)) == 0) {
		put(b, PyBytes_AS_STRING(lines), PyBytes_GET_SIZE(lines));
		r = load_ms(f);		/* Python may have moved the millisecond */
	}
	Py_DECREF(lines);
	return r;
}

PyDoc_STRVAR(feed_doc,
"feed(data, stride, offset) -> bytes\n\n"
"The NDJSON lines of the records in *data*: one struct st_event every\n"
"*stride* bytes, the first at *offset* (a ring buffer's committed span).");

static PyObject *Feeder_feed(Feeder *f, PyObject *args)
{
	PyObject *data, *result = NULL;
	Py_ssize_t stride, offset;
	Py_buffer in;
	Buf *b = &f->out;

	if (!PyArg_ParseTuple(args, "Onn", &data, &stride, &offset))
		return NULL;
	if (!f->table) {
		PyErr_SetString(PyExc_RuntimeError, "Feeder not initialised");
		return NULL;
	}
	if (offset < 0 || stride < offset + (Py_ssize_t)sizeof(struct st_event)) {
		PyErr_SetString(PyExc_ValueError, "stride too small for struct st_event");
		return NULL;
	}
	if (PyObject_GetBuffer(data, &in, PyBUF_SIMPLE) < 0)
		return NULL;
	b->len = 0;
	if (load_ms(f) < 0)
		goto done;
	for (Py_ssize_t at = 0; at + stride <= in.len; at += stride) {
		struct st_event e;
		int r;

		memcpy(&e, (const char *)in.buf + at + offset, sizeof(e));
		if (buf_grow(b, 1024) < 0)
			goto done;
		r = feed_one(f, b, &e);
		if (r < 0 || (r == 1 && python_way(f, b, data, at + offset) < 0))
			goto done;
	}
	result = PyBytes_FromStringAndSize(b->p ? b->p : "", b->len);
done:
	PyBuffer_Release(&in);
	if (b->cap > (16u << 20)) {	/* a huge batch: do not keep its buffer */
		PyMem_Free(b->p);
		memset(b, 0, sizeof(*b));
	}
	return result;
}

static PyMethodDef Feeder_methods[] = {
	{"feed", (PyCFunction)Feeder_feed, METH_VARARGS, feed_doc},
	{NULL},
};

static PyTypeObject FeederType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "tracer._native.Feeder",
	.tp_basicsize = sizeof(Feeder),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.tp_doc = "decode -> connection table -> NDJSON for raw st_event records",
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)Feeder_init,
	.tp_dealloc = (destructor)Feeder_dealloc,
	.tp_traverse = (traverseproc)Feeder_traverse,
	.tp_clear = (inquiry)Feeder_clear,
	.tp_methods = Feeder_methods,
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_native",
	"socktrace's per-record hot path in C (see _native.c).", -1, NULL,
};

PyMODINIT_FUNC PyInit__native(void)
{
	PyObject *m;

	if (PyType_Ready(&FeederType) < 0)
		return NULL;
	m = PyModule_Create(&module);
	if (!m)
		return NULL;
	Py_INCREF(&FeederType);
	if (PyModule_AddObject(m, "Feeder", (PyObject *)&FeederType) < 0 ||
	    PyModule_AddIntConstant(m, "EVENT_SIZE", sizeof(struct st_event)) < 0) {
		Py_DECREF(&FeederType);
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
