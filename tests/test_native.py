"""The C hot path (tracer/_native.c) against the Python pipeline it stands
in for: the same raw records through both must give the same NDJSON bytes
and leave the same connection table (transitions, durations, sockets).

Pure logic, no kernel: the records are fabricated, realistic (a storm of
client-first connections, as bench/hotpath.py makes) and random (any
transition of a few sockets, owners or not, odd comms, sockets from the
start-up snapshot, a table at its cap), so both the C code and its hand-offs
to Python get exercised.
"""

import os
import random
import sys

import pytest

from tracer import bpf_backend, procnet, records, states, wire
from tracer.run import Pipeline
from tracer.sink import JsonSink
from tracer.table import ConnTable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
import hotpath  # noqa: E402

try:
    from tracer import _native  # noqa: F401
except ImportError:
    if os.environ.get("SOCKTRACE_REQUIRE_BPF") == "1":
        raise          # CI builds it: a missing module is a broken install
    pytest.skip("tracer._native not built (no C compiler?)", allow_module_level=True)

S = states.NUMBERS
V4 = bytes(10) + b"\xff\xff"
ADDRS = {4: [V4 + bytes([127, 0, 0, i]) for i in (1, 2, 3)],
         6: [bytes(15) + b"\x01", bytes(10) + b"\xff\xff\x7f\x00\x00\x05",
             bytes([0xfd] + [0] * 14 + [7])]}
COMMS = [b"curl", b"nginx: worker", b'we"ird\\', "caf\u00e9".encode(), b"\xff\xfebad",
         b"tab\there", b"x" * 16]


def pack(ts, sk, old, new, *, twaddr=0, in_old=None, family=4, saddr=0, daddr=1,
         pid=100, sport=40000, dport=80, owner=1, reason=0, via=0, kind=0, comm=b"curl"):
    body = wire.EVENT.pack(
        ts, sk, twaddr, in_old or 0, ADDRS[family][saddr], ADDRS[family][daddr], pid,
        sport, dport, family, old, new, owner, wire.F_IN_OLD if in_old is not None else 0,
        reason, via, kind, comm[:16].ljust(16, b"\0"))
    return (wire.EVENT.size).to_bytes(4, "little") + bytes(4) + body


def random_span(rng, n):
    """*n* records of any transition among a few sockets and timewaits."""
    out = bytearray()
    ts = 10 ** 12
    for _ in range(n):
        ts += rng.choice((1, 700, 40_000, 999_999, 3_000_000))
        family = rng.choice((4, 6))
        out += pack(
            ts, rng.randrange(1, 24), rng.randrange(1, 13), rng.randrange(1, 13),
            twaddr=rng.choice((0, 0, 0, 0x500, 0x600)),
            in_old=rng.choice((None, 0, 5, 123_456_789)),
            family=family, saddr=rng.randrange(3), daddr=rng.randrange(3),
            pid=rng.choice((0, 0, 4242, 7)), sport=rng.choice((0, 80, 40000)),
            dport=rng.choice((80, 40000, 65535)), owner=rng.randrange(4),
            reason=rng.randrange(4), via=rng.randrange(3),
            kind=rng.choice((wire.KIND_STATE, wire.KIND_STATE, wire.KIND_HANDOFF)),
            comm=rng.choice(COMMS))
    return bytes(out)


def snapshot():
    """Sockets 'older than the tracer' that random_span's 4-tuples can hit."""
    text = {4: ["127.0.0.1", "127.0.0.2"], 6: ["::1", "::ffff:127.0.0.5"]}
    socks = []
    for family, (a, b) in text.items():
        for state in ("ESTABLISHED", "TIME_WAIT", "LISTEN", "FIN_WAIT2", "CLOSE_WAIT"):
            socks.append(procnet.ProcSocket(family, a, 40000, b, 80, S[state],
                                            7 if state != "TIME_WAIT" else 0, 0, 0, 0,
                                            5_000_000_000))
        socks.append(procnet.ProcSocket(family, a, 80, "0.0.0.0" if family == 4 else "::",
                                        0, S["LISTEN"], 8, 0, 0, 0, 0))
    return socks, {7: (77, "old-app"), 8: (88, "old-listener")}


def run(span, native, batch=97, cap=2_000_000, seeded=False):
    """(output bytes, summary, socket records) of one pipeline over *span*."""
    random.seed(5)                 # Reservoir sampling draws from it
    fmt = records.Formatter(wall_offset_ns=1_700_000_000_000_000_000)
    table = ConnTable(10 ** 12, cap=cap)
    if seeded:
        table.seed_from(*snapshot())
    pipeline = Pipeline(fmt, table, None, "bpf")
    feed = pipeline.native(JsonSink.encode) if native else None
    if native:
        assert feed is not None
    stride = bpf_backend.STRIDE
    out = bytearray()
    for start in range(0, len(span), batch * stride):
        chunk = span[start:start + batch * stride]
        if native:
            out += feed(chunk, stride, bpf_backend.RECORD_OFFSET)
        else:
            out += JsonSink.encode(pipeline.feed(list(bpf_backend._BODY.iter_unpack(chunk))))
    now = 10 ** 13
    return (bytes(out), table.summary("now"), list(table.sockets(now, fmt.ts)),
            table.evicted)


def assert_same(span, **kw):
    py, c = run(span, False, **kw), run(span, True, **kw)
    py_lines, c_lines = py[0].splitlines(), c[0].splitlines()
    assert len(py_lines) == len(c_lines)
    for i, (a, b) in enumerate(zip(py_lines, c_lines)):
        assert a == b, "line %d differs" % i
    assert py[1:] == c[1:]
    return py


def test_storm_output_and_table_match_python():
    out, summary, socks, _ = assert_same(hotpath.storm_bytes(3000), batch=2048)
    assert out.count(b'"type":"state"') == 3000 * 10
    assert out.count(b'"type":"closed"') == 3000       # the servers' ends
    assert summary["transitions"]["CLOSE->SYN_SENT"] == 3000
    assert len(socks) == 3000                            # clients in TIME_WAIT


@pytest.mark.parametrize("seed", range(6))
def test_random_records_match_python(seed):
    rng = random.Random(seed)
    assert_same(random_span(rng, 4000), batch=rng.choice((1, 13, 500)),
                seeded=seed % 2 == 1)


def test_a_full_table_evicts_the_same_sockets():
    out, _, _, evicted = assert_same(hotpath.storm_bytes(400), cap=50)
    assert evicted > 0


def test_the_hot_path_takes_the_common_records():
    """A storm's records, ends and closed summaries included, are all the
    C code's: nothing is handed back to Python."""
    span = hotpath.storm_bytes(100)
    fmt, table = records.Formatter(0), ConnTable(0)
    pipeline = Pipeline(fmt, table, None, "bpf")
    calls = []

    def encode(recs):
        calls.append(len(recs))
        return JsonSink.encode(recs)

    pipeline.native(encode)(span, bpf_backend.STRIDE, bpf_backend.RECORD_OFFSET)
    assert calls == []


def test_not_used_with_a_user_space_filter_or_for_proc():
    from tracer.filters import Filter

    table, fmt = ConnTable(0), records.Formatter(0)
    assert Pipeline(fmt, table, Filter(comms=["curl"]), "bpf").native(JsonSink.encode) is None
    assert Pipeline(fmt, table, None, "proc").native(JsonSink.encode) is None


def test_header_layout_is_the_decoders():
    assert _native.EVENT_SIZE == wire.EVENT.size
