"""Kernel record bytes -> output records (tracer/records.py), the spec they
follow (tracer/spec.py), and the user-space filter: pure logic, no kernel."""

import json
import struct
import time

import pytest

from tracer import records, spec, states, wire
from tracer.filters import Filter

N = states.NUMBERS
LO6 = bytes(15) + b"\x01"
V4 = bytes(10) + b"\xff\xff"
HDR = struct.Struct("<II")


def state_raw(ts, conn, old, new, *, in_old=None, family=4, saddr=V4 + bytes([127, 0, 0, 1]),
              daddr=V4 + bytes([127, 0, 0, 2]), sport=40000, dport=80, pid=100,
              comm=b"curl", owner=1, role=1, flags=0, reason=0, via=0, cgroup=0, netns=0,
              uid=wire.NONE_U32):
    if in_old is not None:
        flags |= wire.FLAGS["in_old"]
    return wire.STATE.pack(wire.KIND_STATE, pid, ts, conn, in_old or 0, saddr, daddr, sport,
                           dport, family, N[old], N[new], owner, role, flags, reason, via, comm,
                           cgroup, netns, uid)


def closed_raw(ts, conn, start, path, spent=None, *, error=0, end=0, reason=0, flags=0,
               pid=100, comm=b"curl", role=1, family=4, cgroup=0, netns=0, uid=wire.NONE_U32,
               health=None):
    sp = [0] * wire.NR_STATES
    for name, ns in (spent or {}).items():
        sp[N[name]] = ns
    nums = bytes(N[p] for p in path)
    if health is not None:
        flags |= wire.FLAGS["health"]
    return wire.CLOSED.pack(wire.KIND_CLOSED, pid, ts, conn, start, *sp,
                            V4 + bytes([127, 0, 0, 1]), V4 + bytes([127, 0, 0, 2]), 40000, 80,
                            error, family, 1, role, flags, end, reason, len(path), 0,
                            nums.ljust(wire.PATH_LEN, b"\0"), comm, cgroup, netns, uid,
                            *(health or (0,) * 7 + (wire.NONE_U32,)))


def ring(*recs, discard=(), busy=()):
    """Records laid out as the ring buffer (and the reader) hand them over."""
    out = bytearray()
    for i, r in enumerate(recs):
        length = len(r) | (1 << 30 if i in discard else 0) | (1 << 31 if i in busy else 0)
        out += HDR.pack(length, 0) + r + bytes(-len(r) % 8)
    return bytes(out)


@pytest.fixture(scope="module")
def validator():
    import jsonschema

    schema = spec.json_schema()
    return jsonschema.Draft202012Validator(schema)


def test_state_record_fields_and_formats(validator):
    fmt = records.Formatter(wall_offset_ns=1_700_000_000_000_000_000)
    span = ring(state_raw(5_000, 0x8000010000000007, "SYN_SENT", "ESTABLISHED", in_old=1234,
                          family=6, saddr=LO6, daddr=V4 + bytes([10, 0, 0, 1])))
    (rec,), bad = records.decode(fmt, span)
    assert bad == 0
    assert rec == {
        "type": "state", "ts": "2023-11-14T22:13:20.000005Z", "conn": "8000010000000007",
        "family": 6, "laddr": "::1", "lport": 40000, "raddr": "::ffff:10.0.0.1",
        "rport": 80, "old": "SYN_SENT", "new": "ESTABLISHED", "in_old_ns": 1234,
        "lower_bound": False, "pid": 100, "comm": "curl", "owner_from": "connect",
        "role": "client", "netns": None, "uid": None, "cgroup": None, "container": None,
        "unit": None, "via": None, "reason": None, "source": "bpf", "approx": False}
    assert list(rec) == list(spec.names("state"))
    validator.validate(rec)


