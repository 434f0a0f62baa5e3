"""Loopback TCP workload for the real-kernel tests (tests/test_kernel.py).

One process per role, each with a predictable ``comm`` (set with
``prctl(PR_SET_NAME)``) so that socktrace's owner attribution can be checked:

    python -m tests.workload server     # comm "st-server"
    python -m tests.workload client     # comm "st-client"
    python -m tests.workload ROLE --comm NAME

A process reads one JSON command per line on stdin and answers each with one
JSON line on stdout; its first line is ``{"ready": true, "pid": ..., "comm":
...}``.  Every blocking call has a timeout, so a test can never hang on it.
Both roles understand every command; the role only picks the name.

Commands (``op``) and replies:

listen   {"family": 4|6, "port": 0}
         -> {"port", "laddr"}            a listener on 127.0.0.1 / ::1
unlisten {"port"}                        close that listener -> {}
serve    {"port", "mode"}                accept one connection on a listener
         -> tuple                        (see MODES for what happens next)
connect  {"family", "port", "mode", "bind_port"?, "reuseaddr"?}
         -> tuple (+ "error": "ECONNREFUSED" for a refused connect)
finish   {"id", "mode"}                  end a connection kept by mode "hold"
exit                                     -> {} and the process exits

A *tuple* reply is ``{"id", "family", "laddr", "lport", "raddr", "rport"}``
as seen by that process: the exact 4-tuple of its socket, from which the tests
pick exactly their sockets out of socktrace's stream.

Modes, for both ends of one connection (the test sends ``serve`` to the server
first, then ``connect`` to the client, then reads both replies):

client-first  the client closes right after connecting; the server reads to
              EOF, then closes.  The client ends in TIME_WAIT.
client-first-late
              the same, but the server waits LATE_S after EOF before it
              closes: the client's FIN is ACKed alone, so the client sits in
              FIN_WAIT2 (held by a timewait socket) until the server's FIN.
server-first  the server closes right after accepting; the client reads to
              EOF, then closes.  The server ends in TIME_WAIT.
reset         the server sends one byte once it has accepted; the client
              reads it, sets SO_LINGER {1, 0} and closes: an RST.  The server
              then sees ECONNRESET (or EOF) and closes.
refused       (connect only) connect to a port without a listener.
hold          the connection stays open; ``finish`` ends it later with
              mode "close" (close now) or "eof" (read to EOF, then close),
              or half-closes it with mode "shutdown" (SHUT_WR, still held).

The module also holds the test side of the protocol (:class:`Worker`).
"""

import ctypes
import ctypes.util
import errno
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

