"""The C formatter (tracer/_fmt.c) against the Python reference it stands in
for: the same ring-buffer bytes through both must give the same NDJSON bytes
and the same count of undecodable records.

The reference is ``records.decode`` serialised as the sink does
(``orjson.dumps(d, option=OPT_APPEND_NEWLINE)``).  For records it raises on
(a state number with no name, an enum value or address family it has no
name for: only corrupted input) the C code counts the record undecodable;
``reference()`` below is records.decode with that rule, what records.decode
should do too.  Everything is fabricated, no kernel: random but valid
records, corrupted ones, malformed ring-buffer framing, truncations, random
bytes, timestamps at every boundary, and every short UTF-8 byte sequence a
comm can hold.
"""

import errno
import os
import random
import re
import struct
import subprocess
import sys
import threading

import orjson
import pytest

from tracer import records, states, wire


class FakeContext:
    """records.Formatter's cgroup resolver, deterministic: some ids name
    nothing, others long paths, escapes, containers and units (the real one
    reads the cgroup file system)."""

    def describe(self, cid):
        if cid == LONG_CGROUP:
            return LONG_CONTEXT
        k = cid % 7
        if k == 0:
            return (None, None, None)
        if k == 1:
            return ("/", None, None)
        if k == 2:
            c = "%064x" % (cid * 0x9E3779B97F4A7C15 % (1 << 256))
            return ("/system.slice/docker-%s.scope" % c, c, "docker-%s.scope" % c)
        if k == 3:
            return ('/we"ird\\\n\x1b[0m\u2028/caf\u00e9-%d.service' % cid, None,
                    "caf\u00e9-%d.service" % cid)
        if k == 4:
            return ("/" + "long/" * 900 + str(cid), None, None)
        return ("/user.slice/user-1000.slice/session-%d.scope" % cid, None,
                "session-%d.scope" % cid)


def formatter(wall_offset_ns):
    f = records.Formatter(wall_offset_ns)
    f.context = FakeContext()
    return f


def build_config(wall_offset_ns, source="bpf", cgroups=None):
    """configure()'s arguments, from tracer/records.py's own tables."""
    return records.native_config(formatter(wall_offset_ns), source, cgroups)


try:
    from tracer import _fmt
except ImportError:
    if os.environ.get("SOCKTRACE_REQUIRE_FMT") == "1":
        raise          # the build must have it: a missing module is a broken install
    pytest.skip("tracer._fmt not built (no C compiler?)", allow_module_level=True)


BUSY, DISCARD = 1 << 31, 1 << 30
HDR = struct.Struct("<II")
S = states.NUMBERS
VALID_STATES = [n for n, name in enumerate(states.NAMES) if name]
NOW_OFFSET = 1_733_400_000_123_456_789      # a realistic CLOCK_REALTIME - CLOCK_MONOTONIC
OFFSETS = (0, NOW_OFFSET, 1, 999_999_999, -1, -NOW_OFFSET, (1 << 63) - 1, -(1 << 63))


# -- the two formatters -----------------------------------------------------

def reference(span, wall_offset, source="bpf"):
    """records.decode (a record it cannot read counted undecodable, as _fmt
    counts it), serialised as the sink does."""
    recs, bad = records.decode(formatter(wall_offset), span, source)
    return b"".join(orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE) for d in recs), bad


def decode_reference(span, wall_offset, source="bpf"):
    """records.decode itself."""
    recs, bad = records.decode(formatter(wall_offset), span, source)
    return b"".join(orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE) for d in recs), bad


_configured = [None]
_cgroups = {}


def c_format(span, wall_offset, source="bpf"):
    """_fmt.format as bpf_backend.read_ndjson calls it: cgroups it reports
    missing are resolved (FakeContext), handed over, and asked again."""
    if _configured[0] != (wall_offset, source):
        _fmt.configure(*build_config(wall_offset, source, _cgroups))
        _configured[0] = (wall_offset, source)
    out, bad, missing, lines = _fmt.format(span)
    while missing:                 # at most 64 a call; each round adds them
        assert (out, bad) == (b"", 0)
        for cid in missing:
            assert cid not in _cgroups
            _cgroups[cid] = FakeContext().describe(cid)
        _fmt.configure(*build_config(wall_offset, source, _cgroups))
        out, bad, missing, lines = _fmt.format(span)
    assert lines == out.count(b"\n")       # what read_ndjson reports as received
    return out, bad


