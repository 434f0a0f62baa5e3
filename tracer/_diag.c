/* _diag.c - the hot loop of tracer/sockdiag.py's parser, in C.
 *
 * parse_chunk(buf, end, out, info, cls, cache4, cache6, addr4, addr6)
 *     -> True, False or None
 *
 * Walks buf[0:end], netlink messages answering an inet_diag dump, exactly
 * as sockdiag._parse_chunk_py does, and appends one cls instance per socket
 * to the list *out* (cls is sockdiag.DiagSocket, a tuple subclass of 14
 * fields; the instance is made as tuple.__new__(cls, fields) makes it).
 * Returns True when NLMSG_DONE ended the chunk, False when the chunk ended
 * without it.
 *
 * Only the well-formed case is handled here: inet_diag messages of a known
 * family, NLMSG_NOOP, and a final NLMSG_DONE with error 0.  Anything else
 * (an NLMSG_ERROR, even an ACK; a bad length; an unknown family or type;
 * bytes after DONE) returns None and leaves *out* as it found it, so that
 * the Python parser reads the chunk again and says what is wrong in the
 * one wording it has.  So there is one definition of every error.
 *
 * Addresses become text through the two caches sockdiag keeps (dict: the
 * 16 raw bytes -> str) and, on a miss, its own addr4/addr6 functions, which
 * fill the cache: the text has one definition too (RFC 5952, IPv4-mapped
 * as ss shows it).  A per-call table remembers the last few addresses so
 * that the common case makes no bytes object at all.
 *
 * The layout (include/uapi/linux/netlink.h, inet_diag.h; see the module
 * docstring of tracer/sockdiag.py): nlmsghdr (16 bytes: u32 len, u16 type,
 * ...), then inet_diag_msg at 16: family 16, state 17, timer 18, sport 20
 * and dport 22 (big-endian), src 24 and dst 40 (16 bytes each), cookie
 * 60 (two u32), expires 68, rqueue 72, wqueue 76, uid 80, inode 84; 88 in
 * all.  Attributes (u16 len, u16 type, 4-aligned) follow; INET_DIAG_INFO
 * (2) is struct tcp_info, whose tcpi_last_data_recv is the u32 at 52.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define NLMSG_HDRLEN_ 16
#define MSG_LEN 88
#define T_NOOP 1
#define T_DONE 3
#define T_BY_FAMILY 20
#define INET_DIAG_INFO 2
#define NLA_TYPE_MASK 0x3FFF
#define TCPI_LAST_DATA_RECV 52
#define NFIELDS 15
/* struct tcp_info (include/uapi/linux/tcp.h): what a socket's health is
 * read from, as sockdiag._HEALTH reads it */
#define TCPI_RTT 68
#define TCPI_RTTVAR 72
#define TCPI_TOTAL_RETRANS 100
#define TCPI_BYTES_ACKED 120
#define TCPI_BYTES_RECEIVED 128
#define TCPI_SEGS_OUT 136
#define TCPI_SEGS_IN 140
#define TCPI_HEALTH_LEN 144
#define SLOTS 64            /* per-call address memo, direct-mapped */

static uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint16_t rd16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }

struct slot {
    unsigned char raw[16];
    int family;             /* 0: empty */
    PyObject *text;         /* strong reference */
};

struct ctx {
    struct slot memo[SLOTS];
    PyObject *cache[2];     /* dicts: IPv4, IPv6 */
    PyObject *fn[2];        /* sockdiag._addr4, _addr6 */
};

/* Borrowed-like: the returned str is owned by the memo (never NULL unless
 * an exception is set). */
