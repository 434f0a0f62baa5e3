"""Connection health and context against the real kernel: exact byte counts,
retransmissions and SYN retransmissions in closed records; the owner of
connections a pre-fork server's workers (and SO_REUSEPORT listeners)
accept; the cgroup, container, unit, network namespace and uid every record
carries, and the --netns, --uid, --cgroup and --container filters.

Each test starts its own socktrace with a filter (a port where it can),
so that other traffic on the host stays out, and picks its sockets by
4-tuple, then by ``conn``.  The other ends are processes forked from this
one (:class:`Child`): they set their comm, enter a network namespace, a
cgroup or uid 65534 before they make any socket, and report over a pipe
what they did (the port they connected from, the peer they accepted), so
every expectation is exact.  Nothing here execs: a child that dropped to
uid 65534 needs no access to the checkout.

Namespaces (``st-health-<pid>-a/-b``, a veth pair between them, addresses
only inside them) and cgroups (``<cgroup2>/socktrace-test-<pid>.slice/...``)
are removed on every path, and the module checks at its end that no
process, namespace or cgroup of it is left.

What this kernel (6.18) does, as the tests rely on it:

* the kernel's tcp_info byte counters move with sequence numbers: a
  client's bytes_acked counts its SYN, everyone's their FIN once ACKed,
  bytes_received the peer's FIN; closed records take them off (payload).
* a side that closes first hands off to a timewait socket, and its closed
  record comes when TIME_WAIT ends (60 s): here a reconnect from the same
  port takes it over after tcp_tw_reuse's 1 s (loopback only), as in
  test_kernel's reuse test.  For the server's TIME_WAIT (server-first) the
  client's new SYN does it.
* a SYN nobody answers, with TCP_SYNCNT=1: TWO retransmissions here, at
  1 s and 2 s, then ETIMEDOUT at 3 s (tcp_syn_linear_timeouts spaces them
  1 s apart within a give-up time still modelled on exponential backoff;
  see syn_retransmissions_with_syncnt_1); total_retrans is 2 then.
* a FIN_WAIT2 timewait socket whose peer's FIN comes later (FIN_WAIT2 ->
  TIME_WAIT) is mostly not seen by socktrace's timer programs: our reading
  is that the re-arm (mod_timer_pending) returns early in __mod_timer(),
  with no timer tracepoint, when the new expiry falls in the same
  timer-wheel bucket (2 s wide for a 60 s timer at HZ=250); it then shows
  only through a traced local peer ("via peer"), or when TIME_WAIT ends
  (test_netns_filter_time_wait_begins_live).
* cgroup ids are the inodes of the cgroup2 directories; user space names
  them by walking the tree, at most once a second
  (test_cgroup_container_unit[while]).
* TCP_USER_TIMEOUT ends a connection whose data goes unacknowledged with
  ETIMEDOUT, the RTO clamped to it.
* the peer is made to drop packets by removing its address: with
  ip_forward off (a new namespace) a packet for an address it does not have
  is dropped silently, and a permanent neighbour entry on the sender keeps
  ARP out of it (a failed ARP would report EHOSTUNREACH to the socket, which
  tcp_write_err() prefers to ETIMEDOUT).
"""

import ctypes
import errno
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import traceback

import pytest

from conftest import describe, listen_sentinel, start_socktrace
from workload import free_port, set_comm

pytestmark = pytest.mark.bpf

LOOPBACK = {4: "127.0.0.1", 6: "::1"}
AF = {4: socket.AF_INET, 6: socket.AF_INET6}
REPLY_S = 20.0            # the test waiting for one message from a child
CHILD_IO_S = 20.0         # any single wait in a child
NOBODY = 65534
TAG = os.getpid()
NS_PREFIX = "st-health-%d-" % TAG
CG_SLICE = "socktrace-test-%d.slice" % TAG

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000


# ---------------------------------------------------------------------------
# Forked children that talk JSON lines over pipes
# ---------------------------------------------------------------------------


class ChildError(Exception):
    pass


class Link:
    """One end of a pair of pipes carrying JSON lines; every wait bounded."""

    def __init__(self, rfd, wfd):
        self.rfd, self.wfd = rfd, wfd
        self.buf = b""

    def send(self, obj):
        os.write(self.wfd, (json.dumps(obj) + "\n").encode())

    def pending(self):
        return b"\n" in self.buf

    def recv(self, timeout=REPLY_S):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message within %.0f s" % timeout)
            r, _, _ = select.select([self.rfd], [], [], left)
            if r:
                chunk = os.read(self.rfd, 65536)
                if not chunk:
                    raise EOFError("the other end closed its pipe")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        msg = json.loads(line)
        if isinstance(msg, dict) and "exception" in msg:
            raise ChildError(msg["exception"])
        return msg

    def close(self):
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass


_PARENT_FDS = set()    # our ends of live children's pipes: a new child closes them
_LIVE = []             # children not stopped yet
_PIDS = set()          # every process this module made (children, grandchildren)


def enter_netns(name):
    fd = os.open("/run/netns/" + name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "setns(%s): %s" % (name, os.strerror(e)))
    finally:
        os.close(fd)


def die_with_parent(parent):
    """SIGKILL when *parent* dies (set after any credential change, which clears it)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(71)


class Child:
    """``body(link, *args)`` in a forked process, after it set its comm,
    entered *netns*, moved itself into *cgroup* (a directory) and dropped to
    *uid*, in that order, before any socket.  It ends with os._exit();
    an exception in it is sent to the parent (ChildError in recv)."""

    def __init__(self, body, *args, comm=None, netns=None, cgroup=None, uid=None):
        c_r, p_w = os.pipe()
        p_r, c_w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 70
            link = Link(c_r, c_w)
            try:
                for fd in [p_w, p_r] + list(_PARENT_FDS):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                die_with_parent(parent)
                if comm:
                    set_comm(comm)
                if netns:
                    enter_netns(netns)
                if cgroup:
                    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                        f.write(str(os.getpid()))
                if uid is not None:
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)
                    die_with_parent(parent)
                body(link, *args)
                code = 0
            except BaseException:
                try:
                    link.send({"exception": "pid %d: %s" % (os.getpid(), traceback.format_exc())})
                except BaseException:
                    pass
            finally:
                os._exit(code)
        os.close(c_r)
        os.close(c_w)
        self.pid = pid
        self.comm = comm
        self.link = Link(p_r, p_w)
        self.status = None
        _PARENT_FDS.update((p_r, p_w))
        _LIVE.append(self)
        _PIDS.add(pid)

    def send(self, obj):
        self.link.send(obj)

    def recv(self, timeout=REPLY_S):
        return self.link.recv(timeout)

    def call(self, obj, timeout=REPLY_S):
        self.send(obj)
        return self.recv(timeout)

    def poll(self):
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def wait(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)
        return self.status

    def stop(self, grace=0.0):
        """Wait up to *grace* seconds for it to end, then SIGKILL it; reap."""
        if self.poll() is None and grace:
            self.wait(grace)
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if self.wait(10.0) is None:
                raise RuntimeError("child %d survived SIGKILL for 10 s" % self.pid)
        if self in _LIVE:
            _LIVE.remove(self)
            _PARENT_FDS.difference_update((self.link.rfd, self.link.wfd))
            self.link.close()


def recv_any(children, timeout=REPLY_S):
    """(child, message): the first message from any of *children*."""
    deadline = time.monotonic() + timeout
    while True:
        for ch in children:
            if ch.link.pending():
                return ch, ch.recv(0.1)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no message from %s within %.0f s"
                               % ([c.comm for c in children], timeout))
        r, _, _ = select.select([c.link.rfd for c in children], [], [], left)
        for ch in children:
            if ch.link.rfd in r:
                return ch, ch.recv(5.0)


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _children_stopped():
    """Whatever a test did, its children are gone after it."""
    mark = len(_LIVE)
    yield
    for ch in list(_LIVE[mark:]):
        ch.stop()


@pytest.fixture(autouse=True, scope="module")
def _nothing_left_behind():
    """At the end of the module: no process, namespace, cgroup or veth of ours."""
    yield
    for ch in list(_LIVE):
        ch.stop()
    time.sleep(0.2)
    left = sorted(p for p in _PIDS if _alive(p))
    names = sorted(n for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else ())
                   if n.startswith(NS_PREFIX))
    root = _cgroup_root()
    cg = root and os.path.exists(os.path.join(root, CG_SLICE))
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           timeout=10).stdout
    veths = [line for line in links.splitlines() if ("sth%d" % TAG) in line]
    assert not (left or names or cg or veths), (
        "left behind: processes %s, namespaces %s, cgroup %s, host links %s"
        % (left, names, os.path.join(root, CG_SLICE) if cg else None, veths))


# ---------------------------------------------------------------------------
# Bodies the children run
# ---------------------------------------------------------------------------


def _read_to_eof(s, timeout=CHILD_IO_S):
    """Read until the peer's FIN; returns the bytes read (bounded)."""
    n = 0
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no EOF within %.0f s" % timeout)
        s.settimeout(left)
        data = s.recv(65536)
        if not data:
            return n
        n += len(data)


