"""Pure logic of the pipeline: state names, decoding, the connection table,
filters and the schema, fed with fabricated wire records (no kernel)."""

import json

import jsonschema
import pytest

from tracer import records, states, wire
from tracer.filters import Filter, parse_cidr
from tracer.schema import PATH as SCHEMA_PATH
from tracer.table import ConnTable

S = states.NUMBERS
V4 = bytes(10) + b"\xff\xff"
LO4 = V4 + bytes([127, 0, 0, 1])
ANY4 = V4 + bytes(4)
LO6 = bytes(15) + b"\x01"


@pytest.fixture(scope="module")
def validator():
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def raw(ts, sk, old, new, sport=40000, dport=80, in_old=None, pid=100, comm=b"curl",
        owner=1, family=4, saddr=LO4, daddr=LO4, twaddr=0, via=0, reason=0, kind=0):
    return (ts, sk, twaddr, in_old or 0, saddr, daddr, pid, sport, dport, family,
            S[old], S[new], owner, wire.F_IN_OLD if in_old is not None else 0,
            reason, via, kind, comm.ljust(16, b"\0"))


def feed(table, fmt, raws):
    out = []
    for r in raws:
        rec, ts, sk, tw = records.decode(fmt, r)
        closed = table.apply(rec, ts, sk, tw)
        if rec["type"] == "state":
            out.append(rec)
        if closed:
            out.append(closed)
    return out


def test_state_numbers_match_the_kernel():
    assert states.NAMES[1:] == ("ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1",
                                "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT",
                                "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV")


@pytest.mark.parametrize("text,name", [
    ("time-wait", "TIME_WAIT"), ("TIME_WAIT", "TIME_WAIT"), ("TCP_CLOSE_WAIT", "CLOSE_WAIT"),
    ("fin-wait-1", "FIN_WAIT1"), ("syn-recv", "SYN_RECV"), ("listening", "LISTEN"),
    ("closed", "CLOSE"), ("established", "ESTABLISHED")])
def test_state_spellings(text, name):
    assert states.parse_state(text) == name


def test_unknown_state_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown TCP state 'bogus'"):
        states.parse_state("bogus")


def test_decode_fields_and_formats(validator):
    fmt = records.Formatter(wall_offset_ns=1_700_000_000_000_000_000)
    rec, ts, sk, tw = records.decode(fmt, raw(5_000, 0xffff8881, "SYN_SENT", "ESTABLISHED",
                                               in_old=1234, family=6, saddr=LO6,
                                               daddr=V4 + bytes([10, 0, 0, 1])))
    assert rec == {
        "type": "state", "ts": "2023-11-14T22:13:20.000005Z", "sk": "ffff8881",
        "family": 6, "laddr": "::1", "lport": 40000, "raddr": "::ffff:10.0.0.1",
        "rport": 80, "old": "SYN_SENT", "new": "ESTABLISHED", "in_old_ns": 1234,
        "pid": 100, "comm": "curl", "owner_from": "connect", "source": "bpf"}
    assert (ts, sk, tw) == (5_000, 0xffff8881, 0)
    validator.validate(rec)


