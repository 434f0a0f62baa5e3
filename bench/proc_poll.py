#!/usr/bin/env python3
"""Cost of one steady-state poll of the /proc backend, beside ss, psutil and netstat.

    sudo .venv/bin/python bench/proc_poll.py [--sockets 10000,100000] [--reps 7]

For each socket count (ascending, in one run) this holds that many real
ESTABLISHED TCP sockets open on loopback, then measures, in the same run and
under the same conditions:

* ``socktrace open (cold)``: ``ProcBackend(interval=0).open()``, the first
  poll of a fresh backend: /proc/net/tcp{,6} read and parsed, and every
  process's /proc/<pid>/fd walked to find the owners (one run);
* ``socktrace poll``: the steady state, ``read()`` of that backend (interval
  0: every call is one poll), nothing having changed: both files read and
  compared with the previous snapshot; owners included, since the sockets
  already seen keep the owners found by the cold poll (the owner cache is
  checked to do no work);
* ``ss -tan``, ``ss -tanp``, ``psutil.net_connections(kind="tcp")`` (in this
  process) and, if installed, ``netstat -tanp`` (never installed by this).

Every tool runs once untimed (a warm-up that also checks it sees the
sockets), then ``--reps`` timed rounds; each round runs every tool once, in
an order rotated from round to round, so that all of them share the same
conditions.  Wall time; external commands write to /dev/null.  Reported:
median and min per tool, ss -tanp's median divided by each tool's, and the
median CPU time (user + system, from getrusage: of the command for ss and
netstat, of this process for socktrace and psutil).
Target (issue 4): socktrace's steady-state poll takes at most a sixth of
``ss -tanp``'s time, i.e. ratio >= 6.

The sockets: ``--procs`` child processes (RLIMIT_NOFILE is capped at 20,000
per process here, so each holds at most 18,000 fds), each with 4 listeners
on 127.0.0.1 (ports picked by the kernel) and its own client source
address, 127.0.0.200, .201, ... (``--src-base``): a child connects to its own
listeners in batches smaller than the accept backlog and accepts, so both
ends of each pair are in the same process.  50,000 pairs = 100,000 sockets.
Before measuring, /proc/net/tcp must show exactly that many ESTABLISHED
sockets on our listener ports.  Every socket has SO_LINGER 0, so when a
child exits -- told to, or because this process died (stdin EOF,
PR_SET_PDEATHSIG, an alarm as last resort) -- its sockets are reset, leaving
no TIME_WAIT behind.  Ctrl-C, SIGTERM or an error end the run the same way.

Other work on the host skews every figure: ``--quiet-wait S`` first waits
(up to S s, outside the budget) for an idle CPU, an almost empty
/proc/net/tcp and no socktrace, pytest or storm process; the output warns when
other sockets were present or a steady poll saw changes.

Output: progress on stderr; on stdout a table (sockets, tool, median s,
min s, ss -tanp / tool, median CPU s), one verdict line per socket count and
one JSON line with every figure.  Exit status 0 when measured (whatever the
verdict), 1 on error or when --budget (default 270 s, set-up included) runs
out, 130 when interrupted.
"""

import argparse
import ctypes
import gc
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

MAX_SOCKETS = 200_000          # bound on what this will create
FDS_PER_PROC = 18_000          # RLIMIT_NOFILE is 20,000 here: keep a margin
LISTENERS = 4                  # per child
BACKLOG = 1024
BATCH = 256                    # connects per listener before accepting them
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
LINGER0 = b"\x01\x00\x00\x00\x00\x00\x00\x00"   # struct linger {1, 0}: close = RST
CHILD_COMM = b"sockhold"

# ---------------------------------------------------------------------------
# child: holds pairs of connected sockets until its stdin closes


