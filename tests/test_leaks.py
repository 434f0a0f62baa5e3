"""socktrace leaks against real leaks, compared with ss, lsof and /proc.

One watch of 4 s (a sample every 0.5 s) while the test feeds six child
processes on a loopback address of its own:

- ``leaky``: accepts and never closes; the test connects and hangs up every
  0.3 s, so its CLOSE_WAIT sockets (and fds) pile up;
- ``healthy``: the same traffic, closes each connection after its client;
- ``pool``: opens one more connection (kept) at each step, toward a
  listener of the test that never accepts: ESTABLISHED grows;
- ``steady``: holds 5 connections from the start, no more;
- ``fd leaker`` (a name with a terminal escape): opens a file at each step
  and never closes it;
- ``stuck``: a server with 3 CLOSE_WAIT made before the watch, and no
  traffic during it.

Three watches run side by side over that traffic: the whole host in JSON
with --all (its stderr a terminal, whose progress lines tell the test when
the watch began), --port of the leaky server in JSON, and text with
--fail-on-leak.  The feed stops 2.5 s into the watch, so the last samples
are quiet and their counts equal what ss, lsof and /proc say afterwards.
Every wait is bounded; children exit when their stdin closes (or after
120 s), and the finally kills what is left.
"""

import json
import os
import pty
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT

from tracer import cli

PY = os.path.join(ROOT, ".venv", "bin", "python")
if not os.path.exists(PY):
    PY = sys.executable

pytestmark = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")

STEP = 0.3                     # the feed: one connection, one fd, every 0.3 s
WATCH = ["--duration", "4", "--interval", "0.5"]      # 9 samples
WATCH_A = ["--duration", "5", "--interval", "0.5"]    # 11 samples: quiet for the last 2
FEED_UNTIL_SAMPLE = 9

CHILD = r"""
import ctypes, os, select, socket, sys, time
name, mode, addr, arg = sys.argv[1:5]
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name.encode()), 0, 0, 0)
keep, conns, ls, port = [], [], None, 0
if mode in ("leaky", "healthy"):
    ls = socket.socket()
    ls.bind((addr, 0))
    ls.listen(128)
    port = ls.getsockname()[1]
elif mode == "steady":
    for _ in range(5):
        keep.append(socket.create_connection((addr, int(arg)), 5, (addr, 0)))
sys.stdout.write("ready %d\n" % port)
sys.stdout.flush()
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    r, _, _ = select.select([0] + ([ls] if ls else []) + conns, [], [], 1.0)
    for f in r:
        if f == 0:
            data = os.read(0, 4096)
            if not data:
                sys.exit(0)
            for _ in range(data.count(b"\n")):
                if mode == "pool":
                    keep.append(socket.create_connection((addr, int(arg)), 5, (addr, 0)))
                elif mode == "fdleak":
                    keep.append(open(arg))
        elif f is ls:
            a, _ = ls.accept()
            (keep if mode == "leaky" else conns).append(a)
        elif not f.recv(4096):     # healthy: the client hung up, close too
            conns.remove(f)
            f.close()
"""


