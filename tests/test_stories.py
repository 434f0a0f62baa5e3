"""One story per connection, against the real kernel: ids that are never
shared, no self-transitions, ends named from what the kernel knew, sockets
older than socktrace with their real ids, and records that hold still.

The sockets here are made by this test process on loopback; each test picks
its records by 4-tuple and then by ``conn``.
"""

import errno
import os
import re
import socket
import subprocess
import time

import pytest

from conftest import describe, start_socktrace
from workload import free_port

pytestmark = pytest.mark.bpf

CLIENT = [("CLOSE", "SYN_SENT"), ("SYN_SENT", "ESTABLISHED"), ("ESTABLISHED", "FIN_WAIT1"),
          ("FIN_WAIT1", "FIN_WAIT2"), ("FIN_WAIT2", "TIME_WAIT")]


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    """One socktrace of this process's sockets for the module."""
    path = str(tmp_path_factory.mktemp("stories") / "out.ndjson")
    t = start_socktrace(path, ["--pid", str(os.getpid()), "--summary"])
    yield t
    t.assert_clean_exit()


def of_tuple(evs, lport, rport, types=("state", "closed")):
    """Records of the socket with local port *lport* and remote *rport*, plus
    the CLOSE->SYN_SENT before its port was chosen (same conn)."""
    mine = [e for e in evs if e.get("type") in types and e["lport"] == lport
            and e["rport"] == rport]
    conns = {e["conn"] for e in mine}
    return [e for e in evs if e.get("type") in types and e["conn"] in conns]


def chain(recs):
    return [(e["old"], e["new"]) for e in recs if e["type"] == "state"]


def listener(backlog=8):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(backlog)
    return ls


def test_half_close_then_close_has_no_self_transition(trace):
    """shutdown(SHUT_WR), then close(): the kernel fires FIN_WAIT2 ->
    FIN_WAIT2, which is no transition: dropped, and FIN_WAIT2 lasts until the
    peer's FIN, whole."""
    ls = listener()
    m = trace.mark()
    c = socket.create_connection(ls.getsockname())
    a, _ = ls.accept()
    port, cport = ls.getsockname()[1], c.getsockname()[1]
    try:
        c.shutdown(socket.SHUT_WR)
        time.sleep(0.2)
        c.close()                  # FIN_WAIT2 -> FIN_WAIT2 in the kernel
        time.sleep(0.4)
        a.close()                  # the peer's FIN ends FIN_WAIT2
    finally:
        ls.close()

    def done(evs):
        mine = of_tuple(evs, cport, port)
        return mine if chain(mine) == CLIENT else None
    trace.wait_for(done, since=m, what="the half-closed client's transitions")
    time.sleep(0.3)
    mine = of_tuple(trace.events(m), cport, port)
    assert chain(mine) == CLIENT, describe(mine)
    assert len({e["conn"] for e in mine}) == 1, describe(mine)
    fw2 = mine[-1]
    # FIN_WAIT2 from the ACK of our FIN (right after shutdown) to the peer's
    # FIN: 0.6 s of sleeps, not split by the close() in between
    assert 0.55e9 <= fw2["in_old_ns"] <= 2e9, fw2
    # the server side went through CLOSE_WAIT for as long
    srv = of_tuple(trace.events(m), port, cport)
    assert chain(srv)[-2:] == [("CLOSE_WAIT", "LAST_ACK"), ("LAST_ACK", "CLOSE")], describe(srv)
    closed = [e for e in srv if e["type"] == "closed"]
    assert len(closed) == 1 and closed[0]["path"] == [
        "SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"], closed
    assert closed[0]["states"]["CLOSE_WAIT"] >= 0.55e9


def _full_listener():
    """A listener whose accept queue is full (backlog 0, one connection not
    accepted): the kernel drops further SYNs, as on an overloaded server.
    The fillers connect from 127.0.0.2, so that a test's own connect from
    127.0.0.1 is the only one from there."""
    ls = listener(backlog=0)
    fillers = []
    for _ in range(2):
        f = socket.socket()
        f.bind(("127.0.0.2", 0))
        f.setblocking(False)
        try:
            f.connect(ls.getsockname())
        except BlockingIOError:
            pass
        fillers.append(f)
    time.sleep(0.2)
    return ls, fillers