IO_TIMEOUT = 10.0         # any single socket wait in a worker
LATE_S = 0.3              # client-first-late: how long the server waits to close
REPLY_TIMEOUT = 20.0      # the test side waiting for one reply
PR_SET_NAME = 15
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
AF = {4: socket.AF_INET, 6: socket.AF_INET6}
MODES = ("client-first", "client-first-late", "server-first", "reset", "refused", "hold")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def set_comm(name):
    """Set this (single-threaded) process's comm, as the kernel reports it."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    buf = ctypes.create_string_buffer(name.encode()[:15])
    if libc.prctl(PR_SET_NAME, buf, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


def free_port(family=4):
    """A port that had no listener a moment ago (for refused connects and
    sentinels): bound, then released without listening."""
    s = socket.socket(AF[family], socket.SOCK_STREAM)
    try:
        s.bind((LOOPBACK[family], 0))
        return s.getsockname()[1]
    finally:
        s.close()


# ---------------------------------------------------------------------------
# The worker process
# ---------------------------------------------------------------------------



def _holders(port):
    """What /proc/net/tcp{,6} shows on *port*: state and the other end, so a
    4-tuple that cannot be reused says who holds it."""
    if not port:
        return "?"
    want = ":%04X" % port
    out = []
    for name in ("tcp", "tcp6"):
        try:
            with open("/proc/net/" + name) as f:
                for line in list(f)[1:]:
                    parts = line.split()
                    if parts[1].endswith(want) or parts[2].endswith(want):
                        out.append("%s %s->%s st=%s tr=%s" % (name, parts[1], parts[2], parts[3], parts[5]))
        except OSError:
            pass
    return "; ".join(out) or "none"

class _Worker:
    def __init__(self):
        self.listeners = {}   # port -> listening socket
        self.held = {}        # id -> connected socket (mode hold)
        self.next_id = 1

    # helpers -------------------------------------------------------------

    def _tuple(self, s, family):
        cid = self.next_id
        self.next_id += 1
        la, ra = s.getsockname(), s.getpeername()
        return {"id": cid, "family": family, "laddr": la[0], "lport": la[1],
                "raddr": ra[0], "rport": ra[1]}

    @staticmethod
    def _read_to_eof(s):
        """Read until the peer's FIN (or its RST); bounded."""
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no EOF from the peer within %.0f s" % IO_TIMEOUT)
            s.settimeout(left)
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                return "reset"
            if not data:
                return "eof"

    # commands ------------------------------------------------------------

    def op_listen(self, cmd):
        fam = cmd.get("family", 4)
        s = socket.socket(AF[fam], socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == 6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((LOOPBACK[fam], cmd.get("port", 0)))
        s.listen(64)
        port = s.getsockname()[1]
        self.listeners[port] = s
        return {"port": port, "laddr": LOOPBACK[fam], "family": fam}

    def op_unlisten(self, cmd):
        self.listeners.pop(cmd["port"]).close()
        return {}

    def op_serve(self, cmd):
        ls = self.listeners[cmd["port"]]
        mode = cmd["mode"]
        fam = 6 if ls.family == socket.AF_INET6 else 4
        ls.settimeout(IO_TIMEOUT)
        s, _ = ls.accept()
        s.settimeout(IO_TIMEOUT)
        out = self._tuple(s, fam)
        if mode in ("client-first", "client-first-late"):
            out["saw"] = self._read_to_eof(s)
            if mode == "client-first-late":
                time.sleep(LATE_S)
            s.close()
        elif mode == "server-first":
            s.close()
        elif mode == "reset":
            s.sendall(b"x")
            out["saw"] = self._read_to_eof(s)
            s.close()
        elif mode == "hold":
            self.held[out["id"]] = s
        else:
            s.close()
            raise ValueError("serve: unknown mode %r" % mode)
        return out

    def op_connect(self, cmd):
        fam = cmd.get("family", 4)
        mode = cmd["mode"]
        dest = (LOOPBACK[fam], cmd["port"])

        def fresh():
            s = socket.socket(AF[fam], socket.SOCK_STREAM)
            if cmd.get("reuseaddr"):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if cmd.get("bind_port"):
                s.bind((LOOPBACK[fam], cmd["bind_port"]))
            s.settimeout(IO_TIMEOUT)
            return s

        s = fresh()
        if mode == "refused":
            # Non-blocking, so that the local port the kernel picked can be
            # read before the RST arrives: the exact 4-tuple, for the tests.
            s.setblocking(False)
            err = s.connect_ex(dest)
            laddr, lport = s.getsockname()[:2]
            if err == errno.EINPROGRESS:
                select.select([], [s], [], IO_TIMEOUT)
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            s.close()
            return {"family": fam, "laddr": laddr, "lport": lport, "raddr": dest[0],
                    "rport": dest[1], "error": errno.errorcode.get(err, str(err))}
        attempts = cmd.get("attempts", 1)
        for i in range(attempts):
            try:
                s.connect(dest)
                break
            except OSError as e:
                # an explicit bind_port may still be held by TIME_WAIT: retry,
                # on a new socket (a failed connect leaves its bind state reset)
                s.close()
                if e.errno not in (errno.EADDRNOTAVAIL, errno.EADDRINUSE):
                    raise
                if i == attempts - 1:
                    raise OSError(e.errno, "%s; sockets on port %s: %s" % (
                        e.strerror, cmd.get("bind_port"), _holders(cmd.get("bind_port"))))
                time.sleep(0.1)
                s = fresh()
        out = self._tuple(s, fam)
        if mode in ("client-first", "client-first-late"):
            s.close()
        elif mode == "server-first":
            out["saw"] = self._read_to_eof(s)
            s.close()
        elif mode == "reset":
            if s.recv(1) != b"x":
                raise RuntimeError("reset: no sync byte from the server")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        elif mode == "hold":
            self.held[out["id"]] = s
        else:
            s.close()
            raise ValueError("connect: unknown mode %r" % mode)
        return out

    def op_finish(self, cmd):
        if cmd.get("mode") == "shutdown":
            # our FIN only: the socket stays held, in FIN_WAIT2 once ACKed
            self.held[cmd["id"]].shutdown(socket.SHUT_WR)
            return {}
        s = self.held.pop(cmd["id"])
        out = {}
        if cmd.get("mode", "close") == "eof":
            out["saw"] = self._read_to_eof(s)
        s.close()
        return out

    def loop(self, inp, out):
        for line in inp:
            line = line.strip()
            if not line:
                continue
            try:
                cmd = json.loads(line)
                op = cmd["op"]
                if op == "exit":
                    out.write("{}\n")
                    out.flush()
                    return
                reply = getattr(self, "op_" + op)(cmd)
            except Exception as e:   # reported to the test, never fatal here
                reply = {"exception": "%s: %s" % (type(e).__name__, e)}
            out.write(json.dumps(reply) + "\n")
            out.flush()


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("server", "client"):
        sys.stderr.write("usage: python -m tests.workload server|client [--comm NAME]\n")
        return 2
    role = argv[0]
    comm = "st-" + role
    if "--comm" in argv:
        comm = argv[argv.index("--comm") + 1]
    set_comm(comm)
    sys.stdout.write(json.dumps({"ready": True, "pid": os.getpid(), "role": role,
                                 "comm": comm}) + "\n")
    sys.stdout.flush()
    _Worker().loop(sys.stdin, sys.stdout)
    return 0


# ---------------------------------------------------------------------------
# The test side
# ---------------------------------------------------------------------------


class WorkloadError(Exception):
    pass


class Worker:
    """A workload process driven from a test: ``call`` sends a command and
    waits (bounded) for its reply; ``send``/``reply`` split the two so that
    a server can wait in accept() while the client connects."""

    def __init__(self, role, comm=None):
        cmd = [sys.executable, "-m", "tests.workload", role]
        if comm:
            cmd += ["--comm", comm]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     bufsize=0)
        self._buf = b""
        hello = self.reply()
        self.pid = hello["pid"]
        self.comm = hello["comm"]
        self.role = role

    def send(self, op, **kw):
        kw["op"] = op
        self.proc.stdin.write((json.dumps(kw) + "\n").encode())
        self.proc.stdin.flush()

    def reply(self, timeout=REPLY_TIMEOUT):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkloadError("no reply from the workload within %.0f s" % timeout)
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace")
                    raise WorkloadError("workload process died: %s" % err[-2000:])
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        out = json.loads(line)
        if "exception" in out:
            raise WorkloadError("workload %s: %s" % (getattr(self, "role", "?"), out["exception"]))
        return out

    def call(self, op, timeout=REPLY_TIMEOUT, **kw):
        self.send(op, **kw)
        return self.reply(timeout)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.call("exit", timeout=5)
            except (WorkloadError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


def connection(server, client, family, mode, port=None, **connect_kw):
    """One connection between two workers, both ends behaving per *mode*.

    Returns {"mode", "family", "server_port", "client": tuple, "server": tuple}
    (no "server" for mode "refused"); *port* is an existing listener of
    *server*, else a new one is opened (and kept: close it with unlisten)."""
    if mode == "refused":
        rport = port or free_port(family)
        c = client.call("connect", family=family, port=rport, mode="refused", **connect_kw)
        if c.get("error") != "ECONNREFUSED":
            raise WorkloadError("refused connect to %d gave %r" % (rport, c))
        return {"mode": mode, "family": family, "server_port": rport, "client": c}
    if port is None:
        port = server.call("listen", family=family)["port"]
    server.send("serve", port=port, mode=mode)
    try:
        c = client.call("connect", family=family, port=port, mode=mode, **connect_kw)
    finally:
        s = server.reply()
    return {"mode": mode, "family": family, "server_port": port, "client": c, "server": s}


if __name__ == "__main__":
    sys.exit(main())