def test_unknown_owner_and_duration_are_null(validator):
    (rec,), _ = records.decode(records.Formatter(0), ring(
        state_raw(1, 5, "LISTEN", "SYN_RECV", pid=0, comm=b"", owner=0, role=0)))
    assert (rec["pid"], rec["comm"], rec["owner_from"], rec["in_old_ns"], rec["role"]) == (
        None, None, "unknown", None, None)
    validator.validate(rec)


def test_closed_record(validator):
    fmt = records.Formatter(0)
    spent = {"SYN_SENT": 10, "ESTABLISHED": 1000, "FIN_WAIT1": 5, "FIN_WAIT2": 7,
             "TIME_WAIT": 60_000}
    path = ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"]
    (rec,), _ = records.decode(fmt, ring(closed_raw(61_100, 0x2a, 78, path, spent,
                                                    reason=1)))
    assert rec["conn"] == "2a"
    assert rec["lifetime_ns"] == 61_022 == sum(spent.values())
    assert rec["states"] == dict(dict.fromkeys(spec.TIMED_STATES, 0), **spent)
    assert list(rec["states"]) == list(spec.TIMED_STATES)      # a fixed shape
    assert rec["path"] == path + ["CLOSE"]
    assert (rec["closed_first"], rec["end"], rec["error"], rec["reason"]) == (
        "local", "normal", None, "expired")
    assert list(rec) == list(spec.names("closed"))
    validator.validate(rec)


def test_closed_record_names_the_error():
    (rec,), _ = records.decode(records.Formatter(0), ring(
        closed_raw(10, 1, 5, ["SYN_SENT"], {"SYN_SENT": 5}, error=111, end=1)))
    assert (rec["end"], rec["error"], rec["closed_first"]) == ("refused", "ECONNREFUSED", None)
    assert records.errno_name(110) == "ETIMEDOUT"
    assert records.errno_name(0) is None
    assert records.errno_name(4000) == "E4000"


def test_the_walk_counts_what_it_cannot_read():
    """Every record is read by its length; one of an unknown kind or of the
    wrong length is counted, never silently dropped; a discarded one (not
    sent) is skipped."""
    good = state_raw(1, 1, "CLOSE", "SYN_SENT")
    unknown = struct.pack("<I", 99) + good[4:]
    short = good[:40]
    recs, bad = records.decode(records.Formatter(0), ring(good, unknown, short, good, good,
                                                          discard=(3,)))
    assert len(recs) == 2 and bad == 2