def assert_same(span, wall_offset, source="bpf", exact_decode=False):
    """C == reference, line by line on failure so that a diff is readable;
    with exact_decode, records.decode itself must agree too."""
    got = c_format(span, wall_offset, source)
    want = decode_reference(span, wall_offset, source) if exact_decode else \
        reference(span, wall_offset, source)
    if got != want:
        glines, wlines = got[0].split(b"\n"), want[0].split(b"\n")
        for i, (g, w) in enumerate(zip(glines, wlines)):
            assert g == w, "line %d differs (offset %d)" % (i, wall_offset)
        assert len(glines) == len(wlines), "line counts differ"
        assert got[1] == want[1], "undecodable counts differ"
    return got


# -- record makers ------------------------------------------------------------

V4_PREFIX = bytes(10) + b"\xff\xff"
COMM_PIECES = [
    b"curl", b"nginx: worker", b"a", b" ", b'"', b"\\", b"\n", b"\r", b"\t", b"\b", b"\f",
    b"\x01", b"\x1f", b"\x7f", b"\x1b[0m", b"/", b"<>&'", "caf\u00e9".encode(),
    "\u65e5\u672c".encode(), "\U0001F600".encode(), "\u2028".encode(), "\ufffd".encode(),
    b"\xff", b"\xfe", b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xc2", b"\xe2\x82",
    b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xe0\x80\x80", b"\xf0\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80", b"\xf5\x80", b"\xf0\x9f\x98", b"\x00", b"\x00junk",
]


def rand_comm(rng):
    r = rng.random()
    if r < 0.1:
        return rng.randbytes(16)
    if r < 0.15:
        return bytes(16)
    out = b"".join(rng.choice(COMM_PIECES) for _ in range(rng.randint(1, 6)))
    return out[:16].ljust(16, b"\0")


def rand_addr(rng, family):
    r = rng.random()
    if family == 4 or r < 0.2:
        # family 6 with an IPv4-mapped address is what dual-stack sockets have
        return V4_PREFIX + rng.choice([bytes([127, 0, 0, 1]), bytes(4), b"\xff" * 4,
                                       rng.randbytes(4)])
    if r < 0.3:
        return rng.choice([bytes(16), bytes(15) + b"\x01", bytes(12) + rng.randbytes(4),
                           b"\xfe\x80" + bytes(6) + rng.randbytes(8), b"\xff" * 16])
    if r < 0.4:
        return rng.randbytes(16)
    # runs of zero words, for the :: compression
    return b"".join(rng.choice([b"\0\0", b"\0\0", rng.randbytes(2)]) for _ in range(8))


def rand_ts(rng, base=None):
    r = rng.random()
    if r < 0.05:
        return rng.randrange(1 << 64)
    if r < 0.08:
        return rng.choice([0, 1, 999, 1000, 999_999, 10**9 - 1, 10**9, (1 << 64) - 1])
    if r < 0.2:
        # around a second or millisecond boundary of the wall clock
        k = rng.randrange(10**6, 10**7) * rng.choice([10**9, 10**6])
        return max(0, k + rng.randint(-1001, 1001) - NOW_OFFSET % 10**9)
    return (base if base is not None else 10**13) + rng.randrange(10**12)


def rand_u8(rng, valid, corrupt):
    """A number the reference has a name for, or now and then any byte."""
    if corrupt and rng.random() < 0.03:
        return rng.randrange(256)
    return rng.choice(valid)


def rand_where(rng):
    """cgroup id, netns inode, uid: 0 and NONE_U32 (unknown) among them."""
    cgroup = rng.choice([0, 1, rng.randrange(1, 60), rng.randrange(1 << 64)])
    netns = rng.choice([0, 4026531840, rng.randrange(1 << 32)])
    uid = rng.choice([0, 1000, wire.NONE_U32, rng.randrange(1 << 32)])
    return cgroup, netns, uid


def rand_health(rng):
    big = lambda: rng.choice([0, 1, rng.randrange(1 << 32), (1 << 64) - 1])  # noqa: E731
    u32 = lambda: rng.choice([0, 1, rng.randrange(1 << 16), (1 << 32) - 1])  # noqa: E731
    return (big(), big(), u32(), u32(), u32(), u32(), u32(),
            rng.choice([0, 3, wire.NONE_U32]))


