"""Fuzzing every decoder of kernel bytes with hypothesis: random spans, and
real records (built field by field as bpf/socktrace.h lays them out)
truncated, extended, of the wrong kind, with lying or huge length fields,
flagged BUSY/DISCARD, or with garbage inside a valid header.

The decoders:
  * tracer.records.walk / decode (the Python reference),
  * tracer._fmt.format (the C formatter the reader uses when it is built),
  * tracer.bpf_backend.committed and tracer._fmt.committed (how far the ring
    reader may follow length fields), and _RingReader.read itself, over a
    memfd laid out like a BPF ring buffer map (consumer page, producer page,
    data mapped twice), no kernel needed,
  * BpfBackend.read / read_ndjson / lost: what ends up as a ``lost`` record
    with ``what: "undecodable"``.

What must hold, for any input:
  * nothing raises (the decoders document no exception for bad bytes: a
    record they cannot read is counted, not raised);
  * the C code never reads outside the span: spans are also handed over
    between guard pages (PROT_NONE), so an overread is a SIGSEGV, not luck;
  * the count of undecodable records is exactly what an independent model
    of the format (below) says was fed, in both formatters and in the
    backend's ``lost()``;
  * Python and C give the same bytes and the same count;
  * every line written is valid against tracer/schema/events.schema.json.

Deterministic: derandomize=True, no example database.  A few seconds.
``SOCKTRACE_FUZZ_ASAN=1`` adds a run of the C part built with
AddressSanitizer + UBSan (needs gcc and libasan; about half a minute).
"""

import ctypes
import mmap
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile

import orjson
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tracer import bpf_backend, records, states, wire  # noqa: E402

try:
    from tracer import _fmt
except ImportError:
    if os.environ.get("SOCKTRACE_REQUIRE_FMT") == "1":
        raise
    _fmt = None