static PyObject *addr_text(struct ctx *c, int v6, const unsigned char *raw)
{
    uint32_t h = rd32(raw) ^ rd32(raw + 4) ^ rd32(raw + 8) ^ rd32(raw + 12);
    h ^= h >> 16;
    h ^= h >> 8;
    struct slot *s = &c->memo[(h ^ (unsigned)v6) & (SLOTS - 1)];
    int fam = v6 ? 6 : 4;
    if (s->family == fam && memcmp(s->raw, raw, 16) == 0)
        return s->text;
    PyObject *key = PyBytes_FromStringAndSize((const char *)raw, 16);
    if (key == NULL)
        return NULL;
    PyObject *text = PyDict_GetItemWithError(c->cache[v6], key);   /* borrowed */
    if (text != NULL) {
        Py_INCREF(text);
    } else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    } else {
        text = PyObject_CallOneArg(c->fn[v6], key);
        if (text == NULL) {
            Py_DECREF(key);
            return NULL;
        }
    }
    Py_DECREF(key);
    Py_XDECREF(s->text);
    memcpy(s->raw, raw, 16);
    s->family = fam;
    s->text = text;
    return text;
}

static void ctx_clear(struct ctx *c)
{
    for (int i = 0; i < SLOTS; i++)
        Py_CLEAR(c->memo[i].text);
}

/* One socket: cls(fields), appended to out.  0, or -1 with an exception. */
static int append_socket(struct ctx *c, PyTypeObject *cls, PyObject *out,
                         const unsigned char *m, PyObject *ldr, PyObject *health)
{
    int v6 = m[16] == AF_INET6;
    PyObject *laddr = addr_text(c, v6, m + 24);
    if (laddr == NULL)
        return -1;
    PyObject *raddr = addr_text(c, v6, m + 40);
    if (raddr == NULL)
        return -1;
    uint64_t cookie = (uint64_t)rd32(m + 60) | ((uint64_t)rd32(m + 64) << 32);
    PyObject *t = cls->tp_alloc(cls, NFIELDS);
    if (t == NULL)
        return -1;
    PyObject *v[NFIELDS] = {
        PyLong_FromLong(v6 ? 6 : 4), laddr, PyLong_FromLong(ntohs(rd16(m + 20))),
        raddr, PyLong_FromLong(ntohs(rd16(m + 22))), PyLong_FromLong(m[17]),
        PyLong_FromUnsignedLongLong(cookie), PyLong_FromUnsignedLong(rd32(m + 84)),
        PyLong_FromUnsignedLong(rd32(m + 80)), PyLong_FromLong(m[18]),
        PyLong_FromUnsignedLong(rd32(m + 68)), PyLong_FromUnsignedLong(rd32(m + 72)),
        PyLong_FromUnsignedLong(rd32(m + 76)), ldr, health,
    };
    Py_INCREF(laddr);
    Py_INCREF(raddr);
    Py_INCREF(ldr);
    Py_INCREF(health);
    int bad = 0;
    for (int i = 0; i < NFIELDS; i++) {
        if (v[i] == NULL)
            bad = 1;
        PyTuple_SET_ITEM(t, i, v[i]);   /* a tuple subclass: tuple's own layout */
    }
    if (!bad)
        bad = PyList_Append(out, t) < 0;
    Py_DECREF(t);
    return bad ? -1 : 0;
}