def _peer(link):
    """A process's end of one or two connections, as told:
    go {"listen": [host, port]?, "connect": [host, port]?} -> {"lport", "listening"};
    then, if it listens, it accepts one -> {"accepted": peer port};
    finish {"how": "close" (close now) | "eof" (read to EOF, then close)} -> {"done"}."""
    cmd = link.recv(CHILD_IO_S)
    ls = c = a = None
    if cmd.get("listen"):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(tuple(cmd["listen"]))
        ls.listen(4)
    if cmd.get("connect"):
        c = socket.create_connection(tuple(cmd["connect"]), timeout=CHILD_IO_S)
    link.send({"lport": c.getsockname()[1] if c else None,
               "listening": ls.getsockname()[1] if ls else None})
    if ls:
        ls.settimeout(CHILD_IO_S)
        a, peer = ls.accept()
        link.send({"accepted": peer[1]})
    cmd = link.recv(CHILD_IO_S)
    for s in (c, a):
        if s is not None:
            if cmd["how"] == "eof":
                _read_to_eof(s)
            s.close()
    if ls:
        ls.close()
    link.send({"done": True})


def _sentinel_body(link, host, port):
    """A listener on (host, port) and one connection to it, then exit."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(4)
    c = socket.create_connection((host, ls.getsockname()[1]), timeout=5)
    a, _ = ls.accept()
    port = ls.getsockname()[1]
    c.close()
    a.close()
    ls.close()
    link.send({"port": port})


def child_sentinel(host="127.0.0.1", port=0, **where):
    """A start_socktrace sentinel made by a child (in a namespace, cgroup
    or uid, see Child): its listener's CLOSE->LISTEN."""
    def make():
        ch = Child(_sentinel_body, host, port, comm="st-sentinel", **where)
        try:
            got = ch.recv()["port"]
        finally:
            ch.stop(grace=5.0)
        pid = ch.pid

        def pred(e):
            return (e.get("type") == "state" and (e["old"], e["new"]) == ("CLOSE", "LISTEN")
                    and e["lport"] == got and e["pid"] == pid)
        pred.port = got
        return pred
    return make


# ---------------------------------------------------------------------------
# Picking records
# ---------------------------------------------------------------------------


def conns_of(evs, lport, rport):
    """{conn: [records]} of the sockets with this local and remote port
    (with a client's CLOSE->SYN_SENT, local port 0, of the same conn), in
    order of first appearance."""
    ids = []
    for e in evs:
        if (e.get("type") in ("state", "closed") and e["lport"] == lport
                and e["rport"] == rport and e["conn"] not in ids):
            ids.append(e["conn"])
    out = {}
    for c in ids:
        out[c] = [e for e in evs if e.get("type") in ("state", "closed") and e["conn"] == c]
    return out


def chain(recs):
    return [(e["old"], e["new"]) for e in recs if e["type"] == "state"]


def closed_of(recs):
    got = [e for e in recs if e["type"] == "closed"]
    return got[0] if len(got) == 1 else None


def wait_closed(trace, lport, rport, since=0, conn=None, timeout=15.0, what=None):
    """The closed record of the socket (lport, rport) (of *conn* if given)."""
    def done(evs):
        for c, recs in conns_of(evs, lport, rport).items():
            if conn is None or c == conn:
                rec = closed_of(recs)
                if rec:
                    return rec
        return None
    return trace.wait_for(done, since=since, timeout=timeout,
                          what=what or "the closed record of %d->%d" % (lport, rport))


def one_conn(evs, lport, rport):
    """The records of the only socket (lport, rport)."""
    got = conns_of(evs, lport, rport)
    assert len(got) == 1, "expected one socket %d->%d:\n%s" % (lport, rport, describe(evs))
    return next(iter(got.values()))


def port_trace(tmp_path, port, name, extra=()):
    """socktrace --port PORT (its sentinel on that port, made here)."""
    return start_socktrace(str(tmp_path / (name + ".ndjson")), ["--port", str(port)] + list(extra),
                           sentinel=lambda: listen_sentinel(port=port))