def _prctl(option, arg):
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def hold_main(parent_pid, src, lifetime):
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:          # the parent died before prctl
        os._exit(1)
    _prctl(PR_SET_NAME, ctypes.c_char_p(CHILD_COMM))
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the parent decides
    signal.alarm(lifetime)                  # last resort: SIGALRM kills us
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out = sys.stdout.buffer
    inp = sys.stdin.buffer
    listeners = []
    for _ in range(LISTENERS):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        ls.bind(("127.0.0.1", 0))
        ls.listen(BACKLOG)
        ls.settimeout(10)
        listeners.append(ls)
    held = []                               # [client, server, client, server, ...]
    out.write(b"ready %s\n" % " ".join(str(ls.getsockname()[1]) for ls in listeners).encode())
    out.flush()
    turn = 0
    while True:
        line = inp.readline()
        if not line:
            os._exit(0)                     # the kernel closes (resets) everything
        cmd = line.split()
        if cmd[:1] != [b"grow"] or len(cmd) != 2:
            os._exit(2)
        want = int(cmd[1])
        try:
            while len(held) < 2 * want:
                ls = listeners[turn % LISTENERS]
                turn += 1
                dest = ls.getsockname()
                n = min(BATCH, want - len(held) // 2)
                for _ in range(n):
                    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    held.append(c)
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
                    # Port picked at connect() per 4-tuple: no bind-time
                    # exhaustion of the ephemeral range.
                    c.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    c.bind((src, 0))
                    c.settimeout(10)
                    c.connect(dest)
                for _ in range(n):
                    s, _ = ls.accept()
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
                    held.append(s)
            out.write(b"ok %d\n" % (len(held) // 2))
        except OSError as e:
            out.write(b"err %s (after %d pairs)\n" % (str(e).encode(), len(held) // 2))
        out.flush()


# ---------------------------------------------------------------------------
# parent


class Interrupted(BaseException):
    pass


def _on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


class Deadline(Exception):
    pass


def log(msg):
    sys.stderr.write("[proc_poll %6.1fs] %s\n" % (time.monotonic() - T0, msg))
    sys.stderr.flush()


T0 = time.monotonic()


class Holders:
    """The child processes holding the sockets."""

    def __init__(self, nprocs, src_base, lifetime):
        a, b, c, d = (int(x) for x in src_base.split("."))
        if a != 127 or d + nprocs > 255:
            raise SystemExit("--src-base must be a 127.x.y.z address with room for %d" % nprocs)
        self.srcs = ["127.%d.%d.%d" % (b, c, d + i) for i in range(nprocs)]
        self.lifetime = lifetime
        self.procs = []
        self.ports = set()
        self.pairs = [0] * nprocs

    def start(self, deadline):
        for src in self.srcs:
            p = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--_hold", str(os.getpid()), src,
                 str(self.lifetime)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, close_fds=True)
            self.procs.append(p)
        for p in self.procs:
            words = self._reply(p, deadline).split()
            if words[:1] != ["ready"]:
                raise RuntimeError("holder %d: %r" % (p.pid, words))
            self.ports.update(int(w) for w in words[1:])

    @property
    def pids(self):
        return {p.pid for p in self.procs}

    def grow(self, total_pairs, deadline):
        k = len(self.procs)
        want = [total_pairs // k + (1 if i < total_pairs % k else 0) for i in range(k)]
        if max(want) * 2 + LISTENERS + 16 > FDS_PER_PROC:
            raise RuntimeError("too many sockets per process: use more --procs")
        for p, n in zip(self.procs, want):
            p.stdin.write(b"grow %d\n" % n)
        for i, p in enumerate(self.procs):
            r = self._reply(p, deadline)
            if not r.startswith("ok "):
                raise RuntimeError("holder %d (%s): %s" % (p.pid, self.srcs[i], r))
            self.pairs[i] = int(r.split()[1])

    @staticmethod
    def _reply(p, deadline):
        buf = b""
        fd = p.stdout.fileno()
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise Deadline("holder %d did not answer in time" % p.pid)
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError("holder %d exited (status %s)" % (p.pid, p.wait()))
                buf += chunk
        return buf.decode().strip()

    def stop(self):
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        end = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for p in self.procs:
            p.stdout.close()
        self.procs = []


def proc_net_count(ports):
    """(lines in /proc/net/tcp{,6}, ESTABLISHED sockets on our listener ports)."""
    from tracer.procnet import read_file

    total = ours = 0
    hexports = {b"%04X" % p for p in ports}
    for name in ("tcp", "tcp6"):
        try:
            lines = read_file("/proc/net/" + name).split(b"\n")[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split(None, 4)
            if len(f) < 4:
                continue
            total += 1
            if f[3] == b"01" and (f[1][-4:] in hexports or f[2][-4:] in hexports):
                ours += 1
    return total, ours


def wait_for_sockets(ports, want, deadline):
    while True:
        total, ours = proc_net_count(ports)
        if ours == want:
            return total
        if time.monotonic() > deadline:
            raise RuntimeError("/proc/net/tcp shows %d of our %d sockets" % (ours, want))
        time.sleep(0.2)


def cpu_idle(seconds=1.0):
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]
    t1, i1 = read()
    time.sleep(seconds)
    t2, i2 = read()
    return 100.0 * (i2 - i1) / max(1, t2 - t1)


def busy_procs():
    """Other processes that poll /proc, trace or make sockets (socktrace,
    pytest, bench/storm): they would disturb the figures, and our sockets
    their output."""
    me = os.getpid()
    n = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"socktrace" in cmd or b"pytest" in cmd or b"storm" in cmd:
            n += 1
    return n


def wait_quiet(limit):
    """Wait (at most *limit* s) for an idle host: CPU >= 85% idle over 1 s,
    fewer than 2,000 lines in /proc/net/tcp{,6}, no socktrace, pytest or
    storm process.  Returns what it saw last."""
    end = time.monotonic() + limit
    while True:
        idle, lines, others = cpu_idle(), proc_net_count(())[0], busy_procs()
        quiet = idle >= 85 and lines < 2000 and others == 0
        if quiet or time.monotonic() >= end:
            return {"idle_pct": round(idle, 1), "proc_net_tcp_lines": lines,
                    "socktrace_pytest_storm_procs": others, "quiet": quiet,
                    "waited_s": round(limit - max(0.0, end - time.monotonic()), 1)}
        time.sleep(1.0)


def _cpu(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def run_cmd(argv, timeout, capture=False):
    """Run *argv*; return (wall s, CPU s of the command, its stdout)."""
    c = _cpu(resource.RUSAGE_CHILDREN)     # only waited-for children count
    t = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=timeout)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError("%s exited with %d" % (" ".join(argv), r.returncode))
    return dt, _cpu(resource.RUSAGE_CHILDREN) - c, r.stdout


def measure(target, holders, reps, tools, deadline, tool_timeout):
    import psutil
    from tracer.proc_backend import ProcBackend

    pids = holders.pids
    res = {"sockets": target}
    gc.collect()

    # socktrace, cold: a fresh backend's first poll walks every fd table.
    t = time.perf_counter()
    b = ProcBackend(interval=0).open()
    res["socktrace_open_cold_s"] = time.perf_counter() - t
    res["socktrace_open_poll_s"] = b.last_poll_s
    res["socktrace_open_owner_stats"] = dict(b._owners.stats) if b._owners is not None else {}
    t = time.perf_counter()
    baseline = b.sockets()         # what the first poll remembered: no poll
    res["socktrace_dump_s"] = time.perf_counter() - t
    owned = sum(1 for rec in baseline if rec["pid"] in pids and rec["state"] == "ESTABLISHED")
    res["socktrace_baseline_sockets"] = len(baseline)
    res["socktrace_owners_found"] = owned
    if owned != target:
        raise RuntimeError("socktrace baseline: owners of %d of our %d sockets" % (owned, target))
    del baseline
    walks = dict(b._owners.stats) if b._owners is not None else {}
    changes = []
    changed = []       # a sample of what changed during "steady" polls

    def socktrace_poll():
        polls = b.polls
        c = _cpu(resource.RUSAGE_SELF)
        t = time.perf_counter()
        out = b.read()
        dt = time.perf_counter() - t
        c = _cpu(resource.RUSAGE_SELF) - c
        if b.polls != polls + 1:
            raise RuntimeError("read() did not poll")
        changes.append(len(out))
        if out and len(changed) < 10:
            changed.extend("%s %s:%s>%s:%s %s->%s" % (
                rec["owner_from"], rec["laddr"], rec["lport"], rec["raddr"], rec["rport"],
                rec["old"], rec["new"]) for rec, *_ in out[:10 - len(changed)])
        internal.append(b.last_poll_s)
        return dt, c

    internal = []

    def psutil_poll():
        c = _cpu(resource.RUSAGE_SELF)
        t = time.perf_counter()
        conns = psutil.net_connections(kind="tcp")
        dt = time.perf_counter() - t
        c = _cpu(resource.RUSAGE_SELF) - c
        del conns
        return dt, c

    funcs = {"socktrace poll": socktrace_poll, "psutil.net_connections": psutil_poll}
    for name in tools:
        if name not in funcs:
            argv = name.split()
            funcs[name] = lambda argv=argv: run_cmd(argv, tool_timeout)[:2]

    # Warm-up, untimed, which also checks that each tool sees our sockets.
    seen = {}
    for name in tools:
        if time.monotonic() > deadline:
            raise Deadline("budget exhausted during the warm-up")
        if name == "socktrace poll":
            socktrace_poll()
            seen[name] = len(b._socks[4]) + len(b._socks[6])
        elif name == "psutil.net_connections":
            conns = psutil.net_connections(kind="tcp")
            mine = sum(1 for c in conns if c.pid in pids and c.status == "ESTABLISHED")
            if mine != target:
                raise RuntimeError("psutil sees %d of our %d sockets" % (mine, target))
            seen[name] = len(conns)
            del conns
        else:
            _, _, out = run_cmd(name.split(), tool_timeout, capture=True)
            lines = out.count(b"\n") - 1
            if lines < target:
                raise RuntimeError("%s lists %d sockets, fewer than %d" % (name, lines, target))
            if name.endswith("p"):
                # ss: users:(("sockhold",pid=N,fd=M)); netstat: N/python3
                mine = sum(1 for m in re.findall(rb"(?:pid=| )(\d+)[,/]", out)
                           if int(m) in pids)
                if mine < target:
                    raise RuntimeError("%s names the owner of %d of our %d sockets"
                                       % (name, mine, target))
            seen[name] = lines
    changes.clear()
    changed.clear()
    internal.clear()

    samples = {name: [] for name in tools}
    cpu = {name: [] for name in tools}
    for r in range(reps):
        if time.monotonic() > deadline:
            raise Deadline("budget exhausted after %d of %d rounds at %d sockets"
                           % (r, reps, target))
        k = r % len(tools)
        for name in tools[k:] + tools[:k]:
            wall, c = funcs[name]()
            samples[name].append(wall)
            cpu[name].append(c)
    log("%d sockets: %d rounds done" % (target, reps))

    res["tools"] = {
        name: {"median_s": statistics.median(v), "min_s": min(v), "samples_s": v,
               "cpu_median_s": statistics.median(cpu[name]), "cpu_samples_s": cpu[name],
               "rows_seen": seen[name]}
        for name, v in samples.items()
    }
    st = res["tools"]["socktrace poll"]
    st["internal_median_s"] = statistics.median(internal)
    st["polls_with_changes"] = sum(1 for c in changes if c)
    st["records_in_steady_polls"] = sum(changes)
    st["changes_sample"] = changed
    st["owner_cache_work_in_steady_polls"] = {
        k: b._owners.stats[k] - v for k, v in walks.items() if b._owners.stats[k] != v}
    ref = res["tools"]["ss -tanp"]["median_s"]
    ref_cpu = res["tools"]["ss -tanp"]["cpu_median_s"]
    for v in res["tools"].values():
        v["ss_tanp_over_tool"] = ref / v["median_s"]
        v["ss_tanp_over_tool_cpu"] = ref_cpu / v["cpu_median_s"] if v["cpu_median_s"] else None
    res["ratio_ss_tanp_over_socktrace_poll"] = ref / st["median_s"]
    res["target_met"] = res["ratio_ss_tanp_over_socktrace_poll"] >= 6.0
    b.close()
    return res


def parse_sizes(text):
    out = []
    for w in text.split(","):
        w = w.strip().lower()
        n = int(float(w[:-1]) * 1000) if w.endswith("k") else int(w)
        n += n % 2                                   # pairs: round up to even
        if not 2 <= n <= MAX_SOCKETS:
            raise argparse.ArgumentTypeError("socket counts must be 2..%d" % MAX_SOCKETS)
        out.append(n)
    return sorted(set(out))


def table(results):
    rows = ["%8s  %-30s %10s %10s %14s %10s" % ("sockets", "tool", "median s", "min s",
                                                "ss -tanp/tool", "cpu s")]
    for res in results:
        n = res["sockets"]
        ref = res["tools"]["ss -tanp"]["median_s"]
        cold = res["socktrace_open_cold_s"]
        rows.append("%8d  %-30s %10.4f %10.4f %14.2f %10s" % (
            n, "socktrace open (cold, 1 run)", cold, cold, ref / cold, ""))
        for name, v in res["tools"].items():
            rows.append("%8d  %-30s %10.4f %10.4f %14.2f %10.4f" % (
                n, name if name != "socktrace poll" else "socktrace poll (steady)",
                v["median_s"], v["min_s"], v["ss_tanp_over_tool"], v["cpu_median_s"]))
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sockets", type=parse_sizes, default=parse_sizes("10000,100000"),
                   help="socket counts, comma-separated, e.g. 10k,100k (default; max %d)"
                   % MAX_SOCKETS)
    p.add_argument("--reps", type=int, default=7, help="timed rounds per count (>= 5, default 7)")
    p.add_argument("--procs", type=int, default=8,
                   help="holder processes (default 8; more if needed to stay under %d fds each)"
                   % FDS_PER_PROC)
    p.add_argument("--src-base", default="127.0.0.200",
                   help="first client source address (default 127.0.0.200)")
    p.add_argument("--budget", type=float, default=270.0,
                   help="seconds for the whole run, set-up included (default 270)")
    p.add_argument("--no-netstat", action="store_true", help="leave netstat out")
    p.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                   help="first wait up to S s (not part of --budget) for an idle host: "
                        "CPU >= 85%% idle, < 2,000 lines in /proc/net/tcp, no socktrace, "
                        "pytest or storm process (default 0)")
    args = p.parse_args(argv)
    if args.reps < 5 or args.reps > 50:
        p.error("--reps must be 5..50")
    if not 1 <= args.procs <= 32 or not 10 <= args.budget <= 1800:
        p.error("--procs 1..32, --budget 10..1800")
    if not sys.platform.startswith("linux"):
        p.error("Linux only")
    if os.geteuid() != 0:
        sys.stderr.write("proc_poll: not root: ss -p, netstat -p and psutil see only our own "
                         "processes' owners\n")
    if shutil.which("ss") is None:
        p.error("ss (iproute2) is required")
    import psutil  # noqa: F401  (fail early)

    need_procs = -(-max(args.sockets) // (FDS_PER_PROC - LISTENERS - 16))
    nprocs = max(args.procs, need_procs)
    tools = ["socktrace poll", "ss -tan", "ss -tanp", "psutil.net_connections"]
    netstat = None if args.no_netstat else shutil.which("netstat")
    if netstat:
        tools.append("netstat -tanp")

    host = {}
    if args.quiet_wait > 0:
        host["quiet_wait"] = wait_quiet(min(args.quiet_wait, 1800))
        log("host: %s" % host["quiet_wait"])
    deadline = time.monotonic() + args.budget
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    holders = Holders(nprocs, args.src_base, int(args.budget) + 60)
    results = []
    host.update({
        "kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "psutil": psutil.__version__,
        "ss": subprocess.run(["ss", "-V"], capture_output=True, text=True).stdout.strip(),
        "netstat": bool(netstat), "loadavg_start": open("/proc/loadavg").read().split()[:3],
    })
    status = 0
    error = None
    leftover = None
    try:
        holders.start(deadline)
        log("%d holder processes, sources %s..%s, listener ports %s"
            % (nprocs, holders.srcs[0], holders.srcs[-1], sorted(holders.ports)))
        for target in args.sockets:
            t = time.monotonic()
            holders.grow(target // 2, deadline)
            lines = wait_for_sockets(holders.ports, target, min(deadline, time.monotonic() + 30))
            log("%d sockets ESTABLISHED in %.1fs; /proc/net/tcp{,6}: %d lines"
                % (target, time.monotonic() - t, lines))
            res = measure(target, holders, args.reps, tools, deadline, tool_timeout=60)
            res["proc_net_tcp_lines"] = lines
            res["our_listeners"] = len(holders.ports)
            res["foreign_lines"] = lines - target - len(holders.ports)
            results.append(res)
    except (Deadline, RuntimeError, OSError, subprocess.SubprocessError) as e:
        error = "%s: %s" % (type(e).__name__, e)
        status = 1
    except (KeyboardInterrupt, Interrupted) as e:
        error = "interrupted (%s)" % (str(e) or "SIGINT")
        status = 130
    finally:
        try:
            holders.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
        if holders.ports:
            time.sleep(0.2)
            leftover = proc_net_count(holders.ports)[1]
            log("cleaned up; our sockets left in /proc/net/tcp: %d" % leftover)
    if error:
        sys.stderr.write("proc_poll: %s\n" % error)
    if results:
        print(table(results))
        for res in results:
            print("%d sockets: ss -tanp / socktrace steady poll = %.2f (target >= 6): %s"
                  % (res["sockets"], res["ratio_ss_tanp_over_socktrace_poll"],
                     "met" if res["target_met"] else "NOT met"))
            if res["foreign_lines"] > max(1000, target // 20):
                print("warning: %d sockets besides ours in /proc/net/tcp{,6} at %d: another "
                      "workload ran; every figure includes them" % (res["foreign_lines"],
                                                                    res["sockets"]))
            busy = res["tools"]["socktrace poll"]["polls_with_changes"]
            if busy:
                print("warning: %d of %d steady polls at %d sockets saw changes (other sockets "
                      "came or went)" % (busy, args.reps, res["sockets"]))
        host["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        print(json.dumps({"bench": "proc_poll", "host": host, "procs": nprocs, "reps": args.reps,
                          "results": results, "leftover_sockets": leftover, "error": error},
                         separators=(",", ":")))
    return status


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--_hold":
        hold_main(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(main())