needs_fmt = pytest.mark.skipif(_fmt is None, reason="tracer._fmt not built")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = int(os.environ.get("SOCKTRACE_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES,
                deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

BUSY, DISCARD = 1 << 31, 1 << 30
HDR = struct.Struct("<II")
U32 = struct.Struct("<I")
OFFSET = 1_733_400_000_123_456_789          # a realistic CLOCK_REALTIME - CLOCK_MONOTONIC
NAMED_STATES = [n for n, name in enumerate(states.NAMES) if name]


# -- an independent model of the format (bpf/socktrace.h, _fmt.c's header) ----

def model_walk(span):
    """([(kind, body offset)] of records of a known kind and exact size that
    fit in the span, number of other committed records).  BUSY or DISCARD
    records are skipped without a count; the next header is at the next
    8-aligned offset after the length the header gives."""
    good, bad, off, n = [], 0, 0, len(span)
    while off + 8 <= n:
        length = U32.unpack_from(span, off)[0]
        size = length & (DISCARD - 1)
        body = off + 8
        if not length & (BUSY | DISCARD):
            kind = U32.unpack_from(span, body)[0] if size >= 4 and body + size <= n else None
            if (kind, size) in ((wire.KIND_STATE, wire.STATE.size),
                                (wire.KIND_CLOSED, wire.CLOSED.size)):
                good.append((kind, body))
            else:
                bad += 1
        off = body + size + (-(body + size) % 8)
    return good, bad


def model_valid(span, kind, off):
    """A record of the right kind and size is printable when every number in
    it has the name the record contract (tracer/spec.py) requires."""
    if kind == wire.KIND_STATE:
        f = dict(zip(wire.STATE_FIELDS, wire.STATE.unpack_from(span, off)))
        named = [f["oldstate"], f["newstate"]]
        enums = [(f["reason"], wire.REASON), (f["via"], wire.VIA)]
    else:
        f = dict(zip(wire.CLOSED_FIELDS, wire.unpack_closed(span, off)))
        named = list(f["path"][:f["path_len"]])
        enums = [(f["end"], wire.END), (f["reason"], wire.REASON)]
    enums += [(f["owner_from"], wire.OWNER_FROM), (f["role"], wire.ROLE)]
    return (f["family"] in (4, 6)
            and all(s < len(states.NAMES) and states.NAMES[s] for s in named)
            and all(v in table for v, table in enums))


def model(span):
    """(lines, undecodable) the formatters must give for *span*."""
    good, bad = model_walk(span)
    ok = sum(model_valid(span, k, o) for k, o in good)
    return ok, bad + len(good) - ok


def model_committed(span):
    """Bytes of an unread ring span the reader may take: whole records, up
    to the first BUSY one or the first that does not fit."""
    off = 0
    while off + 8 <= len(span):
        length = U32.unpack_from(span, off)[0]
        nxt = off + 8 + (length & (DISCARD - 1))
        nxt += -nxt % 8
        if length & BUSY or nxt > len(span):
            break
        off = nxt
    return off


# -- strategies -----------------------------------------------------------------

U8 = st.integers(0, 255)
U16 = st.integers(0, 0xffff)
U32S = st.integers(0, 0xffffffff)
U64 = st.integers(0, (1 << 64) - 1)


def mostly(valid):
    """A number with a name, or any byte."""
    return st.one_of(st.sampled_from(sorted(valid)), st.sampled_from(sorted(valid)), U8)


def addr(family):
    v4 = st.binary(min_size=4, max_size=4).map(lambda b: bytes(10) + b"\xff\xff" + b)
    return v4 if family == 4 else st.one_of(v4, st.binary(min_size=16, max_size=16))


comm = st.one_of(
    st.binary(max_size=16).map(lambda b: b.ljust(16, b"\0")),
    st.text(max_size=5).map(lambda t: t.encode()[:16].ljust(16, b"\0")),
)
family = st.one_of(st.sampled_from([4, 6]), st.sampled_from([4, 6]), U8)
state_num = st.one_of(st.sampled_from(NAMED_STATES), st.sampled_from(NAMED_STATES), U8)


# cgroup id, netns, uid: unknown (0, NONE_U32), the root cgroup (1), anything
where = st.tuples(st.one_of(st.sampled_from([0, 1]), U64), U32S,
                  st.one_of(st.just(wire.NONE_U32), U32S))


@st.composite
def state_body(draw):
    fam = draw(family)
    return wire.STATE.pack(
        wire.KIND_STATE, draw(U32S), draw(U64), draw(U64), draw(U64),
        draw(addr(fam)), draw(addr(fam)), draw(U16), draw(U16), fam,
        draw(state_num), draw(state_num), draw(mostly(wire.OWNER_FROM)),
        draw(mostly(wire.ROLE)), draw(U8), draw(mostly(wire.REASON)), draw(mostly(wire.VIA)),
        draw(comm), *draw(where))


@st.composite
def closed_body(draw):
    fam = draw(family)
    ts = draw(U64)
    start = draw(st.one_of(st.just(ts), U64))
    path = draw(st.lists(state_num, max_size=16))
    plen = draw(st.one_of(st.just(len(path)), U8))
    return wire.CLOSED.pack(
        wire.KIND_CLOSED, draw(U32S), ts, draw(U64), start,
        *draw(st.lists(U64, min_size=wire.NR_STATES, max_size=wire.NR_STATES)),
        draw(addr(fam)), draw(addr(fam)), draw(U16), draw(U16),
        draw(st.integers(-(1 << 31), (1 << 31) - 1)), fam,
        draw(mostly(wire.OWNER_FROM)), draw(mostly(wire.ROLE)), draw(U8),
        draw(mostly(wire.END)), draw(mostly(wire.REASON)), plen, draw(U8),
        bytes(path).ljust(wire.PATH_LEN, b"\0"), draw(comm), *draw(where),
        *draw(st.tuples(U64, U64, U32S, U32S, U32S, U32S, U32S, U32S)))


def frame(body, length=None, flags=0, page=0):
    length = len(body) if length is None else length
    return HDR.pack((length | flags) & 0xffffffff, page) + body + bytes(-len(body) % 8)


MUTATIONS = ("none", "none", "none", "truncate", "extend", "kind", "length", "huge",
             "flags", "garbage", "flip", "short")


@st.composite
def mutated_frame(draw):
    """One real record, maybe damaged."""
    body = draw(st.one_of(state_body(), closed_body()))
    how = draw(st.sampled_from(MUTATIONS))
    page = draw(U32S)
    if how == "truncate":              # shorter body, header says so
        return frame(body[:draw(st.integers(0, len(body) - 1))], page=page)
    if how == "extend":                # longer body, header says so
        return frame(body + draw(st.binary(min_size=1, max_size=160)), page=page)
    if how == "kind":
        return frame(U32.pack(draw(U32S)) + body[4:], page=page)
    if how == "length":                # the header lies: the walk loses step
        return frame(body, length=draw(st.integers(0, 600)), page=page)
    if how == "huge":
        return frame(body, length=draw(st.sampled_from(
            [0x3fffffff, 0x7fffffff, 0xffffffff, 0xbfffffff, 1 << 29, 0x40000000])),
            page=page)
    if how == "flags":
        return frame(body, flags=draw(st.sampled_from([BUSY, DISCARD, BUSY | DISCARD])),
                     page=page)
    if how == "garbage":               # valid header and kind, random contents
        return frame(body[:4] + draw(st.binary(min_size=len(body) - 4,
                                               max_size=len(body) - 4)), page=page)
    if how == "flip":                  # a few bytes anywhere in header or body
        raw = bytearray(frame(body, page=page))
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] = draw(U8)
        return bytes(raw)
    if how == "short":                 # shorter than a kind
        return frame(draw(st.binary(max_size=3)), page=page)
    return frame(body, page=page)


@st.composite
def mutated_span(draw):
    out = b"".join(draw(st.lists(mutated_frame(), max_size=12)))
    cut = draw(st.one_of(st.none(), st.integers(0, len(out))))
    tail = draw(st.one_of(st.just(b""), st.binary(max_size=40)))
    return (out if cut is None else out[:cut]) + tail


random_span = st.binary(max_size=3000)


# -- helpers ---------------------------------------------------------------------

_configured = []
_fmt_ctx = records.Formatter(OFFSET)     # resolves cgroups as the C path's caller does
_cgroups = {}


def c_format(span):
    """_fmt.format as bpf_backend.read_ndjson calls it: the cgroups it
    reports missing resolved, handed over, asked again."""
    if not _configured:
        _fmt.configure(*records.native_config(_fmt_ctx, cgroups=_cgroups))
        _configured.append(True)
    out, bad, missing, lines = _fmt.format(span)
    while missing:
        for cid in missing:
            _cgroups[cid] = _fmt_ctx.where(0, 0, cid)[2:]
        _fmt.configure(*records.native_config(_fmt_ctx, cgroups=_cgroups))
        out, bad, missing, lines = _fmt.format(span)
    assert lines == out.count(b"\n")       # what read_ndjson reports as received
    return out, bad


def py_format(span):
    recs, bad = records.decode(records.Formatter(OFFSET), span)
    return b"".join(orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE) for d in recs), bad


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
PAGE = mmap.PAGESIZE


