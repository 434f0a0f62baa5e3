"""socktrace ports and socktrace stat against real sockets, compared with ss.

Every test makes its own sockets on loopback, on ports the kernel picks,
and filters both socktrace and ss by those ports, so other traffic on the
host does not disturb the comparison.  Child processes read stdin until
EOF: closing it (or the kill in the finally) ends them; every wait is
bounded.
"""

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, wait_for_time_wait_room

from tracer import cli

PY = os.path.join(ROOT, ".venv", "bin", "python")
if not os.path.exists(PY):
    PY = sys.executable
WAIT_S = 10.0

pytestmark = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")

# A child: set its comm, then either keep the fds it was given or listen
# on PORT with SO_REUSEPORT; say "ready", and wait for stdin to close.
CHILD = r"""
import ctypes, socket, sys
name, mode = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None)
libc.prctl(15, ctypes.c_char_p(name.encode()), 0, 0, 0)
keep = []
if mode.startswith("reuseport:"):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    _, host, port = mode.split(":")
    s.bind((host, int(port)))
    s.listen(8)
    keep.append(s)
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.read()
"""


class Children:
    def __init__(self):
        self.procs = []

    def start(self, name, mode="hold", pass_fds=()):
        p = subprocess.Popen([PY, "-c", CHILD, name, mode], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, pass_fds=pass_fds, cwd=ROOT)
        self.procs.append(p)
        line = p.stdout.readline()      # bounded: the child answers or dies
        assert line == "ready\n", (name, line, p.poll())
        return p

    def stop(self):
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stdout.close()
        self.procs = []


@pytest.fixture
def children():
    c = Children()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def tw_room():
    """Tests that make TIME_WAITs need room under tcp_max_tw_buckets (a
    benchmark storm can fill it: the kernel then skips TIME_WAIT)."""
    if not wait_for_time_wait_room():
        pytest.fail("TIME_WAIT table full (tcp_max_tw_buckets): a storm running?",
                    pytrace=False)


@pytest.fixture
def socks():
    held = []
    try:
        yield held
    finally:
        for s in held:
            s.close()


@pytest.fixture
def addr():
    """A loopback address of the test's own (other tests and benchmarks use
    127.0.0.1 and 127.0.0.2..): ss and socktrace are both filtered by it."""
    r = random.Random()
    return "127.%d.%d.%d" % (r.randrange(100, 250), r.randrange(1, 250), r.randrange(1, 250))


def listener(held, addr, backlog=16, reuseport=False):
    """A listener on *addr*, on a port the kernel picks that no other socket
    uses there (an earlier test's TIME_WAITs would change the counts)."""
    for _ in range(20):
        s = socket.socket()
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((addr, 0))
        s.listen(backlog)
        port = s.getsockname()[1]
        if len(ss(port, addr)) == 1:
            held.append(s)
            return s, port
        s.close()
    pytest.fail("no quiet port in 20 tries")


def connect(addr, port):
    return socket.create_connection((addr, port), timeout=5, source_address=(addr, 0))


# --- ss ---------------------------------------------------------------------------

SS_STATE = {"ESTAB": "ESTABLISHED", "SYN-SENT": "SYN_SENT", "SYN-RECV": "SYN_RECV",
            "FIN-WAIT-1": "FIN_WAIT1", "FIN-WAIT-2": "FIN_WAIT2", "TIME-WAIT": "TIME_WAIT",
            "CLOSE-WAIT": "CLOSE_WAIT", "LAST-ACK": "LAST_ACK", "LISTEN": "LISTEN",
            "CLOSING": "CLOSING", "UNCONN": "CLOSE"}
USER = re.compile(r'\("((?:[^"\\]|\\.)*)",pid=(\d+),fd=(\d+)\)')


def split_ep(text):
    addr, _, port = text.rpartition(":")
    return addr.strip("[]").split("%")[0], int(port) if port != "*" else 0