def make_state(rng, corrupt=False):
    family = rng.choice([4, 6]) if not (corrupt and rng.random() < 0.02) else \
        rng.choice([0, 5, 10, 255])
    pid = 0 if rng.random() < 0.2 else rng.choice([1, 1234, 2**31, 2**32 - 1])
    return wire.STATE.pack(
        wire.KIND_STATE, pid, rand_ts(rng), rng.choice([0, 1, rng.randrange(1 << 64),
                                                        wire.CONN_OWN | rng.randrange(1 << 20)]),
        rng.choice([0, rng.randrange(1 << 40), (1 << 64) - 1]),
        rand_addr(rng, family), rand_addr(rng, family),
        rng.randrange(65536), rng.randrange(65536), family,
        rand_u8(rng, VALID_STATES, corrupt), rand_u8(rng, VALID_STATES, corrupt),
        rand_u8(rng, list(wire.OWNER_FROM), corrupt), rand_u8(rng, list(wire.ROLE), corrupt),
        rng.randrange(256),
        rand_u8(rng, list(wire.REASON), corrupt), rand_u8(rng, list(wire.VIA), corrupt),
        rand_comm(rng), *rand_where(rng))


def make_closed(rng, corrupt=False):
    family = rng.choice([4, 6]) if not (corrupt and rng.random() < 0.02) else \
        rng.choice([0, 5, 10, 255])
    pid = 0 if rng.random() < 0.2 else rng.choice([1, 4321, 2**32 - 1])
    ts = rand_ts(rng)
    start = rng.choice([ts, max(0, ts - rng.randrange(10**10)), min(ts + 1, (1 << 64) - 1),
                       rand_ts(rng), 0])
    plen = rng.choice([0, 1, 3, 5, 8, 16]) if rng.random() < 0.9 else rng.randrange(256)
    path = bytes(rand_u8(rng, VALID_STATES, corrupt) for _ in range(plen))
    path = (path[:16] + rng.randbytes(16))[:16]   # past path_len: anything
    error = rng.choice([0, 0, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.ECONNRESET,
                        rng.randrange(1, 256), 41, 58, 255, 256, -1, 2**31 - 1, -2**31])
    spent = [rng.choice([0, rng.randrange(10**9), rng.randrange(1 << 64)]) for _ in range(16)]
    return wire.CLOSED.pack(
        wire.KIND_CLOSED, pid, ts, rng.randrange(1 << 64), start, *spent,
        rand_addr(rng, family), rand_addr(rng, family),
        rng.randrange(65536), rng.randrange(65536), error, family,
        rand_u8(rng, list(wire.OWNER_FROM), corrupt), rand_u8(rng, list(wire.ROLE), corrupt),
        rng.randrange(256), rand_u8(rng, list(wire.END), corrupt),
        rand_u8(rng, list(wire.REASON), corrupt), plen, rng.randrange(256), path,
        rand_comm(rng), *rand_where(rng), *rand_health(rng))


def frame(body, rng=None, flags=0, length=None):
    """One ring-buffer record: header, body, padding to 8 bytes."""
    length = len(body) if length is None else length
    pad = (-len(body)) % 8
    page = rng.randrange(1 << 32) if rng else 0
    return HDR.pack(length | flags, page) + body + (rng.randbytes(pad) if rng else bytes(pad))


def messy_frame(body, rng):
    """Mostly a good record; else discarded, busy, of another kind or length."""
    r = rng.random()
    if r < 0.05:
        return frame(body, rng, DISCARD)
    if r < 0.07:
        return frame(body, rng, BUSY)
    if r < 0.08:
        return frame(body, rng, BUSY | DISCARD)
    if r < 0.11:
        kind = rng.choice([0, 3, 4, 0xffffffff, wire.KIND_CLOSED if body[0] == 1 else 1])
        return frame(struct.pack("<I", kind) + body[4:], rng)
    if r < 0.14:
        n = max(0, len(body) + rng.choice([-8, -4, -1, 1, 4, 8, 144, -144]))
        return frame((body + rng.randbytes(200))[:n], rng)
    if r < 0.15:
        return frame(rng.randbytes(rng.randrange(4)), rng)        # shorter than a kind
    return frame(body, rng)


def rand_span(rng, n, corrupt=False, messy=True):
    out = []
    for _ in range(n):
        body = make_closed(rng, corrupt) if rng.random() < 0.25 else make_state(rng, corrupt)
        out.append(messy_frame(body, rng) if messy else frame(body, rng))
    return b"".join(out)