/* 1 DONE, 0 end of chunk, -1 exception, -2 punt to Python. */
static int walk(struct ctx *c, PyTypeObject *cls, PyObject *out,
                const unsigned char *buf, Py_ssize_t end, int info)
{
    Py_ssize_t off = 0;
    while (off < end) {
        Py_ssize_t left = end - off;
        if (left < NLMSG_HDRLEN_)
            return -2;
        const unsigned char *m = buf + off;
        uint32_t mlen = rd32(m);
        uint16_t type = rd16(m + 4);
        if (mlen < NLMSG_HDRLEN_ || mlen > (uint64_t)left)
            return -2;
        if (type == T_BY_FAMILY) {
            if (mlen < MSG_LEN || (m[16] != AF_INET && m[16] != AF_INET6))
                return -2;
            PyObject *ldr = Py_None, *health = Py_None;
            PyObject *own = NULL, *own_health = NULL;
            if (info) {
                Py_ssize_t a = MSG_LEN;
                while (a < (Py_ssize_t)mlen) {
                    uint16_t alen = 0, atype = 0;
                    if (mlen - a >= 4) {
                        alen = rd16(m + a);
                        atype = rd16(m + a + 2);
                    }
                    if (alen < 4 || alen > mlen - a) {
                        Py_XDECREF(own);
                        Py_XDECREF(own_health);
                        return -2;
                    }
                    if ((atype & NLA_TYPE_MASK) == INET_DIAG_INFO &&
                        alen >= 4 + TCPI_LAST_DATA_RECV + 4) {
                        const unsigned char *ti = m + a + 4;
                        Py_XDECREF(own);
                        Py_CLEAR(own_health);
                        health = Py_None;
                        own = PyLong_FromUnsignedLong(rd32(ti + TCPI_LAST_DATA_RECV));
                        if (own == NULL)
                            return -1;
                        ldr = own;
                        if (alen >= 4 + TCPI_HEALTH_LEN) {
                            uint64_t acked, received;
                            memcpy(&acked, ti + TCPI_BYTES_ACKED, 8);
                            memcpy(&received, ti + TCPI_BYTES_RECEIVED, 8);
                            own_health = Py_BuildValue(
                                "(KKkkkkk)", (unsigned long long)acked,
                                (unsigned long long)received,
                                (unsigned long)rd32(ti + TCPI_SEGS_OUT),
                                (unsigned long)rd32(ti + TCPI_SEGS_IN),
                                (unsigned long)rd32(ti + TCPI_TOTAL_RETRANS),
                                (unsigned long)rd32(ti + TCPI_RTT),
                                (unsigned long)rd32(ti + TCPI_RTTVAR));
                            if (own_health == NULL) {
                                Py_DECREF(own);
                                return -1;
                            }
                            health = own_health;
                        }
                    }
                    a += (alen + 3) & ~3;
                }
            }
            int r = append_socket(c, cls, out, m, ldr, health);
            Py_XDECREF(own);
            Py_XDECREF(own_health);
            if (r < 0)
                return -1;
        } else if (type == T_DONE) {
            if (mlen >= NLMSG_HDRLEN_ + 4 && (int32_t)rd32(m + 16) < 0)
                return -2;
            if (off + (Py_ssize_t)((mlen + 3) & ~3u) < end)
                return -2;
            return 1;
        } else if (type != T_NOOP) {
            return -2;
        }
        off += (mlen + 3) & ~3u;
    }
    return 0;
}

static PyObject *parse_chunk(PyObject *self, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t end;
    PyObject *out, *cls;
    int info;
    struct ctx c;
    memset(&c, 0, sizeof c);
    if (!PyArg_ParseTuple(args, "y*nO!pO!O!O!OO", &b, &end, &PyList_Type, &out, &info,
                          &PyType_Type, &cls, &PyDict_Type, &c.cache[0],
                          &PyDict_Type, &c.cache[1], &c.fn[0], &c.fn[1]))
        return NULL;
    PyObject *res = NULL;
    PyTypeObject *tp = (PyTypeObject *)cls;
    if (!PyType_IsSubtype(tp, &PyTuple_Type) || tp->tp_itemsize != sizeof(PyObject *)) {
        PyErr_SetString(PyExc_TypeError, "cls must be a tuple subclass");
        goto done;
    }
    if (end < 0 || end > b.len) {
        PyErr_SetString(PyExc_ValueError, "end is outside the buffer");
        goto done;
    }
    Py_ssize_t n0 = PyList_GET_SIZE(out);
    int r = walk(&c, tp, out, (const unsigned char *)b.buf, end, info);
    if (r == -2 || r == -1) {
        /* leave out as it was; on -2 the Python parser reads it again */
        if (PyList_SetSlice(out, n0, PyList_GET_SIZE(out), NULL) < 0 || r == -1)
            goto done;
        res = Py_NewRef(Py_None);
    } else {
        res = PyBool_FromLong(r);
    }
done:
    ctx_clear(&c);
    PyBuffer_Release(&b);
    return res;
}

static PyMethodDef methods[] = {
    {"parse_chunk", parse_chunk, METH_VARARGS,
     "parse_chunk(buf, end, out, info, cls, cache4, cache6, addr4, addr6)"
     " -> True | False | None (see tracer/_diag.c)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_diag",
    "The hot loop of tracer.sockdiag's parser (see tracer/_diag.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__diag(void) { return PyModule_Create(&module); }
