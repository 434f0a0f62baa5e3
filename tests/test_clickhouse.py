"""The ClickHouse table and the seed questions of docs/clickhouse.md, on a
real capture: socktrace traces connections this test makes (normal ones to
two addresses, TIME_WAITs taken over by a reconnect, refused connects, a
process that leaks CLOSE_WAIT), the stream goes into chdb (ClickHouse
embedded) through the DDL of contrib/clickhouse/socktrace.sql, verbatim,
and every documented query, verbatim, gives the answers the workload
implies, exactly, and the same answers as Python over the same lines."""

import collections
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, read_events, start_socktrace

chdb_session = pytest.importorskip("chdb.session")

DDL = os.path.join(ROOT, "contrib", "clickhouse", "socktrace.sql")
DOC = os.path.join(ROOT, "docs", "clickhouse.md")

NORMAL = {"127.0.0.2": 12, "127.0.0.3": 8}      # client closes first: TIME_WAIT
REUSED = 5                                      # of the 127.0.0.2 ones, reconnected
REFUSED = 3                                     # to 127.0.0.4, where nothing listens
LEAKED = 5                                      # accepted by st-leaker, never closed

LEAKER = r"""
import ctypes, socket, sys, time
ctypes.CDLL(None).prctl(15, b"st-leaker", 0, 0, 0)
ls = socket.socket()
ls.bind(("127.0.0.5", 0))
print(ls.getsockname()[1], flush=True)
sys.stdin.readline()                      # listen once socktrace runs
ls.listen(16)
print("listening", flush=True)
held = []
ls.settimeout(30)
try:
    while len(held) < int(sys.argv[1]):
        held.append(ls.accept()[0])       # and never closed: CLOSE_WAIT
    sys.stdin.read()                      # until the test is done
except socket.timeout:
    pass
"""


def statements(path=DDL):
    sql = re.sub(r"--[^\n]*", "", open(path).read())
    return [s for s in sql.split(";") if s.strip()]


def documented():
    text = open(DOC).read()
    found = dict(re.findall(r"<!-- query: (\w+) -->\s*```sql\n(.*?)```", text, re.S))
    assert set(found) >= {"states", "ends", "top_remotes", "connect_latency", "time_wait",
                          "leaks", "close_wait_trend"}, sorted(found)
    return found


def test_docs_queries_and_ddl_parse():
    assert any("CREATE TABLE" in s for s in statements())
    assert documented()