class Guarded:
    """*data* copied into fresh pages with a PROT_NONE page right after its
    last byte (at_end) or right before its first: a read past either end
    of the span faults at once."""

    def __init__(self, data, at_end=True):
        self.n = len(data)
        self.pages = (self.n + PAGE - 1) // PAGE + 2
        self.base = _libc.mmap(None, self.pages * PAGE, 3, 0x22, -1, 0)  # RW, PRIVATE|ANON
        assert self.base not in (None, ctypes.c_void_p(-1).value)
        if at_end:
            _libc.mprotect(self.base + (self.pages - 1) * PAGE, PAGE, 0)
            self.addr = self.base + (self.pages - 1) * PAGE - self.n
        else:
            _libc.mprotect(self.base, PAGE, 0)
            self.addr = self.base + PAGE
        ctypes.memmove(self.addr, data, self.n)
        self.view = memoryview((ctypes.c_ubyte * self.n).from_address(self.addr)).cast("B")

    def close(self):
        self.view.release()
        _libc.munmap(self.base, self.pages * PAGE)


def guarded_calls(span, fn):
    """fn(view) on *span* placed against a guard page at each end."""
    out = []
    for at_end in (True, False):
        g = Guarded(span, at_end)
        try:
            out.append(fn(g.view))
        finally:
            g.close()
    return out