# -- tests ---------------------------------------------------------------------

def test_layout_matches_wire():
    assert (_fmt.STATE_SIZE, _fmt.CLOSED_SIZE) == (wire.STATE.size, wire.CLOSED.size)
    assert (_fmt.KIND_STATE, _fmt.KIND_CLOSED) == (wire.KIND_STATE, wire.KIND_CLOSED)


def test_empty():
    assert c_format(b"", NOW_OFFSET) == (b"", 0)
    assert c_format(bytes(7), NOW_OFFSET) == (b"", 0)


@pytest.mark.parametrize("seed", range(6))
def test_random_valid_records(seed):
    """Valid records, messy framing: records.decode itself is matched."""
    rng = random.Random(seed)
    span = rand_span(rng, 3000)
    out, bad = assert_same(span, OFFSETS[seed % len(OFFSETS)], exact_decode=True)
    assert out.count(b"\n") > 2000 and bad > 0


@pytest.mark.parametrize("seed", range(6))
def test_random_corrupted_records(seed):
    """Out-of-range states, enums and families as well: undecodable in C, and
    in records.decode once it catches what it raises on (see reference)."""
    rng = random.Random(100 + seed)
    span = rand_span(rng, 3000, corrupt=True)
    out, bad = assert_same(span, NOW_OFFSET, source=("bpf", "proc", 'x"\u00e9')[seed % 3])
    assert out.count(b"\n") > 1500


def test_clean_span_all_lines():
    """No framing noise at all: every record is a line, nothing undecodable."""
    rng = random.Random(7)
    span = rand_span(rng, 2000, messy=False)
    out, bad = assert_same(span, NOW_OFFSET, exact_decode=True)
    assert (out.count(b"\n"), bad) == (2000, 0)


@pytest.mark.parametrize("offset", OFFSETS)
def test_timestamps(offset):
    """Around second and millisecond boundaries of the wall clock, near
    monotonic 0 and 2**64, for offsets of either sign and at their limits."""
    rng = random.Random(offset & 0xffff)
    tss = set(range(0, 2001)) | {(1 << 64) - 1 - i for i in range(1001)}
    for k in (1, 2, 59, 86_400, 951_782_400, 1_700_000_000, 4_102_444_800, 17_000_000_000):
        for unit in (10**9, 10**6):
            base = k * unit - offset
            for d in (-1_000_001, -1_000_000, -999_999, -1001, -1000, -999, -1, 0, 1,
                      999, 1000, 1001, 999_999, 1_000_000):
                tss.add(base + d)
    tss = sorted(t for t in tss if 0 <= t < 1 << 64)
    body = []
    for i, ts in enumerate(tss):
        rec = bytearray(make_state(rng))
        struct.pack_into("<Q", rec, 8, ts)
        body.append(frame(bytes(rec)))
        if i % 3 == 0:
            rec = bytearray(make_closed(rng))
            struct.pack_into("<QQQ", rec, 8, ts, 5, tss[(i * 7919) % len(tss)])
            body.append(frame(bytes(rec)))
    # the same timestamps in another order too: the C gmtime cache must not care
    rng.shuffle(body)
    assert_same(b"".join(body), offset, exact_decode=True)


def test_big_span():
    """A span whose lines could outgrow the buffer format() keeps between
    calls: written straight into the result instead."""
    rng = random.Random(8)
    one = rand_span(rng, 2500)
    span = one * 10                                  # 3 MB: past the 16 MB bound
    out, bad = assert_same(span, NOW_OFFSET, exact_decode=True)
    small = c_format(one, NOW_OFFSET)
    assert (out, bad) == (small[0] * 10, small[1] * 10)


def test_truncated_everywhere():
    rng = random.Random(11)
    recs = [make_state(rng), make_closed(rng), make_state(rng)]
    span = frame(recs[0]) + frame(recs[1], flags=DISCARD) + frame(recs[1]) + \
        frame(recs[2]) + frame(b"\x01\0\0\0abc", rng) + frame(recs[0])
    for cut in range(len(span) + 1):
        assert_same(span[:cut], NOW_OFFSET, exact_decode=True)
        # not 8-aligned in memory; the walk is relative to the span's start
        assert_same(memoryview(b"x" + span)[1:cut + 1], NOW_OFFSET, exact_decode=True)