def test_connect_timeout_and_cancelled_connect(trace):
    """A SYN nobody answers: the kernel's own ETIMEDOUT is "timeout"; an
    application that gives up and closes first is "cancelled".  Neither is
    "refused": no reset came."""
    ls, fillers = _full_listener()
    port = ls.getsockname()[1]
    m = trace.mark()
    try:
        slow = socket.socket()
        slow.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 1)   # ~3 s
        slow.setblocking(False)
        try:
            slow.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        quitter = socket.socket()
        quitter.setblocking(False)
        try:
            quitter.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        qport = quitter.getsockname()[1]
        sport = slow.getsockname()[1]
        time.sleep(0.5)
        quitter.close()             # the application gives up
        deadline = time.monotonic() + 10
        err = 0
        while time.monotonic() < deadline:
            err = slow.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                break
            time.sleep(0.1)
        assert err == errno.ETIMEDOUT, os.strerror(err)
        slow.close()

        def done(evs):
            return ([e for e in of_tuple(evs, sport, port) if e["type"] == "closed"]
                    and [e for e in of_tuple(evs, qport, port) if e["type"] == "closed"])
        trace.wait_for(done, since=m, what="both connects' closed records")
    finally:
        ls.close()
        for f in fillers:
            f.close()
    evs = trace.events(m)
    (timed_out,) = [e for e in of_tuple(evs, sport, port) if e["type"] == "closed"]
    assert (timed_out["end"], timed_out["error"]) == ("timeout", "ETIMEDOUT"), timed_out
    assert timed_out["path"] == ["SYN_SENT", "CLOSE"]
    assert 2.5e9 <= timed_out["states"]["SYN_SENT"] <= 5e9, timed_out
    (gave_up,) = [e for e in of_tuple(evs, qport, port) if e["type"] == "closed"]
    assert (gave_up["end"], gave_up["error"]) == ("cancelled", None), gave_up
    assert 0.4e9 <= gave_up["states"]["SYN_SENT"] <= 2e9, gave_up


def test_every_conn_is_one_connection(trace):
    """Grouped by conn, every connection's state records are one chain,
    each leaving the state the previous entered, with at most one start and
    one end, and at most one closed record after its end."""
    ls = listener()
    for _ in range(30):             # sockets are freed and their memory reused
        c = socket.create_connection(ls.getsockname())
        a, _ = ls.accept()
        c.close()
        a.close()
    ls.close()
    time.sleep(0.3)
    groups = {}
    for e in trace.events():
        if e.get("type") in ("state", "closed"):
            groups.setdefault(e["conn"], []).append(e)
    assert len(groups) > 60
    for conn, recs in groups.items():
        st = [e for e in recs if e["type"] == "state"]
        for prev, e in zip(st, st[1:]):
            assert e["old"] == prev["new"] and prev["new"] != "CLOSE", (
                "conn %s is not one connection:\n%s" % (conn, describe(recs)))
            assert e["old"] != e["new"], describe(recs)
        closed = [e for e in recs if e["type"] == "closed"]
        assert len(closed) <= 1, describe(recs)
        if closed:
            assert recs[-1] is closed[0] and st[-1]["new"] == "CLOSE", describe(recs)