def check_span(span, validator=None):
    """The properties every decoder must have on *span*; returns (lines, bad)."""
    want_lines, want_bad = model(span)
    items, bad = records.walk(span)
    assert items == model_walk(span)[0]
    assert bad == model_walk(span)[1]
    py = py_format(span)
    assert py[1] == want_bad, "records.decode counted %d undecodable, the model %d" % (
        py[1], want_bad)
    assert py[0].count(b"\n") == want_lines
    if _fmt is not None:
        assert c_format(span) == py
        for got in guarded_calls(span, c_format):
            assert got == py
        assert _fmt.committed(span) == model_committed(span)
        assert guarded_calls(span, _fmt.committed) == [model_committed(span)] * 2
    assert bpf_backend.committed(span) == model_committed(span)
    if validator is not None and py[0]:
        for line in py[0].splitlines():
            rec = orjson.loads(line)
            errs = list(validator.iter_errors(rec))
            assert not errs, "%s: %s" % ([e.message for e in errs[:3]], line[:300])
    return want_lines, want_bad


# -- the decoders, on any bytes ---------------------------------------------------

@settings(FUZZ, max_examples=3 * EXAMPLES)
@given(random_span)
def test_random_bytes(span):
    check_span(span)


@FUZZ
@given(mutated_span())
def test_mutated_records(span):
    check_span(span)