def test_random_bytes():
    rng = random.Random(12)
    for n in list(range(0, 300)) + [rng.randrange(300, 5000) for _ in range(200)]:
        assert_same(rng.randbytes(n), NOW_OFFSET)


def test_random_bodies():
    """Well-framed records of the right kind and size with random contents:
    most fields out of range somewhere."""
    rng = random.Random(13)
    out = []
    for _ in range(5000):
        if rng.random() < 0.5:
            body = struct.pack("<I", wire.KIND_STATE) + rng.randbytes(wire.STATE.size - 4)
        else:
            body = struct.pack("<I", wire.KIND_CLOSED) + rng.randbytes(wire.CLOSED.size - 4)
        out.append(frame(body, rng))
    got, bad = assert_same(b"".join(out), NOW_OFFSET)
    assert bad > 0


@pytest.mark.parametrize("length", [0x3fffffff, 0xffffffff, 0xbfffffff, 0x7fffffff,
                                    0x40000000, 0x80000000, 96 + (1 << 29), 239, 241, 8, 4])
def test_huge_and_odd_lengths(length):
    rng = random.Random(length)
    good = frame(make_state(rng))
    span = good + HDR.pack(length, 0) + struct.pack("<I", wire.KIND_STATE) + \
        rng.randbytes(300) + good
    assert_same(span, NOW_OFFSET, exact_decode=True)
    assert_same(span[:len(good) + 8], NOW_OFFSET, exact_decode=True)


def test_input_types():
    rng = random.Random(14)
    span = rand_span(rng, 200)
    want = c_format(span, NOW_OFFSET)
    assert c_format(bytearray(span), NOW_OFFSET) == want
    assert c_format(memoryview(span), NOW_OFFSET) == want
    import array
    assert c_format(array.array("B", span), NOW_OFFSET) == want
    with pytest.raises((BufferError, TypeError)):
        _fmt.format(memoryview(span + b"\0")[::2])
    with pytest.raises(TypeError):
        _fmt.format("text")


def test_large_spans_in_threads():
    """Large spans are formatted without the GIL: concurrent calls, and a
    configure() meanwhile, must neither mix results nor free what is in use."""
    rng = random.Random(15)
    span = rand_span(rng, 6000)
    want = c_format(span, NOW_OFFSET)
    assert want == reference(span, NOW_OFFSET)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(_fmt.format(span)[:2])
        except Exception as e:     # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    args = build_config(NOW_OFFSET, cgroups=_cgroups)
    for _ in range(200):
        _fmt.configure(*args)
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 20 and all(r == want for r in results)


# -- UTF-8 "backslashreplace" (tracer/text.py decode) ------------------------------------------------------------

def _comm_span(seqs):
    rec = bytearray(make_state(random.Random(0)))
    struct.pack_into("<I", rec, 4, 1)                   # a pid: comm is printed
    off = wire.STATE_FIELDS.index("comm")
    off = struct.calcsize("<" + "".join(
        re.findall(r"\d*[a-zA-Z]", wire.STATE.format.lstrip("<"))[:off]))   # comm's offset
    out = []
    for s in seqs:
        rec[off:off + 16] = s.ljust(16, b"\0")
        out.append(frame(bytes(rec)))
    return b"".join(out)


def _check_comms(seqs):
    span = _comm_span(seqs)
    out, bad = assert_same(span, NOW_OFFSET, exact_decode=True)
    assert bad == 0
    got = [orjson.loads(line)["comm"] for line in out.splitlines()]
    want = [s.split(b"\0", 1)[0].decode("utf-8", "backslashreplace") for s in seqs]
    for g, w, s in zip(got, want, seqs):
        assert g == w, s
    assert len(got) == len(seqs)


def test_utf8_replace_short_sequences():
    _check_comms([bytes([a]) for a in range(256)])
    _check_comms([bytes([a, b]) for a in range(256) for b in range(256)])


def test_utf8_replace_known_cases():
    cases = {b"\xe2\x82": 1, b"\xff\xfe": 2, b"\xed\xa0\x80": 3, b"\xc0\xaf": 2,
             b"\xf0\x9f\x98": 1, b"\xf4\x90\x80\x80": 4, b"\xe0\x80\xaf": 3}
    for raw, n in cases.items():
        assert raw.decode("utf-8", "replace") == "\ufffd" * n
        assert raw.decode("utf-8", "backslashreplace") == "".join("\\x%02x" % b for b in raw)
    _check_comms(list(cases))


