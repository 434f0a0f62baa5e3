"""What the leak lab's demos share (stdlib only): a process name that
``comm`` shows, a deadline, clean stops on signals, one-line messages.

Every demo is bounded in time (--duration) and in connections, listens on
loopback only, closes everything it opened when it stops (duration over,
SIGINT, SIGTERM, SIGHUP), and prints its first line when it is ready.
"""

import argparse
import os
import signal
import sys
import time


def set_name(name):
    """What ps, pgrep -x and the kernel's comm (socktrace's "comm") show."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


def say(name, msg):
    print("%s: %s" % (name, msg), flush=True)


def parser(name, description, port, duration=300.0):
    p = argparse.ArgumentParser(prog=name, description=description)
    p.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=port, help="port (default %d; 0: any)" % port)
    p.add_argument("--duration", type=float, default=duration,
                   help="stop, close everything and exit after this many seconds (default %g)"
                   % duration)
    return p


def check_loopback(p, host):
    if not (host.startswith("127.") or host == "::1"):
        p.error("--host must be a loopback address: the lab sends nothing off the host")


class Clock:
    """The deadline and the stop flag (SIGINT, SIGTERM, SIGHUP)."""

    def __init__(self, duration):
        self.end = time.monotonic() + max(0.0, duration)
        self.stopped = False
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._stop)

    def _stop(self, signum, frame):
        self.stopped = True

    def left(self):
        return 0.0 if self.stopped else max(0.0, self.end - time.monotonic())

    def running(self):
        return self.left() > 0


def child_process(name, fn):
    """Fork a helper that runs fn() under its own name and exits (never
    returns in the child); returns its pid.  The helper stops when fn
    returns, on SIGTERM (at once), or when its parent is gone."""
    sys.stdout.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        # a helper holds nothing to clean up but sockets, which the kernel
        # closes with it: SIGTERM ends it at once, even inside a blocking call
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        set_name(name)
        fn()
    except KeyboardInterrupt:
        pass
    except BaseException as e:   # one line, never a traceback from a helper
        print("%s: %s" % (name, e), file=sys.stderr, flush=True)
        code = 1
    finally:
        sys.stdout.flush()
        os._exit(code)


def reap(pid, timeout=5.0):
    """SIGTERM a helper and wait for it (bounded; SIGKILL after *timeout*)."""
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def parent_gone(ppid):
    return os.getppid() != ppid


def netstat(name, path="/proc/net/netstat"):
    """A TcpExt counter of this network namespace (ListenOverflows...)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for head, vals in zip(lines[0::2], lines[1::2]):
        if head.startswith("TcpExt:") and vals.startswith("TcpExt:"):
            d = dict(zip(head.split()[1:], vals.split()[1:]))
            return int(d[name]) if name in d else None
    return None


def fd_count():
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def exited(pid):
    """True once helper *pid* has exited (and reaps it: no zombie left)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return bool(done)