def test_timestamps_across_millisecond_and_second_boundaries():
    """Formatter.ts and decode keep the text up to the millisecond cached;
    every time, in any order, must still read as the plain conversion."""
    import time

    def plain(wall):
        sec, frac = divmod(wall, 1_000_000_000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + ".%06dZ" % (frac // 1000)

    offset = 1_700_000_000_000_000_000
    fmt = records.Formatter(wall_offset_ns=offset)
    times = [0, 999, 1_000, 999_999, 1_000_000, 1_000_999, 999_999_999, 1_000_000_000,
             999_999_999, 5, 3_000_000_123_456, 1, 60_000_000_000, -1, -1_000_001]
    for t in times:
        assert fmt.ts(t) == plain(t + offset)
        rec, *_ = records.decode(fmt, raw(t, 1, "CLOSE", "SYN_SENT"))
        assert rec["ts"] == plain(t + offset)


def test_unknown_owner_and_duration_are_null(validator):
    fmt = records.Formatter(0)
    rec, *_ = records.decode(fmt, raw(1, 1, "LISTEN", "SYN_RECV", pid=0, comm=b"", owner=0))
    assert (rec["pid"], rec["comm"], rec["owner_from"], rec["in_old_ns"]) == (None, None, "unknown", None)
    validator.validate(rec)


def client_first(sk=0xa, tw=0xb0):
    """A client-first close as the kernel reports it, TIME_WAIT via the peer."""
    return [
        raw(1_000, sk, "CLOSE", "SYN_SENT", sport=0),
        raw(1_100, sk, "SYN_SENT", "ESTABLISHED", in_old=100),
        raw(5_100, sk, "ESTABLISHED", "FIN_WAIT1", in_old=4_000),
        raw(5_300, sk, "FIN_WAIT1", "FIN_WAIT2", in_old=200),
        raw(5_400, sk, "FIN_WAIT2", "FIN_WAIT2", in_old=100, twaddr=tw, via=1, kind=1),
        raw(9_300, sk, "FIN_WAIT2", "TIME_WAIT", in_old=4_000, twaddr=tw, via=2),
        raw(60_009_300, sk, "TIME_WAIT", "CLOSE", in_old=60_000_000, twaddr=tw, via=1, reason=1),
    ]


def test_closed_summary_adds_up(validator):
    table = ConnTable(0)
    out = feed(table, records.Formatter(0), client_first())
    for rec in out:
        validator.validate(rec)
    states_seen = [(r["old"], r["new"]) for r in out if r["type"] == "state"]
    assert ("FIN_WAIT2", "FIN_WAIT2") not in states_seen      # the hand-off is internal
    closed = [r for r in out if r["type"] == "closed"]
    assert len(closed) == 1
    c = closed[0]
    assert c["path"] == ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE"]
    assert c["states"] == {"SYN_SENT": 100, "ESTABLISHED": 4_000, "FIN_WAIT1": 200,
                           "FIN_WAIT2": 4_000, "TIME_WAIT": 60_000_000}
    assert c["lifetime_ns"] == 60_009_300 - 1_000
    assert c["lifetime_ns"] == sum(c["states"].values())
    assert (c["role"], c["closed_first"], c["end"]) == ("client", "local", "normal")
    assert not table.live and not table.tw


def test_socket_address_reuse_while_in_time_wait():
    """The kernel frees the full socket when TIME_WAIT begins; a new socket at
    the same address must not be confused with the connection in TIME_WAIT."""
    table = ConnTable(0)
    fmt = records.Formatter(0)
    events = client_first(sk=0xa, tw=0xb0)[:-1]
    events += [raw(10_000, 0xa, "CLOSE", "SYN_SENT", sport=0, pid=200, comm=b"wget"),
               raw(10_100, 0xa, "SYN_SENT", "ESTABLISHED", in_old=100, pid=200, comm=b"wget")]
    feed(table, fmt, events)
    assert table.live[0xa].pid == 200
    assert table.tw[0xb0].state == "TIME_WAIT" and table.tw[0xb0].pid == 100


def test_refused_and_reset_endings():
    table = ConnTable(0)
    fmt = records.Formatter(0)
    out = feed(table, fmt, [
        raw(1, 1, "CLOSE", "SYN_SENT", sport=0),
        raw(50, 1, "SYN_SENT", "CLOSE", in_old=49),
        raw(1, 2, "CLOSE", "SYN_SENT", sport=0),
        raw(10, 2, "SYN_SENT", "ESTABLISHED", in_old=9),
        raw(90, 2, "ESTABLISHED", "CLOSE", in_old=80),
    ])
    ends = [r["end"] for r in out if r["type"] == "closed"]
    assert ends == ["refused", "reset"]


def test_seeded_socket_gets_owner_and_lower_bound(validator):
    from collections import namedtuple

    PS = namedtuple("PS", "family laddr lport raddr rport state inode")
    table = ConnTable(start_ns=1_000)
    table.seed_from([PS(4, "127.0.0.1", 5432, "127.0.0.1", 40000, S["ESTABLISHED"], 77),
                     PS(4, "0.0.0.0", 5432, "0.0.0.0", 0, S["LISTEN"], 78)],
                    {77: (4242, "postgres"), 78: (4242, "postgres")})
    fmt = records.Formatter(0)
    out = feed(table, fmt, [
        raw(9_000, 5, "ESTABLISHED", "CLOSE_WAIT", sport=5432, dport=40000, pid=0, comm=b"", owner=0),
        raw(9_500, 6, "LISTEN", "SYN_RECV", sport=5432, dport=40001, pid=0, comm=b"", owner=0),
    ])
    first, child = out
    assert (first["pid"], first["comm"], first["owner_from"]) == (4242, "postgres", "proc")
    assert first["in_old_ns"] == 8_000 and first["lower_bound"] is True
    assert (child["pid"], child["owner_from"]) == (4242, "listener")
    for rec in out:
        validator.validate(rec)


def test_table_cap_evicts_and_counts():
    table = ConnTable(0, cap=2)
    fmt = records.Formatter(0)
    feed(table, fmt, [raw(i, i, "CLOSE", "SYN_SENT", sport=0) for i in range(1, 6)])
    assert len(table.live) == 2 and table.evicted == 3


def test_summary_record_and_dump(validator):
    table = ConnTable(0)
    fmt = records.Formatter(0)
    feed(table, fmt, client_first()[:-1])
    socks = list(table.sockets(70_000, fmt.ts))
    assert [s["state"] for s in socks] == ["TIME_WAIT"]
    assert socks[0]["in_state_ns"] == 70_000 - 9_300 and socks[0]["age_ns"] == 70_000 - 1_000
    summary = table.summary(fmt.ts(70_000))
    assert summary["current"] == {"TIME_WAIT": 1}
    assert summary["durations"]["ESTABLISHED"]["p50_ns"] == 4_000
    for rec in socks + [summary, records.lost(fmt.ts(1), 3, "ringbuf_lost")]:
        validator.validate(rec)


def test_filters():
    rec = {"type": "state", "family": 6, "laddr": "::ffff:10.1.2.3", "lport": 443,
           "raddr": "::1", "rport": 5555, "pid": 9, "comm": "nginx",
           "old": "ESTABLISHED", "new": "CLOSE_WAIT"}
    assert Filter(nets=[parse_cidr("10.0.0.0/8")])(rec)
    assert not Filter(nets=[parse_cidr("192.168.0.0/16")])(rec)
    assert Filter(lports={443})(rec) and not Filter(rports={443})(rec)
    assert Filter(family=6)(rec) and not Filter(family=4)(rec)
    assert Filter(states={"CLOSE_WAIT"})(rec) and not Filter(states={"TIME_WAIT"})(rec)
    assert Filter(comms={"nginx"}, pids={9})(rec) and not Filter(pids={10})(rec)
    with pytest.raises(ValueError, match="not an address or CIDR"):
        parse_cidr("10.0.0.0/99")


def test_snapshot_sockets_are_in_the_table_until_they_end(validator):
    """The table knows the sockets older than the tracer before any event;
    a snapshot TIME_WAIT leaves when /proc said it would run out."""
    from collections import namedtuple

    PS = namedtuple("PS", "family laddr lport raddr rport state inode time_left_ns")
    table = ConnTable(start_ns=1_000)
    table.seed_from([PS(4, "127.0.0.1", 5432, "127.0.0.1", 40000, S["ESTABLISHED"], 77, 0),
                     PS(6, "::1", 8080, "::1", 50000, S["TIME_WAIT"], 0, 30_000)],
                    {77: (4242, "postgres")})
    fmt = records.Formatter(0)
    socks = {s["state"]: s for s in table.sockets(11_000, fmt.ts)}
    assert set(socks) == {"ESTABLISHED", "TIME_WAIT"}
    est = socks["ESTABLISHED"]
    assert (est["pid"], est["comm"], est["owner_from"]) == (4242, "postgres", "proc")
    assert est["in_state_ns"] == 10_000 and est["lower_bound"] is True
    assert socks["TIME_WAIT"]["owner_from"] == "unknown"
    for rec in socks.values():
        validator.validate(rec)
    assert table.current_states(40_000) == {"ESTABLISHED": 1}      # the TIME_WAIT ran out


def test_interned_meta_is_bounded_and_sockets_keep_theirs():
    from tracer import table as tablemod

    table = ConnTable(0)
    feed(table, records.Formatter(0), [raw(1, 0xA1, "CLOSE", "SYN_SENT", pid=4321)])
    conn = table.live[0xA1]
    for pid in range(tablemod._META_MAX + 1):
        tablemod._meta(pid, "x", "connect", 4, None, False)
    tablemod.trim_meta()
    assert len(tablemod._META) == 0
    assert (conn.pid, conn.comm, conn.owner_from) == (4321, "curl", "connect")