def test_utf8_replace_random_sequences():
    rng = random.Random(16)
    edges = [0x00, 0x01, 0x22, 0x5c, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1,
             0xc2, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5,
             0xf7, 0xf8, 0xfe, 0xff, 0x41]

    def byte():
        r = rng.random()
        if r < 0.4:
            return rng.choice(edges)
        if r < 0.8:
            return rng.randrange(0x80, 0xc0)        # continuation bytes
        return rng.randrange(256)

    seqs = [bytes(byte() for _ in range(rng.choice((3, 4)))) for _ in range(150_000)]
    seqs += [bytes(byte() for _ in range(16)) for _ in range(30_000)]
    # every 3-byte sequence led by E0, ED, EF, F0 or F4, over the edges of
    # the continuation range
    conts = [0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0]
    seqs += [bytes([a, b, c]) for a in (0xe0, 0xed, 0xef, 0xf0, 0xf4) for b in conts
             for c in conts]
    seqs += [bytes([a, b, c, d]) for a in (0xf0, 0xf4) for b in conts for c in conts
             for d in conts]
    _check_comms(seqs)


# -- configure() ----------------------------------------------------------------

def test_configure_rejects_and_keeps_the_old_config():
    rng = random.Random(17)
    span = rand_span(rng, 300)
    want = c_format(span, NOW_OFFSET)
    off, good = build_config(NOW_OFFSET)
    bad_tables = [
        (dict(good, extra={}), ValueError),
        ({k: v for k, v in good.items() if k != "via"}, KeyError),
        (dict(good, states=(None, 1)), TypeError),
        (dict(good, states=("x",) * 257), ValueError),
        (dict(good, role={256: "x"}), ValueError),
        (dict(good, role={-1: "x"}), ValueError),
        (dict(good, role={"1": "x"}), ValueError),
        (dict(good, errno={0: "E0"}), ValueError),
        (dict(good, timed=(("A", 16),)), ValueError),
        (dict(good, timed=(("A", 1), ("A", 2))), ValueError),
        (dict(good, timed=("A",)), TypeError),
        (dict(good, source=None), TypeError),
        (dict(good, source="\ud800"), UnicodeEncodeError),
        (dict(good, end={1: "x" * 1000}), ValueError),
    ]
    for tables, exc in bad_tables:
        with pytest.raises(exc):
            _fmt.configure(off, tables)
        assert _fmt.format(span)[:2] == want
    for offset in (1 << 63, -(1 << 63) - 1):
        with pytest.raises(OverflowError):
            _fmt.configure(offset, good)
    with pytest.raises(TypeError):
        _fmt.configure(1.5, good)
    assert _fmt.format(span)[:2] == want


def test_configure_other_names():
    """Names are data: other spellings, escapes and an empty timed list are
    written as the reference would write them."""
    rng = random.Random(18)
    span = rand_span(rng, 300, messy=False)
    c_format(span, NOW_OFFSET)            # its cgroups, into the tables
    off, tables = build_config(NOW_OFFSET, cgroups=_cgroups)
    tables = dict(tables, timed=(), source="p\"r\\o\nc\u00e9",
                  states=tuple(None if n is None else n.lower() for n in tables["states"]))
    _fmt.configure(off, tables)
    _configured[0] = None
    out, bad, missing, lines = _fmt.format(span)
    assert not missing
    line = orjson.loads(out.split(b"\n", 1)[0])
    assert line["source"] == "p\"r\\o\nc\u00e9" and bad == 0
    closed = [orjson.loads(x) for x in out.splitlines() if x.startswith(b'{"type":"closed"')]
    assert closed and all(c["states"] == {} for c in closed)


def _longest_records(path_state, owner=0, role=0, end=0, reason=0, via=0, error=-2**31):
    """A state and a closed record each as long as its text can get: every
    number at its widest, the longest IPv6 text, a comm of control
    characters (\\u00xx each), a full path, an errno with no name."""
    v6 = b"\xfe\xdc" * 8                                  # fedc:fedc:...: 39 characters
    top = (1 << 64) - 1
    comm = b"\x01" * 16
    where = (LONG_CGROUP, 2**32 - 1, 2**32 - 2)
    health = (top, top) + (2**32 - 1,) * 5 + (2**32 - 2,)
    st = wire.STATE.pack(wire.KIND_STATE, 2**32 - 1, top, top, top, v6, v6, 65535, 65535,
                         6, path_state, path_state, owner, role, 0xff, reason, via, comm,
                         *where)
    cl = wire.CLOSED.pack(wire.KIND_CLOSED, 2**32 - 1, top, top, 0, *[top] * 16, v6, v6,
                          65535, 65535, error, 6, owner, role, 0xff, end, reason, 16, 0,
                          bytes([path_state]) * 16, comm, *where, *health)
    return st, cl