class Children:
    def __init__(self):
        self.procs = {}

    def start(self, key, name, mode, addr, arg="-"):
        p = subprocess.Popen([PY, "-c", CHILD, name, mode, addr, str(arg)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd=ROOT)
        self.procs[key] = p
        line = p.stdout.readline()      # bounded: the child answers or dies
        assert line.startswith("ready "), (name, line, p.poll())
        return p, int(line.split()[1])

    def step(self, key):
        p = self.procs[key]
        p.stdin.write("s\n")
        p.stdin.flush()

    def stop(self):
        for p in self.procs.values():
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stdout.close()
        self.procs = {}


@pytest.fixture
def children():
    c = Children()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def addr():
    r = random.Random()
    return "127.%d.%d.%d" % (r.randrange(100, 250), r.randrange(1, 250), r.randrange(1, 250))


def connect(addr, port):
    return socket.create_connection((addr, port), timeout=5, source_address=(addr, 0))


SS_STATE = {"ESTAB": "ESTABLISHED", "CLOSE-WAIT": "CLOSE_WAIT", "LISTEN": "LISTEN",
            "TIME-WAIT": "TIME_WAIT", "FIN-WAIT-2": "FIN_WAIT2", "LAST-ACK": "LAST_ACK",
            "SYN-SENT": "SYN_SENT", "SYN-RECV": "SYN_RECV", "FIN-WAIT-1": "FIN_WAIT1",
            "CLOSING": "CLOSING"}
USER = re.compile(r'\("((?:[^"\\]|\\.)*)",pid=(\d+),fd=(\d+)\)')


def _ep(text):
    a, _, p = text.rpartition(":")
    return a.strip("[]"), int(p) if p != "*" else 0


def ss(port, addr):
    """ss -tanp for the sockets with *port* at either end, on *addr*."""
    r = subprocess.run(["ss", "-Htanp", "( sport = :%d or dport = :%d ) and ( src %s or dst %s )"
                        % (port, port, addr, addr)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = []
    for line in r.stdout.splitlines():
        f = line.split(None, 5)
        la, lp = _ep(f[3])
        ra, rp = _ep(f[4])
        out.append({"state": SS_STATE.get(f[0], f[0]), "laddr": la, "lport": lp, "raddr": ra,
                    "rport": rp, "users": sorted((int(p), int(fd)) for _n, p, fd in
                                                 USER.findall(f[5] if len(f) > 5 else ""))})
    return out


def lsof_fds(pid, state):
    """The fds lsof lists for *pid*'s TCP sockets in *state* (CLOSE_WAIT)."""
    r = subprocess.run(["lsof", "-nP", "-a", "-p", str(pid), "-iTCP", "-sTCP:" + state, "-F", "f"],
                       capture_output=True, text=True, timeout=30)
    return sorted(int(x[1:]) for x in r.stdout.split() if x[:1] == "f" and x[1:].isdigit())


def proc_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def by_pid(doc, key):
    return {e["pid"]: e for e in (doc[key] or ())}


def wait_for(what, cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for %s" % what)
        time.sleep(0.02)


# --- the watch -----------------------------------------------------------------------


class Run:
    """``socktrace leaks`` with its stderr on a terminal of its own, whose
    progress lines ("sample N/9") tell when its samples are taken."""

    def __init__(self, argv, watch=WATCH):
        self.master, slave = pty.openpty()
        try:
            self.p = subprocess.Popen([PY, "-m", "tracer", "leaks"] + argv + watch,
                                      stdout=subprocess.PIPE, stderr=slave, cwd=ROOT,
                                      env=dict(os.environ, COLUMNS="80"))
        finally:
            os.close(slave)
        self.progress = b""
        self.sample = 0
        self.ended = False
        self.returncode = None

    def poll_progress(self, timeout):
        if self.master is None or self.ended:
            time.sleep(timeout)
            return self.sample
        r, _, _ = select.select([self.master], [], [], timeout)
        if r:
            try:
                data = os.read(self.master, 4096)
            except OSError:    # EIO: the program ended
                data = b""
            if not data:
                self.ended = True
            self.progress += data
            nums = re.findall(rb"sample (\d+)/", self.progress)
            if nums:
                self.sample = int(nums[-1])
        return self.sample

    def finish(self):
        out, _ = self.p.communicate(timeout=60)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:     # what is left on the terminal
            r, _, _ = select.select([self.master], [], [], 0.1)
            if not r:
                break
            try:
                data = os.read(self.master, 4096)
            except OSError:
                break
            if not data:
                break
            self.progress += data
        self.returncode = self.p.returncode
        return out, self.progress

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        if self.p.stdout:
            self.p.stdout.close()
        if self.master is not None:
            os.close(self.master)
            self.master = None


def test_leaks_names_the_leakers_and_no_one_else(children, addr, tmp_path):
    pool_ls = socket.socket()
    pool_ls.bind((addr, 0))
    pool_ls.listen(128)            # never accepts: the pool's peers have no owner
    pool_port = pool_ls.getsockname()[1]
    leak_file = str(tmp_path / "leak.dat")
    open(leak_file, "w").close()
    fd_name = "fdleak\x1b[2J"
    leaky, leaky_port = children.start("leaky", "leaky", "leaky", addr)
    healthy, healthy_port = children.start("healthy", "healthy", "healthy", addr)
    pool, _ = children.start("pool", "pool", "pool", addr, pool_port)
    steady, _ = children.start("steady", "steady", "steady", addr, pool_port)
    fdleak, _ = children.start("fdleak", fd_name, "fdleak", addr, leak_file)
    stuck, stuck_port = children.start("stuck", "stuck", "leaky", addr)
    for _ in range(3):
        connect(addr, stuck_port).close()
    wait_for("3 CLOSE-WAIT", lambda: sum(
        s["state"] == "CLOSE_WAIT" and bool(s["users"]) for s in ss(stuck_port, addr)) == 3)

    runs = []
    first_client = None
    steps = 0
    try:
        # b and c (4 s) first; once both sample, the feed starts and a (5 s,
        # the one compared exactly) with it; the feed stops at a's 9th
        # sample of 11: it covers every watch to its end but a's last second
        b = Run(["--json", "--port", str(leaky_port)])
        c = Run(["--fail-on-leak"])
        runs = [b, c]
        wait_for("b and c sampling", lambda: min(r.poll_progress(0.05) for r in runs) >= 1,
                 timeout=30)
        a = Run(["--json", "--all"], WATCH_A)
        runs.append(a)
        deadline = time.monotonic() + 40
        while (a.sample < FEED_UNTIL_SAMPLE and not a.ended and a.p.poll() is None
               and time.monotonic() < deadline):
            cl = connect(addr, leaky_port)
            if first_client is None:
                first_client = cl.getsockname()
            cl.close()
            connect(addr, healthy_port).close()
            children.step("pool")
            children.step("fdleak")
            steps += 1
            t_next = time.monotonic() + STEP
            while time.monotonic() < t_next:
                for r in runs:
                    r.poll_progress(max(0.0, min(0.05, t_next - time.monotonic())))
        assert a.sample >= FEED_UNTIL_SAMPLE, a.progress
        outs = [r.finish() for r in (a, b, c)]
    finally:
        for r in runs:
            r.close()
    (out_a, err_a), (out_b, err_b), (out_c, err_c) = outs
    assert a.returncode == 0 and b.returncode == 0, (err_a, err_b)
    # progress on the terminal, cleared at the end: stdout has only the answer
    assert err_a.endswith(b"\r"), err_a
    assert out_a.count(b"\n") == 1 and out_b.count(b"\n") == 1, "one JSON document each"
    doc = json.loads(out_a)
    leaking = by_pid(doc, "leaking")
    steady_l = by_pid(doc, "steady")
    # (a host busier than its cores may take samples late, or fewer)
    assert 6 <= doc["samples"] == len(doc["times_s"]) <= 11
    assert b"sample %d/11" % doc["samples"] in err_a
    assert doc["watching"] == ["CLOSE_WAIT", "ESTABLISHED", "fds"]
    assert doc["duration_s"] >= 4.9 or doc["samples"] < 11
    # quiet at the end: the last sample came after the feed settled (on
    # a host so busy that it did not, what a counted is at most what is now)
    quiet = all(x["series"][k][-1] == x["series"][k][-2] for x in doc["leaking"]
                for k in x["growing"] if x["pid"] in (leaky.pid, pool.pid, fdleak.pid))
    exact = (lambda got, want: got == want) if quiet else (lambda got, want: got <= want)

    # the leaky server: named for CLOSE_WAIT, with its pid, growing counts,
    # the oldest socket (the first connection) and its remote end as ss
    # and lsof see them now; its fds as /proc counts them
    e = leaking[leaky.pid]
    assert e["comm"] == "leaky" and "CLOSE_WAIT" in e["growing"] and "fds" in e["growing"]
    assert "ESTABLISHED" not in e["growing"]
    cw = e["series"]["CLOSE_WAIT"]
    assert cw[-1] - cw[0] >= 3 and cw == sorted(cw)
    mine = [s for s in ss(leaky_port, addr) if s["state"] == "CLOSE_WAIT" and s["lport"] == leaky_port]
    assert all(s["users"] and s["users"][0][0] == leaky.pid for s in mine)
    assert len(mine) == steps and exact(e["now"]["CLOSE_WAIT"], len(mine))
    assert lsof_fds(leaky.pid, "CLOSE_WAIT") == sorted(s["users"][0][1] for s in mine)
    assert exact(e["now"]["fds"], proc_fds(leaky.pid))
    o = e["oldest"]["CLOSE_WAIT"]
    assert (o["raddr"], o["rport"]) == first_client
    [want] = [s for s in mine if (s["raddr"], s["rport"]) == first_client]
    assert (o["laddr"], o["lport"]) == (want["laddr"], want["lport"]) == (addr, leaky_port)
    assert [(leaky.pid, o["fd"])] == want["users"]
    assert o["age_estimate"] is True and 0 < o["age_s"] < 60
    assert e["local_ports"]["CLOSE_WAIT"] == [{"port": leaky_port,
                                               "sockets": e["now"]["CLOSE_WAIT"]}]
    assert e["remote_addrs"]["CLOSE_WAIT"] == [{"family": 4, "addr": addr,
                                                "sockets": e["now"]["CLOSE_WAIT"]}]
    assert e["trend"]["CLOSE_WAIT"]["slope_per_s"] > 0

    # the healthy server, with the same traffic: watched, not named
    assert healthy.pid not in leaking and healthy.pid in steady_l
    assert max(steady_l[healthy.pid]["series"]["CLOSE_WAIT"]) <= 2
    assert abs(steady_l[healthy.pid]["now"]["fds"] - proc_fds(healthy.pid)) <= (not quiet)

    # the pool: ESTABLISHED grows; the steady pool is not named
    p = leaking[pool.pid]
    assert "ESTABLISHED" in p["growing"] and "CLOSE_WAIT" not in p["growing"]
    est = [s for s in ss(pool_port, addr) if s["state"] == "ESTABLISHED" and s["users"]
           and s["users"][0][0] == pool.pid]
    assert len(est) == steps and exact(p["now"]["ESTABLISHED"], len(est))
    po = p["oldest"]["ESTABLISHED"]
    assert (po["raddr"], po["rport"]) == (addr, pool_port) and po["age_s"] is None
    assert (po["laddr"], po["lport"]) in {(s["laddr"], s["lport"]) for s in est}
    assert p["remote_ends"]["ESTABLISHED"] == [{"family": 4, "addr": addr, "port": pool_port,
                                                "sockets": p["now"]["ESTABLISHED"]}]
    assert steady.pid not in leaking and steady_l[steady.pid]["now"]["ESTABLISHED"] == 5

    # the fd leaker: named for fds only, with what its fds point to
    f = leaking[fdleak.pid]
    assert f["growing"] == ["fds"] and f["comm"] == fd_name
    assert exact(f["now"]["fds"], proc_fds(fdleak.pid))
    assert f["fd_targets"][0]["target"] == leak_file
    assert exact(f["fd_targets"][0]["count"], steps)
    assert f["oldest"] == {"CLOSE_WAIT": None, "ESTABLISHED": None}

    # CLOSE_WAIT held the whole watch without growing: reported apart
    st = by_pid(doc, "close_wait_held")[stuck.pid]
    assert st["held_whole_watch"] == 3 and st["growing"] == []
    assert st["oldest"]["CLOSE_WAIT"]["seen_from_start"] is True
    assert stuck.pid not in leaking

    # --port: only the leaky server's sockets, so only its processes
    doc_b = json.loads(out_b)
    assert [x["pid"] for x in doc_b["leaking"]] == [leaky.pid]
    assert doc_b["processes_watched"] <= 2 and doc_b["steady"] is None
    assert doc_b["leaking"][0]["local_ports"]["CLOSE_WAIT"][0]["port"] == leaky_port

    # text: 80 columns, names escaped, status 3 with --fail-on-leak
    text = out_c.decode()
    assert c.returncode == 3, err_c
    assert "leaky/%d: CLOSE_WAIT" % leaky.pid in text
    assert re.search(r"(?m)^  CLOSE_WAIT +[0-9 ]+ \(\+\d+ in [0-9.]+ s\)$", text), text
    assert "remote %s:%d" % first_client in text
    assert "fdleak\\x1b[2J/%d: open fds growing" % fdleak.pid in text
    assert "CLOSE_WAIT on local port %d (" % leaky_port in text
    assert "ESTABLISHED to %s:%d (" % (addr, pool_port) in text
    assert "\x1b" not in text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "healthy/%d" % healthy.pid not in text
    pool_ls.close()


# --- the rest -----------------------------------------------------------------------


def default_sigint():
    # a runner started in the background by a shell ignores SIGINT, and
    # so would its children
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupt_answers_for_the_samples_taken(children, addr):
    """Ctrl-C ends the watch early: the answer covers the samples taken."""
    leaky, port = children.start("leaky", "leaky", "leaky", addr)
    p = subprocess.Popen([PY, "-m", "tracer", "leaks", "--json", "--port", str(port),
                          "--duration", "60", "--interval", "0.2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                         preexec_fn=default_sigint)
    try:
        for _ in range(8):
            connect(addr, port).close()
            time.sleep(0.2)
        p.send_signal(2)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert err == b"", "no progress when stderr is no terminal"
    doc = json.loads(out)
    assert 3 <= doc["samples"] < 300
    assert any("interrupted" in n for n in doc["notes"])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as nobody")
def test_not_root(children, addr, readable_checkout):
    """As another user, root's processes cannot be watched: said once, and
    the watch still runs on sock_diag."""
    if not shutil.which("setpriv"):
        pytest.skip("no setpriv")
    _, port = children.start("leaky", "leaky", "leaky", addr)
    connect(addr, port).close()
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PY, "-m",
                        "tracer", "leaks", "--port", str(port), "--json", "--duration", "1",
                        "--interval", "0.5"], capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["leaking"] == [] and doc["owners_complete"] is False
    assert len([n for n in doc["notes"] if "root" in n]) == 1


@pytest.mark.parametrize("argv", [
    ["--state", "time-wait"], ["--duration", "0"], ["--duration", "nan"],
    ["--duration", "4000"], ["--interval", "3", "--duration", "4"],
    ["--interval", "0.01"], ["--min-growth", "0"], ["--port", "x"],
    ["--duration", "200", "--interval", "0.1"]])
def test_usage_errors(capsys, argv):
    rc = cli.main(["leaks"] + argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("socktrace leaks: "), err


def test_short_watch_default_interval(capsys):
    """--duration under 4 s without --interval samples every quarter of it."""
    assert cli.main(["leaks", "--duration", "1", "--port", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr()[0])
    assert doc["samples"] == 5 and doc["interval_s"] == 0.25 and doc["leaking"] == []
    assert doc["processes_watched"] == 0


def test_help(capsys):
    assert cli.main(["leaks", "-h"]) == 0
    out, _ = capsys.readouterr()
    assert "usage: socktrace leaks" in out and "--fail-on-leak" in out and "--json" in out


def test_runtime_error_one_line(capsys, monkeypatch):
    from tracer import sockdiag

    def broken(*a, **k):
        raise sockdiag.SockDiagError("sock_diag: netlink socket: Permission denied", 13)
    monkeypatch.setattr(sockdiag, "dump", broken)
    rc = cli.main(["leaks", "--duration", "1", "--interval", "0.5"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err == "socktrace leaks: sock_diag: netlink socket: Permission denied\n"


def test_fd_targets_keep_bytes_that_are_not_utf8(tmp_path):
    """A path that is not UTF-8 is shown with \\xNN, as comm is, and the
    document stays valid JSON."""
    from tracer.views import leaks
    d = os.path.join(os.fsencode(str(tmp_path)), b"d\xffx")
    os.mkdir(d)
    files = [open(os.path.join(d, b"f"), "w") for _ in range(40)]
    try:
        top = leaks.fd_kinds(os.getpid())
    finally:
        for f in files:
            f.close()
    want = str(tmp_path) + "/d\\xffx/f"
    assert top[0] == {"target": want, "count": 40}
    json.dumps(top, ensure_ascii=False).encode("utf-8")