def listener(host, listen=True):
    """Bound now; listening now or (listen=False) when the test says, so
    that its owner is the one listen() shows socktrace."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    if listen:
        s.listen(64)
    return s


RETRIES = []


def connect_from(ls, lport=0, attempts=1):
    """A client (bound to *lport* with SO_REUSEADDR) that closes first."""
    host, port = ls.getsockname()
    for i in range(attempts):
        if i:
            RETRIES.append(lport)   # a failed connect() has records of its own
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            c.bind(("127.0.0.1", lport))
            c.connect((host, port))
            break
        except OSError:
            c.close()
            if i == attempts - 1:
                raise
            time.sleep(0.1)
    a, _ = ls.accept()
    mine = c.getsockname()[1]
    c.close()
    a.close()
    return mine


@pytest.mark.bpf
def test_seed_questions_on_a_real_capture(tmp_path):
    leaker = subprocess.Popen([sys.executable, "-c", LEAKER, str(LEAKED)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    servers = {h: listener(h, listen=False) for h in NORMAL}
    probe = listener("127.0.0.6")
    # bound, never listening: a SYN to it is answered by a reset, and no
    # other socket takes the port meanwhile
    refused = socket.socket()
    refused.bind(("127.0.0.4", 0))
    refused_port = refused.getsockname()[1]
    held = []
    trace = None
    try:
        leak_port = int(leaker.stdout.readline())
        ports = [s.getsockname()[1] for s in servers.values()] + [
            refused_port, leak_port, probe.getsockname()[1]]
        args = [a for p in ports for a in ("--port", str(p))]
        me = os.getpid()
        # the port filter matches port numbers at any address: another test
        # on this host may use one of them elsewhere in 127/8
        ends = {("127.0.0.2", ports[0]), ("127.0.0.3", ports[1]), ("127.0.0.4", refused_port),
                ("127.0.0.5", leak_port)}

        def ours(e):
            return ((e.get("laddr"), e.get("lport")) in ends
                    or (e.get("raddr"), e.get("rport")) in ends)

        def sentinel():
            port = connect_from(probe)
            return lambda e: e.get("type") == "state" and e["lport"] == port and e["pid"] == me
        path = str(tmp_path / "capture.ndjson")
        trace = start_socktrace(path, args, sentinel=sentinel,
                                env={"SOCKTRACE_RECONCILE_S": "3600"})
        # the workload: listeners that start now, ...
        for s in servers.values():
            s.listen(64)
        leaker.stdin.write("listen\n")
        leaker.stdin.flush()
        assert leaker.stdout.readline().strip() == "listening"
        clients = {h: [connect_from(s) for _ in range(n)]
                   for (h, n), s in zip(NORMAL.items(), servers.values())}
        for _ in range(REFUSED):
            c = socket.socket()
            with pytest.raises(ConnectionRefusedError):
                c.connect(("127.0.0.4", refused_port))
            c.close()
        for _ in range(LEAKED):
            c = socket.create_connection(("127.0.0.5", leak_port), timeout=5)
            held.append(c)
        for c in held:
            c.close()               # the leaker's side stays in CLOSE_WAIT
        # tcp_tw_reuse lets a connect take a TIME_WAIT's 4-tuple after
        # tcp_tw_reuse_delay (1 s; in whole seconds before Linux 6.13: up to 2)
        time.sleep(2.1)
        first = servers["127.0.0.2"]
        for lport in clients["127.0.0.2"][:REUSED]:
            assert connect_from(first, lport, attempts=30) == lport
        assert not RETRIES, ("the kernel refused to reuse TIME_WAITs at first (%s): the "
                             "counts below would include the failed connects" % RETRIES)

        def done(evs):
            evs = [e for e in evs if ours(e)]
            closed = [e for e in evs if e["type"] == "closed"]
            return (sum(e["reason"] == "reused" for e in closed) == REUSED
                    and sum(e["end"] == "refused" for e in closed) == REFUSED
                    and sum(e["role"] == "server" for e in closed) == sum(NORMAL.values()) + REUSED
                    and sum(e["type"] == "state" and e["new"] == "CLOSE_WAIT"
                            and e["comm"] == "st-leaker" for e in evs) == LEAKED)
        trace.wait_for(done, timeout=20, what="the workload's records")
        time.sleep(0.3)
        trace.assert_clean_exit()
    finally:
        if trace is not None:
            trace.stop()           # idempotent; a failed wait must not leave it running
        for s in list(servers.values()) + [probe, refused]:
            s.close()
        leaker.stdin.close()
        try:
            leaker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            leaker.kill()
            leaker.wait()
    leaker_pid = leaker.pid

    # the capture: the workload's records (not the readiness probes, nor
    # another process's that shared a port number)
    everything = read_events(path)
    assert not [e for e in everything if e["type"] == "lost"], "records were lost"
    recs = [e for e in everything if ours(e)]
    stream = tmp_path / "stream.ndjson"
    stream.write_text("".join(json.dumps(e) + "\n" for e in recs))

    sess = chdb_session.Session(str(tmp_path / "chdb"))
    try:
        for stmt in statements():
            sess.query(stmt)
        # as docs/clickhouse.md loads it (a server's default is 'basic', which
        # takes no RFC 3339 'Z')
        sess.query("INSERT INTO socktrace.events SELECT * FROM file('%s', 'JSONEachRow') "
                   "SETTINGS date_time_input_format = 'best_effort'" % stream)
        queries = documented()

        def ask(name):
            res = sess.query(queries[name], "JSONCompact")
            return [tuple(row) for row in json.loads(res.bytes())["data"]]
        rows = int(json.loads(sess.query("SELECT count() FROM socktrace.events",
                                         "JSONCompact").bytes())["data"][0][0])
        assert rows == len(recs)
        answers = {name: ask(name) for name in queries}
    finally:
        sess.close()

    states = [e for e in recs if e["type"] == "state"]
    closed = [e for e in recs if e["type"] == "closed"]
    connects = sum(NORMAL.values()) + REUSED + REFUSED + LEAKED

    # transitions into each state: the same as Python counts, and as the workload implies
    per_state = {k: int(v) for k, v in answers["states"]}
    assert per_state == collections.Counter(e["new"] for e in states)
    assert per_state["SYN_SENT"] == connects
    assert per_state["CLOSE_WAIT"] == sum(NORMAL.values()) + REUSED + LEAKED
    assert per_state["TIME_WAIT"] == sum(NORMAL.values()) + REUSED
    assert per_state["LISTEN"] == len(NORMAL) + 1        # and the leaker's

    ends = {(r, e, err): int(n) for r, e, err, n in answers["ends"]}
    assert ends == {("server", "normal", None): sum(NORMAL.values()) + REUSED,
                    ("client", "normal", None): REUSED,
                    ("client", "refused", "ECONNREFUSED"): REFUSED}, ends

    remotes = {(a, int(p)): (int(c), int(r)) for a, p, c, r in answers["top_remotes"]}
    assert remotes == {
        ("127.0.0.2", ports[0]): (NORMAL["127.0.0.2"] + REUSED, 0),
        ("127.0.0.3", ports[1]): (NORMAL["127.0.0.3"], 0),
        ("127.0.0.5", leak_port): (LEAKED, 0),
        ("127.0.0.4", refused_port): (REFUSED, REFUSED)}, remotes
    assert answers["top_remotes"][0][0] == "127.0.0.2"

    lat = {a: row for a, *row in answers["connect_latency"]}
    assert set(lat) == {"127.0.0.2", "127.0.0.3", "127.0.0.5"}
    for addr, (n, p50, p99, mx) in lat.items():
        mine = sorted(e["in_old_ns"] for e in states if e["old"] == "SYN_SENT"
                      and e["new"] == "ESTABLISHED" and e["raddr"] == addr)
        assert int(n) == len(mine) == (NORMAL.get(addr, 0) + LEAKED * (addr == "127.0.0.5")
                                       + REUSED * (addr == "127.0.0.2"))
        # quantileExact: the value at index floor(level * n) of the sorted values
        assert (p50, p99, mx) == (mine[int(0.5 * len(mine))] / 1e3,
                                  mine[int(0.99 * len(mine))] / 1e3, mine[-1] / 1e3)
        assert 0 < p99 < 1e6, "a loopback connect took %s us" % p99

    (reason, n, p50, mx), = answers["time_wait"]
    assert (reason, int(n)) == ("reused", REUSED)
    tw = sorted(e["states"]["TIME_WAIT"] for e in closed if e["reason"] == "reused")
    assert (p50, mx) == (tw[len(tw) // 2] / 1e9, tw[-1] / 1e9)
    assert 0.9 <= p50 <= mx < 30, (p50, mx)

    (pid, comm, n, _oldest), = answers["leaks"]
    assert (pid, comm, int(n)) == (leaker_pid, "st-leaker", LEAKED)

    net = collections.Counter()
    for _minute, pid, comm, n in answers["close_wait_trend"]:
        net[(pid, comm)] += int(n)
    assert net[(leaker_pid, "st-leaker")] == LEAKED
    assert net[(os.getpid(), trace_comm())] == 0
    assert sum(net.values()) == LEAKED


def trace_comm():
    with open("/proc/self/comm") as f:
        return f.read().strip()