# a cgroup whose context is as long as a path gets (PATH_MAX), all escapes
LONG_CGROUP = 7 * 1000 + 4
LONG_CONTEXT = ("\x01" * 4095, "f" * 64, "\x01" * 255)


def _check_bounds(span):
    state_max, closed_max = _fmt._bounds()
    out, bad, missing, lines = _fmt.format(span)
    assert bad == 0 and not missing
    for line in out.splitlines(keepends=True):
        orjson.loads(line)
        limit = state_max if line.startswith(b'{"type":"state"') else closed_max
        assert len(line) <= limit
    return out


@pytest.mark.parametrize("offset", [(1 << 63) - 1, -(1 << 63)])
def test_longest_lines_within_bounds(offset):
    """format() writes unchecked into a buffer sized from per-record bounds:
    the longest records, with names as long as configure() takes, fit."""
    st, cl = _longest_records(S["FIN_WAIT1"])
    _configured[0] = None
    _fmt.configure(*build_config(offset, cgroups={LONG_CGROUP: LONG_CONTEXT}))
    out = _check_bounds(b"".join(frame(r) for r in (st, cl) * 50))
    assert out == reference(b"".join(frame(r) for r in (st, cl) * 50), offset)[0]
    # every name 40 control characters: 242 bytes of JSON, the most allowed
    long = lambda i: "\x01" * 39 + chr(0x41 + i % 26)       # noqa: E731
    tables = {
        "states": tuple(long(i) for i in range(256)),
        "owner_from": {i: long(i) for i in range(256)},
        "role": {i: long(i) for i in range(256)},
        "reason": {i: long(i) for i in range(256)},
        "via": {i: long(i) for i in range(256)},
        "end": {i: long(i) for i in range(256)},
        "errno": {i: long(i) for i in range(1, 256)},
        "timed": tuple(("\x01" * 38 + "%02d" % i, i % 16) for i in range(64)),
        "source": long(0),
        "cgroups": {LONG_CGROUP: LONG_CONTEXT},
    }
    _fmt.configure(offset, tables)
    st, cl = _longest_records(255, 255, 255, 255, 255, 255, error=255)
    _check_bounds(b"".join(frame(r) for r in (st, cl) * 50))
    _fmt.configure(offset, dict(tables, source="\x01" * 42))          # 254 bytes
    for name in ("\x01" * 43, "\x01" * 42 + "abc"):
        with pytest.raises(ValueError):
            _fmt.configure(offset, dict(tables, source=name))


def test_unconfigured():
    code = ("from tracer import _fmt\n"
            "try:\n    _fmt.format(b'')\nexcept RuntimeError:\n    print('ok')\n")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_committed_matches_the_python_reader():
    """_fmt.committed, which the ring reader uses when it is built, stops
    where tracer.bpf_backend.committed does: at the first BUSY record, or
    one that does not fit, on spans cut anywhere."""
    from tracer.bpf_backend import committed

    rng = random.Random(7)
    recs = [wire.STATE.pack(wire.KIND_STATE, 1, i, i, 0, bytes(16), bytes(16), 1, 2, 4,
                            7, 2, 1, 1, 0, 0, 0, b"x", 0, 0, 0) for i in range(40)]
    for trial in range(300):
        out = bytearray()
        busy_at = rng.randrange(60)
        for i, r in enumerate(recs):
            length = len(r) | (BUSY if i == busy_at else 0) | (DISCARD if i % 7 == 3 else 0)
            out += HDR.pack(length, 0) + r + bytes(-len(r) % 8)
        cut = rng.randrange(len(out) + 1)
        span = bytes(out[:cut])
        assert _fmt.committed(span) == committed(span), (trial, cut, busy_at)
    assert _fmt.committed(b"") == 0 and _fmt.committed(b"\x01") == 0