def ss(port, addr, listening=False):
    """ss -tanp (or -tlnp) for sockets with *port* at either end, on *addr*."""
    flags = "-Htlnp" if listening else "-Htanp"
    r = subprocess.run(["ss", flags, "( sport = :%d or dport = :%d ) and ( src %s or dst %s )"
                        % (port, port, addr, addr)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = []
    for line in r.stdout.splitlines():
        f = line.split(None, 5)
        la, lp = split_ep(f[3])
        ra, rp = split_ep(f[4])
        users = sorted((int(p), int(fd), n) for n, p, fd in USER.findall(f[5] if len(f) > 5 else ""))
        out.append({"state": SS_STATE[f[0]], "recv_q": int(f[1]), "send_q": int(f[2]),
                    "laddr": la, "lport": lp, "raddr": ra, "rport": rp, "users": users})
    return out


def users(owners):
    return sorted((o["pid"], o["fd"], o["comm"]) for o in owners)


def wait_for(what, cond, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for %s" % what)
        time.sleep(0.02)


def run_json(capsys, *argv):
    capsys.readouterr()
    rc = cli.main(list(argv) + ["--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.count("\n") == 1, "one JSON document"
    return json.loads(out)


def run_text(capsys, *argv):
    capsys.readouterr()
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def netstat():
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for h, v in zip(lines[0::2], lines[1::2]):
        if h.startswith("TcpExt:"):
            return dict(zip(h.split()[1:], map(int, v.split()[1:])))
    return {}


# --- ports ---------------------------------------------------------------------------


def test_ports_prefork_listener_every_holder(capsys, children, socks, addr):
    """A listener held by its parent and two forked workers: all three are
    listed, with their fds, as ss -tlnp lists them."""
    ls, port = listener(socks, addr)
    for i in range(2):
        children.start("prefork%d" % i, pass_fds=(ls.fileno(),))
    doc = run_json(capsys, "ports", str(port), "--addr", addr)
    [lst] = doc["listeners"]
    [want] = ss(port, addr, listening=True)
    assert (lst["addr"], lst["port"]) == (want["laddr"], want["lport"])
    assert (lst["accept_queue"], lst["accept_max"]) == (want["recv_q"], want["send_q"]) == (0, 16)
    assert users(lst["owners"]) == want["users"]
    pids = {o["pid"] for o in lst["owners"]}
    assert pids == {os.getpid()} | {p.pid for p in children.procs}
    assert doc["connections"] == []
    text = run_text(capsys, "ports", str(port), "--addr", addr)
    assert "prefork0/%d" % children.procs[0].pid in text
    assert "%s:%d" % (addr, port) in text


def test_ports_reuseport_two_processes(capsys, children, socks, addr):
    """SO_REUSEPORT: two listening sockets on one port, one per process;
    one row each, as ss shows them."""
    _, port = listener(socks, addr, reuseport=True)
    child = children.start("reuseport", "reuseport:%s:%d" % (addr, port))
    doc = run_json(capsys, "ports", str(port), "--addr", addr)
    want = ss(port, addr, listening=True)
    assert len(doc["listeners"]) == len(want) == 2
    got = sorted(users(x["owners"]) for x in doc["listeners"])
    assert got == sorted(w["users"] for w in want)
    assert {x["owners"][0]["pid"] for x in doc["listeners"]} == {os.getpid(), child.pid}
    assert all(x["reuseport_group"] == 2 for x in doc["listeners"])


def test_ports_close_wait_leak(capsys, socks, addr):
    """The server accepts, the clients close, the server never does: its
    sockets sit in CLOSE_WAIT, owned by this process, with the fds ss names."""
    ls, port = listener(socks, addr)
    for _ in range(3):
        c = connect(addr, port)
        a, _ = ls.accept()
        socks.append(a)
        c.close()
    wait_for("3 CLOSE-WAIT", lambda: sum(s["state"] == "CLOSE_WAIT" for s in ss(port, addr)) == 3)
    doc = run_json(capsys, "ports", str(port), "--addr", addr)
    want = [s for s in ss(port, addr) if s["state"] != "LISTEN"]
    got = doc["connections"]
    key = lambda c: (c["state"], c["laddr"], c["lport"], c["raddr"], c["rport"])  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, want))
    for c in got:
        w = next(x for x in want if key(x) == key(c))
        assert users(c["owners"]) == w["users"], c
        assert (c["recv_q"], c["send_q"]) == (w["recv_q"], w["send_q"])
    cws = [c for c in got if c["state"] == "CLOSE_WAIT"]
    assert len(cws) == 3
    assert all(c["owners"][0]["pid"] == os.getpid() for c in cws)
    assert all(c["age_estimate"] and c["age_s"] is not None and c["age_s"] < 60 for c in cws)
    [lst] = doc["listeners"]
    assert lst["connections"]["CLOSE_WAIT"] == 3
    # --state narrows the connections, not the listener
    doc = run_json(capsys, "ports", str(port), "--addr", addr, "--state", "close-wait")
    assert len(doc["connections"]) == 3 and len(doc["listeners"]) == 1


def test_ports_time_wait_ages_and_subprocess(socks, addr, tw_room):
    """TIME_WAITs have no owner and an age from their timer; the command
    runs as a program too (text, then --json)."""
    ls, port = listener(socks, addr)
    for _ in range(5):
        c = connect(addr, port)
        a, _ = ls.accept()
        c.close()
        wait_for("FIN", lambda: a.recv(1) == b"")
        a.close()
    wait_for("5 TIME-WAIT", lambda: sum(s["state"] == "TIME_WAIT" for s in ss(port, addr)) == 5)
    r = subprocess.run([PY, "-m", "tracer", "ports", str(port), "--addr", addr], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert any(line.startswith("%s:%d " % (addr, port)) for line in lines), r.stdout
    assert sum(line.startswith("TIME-WAIT ") for line in lines) == 5, r.stdout
    assert max(len(line) for line in lines) <= 80 or "COLUMNS" in os.environ
    r = subprocess.run([PY, "-m", "tracer", "ports", str(port), "--addr", addr, "--json"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    doc = json.loads(r.stdout)
    tws = [c for c in doc["connections"] if c["state"] == "TIME_WAIT"]
    assert len(tws) == 5
    for c in tws:
        assert c["owners"] == [] and c["rport"] == port
        assert 0 <= c["age_s"] <= 61 and c["age_estimate"] is False


def test_ports_backlog_overflow(capsys, socks, addr):
    """A listener that never accepts: its accept queue fills past its
    backlog (queue 2 for a backlog of 1, as ss shows), further handshakes
    are dropped and ListenOverflows grows."""
    ls, port = listener(socks, addr, backlog=1)
    before = netstat().get("ListenOverflows", 0)
    for _ in range(6):
        c = socket.socket()
        c.setblocking(False)
        c.bind((addr, 0))
        c.connect_ex((addr, port))
        socks.append(c)
    wait_for("a full accept queue", lambda: ss(port, addr, listening=True)[0]["recv_q"] >= 2)
    wait_for("an overflow", lambda: netstat().get("ListenOverflows", 0) > before)
    doc = run_json(capsys, "ports", str(port), "--addr", addr)
    [lst] = doc["listeners"]
    [want] = ss(port, addr, listening=True)
    assert (lst["accept_queue"], lst["accept_max"]) == (want["recv_q"], want["send_q"])
    assert lst["accept_max"] == 1 and lst["accept_queue"] == 2
    lo = netstat()["ListenOverflows"]
    st = run_json(capsys, "stat", "--port", str(port), "--addr", addr)
    hi = netstat()["ListenOverflows"]
    assert lo <= st["counters"]["ListenOverflows"] <= hi
    assert st["counters"]["ListenOverflows"] > before
    busy = [x for x in st["listeners"] if x["port"] == port]
    assert busy and busy[0]["accept_queue"] == 2 and busy[0]["accept_max"] == 1
    text = run_text(capsys, "ports", str(port), "--addr", addr)
    assert "2/1" in text


# --- stat ---------------------------------------------------------------------------


def test_stat_time_wait_storm_one_destination(capsys, socks, addr, tw_room):
    """TIME_WAITs toward one destination: counted per destination against
    the ephemeral range, and the counts per state equal ss's."""
    ls, port = listener(socks, addr)
    n = 40
    for _ in range(n):
        c = connect(addr, port)
        a, _ = ls.accept()
        c.close()
        wait_for("FIN", lambda: a.recv(1) == b"")
        a.close()
    wait_for("TIME-WAITs", lambda: sum(s["state"] == "TIME_WAIT" for s in ss(port, addr)) == n)
    doc = run_json(capsys, "stat", "--port", str(port), "--addr", addr)
    want = ss(port, addr)
    by = {}
    for s in want:
        by[s["state"]] = by.get(s["state"], 0) + 1
    got = {r["state"]: r["total"] for r in doc["states"]}
    assert got == by
    assert doc["total"] == len(want)
    tw = doc["time_wait"]
    lo, hi = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    assert tw["ephemeral_range"] == [lo, hi] and tw["range_size"] == hi - lo + 1
    assert tw["tcp_tw_reuse"] == int(open("/proc/sys/net/ipv4/tcp_tw_reuse").read())
    [d] = [d for d in tw["destinations"] if (d["raddr"], d["rport"]) == (addr, port)]
    assert d["time_wait"] == n and d["worst_source_ports"] == n
    assert d["range_used_pct"] == round(100.0 * n / (hi - lo + 1), 1)
    assert tw["by_remote_address"][0] == {"family": 4, "addr": addr, "time_wait": n}
    text = run_text(capsys, "stat", "--port", str(port), "--addr", addr)
    assert "%s:%d" % (addr, port) in text and "TIME_WAIT" in text
    r = subprocess.run([PY, "-m", "tracer", "stat"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env=dict(os.environ, COLUMNS="80"))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    # (an IPv6 endpoint of another test's traffic may be wider: not ours)
    long = [line for line in r.stdout.splitlines() if len(line) > 80 and "[" not in line]
    assert not long, long


def _ss_s_tcp():
    out = subprocess.run(["ss", "-s"], capture_output=True, text=True, timeout=30).stdout
    line = next(x for x in out.splitlines() if x.startswith("TCP:"))
    return [int(x) for x in re.findall(r"\d+", line)]


def test_stat_ss_s_line(capsys):
    """The kernel's totals, as ss -s prints them: the same files, read a
    moment apart, so equal when ss reads the same twice around us; on a
    host whose sockets churn, between ss's two readings (1% slack)."""
    for _ in range(30):
        r1 = _ss_s_tcp()
        k = run_json(capsys, "stat", "--port", "1", "--no-owners")["ss_s"]
        r2 = _ss_s_tcp()
        ours = [k["total"], k["estab"], k["closed"], k["orphaned"], k["timewait"]]
        if r1 == r2:
            assert ours == r1
            return
    for a, b, o in zip(r1, r2, ours):
        lo, hi = min(a, b), max(a, b)
        assert lo - lo // 100 - 2 <= o <= hi + hi // 100 + 2, (r1, ours, r2)


def test_stat_close_wait_oldest_and_processes(capsys, socks, children, addr):
    """The oldest CLOSE_WAIT comes with its owner; top processes count the
    sockets each process holds, a shared listener once per holder."""
    ls, port = listener(socks, addr)
    child = children.start("cwholder", pass_fds=(ls.fileno(),))
    for _ in range(2):
        c = connect(addr, port)
        a, _ = ls.accept()
        socks.append(a)
        c.close()
    wait_for("2 CLOSE-WAIT", lambda: sum(s["state"] == "CLOSE_WAIT" for s in ss(port, addr)) == 2)
    doc = run_json(capsys, "stat", "--port", str(port), "--addr", addr)
    cw = doc["close_wait"]
    assert cw["total"] == 2
    want = {(s["raddr"], s["rport"]): s["users"] for s in ss(port, addr) if s["state"] == "CLOSE_WAIT"}
    for o in cw["oldest"]:
        assert users(o["owners"]) == want[(o["raddr"], o["rport"])]
        assert o["age_estimate"] is True
    assert cw["by_process"][0]["pid"] == os.getpid() and cw["by_process"][0]["close_wait"] == 2
    procs = {p["pid"]: p for p in doc["top_processes"]}
    assert procs[os.getpid()]["sockets"] == 3            # listener + 2 CLOSE_WAIT
    assert procs[child.pid]["sockets"] == 1 and procs[child.pid]["comm"] == "cwholder"
    # the filters select the sockets counted
    doc = run_json(capsys, "stat", "--port", str(port), "--addr", addr, "--pid", str(child.pid))
    assert doc["total"] == 1 and doc["states"][0]["state"] == "LISTEN"
    doc = run_json(capsys, "stat", "--port", str(port), "--addr", addr, "--comm", "cwholder", "--state", "listen")
    assert doc["total"] == 1
    doc = run_json(capsys, "stat", "--port", str(port), "--addr", addr, "-6")
    assert doc["total"] == 0
    doc = run_json(capsys, "stat", "--port", str(port), "--addr", "10.0.0.0/8")
    assert doc["total"] == 0


def test_text_escapes_process_names(capsys, socks, children, addr):
    """A process may name itself with terminal escapes: text output shows
    them as visible escapes, never raw."""
    ls, port = listener(socks, addr)
    children.start("x\x1b[2Jy", pass_fds=(ls.fileno(),))
    out = run_text(capsys, "ports", str(port), "--addr", addr)
    assert "\x1b" not in out and "x\\x1b[2Jy" in out
    out = run_text(capsys, "stat", "--port", str(port), "--addr", addr)
    assert "\x1b" not in out
    doc = run_json(capsys, "ports", str(port), "--addr", addr)
    assert any(o["comm"] == "x\x1b[2Jy" for o in doc["listeners"][0]["owners"])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as nobody")
def test_not_root_owners_unknown(socks, readable_checkout, addr):
    """As another user, root's /proc/PID/fd is unreadable: owners unknown,
    said once; the sockets are still there (sock_diag needs no root)."""
    runas = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if not shutil.which("setpriv"):
        pytest.skip("no setpriv")
    _, port = listener(socks, addr)
    r = subprocess.run(runas + [PY, "-m", "tracer", "ports", str(port), "--addr", addr, "--json"],
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    [lst] = doc["listeners"]
    assert lst["owners"] == [] and doc["owners_complete"] is False
    assert len([n for n in doc["notes"] if "root" in n]) == 1


# --- usage ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["ports", "x"], ["ports", "70000"], ["stat", "--top", "0"],
                                  ["stat", "--bogus"], ["ports", "--state", "nope"],
                                  ["stat", "--addr", "not-a-net"], ["ports", "-4", "-6"]])
def test_usage_errors(capsys, argv):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("cmd", ["ports", "stat"])
def test_help(capsys, cmd):
    rc = cli.main([cmd, "-h"])
    out, _ = capsys.readouterr()
    assert rc == 0 and "usage: socktrace %s" % cmd in out and "--json" in out


def test_runtime_error_one_line(capsys, monkeypatch):
    from tracer import sockdiag

    def broken(*a, **k):
        raise sockdiag.SockDiagError("sock_diag: netlink socket: Permission denied", 13)
    monkeypatch.setattr(sockdiag, "dump", broken)
    for cmd in ("ports", "stat"):
        rc = cli.main([cmd])
        out, err = capsys.readouterr()
        assert rc == 1 and out == ""
        assert err == "socktrace %s: sock_diag: netlink socket: Permission denied\n" % cmd


def test_doctests():
    import doctest

    from tracer.views import common
    res = doctest.testmod(common)
    assert res.failed == 0 and res.attempted > 0


def test_kernel_port_filter_equals_python_filter(socks, addr):
    """sock_diag bytecode (sockdiag.port_filter) passes exactly the sockets
    a Python filter over a full dump keeps: local port in one set, remote
    port in the other; the audit of the kernel accepts 1 to 300 tests."""
    from tracer import sockdiag
    ls, port = listener(socks, addr)
    c = connect(addr, port)
    socks.append(c)
    a, _ = ls.accept()
    socks.append(a)
    cport = c.getsockname()[1]
    for sp, dp in (([port], []), ([], [port]), ([port], [port]), ([cport], [1, 2, 3]),
                   (list(range(1, 300)) + [port], [])):
        for _ in range(5):      # other tests' sockets move: retry until two dumps agree
            full = sockdiag.dump()
            got = sockdiag.dump(bytecode=sockdiag.port_filter(sp, dp))
            again = sockdiag.dump()
            if full == again:
                break
        want = [s for s in full if s.lport in sp or s.rport in dp]
        key = lambda s: (s.family, s.laddr, s.lport, s.raddr, s.rport, s.state)  # noqa: E731
        mine = {k for k in map(key, want) if addr in (k[1], k[3])}
        assert mine == {k for k in map(key, got) if addr in (k[1], k[3])}, (sp, dp)
        assert mine, (sp, dp)


def test_ports_by_process_only(capsys, socks, addr, children):
    """--comm without a port: that process's listeners and connections."""
    ls, port = listener(socks, addr)
    child = children.start("bycomm", pass_fds=(ls.fileno(),))
    doc = run_json(capsys, "ports", "--comm", "bycomm")
    assert [x["port"] for x in doc["listeners"]] == [port]
    assert doc["connections"] == []
    assert any(o["pid"] == child.pid for o in doc["listeners"][0]["owners"])


def test_ports_many_listener_ports_fall_back_to_a_full_dump(capsys, socks, addr, monkeypatch):
    """More ports than one kernel filter may hold: one full dump, filtered
    in Python, and the same answer."""
    from tracer import sockdiag
    ls, port = listener(socks, addr)
    c = connect(addr, port)
    socks.append(c)
    a, _ = ls.accept()
    socks.append(a)
    want = run_json(capsys, "ports", str(port), "--addr", addr)
    monkeypatch.setattr(sockdiag, "MAX_FILTER_PORTS", 1)
    got = run_json(capsys, "ports", str(port), "--addr", addr)
    for doc in (want, got):
        del doc["ts"]
    assert got == want
    assert [x["connections"] for x in got["listeners"]] == [{"ESTABLISHED": 1}]
    assert len(got["connections"]) == 2