def listener(family, port, backlog=16):
    ls = socket.socket(AF[family], socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == 6:
        ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    ls.bind((LOOPBACK[family], port))
    ls.listen(backlog)
    return ls


def recv_exactly(s, n, timeout=CHILD_IO_S):
    got = 0
    deadline = time.monotonic() + timeout
    while got < n:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        data = s.recv(min(65536, n - got))
        if not data:
            raise EOFError("EOF after %d of %d bytes" % (got, n))
        got += len(data)
    return got


def take_over(family, cport, port, ls, attempts=50):
    """A new connection from local port *cport* to *port*: it takes over a
    TIME_WAIT of that 4-tuple (the client's, once tcp_tw_reuse allows it,
    after 1 s; the server's by its SYN).  Both ends are then reset (no
    TIME_WAIT of their own).  Returns how many attempts it took."""
    addr = LOOPBACK[family]
    for i in range(attempts):
        s = socket.socket(AF[family], socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(10)
        try:
            s.bind((addr, cport))
            s.connect((addr, port))
        except OSError as e:
            s.close()
            if e.errno not in (errno.EADDRNOTAVAIL, errno.EADDRINUSE) or i == attempts - 1:
                raise
            time.sleep(0.1)
            continue
        ls.settimeout(10)
        a, _ = ls.accept()
        for x in (s, a):
            x.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            x.close()
        return i + 1
    raise AssertionError("unreachable")


# tcp_info (include/uapi/linux/tcp.h): the fields closed records mirror
TCPI_OFFSETS = {"total_retrans": (100, "I"), "bytes_acked": (120, "Q"),
                "bytes_received": (128, "Q"), "segs_out": (136, "I"), "segs_in": (140, "I"),
                "rtt": (68, "I"), "rttvar": (72, "I"), "state": (0, "B")}


def tcp_info(s):
    raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return {k: struct.unpack_from("=" + f, raw, off)[0] for k, (off, f) in TCPI_OFFSETS.items()}


def own_cgroup(pid="self"):
    with open("/proc/%s/cgroup" % pid) as f:
        return next(line.rstrip("\n")[3:] for line in f if line.startswith("0::"))


def unit_of(path):
    """The innermost .service or .scope of a cgroup path (what the fixture
    and /proc/self/cgroup can hold here), or None."""
    for c in reversed([c for c in path.split("/") if c]):
        if c.endswith((".service", ".scope")):
            return c
    return None


def _cgroup_root():
    from tracer.context import cgroup2_root
    return cgroup2_root()


# ---------------------------------------------------------------------------
# 1. exact bytes
# ---------------------------------------------------------------------------

N_SENT = 100_000      # client -> server
M_SENT = 7_000        # server -> client


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("first", ["client", "server"])
def test_exact_bytes(tmp_path, family, first):
    """The client sends exactly N bytes, the server exactly M, then both
    close (*first* closes first).  Both closed records count payload only:
    bytes_sent/bytes_received exactly N/M and M/N, whichever side held the
    FINs and the SYN; no retransmission on loopback, syn_retrans 0 for the
    client and null for the server, no reset, end normal.  The side that
    closed first gets its record when a reconnect takes over its TIME_WAIT."""
    port = free_port(family)
    trace = port_trace(tmp_path, port, "bytes")
    ls = listener(family, port)
    addr = LOOPBACK[family]
    try:
        m = trace.mark()
        c = socket.socket(AF[family], socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)    # for the take-over
        c.bind((addr, 0))
        c.settimeout(CHILD_IO_S)
        c.connect((addr, port))
        a, _ = ls.accept()
        a.settimeout(CHILD_IO_S)
        cport = c.getsockname()[1]
        server_saw = {}

        def serve():
            try:
                server_saw["got"] = recv_exactly(a, N_SENT)
                a.sendall(b"s" * M_SENT)
                if first == "client":
                    server_saw["after"] = _read_to_eof(a)
                a.close()
            except Exception as e:     # reported below
                server_saw["error"] = repr(e)
                a.close()
        t = threading.Thread(target=serve)
        t.start()
        try:
            c.sendall(b"c" * N_SENT)
            assert recv_exactly(c, M_SENT) == M_SENT
            if first == "server":
                assert _read_to_eof(c) == 0
            c.close()
        finally:
            t.join(30)
        assert not t.is_alive() and "error" not in server_saw, server_saw
        assert server_saw["got"] == N_SENT and server_saw.get("after", 0) == 0

        # the passive closer's record comes now (LAST_ACK -> CLOSE)
        if first == "client":
            passive = wait_closed(trace, port, cport, since=m, what="the server's closed record")
        else:
            passive = wait_closed(trace, cport, port, since=m, what="the client's closed record")
        # the active closer is in TIME_WAIT: its story goes on
        active_l, active_r = (cport, port) if first == "client" else (port, cport)

        def in_tw(evs):
            for conn, recs in conns_of(evs, active_l, active_r).items():
                if chain(recs) and chain(recs)[-1] == ("FIN_WAIT2", "TIME_WAIT"):
                    return conn
            return None
        tw_conn = trace.wait_for(in_tw, since=m, what="the active closer's TIME_WAIT")
        tries = take_over(family, cport, port, ls)
        active = wait_closed(trace, active_l, active_r, since=m, conn=tw_conn,
                             what="the active closer's closed record (TIME_WAIT taken over "
                                  "after %s attempts)" % tries)
    finally:
        ls.close()
        trace.stop()
    assert trace.rc == 0, trace.stderr()
    client, server = (active, passive) if first == "client" else (passive, active)
    expect = {
        "client": {"role": "client", "bytes_sent": N_SENT, "bytes_received": M_SENT,
                   "syn_retrans": 0, "retrans": 0, "reset": None, "end": "normal",
                   "error": None, "family": family, "lport": cport, "rport": port,
                   "closed_first": "local" if first == "client" else "remote"},
        "server": {"role": "server", "bytes_sent": M_SENT, "bytes_received": N_SENT,
                   "syn_retrans": None, "retrans": 0, "reset": None, "end": "normal",
                   "error": None, "family": family, "lport": port, "rport": cport,
                   "closed_first": "local" if first == "server" else "remote"},
    }
    for name, rec in (("client", client), ("server", server)):
        got = {k: rec[k] for k in expect[name]}
        assert got == expect[name], "%s's closed record: %s" % (name, json.dumps(rec))
        assert rec["segs_out"] > 0 and rec["segs_in"] > 0, rec
        assert rec["rtt_us"] > 0 and rec["rttvar_us"] is not None, rec
        assert rec["pid"] == os.getpid() and rec["path"][-1] == "CLOSE", rec
    # the active closer went through TIME_WAIT, which the take-over ended
    assert active["path"][-2:] == ["TIME_WAIT", "CLOSE"] and active["reason"] == "reused", active
    # 100,000 bytes do not fit one loopback segment (MSS 65483; 65476 for IPv6)
    assert client["segs_out"] >= 4 and server["segs_in"] >= 4, (client, server)


# ---------------------------------------------------------------------------
# 2. pre-fork acceptors and SO_REUSEPORT
# ---------------------------------------------------------------------------


def _prefork_master(link, port, nworkers):
    """listen(), then fork *nworkers* workers that accept one connection
    each, report it, read it to EOF and close it.  The master reaps them."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(8)
    master = os.getpid()
    kids = []
    for i in range(1, nworkers + 1):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                die_with_parent(master)
                set_comm("st-worker%d" % i)
                ls.settimeout(CHILD_IO_S)
                conn, peer = ls.accept()
                link.send({"worker": i, "pid": os.getpid(), "peer": peer[1]})
                n = _read_to_eof(conn)
                conn.close()
                link.send({"worker": i, "closed": peer[1], "read": n})
                code = 0
            except BaseException:
                try:
                    link.send({"exception": "worker %d: %s" % (i, traceback.format_exc())})
                except BaseException:
                    pass
            finally:
                os._exit(code)
        kids.append(pid)
    link.send({"workers": kids})
    deadline = time.monotonic() + 2 * CHILD_IO_S + 5
    left = set(kids)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            if os.waitpid(pid, os.WNOHANG)[0]:
                left.discard(pid)
        time.sleep(0.02)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    ls.close()


def test_prefork_workers_own_what_they_accept(tmp_path):
    """A master ("st-master") listens and forks two workers that accept one
    connection each.  The records of each accepted connection up to the
    accept (LISTEN->SYN_RECV, SYN_RECV->ESTABLISHED) name the master,
    owner_from "listener"; every record after it (the close), and the
    closed record, name the worker that accepted it (pid and comm),
    owner_from "accept"."""
    port = free_port()
    trace = port_trace(tmp_path, port, "prefork")
    m = trace.mark()
    master = Child(_prefork_master, port, 2, comm="st-master")
    clients = []
    workers = []
    try:
        workers = master.recv()["workers"]
        _PIDS.update(workers)
        accepted = {}      # client port -> worker report
        for _ in range(2):
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(c)
            rep = master.recv()
            assert rep["peer"] == c.getsockname()[1], (rep, c.getsockname())
            accepted[rep["peer"]] = rep
        assert sorted(r["worker"] for r in accepted.values()) == [1, 2], accepted
        for c in clients:
            c.close()
        closed = [master.recv() for _ in range(2)]
        assert sorted(r["closed"] for r in closed) == sorted(accepted), closed
        assert master.wait(10) == 0, "the master did not end well"
        for cport in accepted:
            wait_closed(trace, port, cport, since=m)
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        master.stop(grace=5)
        for c in clients:
            c.close()
        trace.stop()
    assert trace.rc == 0, trace.stderr()
    evs = trace.events(m)
    (lst,) = [e for e in evs if e.get("type") == "state" and e["lport"] == port
              and (e["old"], e["new"]) == ("CLOSE", "LISTEN") and e["pid"] == master.pid]
    assert (lst["comm"], lst["owner_from"], lst["role"]) == ("st-master", "listen", "listener")
    for cport, rep in accepted.items():
        recs = one_conn(evs, port, cport)
        what = "worker %d (pid %d), client port %d:\n%s" % (rep["worker"], rep["pid"], cport,
                                                            describe(recs))
        assert chain(recs) == [("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED"),
                               ("ESTABLISHED", "CLOSE_WAIT"), ("CLOSE_WAIT", "LAST_ACK"),
                               ("LAST_ACK", "CLOSE")], what
        owners = [(e["pid"], e["comm"], e["owner_from"]) for e in recs]
        before = (master.pid, "st-master", "listener")
        after = (rep["pid"], "st-worker%d" % rep["worker"], "accept")
        assert owners == [before] * 2 + [after] * 4, "%s\nowners: %s" % (what, owners)
        assert closed_of(recs)["role"] == "server", what


def _reuseport_server(link, port):
    """Its own SO_REUSEPORT listener on *port*; accepts whatever the kernel
    queues on it (reporting each), reads each to EOF and closes it, until
    told to exit."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(16)
    link.send({"ready": os.getpid()})
    conns = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if link.pending():
            r = [link.rfd]
        else:
            r, _, _ = select.select([ls, link.rfd] + list(conns), [], [], 0.5)
        for x in r:
            if x is ls:
                s, peer = ls.accept()
                conns[s] = peer[1]
                link.send({"accepted": peer[1]})
            elif x == link.rfd:
                cmd = link.recv(5)
                if cmd["op"] == "exit":
                    for s in conns:
                        s.close()
                    ls.close()
                    link.send({"bye": True})
                    return
            else:
                if not x.recv(65536):
                    link.send({"closed": conns.pop(x)})
                    x.close()
    raise TimeoutError("never told to exit")


def _reuseport_run(tmp_path):
    """Two processes ("st-rp1", "st-rp2"), each with its own SO_REUSEPORT
    listener on one port; connections until each accepted at least two
    (at most 40).  Returns (events, rp1, rp2, {client port: acceptor})."""
    port = free_port()
    trace = port_trace(tmp_path, port, "reuseport")
    m = trace.mark()
    servers = []
    clients = []
    try:
        for i in (1, 2):
            servers.append(Child(_reuseport_server, port, comm="st-rp%d" % i))
            assert servers[-1].recv()["ready"] == servers[-1].pid
        by = {}
        counts = {s.pid: 0 for s in servers}
        while min(counts.values()) < 2 and len(clients) < 40:
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(c)
            ch, rep = recv_any(servers)
            assert rep["accepted"] == c.getsockname()[1], rep
            by[rep["accepted"]] = ch
            counts[ch.pid] += 1
        assert min(counts.values()) >= 2, "the kernel gave one listener everything: %s" % counts
        for c in clients:
            c.close()
        ended = set()
        while len(ended) < len(by):
            ch, rep = recv_any(servers)
            ended.add(rep["closed"])
        for s in servers:
            assert s.call({"op": "exit"}) == {"bye": True}
            s.stop(grace=5)
        for cport in by:
            wait_closed(trace, port, cport, since=m)
    finally:
        for s in servers:
            s.stop()
        for c in clients:
            c.close()
        trace.stop()
    assert trace.rc == 0, trace.stderr()
    return port, trace.events(m), servers, by


def test_reuseport_final_owner_is_the_acceptor(tmp_path):
    """SO_REUSEPORT: each process's own listener on the same port; every
    connection's records after the accept and its closed record name the
    process that accepted it, owner_from "accept"."""
    port, evs, servers, by = _reuseport_run(tmp_path)
    for s in servers:
        (lst,) = [e for e in evs if e.get("type") == "state" and e["lport"] == port
                  and (e["old"], e["new"]) == ("CLOSE", "LISTEN") and e["pid"] == s.pid]
        assert (lst["comm"], lst["owner_from"]) == (s.comm, "listen"), lst
    bad = []
    for cport, ch in by.items():
        recs = one_conn(evs, port, cport)
        assert chain(recs)[2:] == [("ESTABLISHED", "CLOSE_WAIT"), ("CLOSE_WAIT", "LAST_ACK"),
                                   ("LAST_ACK", "CLOSE")], describe(recs)
        after = [(e["pid"], e["comm"], e["owner_from"]) for e in recs[2:]]
        if after != [(ch.pid, ch.comm, "accept")] * 4:
            bad.append("client port %d accepted by %s/%d: %s" % (cport, ch.comm, ch.pid, after))
    assert not bad, "\n".join(bad)


@pytest.mark.xfail(strict=False, reason=(
    "known limit (README, Owners): before accept() an accepted socket's owner is "
    "looked up by local address and port, and SO_REUSEPORT listeners share both: the "
    "latest listen() wins.  Nothing the child socket's tracepoint gives leads to the "
    "listener it was queued on.  After accept() the acceptor owns it (the test above)."))
def test_reuseport_records_before_accept_name_the_listener_that_got_it(tmp_path):
    """SO_REUSEPORT: before the accept, a connection's records name the
    owner of the listener the kernel queued it on (owner_from "listener"),
    which here is the process that accepts it: each process accepts only
    from its own listener."""
    port, evs, servers, by = _reuseport_run(tmp_path)
    bad = []
    for cport, ch in by.items():
        recs = one_conn(evs, port, cport)
        assert chain(recs)[:2] == [("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED")]
        before = [(e["pid"], e["comm"], e["owner_from"]) for e in recs[:2]]
        if before != [(ch.pid, ch.comm, "listener")] * 2:
            bad.append("client port %d, queued on %s/%d's listener: %s"
                       % (cport, ch.comm, ch.pid, before))
    assert not bad, "%d of %d connections name another listener's owner:\n%s" % (
        len(bad), len(by), "\n".join(bad))


# ---------------------------------------------------------------------------
# 3. cgroup, container, unit
# ---------------------------------------------------------------------------


class DockerScope:
    """<cgroup2>/socktrace-test-<pid>.slice/docker-<64 hex>.scope, made by
    make() (so that a test can make it while socktrace runs, as a container
    starts on a traced host); remove() moves its processes out, kills them
    and removes both directories."""

    def __init__(self):
        self.root = _cgroup_root()
        assert self.root is not None, "no cgroup2 mount on this host"
        self.cid = hashlib.sha256(b"socktrace-health-%d-%d" % (TAG, time.time_ns())).hexdigest()
        self.top = os.path.join(self.root, CG_SLICE)
        self.dir = os.path.join(self.top, "docker-%s.scope" % self.cid)
        self.path = "/%s/docker-%s.scope" % (CG_SLICE, self.cid)
        self.made = []

    def make(self):
        for d in (self.top, self.dir):
            os.mkdir(d)
            self.made.append(d)
        return self

    def add(self, pid):
        with open(os.path.join(self.dir, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def remove(self):
        while self.made:
            d = self.made[-1]
            for _ in range(50):
                try:
                    with open(os.path.join(d, "cgroup.procs")) as f:
                        pids = [int(x) for x in f.read().split()]
                except OSError:
                    pids = []
                for pid in pids:
                    try:
                        with open(os.path.join(self.root, "cgroup.procs"), "w") as f:
                            f.write(str(pid))
                    except OSError:
                        pass
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                try:
                    os.rmdir(d)
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    time.sleep(0.1)
            else:
                raise RuntimeError("cannot remove cgroup %s" % d)
            self.made.pop()


@pytest.fixture
def docker_scope():
    """A DockerScope, removed after the test whatever happened."""
    scope = DockerScope()
    try:
        yield scope
    finally:
        scope.remove()


def _filtered_run(trace, child, port, cport, ls, enter=None, since_mark=True):
    """_context_exchange under a filtered trace (*enter*(pid) first, e.g.
    into a cgroup), then everything stopped.  Returns the connection records
    (since the exchange's mark, or all of the trace's) and the sockets."""
    try:
        if enter is not None:
            enter(child.pid)
        m, socks = _context_exchange(trace, child, port, cport, ls, test_side=False)
        child.stop(grace=5)
        time.sleep(0.3)
    finally:
        child.stop()
        ls.close()
        trace.stop()
    assert trace.rc == 0, trace.stderr()
    evs = trace.events(m) if since_mark else trace.events()
    return [e for e in evs if e.get("type") in ("state", "closed", "socket")], socks


def _context_exchange(trace, child, test_port, child_port, ls, test_side=True):
    """The child connects to the test's listener *ls* (test_port) and
    listens on child_port, which the test connects to.  The test's ends
    close first; the child reads to EOF and closes (its closed records
    come at once).  Returns {side: (lport, rport)} for the four sockets."""
    m = trace.mark()
    rep = child.call({"op": "go", "listen": ["127.0.0.1", child_port],
                      "connect": ["127.0.0.1", test_port]})
    ls.settimeout(10)
    a, _ = ls.accept()
    c = socket.create_connection(("127.0.0.1", child_port), timeout=10)
    acc = child.recv()
    assert acc["accepted"] == c.getsockname()[1], acc
    socks = {"child client": (rep["lport"], test_port),
             "test server": (test_port, rep["lport"]),
             "test client": (c.getsockname()[1], child_port),
             "child server": (child_port, c.getsockname()[1])}
    a.close()
    c.close()
    assert child.call({"op": "finish", "how": "eof"}) == {"done": True}
    wait_closed(trace, *socks["child client"], since=m)
    wait_closed(trace, *socks["child server"], since=m)
    if test_side:
        # Reached TIME_WAIT, not "still in it": these tests check context
        # fields, and a TIME_WAIT reported ended 15 us after it began has
        # been seen once on this host (docs/kernels.md, "Open"); the exact
        # TIME_WAIT stories are tests/test_kernel.py's.
        def reached(evs, k):
            return conns_of(evs, *socks[k]) and any(
                new == "TIME_WAIT" for _, new in chain(one_conn(evs, *socks[k])))
        trace.wait_for(lambda evs: all(reached(evs, k) for k in ("test client", "test server")),
                       since=m, what="the test's ends in TIME_WAIT")
    return m, socks


@pytest.mark.parametrize("made", ["before", "while"])
def test_cgroup_container_unit(tmp_path, docker_scope, made):
    """A cgroup <root>/socktrace-test-<pid>.slice/docker-<hex>.scope, made
    *before* socktrace starts, or *while* it runs (as a container starts on
    a traced host).  A process moved into it before it makes any socket
    connects to the test's listener right away and listens itself: its
    records (its connect, and what its listener accepts) carry that cgroup
    path, the container id and the unit docker-<hex>.scope, from the first
    record on; the test's own sockets (its listener's accepted socket, its
    connect) carry its own cgroup ("/" here), no container, its unit."""
    port, cport = free_port(), free_port()
    if made == "before":
        docker_scope.make()
    trace = port_trace(tmp_path, port, "cgroup", extra=["--port", str(cport)])
    ls = listener(4, port)
    child = Child(_peer, comm="st-docker")
    sc = docker_scope
    try:
        if made == "while":
            sc.make()
        sc.add(child.pid)
        assert own_cgroup(child.pid) == sc.path
        m, socks = _context_exchange(trace, child, port, cport, ls)
        child.stop(grace=5)
    finally:
        child.stop()
        ls.close()
        trace.stop()
    assert trace.rc == 0, trace.stderr()
    mine = own_cgroup()
    expect = {"child": (sc.path, sc.cid, "docker-%s.scope" % sc.cid),
              "test": (mine, None, unit_of(mine))}
    evs = trace.events(m)
    bad = []
    for side, (lport, rport) in socks.items():
        recs = one_conn(evs, lport, rport)
        want = expect[side.split()[0]]
        for e in recs:
            if (e["cgroup"], e["container"], e["unit"]) != want:
                bad.append("%s: %s" % (side, json.dumps(e)))
        owner = child.pid if side.startswith("child") else os.getpid()
        assert {e["pid"] for e in recs} == {owner}, describe(recs)
    assert not bad, "expected child %s, test %s; %d records differ:\n%s" % (
        expect["child"], expect["test"], len(bad), "\n".join(bad[:12]))


@pytest.mark.parametrize("flag", ["--container", "--cgroup"])
def test_cgroup_filters(tmp_path, docker_scope, flag):
    """--container ID (its first 12 digits, as docker ps shows it) and
    --cgroup PATH (the slice above the scope: everything below it) keep
    the sockets made in that cgroup and nothing else: the child's two
    sockets, none of the test's, which use the same ports.  (The cgroup
    exists before socktrace starts: the filter resolves it then.)"""
    sc = docker_scope.make()
    port, cport = free_port(), free_port()
    arg = sc.cid[:12] if flag == "--container" else "/" + CG_SLICE
    trace = start_socktrace(str(tmp_path / "cgfilter.ndjson"), [flag, arg],
                            sentinel=child_sentinel(cgroup=sc.dir))
    ls = listener(4, port)
    child = Child(_peer, comm="st-docker")
    evs, socks = _filtered_run(trace, child, port, cport, ls, enter=sc.add)
    others = [e for e in evs if e["cgroup"] != sc.path]
    assert not others, "records of other cgroups with %s %s:\n%s" % (flag, arg, describe(others))
    for side in ("child client", "child server"):
        assert one_conn(evs, *socks[side]), side
    for side in ("test client", "test server"):
        assert not conns_of(evs, *socks[side]), "%s shown with %s %s" % (side, flag, arg)


# ---------------------------------------------------------------------------
# 4, 5. network namespaces; retransmissions
# ---------------------------------------------------------------------------


def ip(*args, check=True):
    r = subprocess.run(["ip"] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=10)
    if check and r.returncode != 0:
        raise RuntimeError("ip %s: %s" % (" ".join(map(str, args)), r.stderr.strip()))
    return r.stdout


class NsPair:
    pass


@pytest.fixture
def nspair():
    """Two namespaces, A and B (st-health-<pid>-a/-b), a veth pair between
    them (sth<pid>a in A, sth<pid>b in B, made in the namespaces: the host's
    own interfaces are never touched), 10.231.<k>.1/24 in A and .2 in B,
    loopback up, and permanent neighbour entries both ways (no ARP)."""
    assert shutil.which("ip"), "no ip(8)"
    p = NsPair()
    p.a, p.b = NS_PREFIX + "a", NS_PREFIX + "b"
    p.va, p.vb = "sth%da" % TAG, "sth%db" % TAG
    k = TAG % 250 + 1
    p.ipa, p.ipb, p.ipx = "10.231.%d.1" % k, "10.231.%d.2" % k, "10.231.%d.3" % k
    made = []
    mark = len(_LIVE)
    try:
        for n in (p.a, p.b):
            ip("netns", "add", n)
            made.append(n)
        ip("link", "add", "name", p.va, "netns", p.a, "type", "veth", "peer", "name", p.vb,
           "netns", p.b)
        for n, dev, addr in ((p.a, p.va, p.ipa), (p.b, p.vb, p.ipb)):
            ip("-n", n, "link", "set", "lo", "up")
            ip("-n", n, "addr", "add", addr + "/24", "dev", dev)
            ip("-n", n, "link", "set", dev, "up")
        p.maca = json.loads(ip("-n", p.a, "-j", "link", "show", "dev", p.va))[0]["address"]
        p.macb = json.loads(ip("-n", p.b, "-j", "link", "show", "dev", p.vb))[0]["address"]
        ip("-n", p.b, "neigh", "replace", p.ipa, "lladdr", p.maca, "dev", p.vb, "nud", "permanent")
        ip("-n", p.b, "neigh", "replace", p.ipx, "lladdr", p.maca, "dev", p.vb, "nud", "permanent")
        ip("-n", p.a, "neigh", "replace", p.ipb, "lladdr", p.macb, "dev", p.va, "nud", "permanent")
        p.inoa = os.stat("/run/netns/" + p.a).st_ino
        p.inob = os.stat("/run/netns/" + p.b).st_ino
        p.host = os.stat("/proc/self/ns/net").st_ino
        assert len({p.inoa, p.inob, p.host}) == 3
        yield p
    finally:
        for ch in list(_LIVE[mark:]):   # no process of the test stays in them
            ch.stop()
        for n in reversed(made):
            ip("netns", "delete", n, check=False)
        for n in made:
            assert not os.path.exists("/run/netns/" + n), "namespace %s not deleted" % n


def _ns_exchange(trace, p, port, first="server"):
    """A server in A ("st-ns-server") accepts a client in B ("st-ns-client");
    *first* closes first, the other reads to EOF and closes.  Returns
    (mark, server child, client child, client port)."""
    m = trace.mark()
    srv = Child(_peer, comm="st-ns-server", netns=p.a)
    cli = Child(_peer, comm="st-ns-client", netns=p.b)
    srv.call({"op": "go", "listen": [p.ipa, port]})
    cport = cli.call({"op": "go", "connect": [p.ipa, port]})["lport"]
    assert srv.recv()["accepted"] == cport
    active, passive = (srv, cli) if first == "server" else (cli, srv)
    assert active.call({"op": "finish", "how": "close"}) == {"done": True}
    assert passive.call({"op": "finish", "how": "eof"}) == {"done": True}
    srv.stop(grace=5)
    cli.stop(grace=5)
    return m, srv, cli, cport


def test_netns_of_each_side(tmp_path, nspair):
    """A server in namespace A, a client in B over a veth: every record of
    the client socket carries B's inode, every record of the listener and
    the accepted socket A's (as os.stat("/run/netns/NAME").st_ino gives)."""
    p = nspair
    port = free_port()
    trace = port_trace(tmp_path, port, "netns")
    try:
        m, srv, cli, cport = _ns_exchange(trace, p, port)
        wait_closed(trace, cport, port, since=m, what="the client's closed record")
        trace.wait_for(lambda evs: [e for e in evs if e.get("type") == "state"
                                    and e["lport"] == port and e["rport"] == 0
                                    and e["new"] == "CLOSE" and e["pid"] == srv.pid],
                       since=m, what="the server's listener closing")
    finally:
        trace.stop()
    assert trace.rc == 0, trace.stderr()
    evs = trace.events(m)
    sides = {"client (B)": (one_conn(evs, cport, port), p.inob, cli.pid),
             "server (A)": (one_conn(evs, port, cport), p.inoa, srv.pid),
             "listener (A)": ([e for e in evs if e.get("type") == "state" and e["lport"] == port
                               and e["rport"] == 0 and e["pid"] == srv.pid], p.inoa, srv.pid)}
    for side, (recs, ino, pid) in sides.items():
        assert recs, side
        assert {e["netns"] for e in recs} == {ino}, "%s: expected netns %d:\n%s" % (
            side, ino, "\n".join(json.dumps(e) for e in recs))
        assert {e["pid"] for e in recs} == {pid}, describe(recs)
    assert chain(sides["client (B)"][0]) == [
        ("CLOSE", "SYN_SENT"), ("SYN_SENT", "ESTABLISHED"), ("ESTABLISHED", "CLOSE_WAIT"),
        ("CLOSE_WAIT", "LAST_ACK"), ("LAST_ACK", "CLOSE")]
    cl = closed_of(sides["client (B)"][0])
    assert (cl["laddr"], cl["raddr"], cl["end"]) == (p.ipb, p.ipa, "normal"), cl


@pytest.mark.parametrize("spec", ["name", "inode"])
def test_netns_filter(tmp_path, nspair, spec):
    """--netns A (its ip-netns name, or its inode) shows A's side only:
    the listener and the socket it accepted (to its closed record: the
    client in B closes first), not the client in B, and nothing of the
    host's own traffic on the same port meanwhile."""
    p = nspair
    port = free_port()
    arg = p.a if spec == "name" else str(p.inoa)
    trace = start_socktrace(str(tmp_path / "nsfilter.ndjson"), ["--netns", arg],
                            sentinel=child_sentinel(host="127.0.0.1", netns=p.a))
    ls = None
    try:
        # the host's own loopback traffic on the same port, before and during
        ls = listener(4, port)
        hc = socket.create_connection(("127.0.0.1", port), timeout=5)
        ha, _ = ls.accept()
        host_cport = hc.getsockname()[1]
        m, srv, cli, cport = _ns_exchange(trace, p, port, first="client")
        hc.close()
        ha.close()
        ls.close()
        ls = None
        wait_closed(trace, port, cport, since=m, what="A's accepted socket's closed record")
        time.sleep(0.5)
    finally:
        if ls is not None:
            ls.close()
        trace.stop()
    assert trace.rc == 0, trace.stderr()
    evs = [e for e in trace.events() if e.get("type") in ("state", "closed", "socket")]
    foreign = [e for e in evs if e["netns"] != p.inoa]
    assert not foreign, "--netns %s let through other namespaces:\n%s" % (arg, describe(foreign))
    assert not conns_of(evs, cport, port), "the client in B was shown"
    assert not conns_of(evs, host_cport, port) and not conns_of(evs, port, host_cport)
    srv_recs = one_conn(evs, port, cport)
    assert chain(srv_recs) == [("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED"),
                               ("ESTABLISHED", "CLOSE_WAIT"), ("CLOSE_WAIT", "LAST_ACK"),
                               ("LAST_ACK", "CLOSE")], describe(srv_recs)
    assert {e["pid"] for e in srv_recs[2:]} == {srv.pid}
    assert [e for e in evs if e.get("type") == "state" and e["lport"] == port
            and (e["old"], e["new"]) == ("CLOSE", "LISTEN") and e["pid"] == srv.pid]


@pytest.mark.xfail(strict=False, reason=(
    "known limit (README, TIME_WAIT): a FIN that moves a FIN_WAIT2 timewait socket to "
    "TIME_WAIT re-arms its timer, and when the new expiry falls in the same timer-wheel "
    "bucket the kernel only updates it: no timer tracepoint fires.  Without the local "
    "peer's LAST_ACK->CLOSE (here filtered out) the transition is seen when TIME_WAIT "
    "ends, with its time worked out from the timer (to a few ms)."))
def test_netns_filter_time_wait_begins_live(tmp_path, nspair):
    """With --netns A, a server in A closes first and the client in B
    (filtered out) sends its FIN only after A's socket was handed to a
    FIN_WAIT2 timewait socket (the stream shows FIN_WAIT1 -> FIN_WAIT2
    first): A's FIN_WAIT2 -> TIME_WAIT must show up as it happens, as it
    does when both ends are traced (then "via peer"), not only when
    TIME_WAIT ends 60 s later."""
    p = nspair
    port = free_port()
    trace = start_socktrace(str(tmp_path / "nstw.ndjson"), ["--netns", p.a],
                            sentinel=child_sentinel(host="127.0.0.1", netns=p.a))
    srv = Child(_peer, comm="st-ns-server", netns=p.a)
    cli = Child(_peer, comm="st-ns-client", netns=p.b)
    try:
        m = trace.mark()
        srv.call({"op": "go", "listen": [p.ipa, port]})
        cport = cli.call({"op": "go", "connect": [p.ipa, port]})["lport"]
        assert srv.recv()["accepted"] == cport
        assert srv.call({"op": "finish", "how": "close"}) == {"done": True}

        def state(old, new):
            def pred(evs):
                return [e for e in evs if e.get("type") == "state" and e["lport"] == port
                        and e["rport"] == cport and (e["old"], e["new"]) == (old, new)]
            return pred
        trace.wait_for(state("FIN_WAIT1", "FIN_WAIT2"), since=m,
                       what="A's FIN acknowledged (FIN_WAIT2)")
        time.sleep(0.05)
        fin_at = time.time()
        assert cli.call({"op": "finish", "how": "eof"}) == {"done": True}
        (tw,) = trace.wait_for(state("FIN_WAIT2", "TIME_WAIT"), since=m, timeout=5,
                               what="A's FIN_WAIT2 -> TIME_WAIT after the peer's FIN "
                                    "(sent at %s.%06dZ)" % (
                                        time.strftime("%H:%M:%S", time.gmtime(fin_at)),
                                        fin_at % 1 * 1e6))
    finally:
        srv.stop(grace=5)
        cli.stop(grace=5)
        trace.stop()
    assert trace.rc == 0, trace.stderr()
    assert tw["netns"] == p.inoa and tw["pid"] == srv.pid, tw


def _bulk_sender(link, host, port, user_timeout_ms):
    """Connect, send 20,000 bytes, report; "info" -> tcp_info; "flood":
    send until the connection fails (bounded), report the error and
    tcp_info; "close"."""
    s = socket.create_connection((host, port), timeout=CHILD_IO_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
    s.sendall(b"d" * 20_000)
    link.send({"lport": s.getsockname()[1]})
    while True:
        cmd = link.recv(CHILD_IO_S)
        if cmd["op"] == "info":
            link.send(tcp_info(s))
        elif cmd["op"] == "flood":
            err = None
            sent = 0
            start = time.monotonic()
            s.settimeout(1.0)
            while time.monotonic() - start < 20:
                try:
                    sent += s.send(b"f" * 16384)
                except OSError as e:
                    # socket.timeout is TimeoutError, as is an OSError
                    # ETIMEDOUT: only the latter has an errno
                    if e.errno is None:
                        continue
                    err = errno.errorcode.get(e.errno, str(e.errno))
                    break
            link.send({"error": err, "sent": sent, "after_s": time.monotonic() - start,
                       "info": tcp_info(s)})
        elif cmd["op"] == "close":
            s.close()
            link.send({"closed": True})
            return


def _counting_server(link, host, port):
    """Accept one connection and count what it reads; "count" -> bytes so
    far; "abort" -> close with SO_LINGER 0 (no FIN to retransmit)."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(4)
    link.send({"listening": port})
    ls.settimeout(CHILD_IO_S)
    a, _ = ls.accept()
    ls.close()
    total = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = [link.rfd] if link.pending() else select.select([a, link.rfd], [], [], 0.5)[0]
        if a in r:
            data = a.recv(65536)
            total += len(data)
            if not data:
                break
        if link.rfd in r:
            cmd = link.recv(5)
            if cmd["op"] == "count":
                link.send({"total": total})
            elif cmd["op"] == "abort":
                a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                a.close()
                link.send({"total": total})
                return
    raise TimeoutError("never told to abort (read %d)" % total)


def poll_child(ch, cmd, pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        got = ch.call(cmd)
        if pred(got) or time.monotonic() >= deadline:
            return got
        time.sleep(0.05)


def test_retransmits_until_user_timeout(tmp_path, nspair):
    """A client in B sends 20,000 bytes to a server in A, all acknowledged;
    then A stops answering (its address removed: what B sends is dropped
    silently) and B keeps sending with TCP_USER_TIMEOUT 1.5 s, so the
    kernel gives up with ETIMEDOUT.  The client's closed record: end
    "timeout", error "ETIMEDOUT", no reset; retrans, segs_out, segs_in
    exactly what tcp_info says on the dead socket (retrans > 0);
    bytes_sent exactly the 20,000 bytes A received, bytes_received 0."""
    p = nspair
    port = free_port()
    trace = port_trace(tmp_path, port, "retrans")
    m = trace.mark()
    srv = Child(_counting_server, p.ipa, port, comm="st-ns-server", netns=p.a)
    cli = None
    try:
        srv.recv()
        cli = Child(_bulk_sender, p.ipa, port, 1500, comm="st-ns-sender", netns=p.b)
        cport = cli.recv()["lport"]
        got = poll_child(srv, {"op": "count"}, lambda r: r["total"] >= 20_000)
        assert got["total"] == 20_000, got
        info = poll_child(cli, {"op": "info"}, lambda r: r["bytes_acked"] == 20_001)
        assert info["bytes_acked"] == 20_001 and info["total_retrans"] == 0, info
        ip("-n", p.a, "addr", "del", p.ipa + "/24", "dev", p.va)     # A stops answering
        res = cli.call({"op": "flood"}, timeout=30)
        final = srv.call({"op": "abort"})
        assert cli.call({"op": "close"}) == {"closed": True}
        closed = wait_closed(trace, cport, port, since=m, what="the sender's closed record")
    finally:
        for ch in (srv, cli):
            if ch is not None:
                ch.stop(grace=2)
        trace.stop()
    assert trace.rc == 0, trace.stderr()
    assert res["error"] == "ETIMEDOUT", res
    assert final["total"] == 20_000, final
    ti = res["info"]
    assert ti["total_retrans"] > 0 and ti["bytes_acked"] == 20_001, res
    want = {"end": "timeout", "error": "ETIMEDOUT", "reset": None, "role": "client",
            "retrans": ti["total_retrans"], "segs_out": ti["segs_out"],
            "segs_in": ti["segs_in"], "bytes_sent": 20_000, "bytes_received": 0,
            "syn_retrans": 0, "netns": p.inob, "path": ["SYN_SENT", "ESTABLISHED", "CLOSE"]}
    assert {k: closed[k] for k in want} == want, (
        "closed record %s\ntcp_info on the dead socket %s (flood: %s)" % (json.dumps(closed),
                                                                         ti, res))
    assert closed["rtt_us"] == ti["rtt"] and closed["rttvar_us"] == ti["rttvar"], (closed, ti)


def _syn_sender(link, host, port):
    """A connect with TCP_SYNCNT=1 to a peer that drops everything; reports
    the error, tcp_info and how long it took."""
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 1)
    s.setblocking(False)
    start = time.monotonic()
    err = s.connect_ex((host, port))
    link.send({"lport": s.getsockname()[1], "connect": errno.errorcode.get(err, err)})
    err = 0
    timeline = []     # (seconds, total_retrans) at each change
    while time.monotonic() - start < 15:
        retrans = tcp_info(s)["total_retrans"]
        if not timeline or timeline[-1][1] != retrans:
            timeline.append((round(time.monotonic() - start, 3), retrans))
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            break
        time.sleep(0.01)
    link.send({"error": errno.errorcode.get(err, err), "after_s": time.monotonic() - start,
               "info": tcp_info(s), "timeline": timeline})
    link.recv(CHILD_IO_S)
    s.close()
    link.send({"closed": True})


def syn_retransmissions_with_syncnt_1():
    """How many SYN retransmissions a connect with TCP_SYNCNT=1 makes before
    ETIMEDOUT.  The give-up time is modelled with exponential backoff from
    a 1 s RTO (tcp_model_timeout(): (2^(n+1) - 1) s, 3 s for n = 1), checked
    when the retransmission timer fires.  Kernels with
    net.ipv4.tcp_syn_linear_timeouts (6.5+; 4 by default) space the first
    SYN retransmissions 1 s apart instead, so two fit in those 3 s (at 1 s
    and 2 s; ETIMEDOUT at 3 s); older kernels make one (1 s, then 2 s)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_syn_linear_timeouts") as f:
            linear = int(f.read())
    except OSError:
        linear = 0
    return 2 if linear >= 2 else 1


def test_syn_retransmits(tmp_path, nspair):
    """A connect from B with TCP_SYNCNT=1 whose SYNs are dropped (sent to
    an address A does not have; A does not forward), until ETIMEDOUT.  The
    closed record: path SYN_SENT -> CLOSE, end "timeout", error
    "ETIMEDOUT", syn_retrans and retrans what the kernel did (tcp_info's
    total_retrans on the failed socket, watched as it happened: 2 on this
    kernel, see syn_retransmissions_with_syncnt_1), segs_out one more, no
    bytes, no reset."""
    p = nspair
    port = free_port()
    trace = port_trace(tmp_path, port, "syn")
    m = trace.mark()
    cli = Child(_syn_sender, p.ipx, port, comm="st-ns-syn", netns=p.b)
    try:
        first = cli.recv()
        assert first["connect"] == "EINPROGRESS", first
        res = cli.recv(30)
        assert cli.call({"op": "close"}) == {"closed": True}
        closed = wait_closed(trace, first["lport"], port, since=m,
                             what="the failed connect's closed record")
    finally:
        cli.stop(grace=2)
        trace.stop()
    assert trace.rc == 0, trace.stderr()
    n = syn_retransmissions_with_syncnt_1()
    # the kernel's own account: n retransmissions, ~1 s apart, then ETIMEDOUT
    assert res["error"] == "ETIMEDOUT" and res["info"]["total_retrans"] == n, res
    assert [r for _, r in res["timeline"]] == list(range(n + 1)), res
    assert res["info"]["segs_out"] == n + 1, res
    want = {"path": ["SYN_SENT", "CLOSE"], "end": "timeout", "error": "ETIMEDOUT",
            "syn_retrans": n, "retrans": n, "segs_out": n + 1, "segs_in": 0,
            "bytes_sent": 0, "bytes_received": 0, "reset": None, "role": "client",
            "netns": p.inob, "pid": cli.pid, "comm": "st-ns-syn"}
    assert {k: closed[k] for k in want} == want, "%s\n(kernel: %s)" % (json.dumps(closed), res)
    # ETIMEDOUT 3 s after the first SYN, either way
    assert 2.5 <= res["after_s"] <= 4.5, res
    assert 2.5e9 <= closed["states"]["SYN_SENT"] <= 4.5e9, closed


# ---------------------------------------------------------------------------
# 6. uid
# ---------------------------------------------------------------------------


def test_uid_of_each_side(tmp_path):
    """A process that dropped to uid 65534 before making any socket
    connects to the test's listener and listens itself: its client socket
    and the socket its listener accepts carry uid 65534; the test's ends
    (its accepted socket, its connect) carry 0."""
    port, cport = free_port(), free_port()
    trace = port_trace(tmp_path, port, "uid", extra=["--port", str(cport)])
    ls = listener(4, port)
    child = Child(_peer, comm="st-nobody", uid=NOBODY)
    try:
        m, socks = _context_exchange(trace, child, port, cport, ls)
        child.stop(grace=5)
    finally:
        child.stop()
        ls.close()
        trace.stop()
    assert trace.rc == 0, trace.stderr()
    evs = trace.events(m)
    for side, (lport, rport) in socks.items():
        recs = one_conn(evs, lport, rport)
        want = NOBODY if side.startswith("child") else 0
        assert {e["uid"] for e in recs} == {want}, "%s: expected uid %d:\n%s" % (
            side, want, "\n".join(json.dumps(e) for e in recs))


def test_uid_filter(tmp_path):
    """--uid 65534 shows the sockets of uid 65534 only: the child's two,
    not the test's ends of the same connections."""
    port, cport = free_port(), free_port()
    trace = start_socktrace(str(tmp_path / "uidfilter.ndjson"), ["--uid", str(NOBODY)],
                            sentinel=child_sentinel(uid=NOBODY))
    ls = listener(4, port)
    child = Child(_peer, comm="st-nobody", uid=NOBODY)
    evs, socks = _filtered_run(trace, child, port, cport, ls, since_mark=False)
    others = [e for e in evs if e["uid"] != NOBODY]
    assert not others, "--uid %d let through:\n%s" % (NOBODY, describe(others))
    for side in ("child client", "child server"):
        recs = one_conn(evs, *socks[side])
        assert closed_of(recs) and {e["pid"] for e in recs} == {child.pid}, describe(recs)
    for side in ("test client", "test server"):
        assert not conns_of(evs, *socks[side]), "%s shown with --uid %d" % (side, NOBODY)