@settings(FUZZ, max_examples=max(20, EXAMPLES // 3))
@given(st.lists(st.one_of(state_body(), closed_body()), min_size=1, max_size=6))
def test_output_is_schema_valid(event_schema, bodies):
    """Whatever the formatters print from a well-framed record with any
    field values is a valid record; what they cannot print, they count."""
    span = b"".join(frame(b) for b in bodies)
    lines, bad = check_span(span, event_schema)
    assert lines + bad == len(bodies)


def test_known_undecodable_cases():
    """Each kind of damage counts exactly once, and a good record after it
    (where the framing still holds) still prints."""
    good = frame(wire.STATE.pack(wire.KIND_STATE, 7, 10**12, 1, 5, bytes(16), bytes(16), 1, 2,
                                 4, states.SYN_SENT, states.ESTABLISHED, 1, 1, 1, 0, 0,
                                 b"curl", 0, 0, 0))
    body = good[8:8 + wire.STATE.size]
    cases = {
        "truncated": frame(body[:50]),
        "extended": frame(body + bytes(8)),
        "unknown kind": frame(U32.pack(9) + body[4:]),
        "closed kind, state size": frame(U32.pack(wire.KIND_CLOSED) + body[4:]),
        "family 5": frame(body[:68] + b"\x05" + body[69:]),
        "state 0": frame(body[:69] + b"\x00" + body[70:]),
        "state 13": frame(body[:70] + b"\x0d" + body[71:]),
        "owner 200": frame(body[:71] + bytes([200]) + body[72:]),
        "empty": frame(b""),
        "three bytes": frame(b"\x01\0\0"),
    }
    for name, bad in cases.items():
        span = good + bad + good
        assert check_span(span) == (2, 1), name
    # skipped, not counted
    for flags in (BUSY, DISCARD, BUSY | DISCARD):
        assert check_span(good + frame(body, flags=flags) + good) == (2, 0)
    # a huge length swallows the rest of the span: one record counted
    assert check_span(good + frame(body, length=0x3fffffff) + good) == (1, 1)


# -- the ring reader, without a kernel ----------------------------------------------

class FakeRing:
    """A memfd laid out as the kernel maps a BPF ring buffer: the consumer
    page, the producer page, then the data pages twice (the kernel maps them
    twice; here the second copy is written along with the first)."""

    def __init__(self, size):
        self.size = size
        self.fd = os.memfd_create("fake-ringbuf")
        os.ftruncate(self.fd, 2 * PAGE + 2 * size)
        self.mem = mmap.mmap(self.fd, 2 * PAGE + 2 * size)
        self.prod_pos = 0

    def start_at(self, pos):
        struct.pack_into("<Q", self.mem, 0, pos)          # consumer_pos
        struct.pack_into("<Q", self.mem, PAGE, pos)       # producer_pos
        self.prod_pos = pos

    def cons_pos(self):
        return struct.unpack_from("<Q", self.mem, 0)[0]

    def _put(self, pos, data):
        at = pos % self.size
        first = data[:self.size - at]
        rest = data[len(first):]                  # wrapped to the start
        for base in (2 * PAGE, 2 * PAGE + self.size):
            self.mem[base + at:base + at + len(first)] = first
            self.mem[base:base + len(rest)] = rest

    def produce(self, framed):
        """Reserve and write one framed record (its header as given)."""
        self._put(self.prod_pos, framed)
        pos = self.prod_pos
        self.prod_pos += len(framed)
        struct.pack_into("<Q", self.mem, PAGE, self.prod_pos)
        return pos

    def commit(self, pos):
        length = U32.unpack_from(self.header(pos))[0]
        self._put(pos, U32.pack(length & ~BUSY))

    def header(self, pos):
        at = 2 * PAGE + pos % self.size
        return bytes(self.mem[at:at + 8])

    def reader(self):
        return bpf_backend._RingReader(self.fd, self.size)

    def close(self):
        self.mem.close()
        os.close(self.fd)


@st.composite
def ring_case(draw):
    recs = draw(st.lists(st.tuples(st.one_of(state_body(), closed_body()),
                                   st.sampled_from([0, 0, 0, BUSY, DISCARD])),
                         min_size=1, max_size=14))
    start = draw(st.integers(0, 8192 // 8)) * 8 + draw(st.sampled_from([0, 1 << 32, 1 << 40]))
    # a cap holds at least one record of the largest kind (its 8-byte header too)
    cap = draw(st.sampled_from([None, wire.CLOSED.size + 8, 400, 1000]))
    native = draw(st.booleans())
    return recs, start, cap, native


@settings(FUZZ, max_examples=max(20, EXAMPLES // 2))
@given(ring_case())
def test_ring_reader_follows_lengths(case):
    """_RingReader.read hands over exactly the committed records, in order,
    across the wrap of the data area, stops at a record still BUSY and goes
    on once it is committed, and never releases more than it read."""
    recs, start, cap, native = case
    if native and _fmt is None:
        native = False
    ring = FakeRing(8192)
    saved = bpf_backend.MAX_READ_BYTES
    try:
        if cap:
            bpf_backend.MAX_READ_BYTES = cap
        ring.start_at(start)
        rd = ring.reader()
        rd.committed = _fmt.committed if native else None
        expect, busy = [], []
        for body, flags in recs:
            framed = frame(body, flags=flags)
            pos = ring.produce(framed)
            expect.append(frame(body, flags=flags & DISCARD))
            if flags & BUSY:
                busy.append(pos)
        got = b""
        for _ in range(200):
            chunk = rd.read()
            assert ring.cons_pos() == start + len(got) + len(chunk)
            got += chunk
            if not chunk:
                if not busy:
                    break
                ring.commit(busy.pop(0))
        want = b"".join(expect)
        assert got == want
        assert ring.cons_pos() == ring.prod_pos
        # what the reader hands on decodes as the records that went in
        assert py_format(got) == py_format(want)
        rd.close()
    finally:
        bpf_backend.MAX_READ_BYTES = saved
        ring.close()


# -- undecodable records end up as a lost record --------------------------------------

class _Spans:
    def __init__(self, spans):
        self.spans = list(spans)

    def read(self):
        return self.spans.pop(0) if self.spans else b""


def _backend(spans):
    b = bpf_backend.BpfBackend()
    b._rb = _Spans(spans)
    b.counters = lambda: dict.fromkeys(wire.LOSS_COUNTERS, 0)   # no kernel here
    if _fmt is not None:
        b._cgroups = {}
        b._configure = _fmt.configure
        b._configure(*records.native_config(b._fmt))
        _configured.clear()
        b._native = _fmt.format
    return b


@settings(FUZZ, max_examples=max(20, EXAMPLES // 2))
@given(st.lists(st.one_of(mutated_span(), random_span), min_size=1, max_size=5),
       st.lists(st.booleans(), min_size=5, max_size=5))
def test_backend_counts_undecodable(event_schema, spans, use_native):
    """BpfBackend.read (Python) and read_ndjson (C) add what they could not
    decode to the count lost() reports as ``undecodable``: exactly the
    number fed, once, and the lost record built from it is valid."""
    b = _backend(spans)
    total = 0
    for span, native in zip(spans, use_native):
        lines, bad = model(span)
        if native and _fmt is not None:
            data, n = b.read_ndjson()
            assert n == lines
        else:
            assert len(b.read()) == lines
        lost = b.lost()
        assert lost == ({"undecodable": bad} if bad else {})
        total += bad
        if bad:
            rec = records.lost("2026-12-05T12:00:00.000000Z", bad, "undecodable")
            assert not list(event_schema.iter_errors(rec))
    assert b._undecodable == total
    assert b.lost() == {}


# -- the C part under AddressSanitizer (opt-in) ------------------------------------------

ASAN_CHILD = r"""
import sys, types
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import _fmt
import tracer
sys.modules["tracer._fmt"] = _fmt
tracer._fmt = _fmt
import test_fuzz_decode as t
assert t._fmt is _fmt and _fmt.__file__.startswith(sys.argv[1])
assert "libasan" in open("/proc/self/maps").read()
for name in ("test_random_bytes", "test_mutated_records", "test_known_undecodable_cases"):
    getattr(t, name)()
    print(name, "ok", flush=True)
"""


@pytest.mark.skipif(os.environ.get("SOCKTRACE_FUZZ_ASAN") != "1",
                    reason="SOCKTRACE_FUZZ_ASAN=1 runs the C fuzzing under ASan (~30 s)")
def test_c_fuzzing_under_asan():
    gcc = shutil.which("gcc")
    libasan = subprocess.run([gcc or "gcc", "-print-file-name=libasan.so"],
                             capture_output=True, text=True).stdout.strip()
    if not gcc or not os.path.isabs(libasan):
        pytest.skip("gcc or libasan missing")
    with tempfile.TemporaryDirectory() as tmp:
        so = os.path.join(tmp, "_fmt" + sysconfig.get_config_var("EXT_SUFFIX"))
        subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
                        "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                        "-I", sysconfig.get_paths()["include"], "-I", os.path.join(ROOT, "bpf"),
                        os.path.join(ROOT, "tracer", "_fmt.c"), "-o", so], check=True)
        env = dict(os.environ, LD_PRELOAD=libasan, PYTHONMALLOC="malloc",
                   ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
                   UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
                   SOCKTRACE_FUZZ_EXAMPLES=os.environ.get("SOCKTRACE_FUZZ_ASAN_EXAMPLES", "400"))
        res = subprocess.run([sys.executable, "-c", ASAN_CHILD, tmp,
                              os.path.dirname(os.path.abspath(__file__))],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.count(" ok") == 3, res.stdout