def test_timestamps_across_millisecond_and_second_boundaries():
    """Formatter.ts keeps the text up to the millisecond cached; every time,
    in any order, must still read as the plain conversion."""
    def plain(wall):
        sec, frac = divmod(wall, 1_000_000_000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + ".%06dZ" % (frac // 1000)

    offset = 1_700_000_000_000_000_000
    fmt = records.Formatter(wall_offset_ns=offset)
    for t in [0, 999, 1_000, 999_999, 1_000_000, 1_000_999, 999_999_999, 1_000_000_000,
              999_999_999, 5, 3_000_000_123_456, 1, 60_000_000_000, -1, -1_000_001]:
        assert fmt.ts(t) == plain(t + offset)


def test_comm_is_decoded_safely():
    (rec,), _ = records.decode(records.Formatter(0), ring(
        state_raw(1, 1, "CLOSE", "SYN_SENT", comm=b"a\xff\n\x1b[1m\0junk")))
    assert rec["comm"] == "a\\xff\n\x1b[1m"          # bytes that are not UTF-8 as \xNN
    line = json.dumps(rec)
    assert "\n" not in line and "\x1b" not in line


@pytest.mark.parametrize("text,name", [
    ("time-wait", "TIME_WAIT"), ("TIME_WAIT", "TIME_WAIT"), ("TCP_CLOSE_WAIT", "CLOSE_WAIT"),
    ("fin-wait-1", "FIN_WAIT1"), ("syn-recv", "SYN_RECV"), ("listening", "LISTEN"),
    ("closed", "CLOSE"), ("established", "ESTABLISHED")])
def test_state_spellings(text, name):
    assert states.parse_state(text) == name


def test_unknown_state_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown TCP state 'bogus'"):
        states.parse_state("bogus")


def test_filters():
    fmt = records.Formatter(0)
    (st,), _ = records.decode(fmt, ring(state_raw(1, 1, "ESTABLISHED", "CLOSE_WAIT",
                                                  sport=5000, dport=80)))
    (cl,), _ = records.decode(fmt, ring(closed_raw(9, 1, 1, ["ESTABLISHED", "CLOSE_WAIT"])))
    lost = records.lost("t", 3, "ringbuf_lost")
    assert Filter(ports={80})(st) and not Filter(ports={81})(st)
    assert Filter(states={"CLOSE_WAIT"})(st) and not Filter(states={"TIME_WAIT"})(st)
    assert Filter(states={"CLOSE_WAIT"})(cl) and not Filter(states={"SYN_SENT"})(cl)
    assert Filter(pids={100})(st) and not Filter(pids={101})(st)
    assert Filter(comms={"curl"})(cl)
    # --records
    only_closed = Filter(types={"closed", "lost"})
    assert not only_closed(st) and only_closed(cl) and only_closed(lost)
    # lost and summary records are about the run, not a socket
    assert Filter(ports={81})(lost)
    # what the kernel cannot decide for its own records
    assert not Filter(family=4, ports={80}, types={"state"}).narrows_records
    assert Filter(pids={1}).narrows_records and Filter(comms={"x"}).narrows_records


class _Cgroups:
    def describe(self, cid):
        return {7: ("/system.slice/docker-%s.scope" % ("ab" * 32), "ab" * 32,
                    "docker-%s.scope" % ("ab" * 32))}.get(cid, (None, None, None))


def test_closed_context_health_and_reset(validator):
    """A closed record's context (netns, uid, cgroup and what is read from its
    path), health and who reset it, from the kernel's numbers and flags."""
    fmt = records.Formatter(0)
    fmt.context = _Cgroups()
    path = ["SYN_SENT", "ESTABLISHED"]
    rst = wire.FLAGS["rst_sent"]
    span = ring(
        closed_raw(10, 1, 5, path, cgroup=7, netns=4026531840, uid=1000, flags=rst,
                   health=(5000, 300, 9, 8, 2, 31, 15, 1)),
        closed_raw(10, 2, 5, path, uid=0, flags=wire.FLAGS["rst_recv"] | rst,
                   health=(0, 0, 1, 1, 0, 0, 0, wire.NONE_U32)),
        closed_raw(10, 3, 5, path, cgroup=8, flags=wire.FLAGS["rst_recv"]),
        state_raw(10, 4, "SYN_SENT", "ESTABLISHED", cgroup=7, netns=5, uid=0))
    (a, b, c, st), bad = records.decode(fmt, span)
    assert bad == 0
    cid = "ab" * 32
    assert {k: a[k] for k in ("netns", "uid", "cgroup", "container", "unit", "reset")} == {
        "netns": 4026531840, "uid": 1000, "cgroup": "/system.slice/docker-%s.scope" % cid,
        "container": cid, "unit": "docker-%s.scope" % cid, "reset": "sent"}
    assert [a[k] for k in ("bytes_sent", "bytes_received", "segs_out", "segs_in", "retrans",
                           "rtt_us", "rttvar_us", "syn_retrans")] == [5000, 300, 9, 8, 2, 31,
                                                                      15, 1]
    assert (b["reset"], b["uid"], b["syn_retrans"], b["bytes_sent"]) == ("both", 0, None, 0)
    assert (c["reset"], c["cgroup"], c["bytes_sent"], c["syn_retrans"], c["uid"]) == (
        "received", None, None, None, None)
    assert (st["netns"], st["uid"], st["container"]) == (5, 0, cid)
    for rec in (a, b, c, st):
        validator.validate(rec)