def _ss_cookies():
    """{(laddr, lport, raddr, rport): cookie} from ``ss -tane`` (sk:<hex>)."""
    out = subprocess.run(["ss", "-tane"], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines()[1:]:
        f = line.split()
        m = re.search(r"\bsk:([0-9a-f]+)", line)
        if len(f) < 5 or not m:
            continue
        (la, lp), (ra, rp) = f[3].rsplit(":", 1), f[4].rsplit(":", 1)
        found[(la.strip("[]"), int(lp), ra.strip("[]"), int(rp) if rp != "*" else 0)] = m.group(1)
    return found


def test_sockets_older_than_socktrace(tmp_path):
    """Sockets that existed at start are dumped with their kernel id (the
    cookie ss -e shows) and real tuple; a TIME_WAIT older than socktrace
    that a reconnect takes over ends with its story: TIME_WAIT -> CLOSE
    (reused) and a closed record, lower bounds said so."""
    ls = listener()
    port = ls.getsockname()[1]
    held_c = socket.create_connection(("127.0.0.1", port))
    held_a, _ = ls.accept()
    key = _time_wait_before(ls)
    tw_port = key[1]
    held = [(held_c.getsockname() + held_c.getpeername(), "ESTABLISHED"),
            (held_a.getsockname() + held_a.getpeername(), "ESTABLISHED"),
            (ls.getsockname() + ("0.0.0.0", 0), "LISTEN")]
    trace = start_socktrace(str(tmp_path / "older.ndjson"), ["--dump-every", "0.3"])
    try:
        cookies = _ss_cookies()
        assert key in cookies, "ss -tane shows no TIME_WAIT for %s" % (key,)
        again = socket.socket()
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", tw_port))
        again.connect(("127.0.0.1", port))      # takes over the TIME_WAIT
        again_a, _ = ls.accept()

        def ended(evs):
            return [e for e in evs if e.get("type") == "closed" and e["lport"] == tw_port
                    and e["rport"] == port and e["conn"] == cookies[key]]
        (closed,) = trace.wait_for(ended, what="the older TIME_WAIT's end")
        trace.wait_for(lambda evs: [e for e in evs if e.get("type") == "socket"],
                       what="a dump")
        evs = trace.events()
        dump = [e for e in evs if e.get("type") == "socket"]
        again.close()
        again_a.close()
    finally:
        trace.stop()
        for s in (held_c, held_a, ls):
            s.close()
    end = [e for e in evs if e.get("type") == "state" and e["conn"] == cookies[key]]
    assert chain(end) == [("TIME_WAIT", "CLOSE")], describe(end)
    assert end[0]["reason"] == "reused" and end[0]["via"] == "timer", end[0]
    assert end[0]["lower_bound"] is True and end[0]["in_old_ns"] >= 0.2e9, end[0]
    assert closed["path"] == ["TIME_WAIT", "CLOSE"] and closed["lower_bound"] is True, closed
    assert closed["end"] == "normal" and closed["reason"] == "reused", closed
    # the held connection, as the first dumps show it: the ids ss shows
    first = {}
    for e in dump:
        first.setdefault((e["laddr"], e["lport"], e["raddr"], e["rport"]), e)
    for tup, state in held:
        rec = first.get(tup)
        assert rec is not None, "no socket record for %s" % (tup,)
        assert rec["conn"] == cookies[tup], (rec, cookies[tup])
        assert rec["state"] == state and rec["lower_bound"] is True, rec
        assert rec["pid"] == os.getpid() and rec["owner_from"] == "proc", rec
    assert trace.rc == 0


def test_records_closed_only(tmp_path):
    """--records closed: one record per connection, and the kernel sends no
    per-transition records at all (the summary counts them)."""
    def sentinel():
        ls = listener()
        c = socket.create_connection(ls.getsockname())
        a, _ = ls.accept()
        a.close()
        c.close()
        port = ls.getsockname()[1]
        ls.close()

        def pred(e, port=port):
            return e.get("type") == "closed" and e["rport"] == port
        return pred
    trace = start_socktrace(str(tmp_path / "closed.ndjson"),
                            ["--records", "closed,summary", "--pid", str(os.getpid())],
                            sentinel=sentinel)
    trace.assert_clean_exit()
    evs = trace.events()
    assert {e["type"] for e in evs} <= {"closed", "summary"}, {e["type"] for e in evs}
    (summary,) = [e for e in evs if e["type"] == "summary"]
    assert summary["records"]["state"] == 0 and summary["records"]["closed"] > 0, summary
    assert summary["transitions"], "the kernel still counts transitions"


def _time_wait_before(ls):
    """A client-first connection to *ls* whose client end is in TIME_WAIT
    now; returns its tuple as ss prints it."""
    port = ls.getsockname()[1]
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind(("127.0.0.1", 0))
    cport = c.getsockname()[1]
    c.connect(("127.0.0.1", port))
    a, _ = ls.accept()
    c.close()
    time.sleep(0.05)
    a.close()
    time.sleep(0.2)
    return ("127.0.0.1", cport, "127.0.0.1", port)


def test_a_story_whose_socket_vanished_unseen_is_ended(tmp_path):
    """With classic tracepoints the timer programs cannot tell the timewait
    timer of a socket older than socktrace (no timer function in the
    event), so such a TIME_WAIT ends unseen: reconciliation with the
    kernel's socket list (sped up here) ends its story with a closed record,
    end "unknown", and no stale row stays in the dumps."""
    ls = listener()
    port = ls.getsockname()[1]
    key = _time_wait_before(ls)
    trace = start_socktrace(str(tmp_path / "vanished.ndjson"), ["--dump-every", "0.5"],
                            env={"SOCKTRACE_TRACEPOINTS": "classic",
                                 "SOCKTRACE_RECONCILE_S": "0.5"})
    try:
        cookie = _ss_cookies()[key]
        again = socket.socket()
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", key[1]))
        again.connect(("127.0.0.1", port))     # the TIME_WAIT is gone now
        again_a, _ = ls.accept()

        def ended(evs):
            return [e for e in evs if e.get("type") == "closed" and e["conn"] == cookie]
        (closed,) = trace.wait_for(ended, timeout=15, what="the vanished TIME_WAIT's end")
        m = trace.mark()
        trace.wait_for(lambda evs: [e for e in evs if e.get("type") == "socket"], since=m,
                       what="a dump after the end")
        time.sleep(0.6)
        later = trace.events(m)
        again.close()
        again_a.close()
    finally:
        trace.stop()
        ls.close()
    assert trace.rc == 0, trace.stderr()
    assert (closed["end"], closed["path"], closed["lower_bound"]) == (
        "unknown", ["TIME_WAIT", "CLOSE"], True), closed
    assert (closed["lport"], closed["rport"]) == (key[1], port), closed
    assert not [e for e in later if e.get("type") == "socket" and e["conn"] == cookie], (
        "a stale row stayed")


def test_a_connect_that_hangs_keeps_its_story(tmp_path):
    """A client waits in SYN_SENT (its SYNs dropped by a full backlog)
    across several reconciliations and dumps: its story has no local port
    yet, which must not make it look gone.  Dumps show it under its id, and
    closing it ends it once, as cancelled."""
    trace = start_socktrace(str(tmp_path / "hang.ndjson"),
                            ["--dump-every", "0.3", "--pid", str(os.getpid())],
                            env={"SOCKTRACE_RECONCILE_S": "0.3"})
    ls, fillers = _full_listener()
    try:
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(ls.getsockname())
        except BlockingIOError:
            pass
        cport, port = c.getsockname()[1], ls.getsockname()[1]
        m = trace.mark()
        time.sleep(2.0)                 # several reconciliations and dumps
        during = trace.events(m)
        c.close()

        def ended(evs):
            return [e for e in evs if e.get("type") == "closed" and e["rport"] == port
                    and e["lport"] == cport]
        (closed,) = trace.wait_for(ended, what="the cancelled connect's end")
        evs = trace.events()
    finally:
        trace.stop()
        ls.close()
        for f in fillers:
            f.close()
    assert trace.rc == 0, trace.stderr()
    (start,) = [e for e in evs if e.get("type") == "state" and e["conn"] == closed["conn"]
                and e["new"] == "SYN_SENT"]
    assert closed["end"] == "cancelled" and closed["lifetime_ns"] >= 2e9, closed
    assert not [e for e in during if e.get("type") == "closed" and e["rport"] == port], (
        "reconciliation ended a connect still in progress")
    dumped = [e for e in during if e.get("type") == "socket" and e["lport"] == cport
              and e["rport"] == port]
    assert dumped and all(e["conn"] == start["conn"] and e["state"] == "SYN_SENT"
                          for e in dumped), dumped


@pytest.mark.bpf
@pytest.mark.parametrize("by", ["port", "rport"])
def test_connections_accepted_by_an_older_listener_have_its_owner(tmp_path, by):
    """A server that listened before socktrace started: what it accepts
    afterwards is owned by it (owner_from listener, then accept once it
    accepted them), as for a new one; also
    when the filter (--rport: the client's port) leaves the listener out."""
    ls = listener()
    port = ls.getsockname()[1]
    me = os.getpid()
    sentinel_port, cport = free_port(), free_port()

    def connect(from_port):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(("127.0.0.1", from_port))
        c.connect(("127.0.0.1", port))
        return c

    def sentinel():
        c = connect(sentinel_port)
        a, _ = ls.accept()
        c.close()
        a.close()

        def pred(e):
            return (e.get("type") == "state" and e["new"] == "SYN_RECV" and e["lport"] == port)
        return pred
    flags = (["--port", str(port)] if by == "port" else
             ["--rport", "%d,%d" % (sentinel_port, cport)])
    trace = start_socktrace(str(tmp_path / "older-listener.ndjson"), flags, sentinel=sentinel)
    try:
        mark = trace.mark()
        c = connect(cport)
        a, _ = ls.accept()
        c.close()
        a.close()

        def served(evs):
            return [e for e in evs if e.get("type") == "closed" and e["lport"] == port
                    and e["rport"] == cport]
        (closed,) = trace.wait_for(served, since=mark, what="the accepted connection's end")
    finally:
        trace.stop()
        ls.close()
    # accepted by this process: its owner from accept() on (before that,
    # its listener's: the same process)
    assert (closed["pid"], closed["owner_from"], closed["role"]) == (me, "accept", "server")
    states = [e for e in trace.events(mark) if e.get("type") == "state" and e["lport"] == port
              and e["rport"] == cport]
    assert states and all(e["pid"] == me for e in states), describe(states)

