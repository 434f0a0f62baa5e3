#!/usr/bin/env python3
"""socktrace against bcc's tcpstates and tcplife and no tracer, in the same run.

    sudo .venv/bin/python bench/compare.py              # full run, ~6 min
    sudo .venv/bin/python bench/compare.py --quick      # one round, no bisection, ~1 min

For each tracer (none; "hooks only", empty programs on socktrace's hooks,
bench/hooks_only.py: the floor any tracer with its coverage pays; tcpstates;
tcplife, one line per socket, beside socktrace --records closed; socktrace;
socktrace with a --port filter that matches nothing in the storm) it runs
bench/storm.py on loopback and prints:

- the storm's connections/s while traced, at maximum storm rate (median of
  --rounds rounds, tracers interleaved in a rotating order, so drift of a
  noisy host hits all of them alike);
- the loss at maximum rate: events on the storm's ports that did not arrive,
  and what the tracer itself reported as lost; for socktrace the harness
  checks that its ``lost`` records add up exactly to the shortfall;
- the tracer's CPU seconds per million events it handled, and its peak RSS;
- with --bisect (the default unless --quick): the highest fixed storm rate
  traced without loss, found by bisection, each step a storm of --step-seconds.

What counts as an event.  The storm's expected_transitions plus its
listener_transitions are the sock:inet_sock_set_state hits of its sockets
(bench/storm_transitions.py checked this figure against the kernel's own
trace).  tcpstates prints one line per hit.  socktrace receives one record
per hit (printed, or the internal FIN_WAIT2 hand-off) plus records it works
out from timers or the peer; its summary record says how many it received
and how many of those were derived, and its ``lost`` records say how many
were dropped (ringbuf_lost for hits, derived_lost for derived ones).  So

    received - derived - (records of other sockets) + ringbuf_lost == expected

must hold exactly.  Other sockets are the harness's own readiness probes
(RST-closed, so all of their records are printed) and any traffic of other
programs, which the report names when it sees it.

Bounds: loopback only (storm.py), every storm bounded by --count / time,
each tracer stopped with SIGINT and killed after 60 s.  Run as root on an
otherwise idle host; the report prints the load average before and after.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

try:
    from orjson import loads
except ImportError:
    from json import loads

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
STORM = [PY, os.path.join(HERE, "storm.py")]
SOCKTRACE = [PY, "-m", "tracer"]
TCPSTATES = "/usr/sbin/tcpstates-bpfcc"
TCPLIFE = "/usr/sbin/tcplife-bpfcc"
IDLE_PORT = 9          # discard: nothing in the storm uses it


def log(msg):
    print("[compare %6.1fs] %s" % (time.monotonic() - T0, msg), file=sys.stderr, flush=True)


def cpu_s(pid):
    """utime + stime of a live process, seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


# -- the tracers ---------------------------------------------------------------


class Tracer:
    """One tracer process writing to a file; started, made ready (a probe
    connection shows up in its output), stopped."""

    name = "none"
    argv = None

    def __init__(self, workdir):
        self.out = os.path.join(workdir, "%s.out" % self.name.replace(" ", "_"))
        self.err = os.path.join(workdir, "%s.err" % self.name.replace(" ", "_"))
        self.proc = None
        self.probe_ports = set()
        self.probe_at = 0          # 0: a new kernel-chosen port each probe
        self.cwd = getattr(self, "cwd", ROOT)

    def start(self):
        if self.argv is None:
            return
        for p in (self.out, self.err):
            if os.path.exists(p):
                os.unlink(p)
        self.proc = subprocess.Popen(self.argv, stdout=open(self.out, "wb"),
                                     stderr=open(self.err, "wb"), cwd=self.cwd,
                                     start_new_session=True, preexec_fn=_default_sigint)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("%s exited at start-up: %s" % (self.name, open(self.err).read()[-500:]))
            port = probe(self.probe_at)
            self.probe_ports.add(port)
            time.sleep(0.3)
            if self.seen_port(port):
                return
        raise SystemExit("%s did not show a probe connection within 90 s" % self.name)

    def tally(self, counts, lp, rp, ports):
        """Count one event as the storm's, a readiness probe's or other."""
        key = ("storm_events" if lp in ports or rp in ports else
               "probe_events" if lp in self.probe_ports or rp in self.probe_ports else
               "other_events")
        counts[key] += 1

    def seen_port(self, port):
        with open(self.out, "rb") as f:
            return (b"%d" % port) in f.read()

    def settle(self, timeout=60):
        """Wait until the output stops growing (the tracer has drained)."""
        if self.proc is None:
            return
        last, still = -1, 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and still < 3:
            size = os.path.getsize(self.out)
            still = still + 1 if size == last else 0
            last = size
            time.sleep(0.4)

    def stop(self):
        if self.proc is None:
            return
        # tcpstates turns SIGINT into KeyboardInterrupt, which a ctypes
        # callback (its per-event print) swallows: ask again until it lands
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(2)
                return
            except subprocess.TimeoutExpired:
                pass
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        raise SystemExit("%s did not stop within 60 s of SIGINT" % self.name)


class NoTracer(Tracer):
    name = "none"


class HooksOnly(Tracer):
    """Empty programs on socktrace's hooks (bench/hooks_only.py): the floor
    any tracer with its coverage pays.  Ready when it says so; no output."""

    name = "hooks only"
    argv = [PY, os.path.join(HERE, "hooks_only.py")]

    def seen_port(self, port):
        with open(self.out, "rb") as f:
            return b"ready" in f.read()

    def count(self, ports):
        return {"storm_events": None, "probe_events": 0, "other_events": 0,
                "reported_lost": 0, "handled": 0}


class BccTool(Tracer):
    """One of bcc's tools: a header, then a line per event; its losses as
    libbcc reports them."""

    _lost = re.compile(rb"Possibly lost (\d+) samples")

    def ports_of(self, parts):
        """(local port, remote port) of a line's fields, or None."""
        raise NotImplementedError

    def count(self, ports):
        """Lines on the storm's ports, on probe ports, other lines, lost."""
        c = dict.fromkeys(("storm_events", "probe_events", "other_events"), 0)
        with open(self.out, "rb") as f:
            next(f, None)                                  # header
            for line in f:
                lr = self.ports_of(line.split())
                if lr:
                    self.tally(c, lr[0], lr[1], ports)
        lost = 0
        for path in (self.out, self.err):
            with open(path, "rb") as f:
                lost += sum(int(n) for n in self._lost.findall(f.read()))
        c.update(reported_lost=lost, handled=sum(c.values()))
        return c


class Tcplife(BccTool):
    """bcc's tcplife: one line per socket at its close, what a user picks
    for one record per connection (socktrace --records closed)."""

    name = "tcplife"
    argv = [TCPLIFE]
    lines_per_connection = 2

    def ports_of(self, parts):
        # PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS
        if len(parts) >= 9 and parts[-6].isdigit() and parts[-4].isdigit():
            return int(parts[-6]), int(parts[-4])
        return None

    def count(self, ports):
        c = super().count(ports)
        c.update(storm_lines=c["storm_events"], storm_events=None)
        return c


class Tcpstates(BccTool):
    name = "tcpstates"
    argv = [TCPSTATES]

    def ports_of(self, parts):
        if len(parts) >= 10 and parts[-3] == b"->":
            return int(parts[-7]), int(parts[-5])
        return None


class Socktrace(Tracer):
    name = "socktrace"
    lines_per_connection = 1            # --records closed: the server's, in the round

    def __init__(self, workdir, extra=(), name=None, root=None):
        self.argv = SOCKTRACE + ["--backend", "bpf", "--summary", "--no-report", "-o", None] + list(extra)
        self.name = name or ("socktrace " + " ".join(extra) if extra else "socktrace")
        # another checkout's code (python -m tracer runs the package of its
        # working directory): --baseline
        self.cwd = root or ROOT
        self.per_connection = "--records" in extra      # no state records by design
        super().__init__(workdir)
        self.argv[self.argv.index(None)] = self.out
        if "--port" in extra:
            # the filter also lets the readiness probe's fixed port through
            self.probe_at = free_port()
            self.argv += ["--port", str(self.probe_at)]

    def count(self, ports):
        c = dict.fromkeys(("storm_events", "probe_events", "other_events"), 0)
        lost = {}
        summary = None
        closed = storm_closed = 0
        with open(self.out, "rb") as f:
            for line in f:
                rec = loads(line)
                t = rec["type"]
                if t == "state" and not (rec["old"] == "TIME_WAIT" and rec["new"] == "CLOSE"):
                    # TIME_WAIT->CLOSE is always derived (the timewait timer
                    # ended it: a reused 4-tuple, within the run); every other
                    # line stands for one inet_sock_set_state hit
                    self.tally(c, rec["lport"], rec["rport"], ports)
                elif t == "closed":
                    closed += 1
                    # the server's: a client's comes when its TIME_WAIT
                    # ends, a minute after the round (or, reused, within it)
                    if rec["role"] == "server" and rec["lport"] in ports:
                        storm_closed += 1
                elif t == "lost":
                    lost[rec["what"]] = lost.get(rec["what"], 0) + rec["count"]
                elif t == "summary":
                    summary = rec
        if summary is None:
            raise SystemExit("socktrace wrote no summary record: %s" % open(self.err).read()[-500:])
        recs = summary["records"]
        # hits that send no record: a FIN_WAIT2 hand-off (the socket goes
        # on in FIN_WAIT2, held by its timewait socket) and old == new
        c.update(reported_lost=sum(lost.values()), lost=lost,
                 received=recs["received"] - closed, derived=recs["derived"],
                 silent=recs["handoffs"] + recs["self_transitions"],
                 handled=recs["received"])
        if self.per_connection:
            c["storm_events"] = None        # one record per connection, by design
            c["storm_lines"] = storm_closed
        return c


def _default_sigint():
    """Run from nohup or a background job, we inherit SIGINT ignored, and a
    Python child then never turns it into KeyboardInterrupt: undo that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(port=0):
    """One loopback connection closed with an RST: three transitions per
    side and no TIME_WAIT, so every record of it is a printed one."""
    lsn = socket.socket()
    lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsn.bind(("127.0.0.1", port))
    lsn.listen(1)
    port = lsn.getsockname()[1]
    c = socket.create_connection(("127.0.0.1", port))
    s, _ = lsn.accept()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    time.sleep(0.01)
    s.close()
    lsn.close()
    return port


# -- one measurement -------------------------------------------------------------


def storm(args, rate=0, count=None):
    cmd = STORM + ["--count", str(count or args.count), "--close", args.close,
                   "--family", str(args.family), "--clients", "2"]
    if rate:
        cmd += ["--rate", str(int(rate))]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900)
    if res.returncode != 0:
        raise SystemExit("storm failed: %s" % res.stderr.decode()[-500:])
    return json.loads(res.stdout)


def measure(tracer, args, rate=0, count=None):
    tracer.start()
    pid = tracer.proc.pid if tracer.proc else None
    cpu0 = cpu_s(pid) if pid else 0.0
    st = storm(args, rate, count)
    tracer.settle()
    cpu1 = cpu_s(pid) if pid else 0.0
    rss = peak_rss_mb(pid) if pid else None
    tracer.stop()
    r = {"tracer": tracer.name, "target_rate": rate, "rate": st["rate"],
         "connections": st["completed"], "failed": st["failed"],
         "expected": st["expected_transitions"] + st["listener_transitions"]}
    if pid:
        cfg = st["config"]
        ports = set(range(cfg["base_port"], cfg["base_port"] + cfg["ports"]))
        c = tracer.count(ports)
        r.update(c)
        r["shortfall"] = (r["expected"] - c["storm_events"]
                          if c["storm_events"] is not None else None)
        if "storm_lines" in c:
            # tcplife: one line per socket at its close, two a connection;
            # socktrace --records closed: the server's closed record, one
            r["lines_short"] = tracer.lines_per_connection * st["completed"] - c["storm_lines"]
        r["cpu_s"] = round(cpu1 - cpu0, 3)
        r["cpu_s_per_M"] = round((cpu1 - cpu0) / (c["handled"] / 1e6), 3) if c["handled"] else None
        r["peak_rss_mb"] = round(rss, 1)
        if "received" in c and not tracer.probe_at and c["storm_events"] is not None:
            # every storm hit either arrived (a record, or none by design:
            # a hand-off or a self-transition) or was counted lost, exactly
            kernel_arrived = (c["received"] - c["derived"] + c["silent"]
                              - c["probe_events"] - c["other_events"])
            r["kernel_arrived"] = kernel_arrived
            r["lost_hits"] = c["lost"].get("ringbuf_lost", 0) + c["lost"].get("missed", 0)
            r["accounting_exact"] = kernel_arrived + r["lost_hits"] == r["expected"]
        # Lossless: every transition of the storm is in the output and the
        # tracer reported no loss of them.  socktrace's timer_missed is left
        # out: it counts timer events of the whole host the kernel did not
        # run our program for, and one that touched the storm shows as a
        # shortfall anyway.
        transitions_lost = (c["reported_lost"] if "lost" not in c else
                            sum(n for what, n in c["lost"].items() if what != "timer_missed"))
        r["lossless"] = transitions_lost == 0 and r["shortfall"] == 0 and st["failed"] == 0
        if tracer.probe_at or c["storm_events"] is None:   # nothing to count by design
            r["shortfall"] = r["lossless"] = None
    return r


def bisect(make, args, hi):
    """Highest fixed rate (conn/s) traced without loss, to within
    --resolution."""
    lo, best = 0.0, None
    while hi - lo > args.resolution * max(hi, 1):
        mid = (lo + hi) / 2
        r = measure(make(), args, rate=mid, count=int(mid * args.step_seconds))
        log("  %-10s %7.0f conn/s target -> %7.0f achieved, lossless=%s (short %d, lost %s)" % (
            r["tracer"], mid, r["rate"], r["lossless"], r["shortfall"], r.get("lost", r["reported_lost"])))
        if r["lossless"]:
            lo, best = mid, r
        else:
            hi = mid
    return best


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="one round of 50,000 connections, no bisection (about a minute)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--count", type=int, default=100_000, help="connections per max-rate storm")
    ap.add_argument("--close", default="client", choices=("client", "server", "reset"))
    ap.add_argument("--family", type=int, default=4, choices=(4, 6))
    ap.add_argument("--no-bisect", dest="bisect", action="store_false")
    ap.add_argument("--step-seconds", type=float, default=6.0,
                    help="length of each bisection storm (default 6 s)")
    ap.add_argument("--resolution", type=float, default=0.04,
                    help="stop bisecting when the interval is this fraction of the rate")
    ap.add_argument("--json", metavar="FILE", help="also write every measurement here")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also run socktrace (full, --records closed) from this checkout "
                         "(a git worktree of an older commit, its C parts built) in the "
                         "same rounds: what a change costs")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.count, args.bisect = 1, 50_000, False
    if os.geteuid() != 0:
        sys.exit("compare.py: needs root (BPF)")
    for tool in (TCPSTATES, TCPLIFE):
        if not os.access(tool, os.X_OK):
            sys.exit("compare.py: %s not found (apt install bpfcc-tools)" % tool)
    subprocess.run(STORM + ["--build-only"], check=True, stdout=subprocess.DEVNULL)

    work = tempfile.mkdtemp(prefix="socktrace-compare-")
    makers = [
        ("none", lambda: NoTracer(work)),
        ("hooks only", lambda: HooksOnly(work)),
        ("tcpstates", lambda: Tcpstates(work)),
        ("tcplife", lambda: Tcplife(work)),
        ("socktrace", lambda: Socktrace(work)),
        ("socktrace --port %d" % IDLE_PORT, lambda: Socktrace(work, ["--port", str(IDLE_PORT)])),
        ("socktrace --records closed", lambda: Socktrace(
            work, ["--records", "closed,lost,summary"], name="socktrace --records closed")),
    ]
    if args.baseline:
        base_dir = os.path.abspath(args.baseline)
        makers += [
            ("baseline", lambda: Socktrace(work, name="baseline", root=base_dir)),
            ("baseline --records closed", lambda: Socktrace(
                work, ["--records", "closed,lost,summary"], name="baseline --records closed",
                root=base_dir)),
        ]
    load0 = os.getloadavg()
    rows = []
    for rnd in range(args.rounds):
        order = makers[rnd % len(makers):] + makers[:rnd % len(makers)]
        for name, make in order:
            tracer = make()
            r = measure(tracer, args)
            r["round"] = rnd
            if r.get("accounting_exact") is False:
                # kept for a look: the next round would write over it
                kept = "%s.round%d" % (tracer.out, rnd)
                os.rename(tracer.out, kept)
                r["kept"] = kept
            rows.append(r)
            log("round %d %-22s %7.0f conn/s%s" % (
                rnd, name, r["rate"], "" if name == "none" else
                "  storm events %s/%d, lost reported %d, cpu %.2fs" % (
                    r["storm_events"], r["expected"], r["reported_lost"], r["cpu_s"])))
    lossless = {}
    if args.bisect:
        base = med([r for r in rows if r["tracer"] == "none"], "rate")
        for name, make in [m for m in makers if m[0] in ("tcpstates", "socktrace")]:
            log("bisecting %s up to %.0f conn/s" % (name, base))
            lossless[name] = bisect(make, args, base)
    load1 = os.getloadavg()
    kept = [r["kept"] for r in rows if "kept" in r]
    if kept:
        log("kept the output of the rounds whose accounting check failed: %s" % ", ".join(kept))
    else:
        shutil.rmtree(work)

    print("max-rate storm: %d connections, close=%s, IPv%d, %d round(s), medians"
          % (args.count, args.close, args.family, args.rounds))
    print("%-22s %10s %8s %10s %10s %8s %9s %9s" % (
        "tracer", "conn/s", "vs none", "shortfall", "lost", "exact", "cpu s/M", "RSS MB"))
    base = med([r for r in rows if r["tracer"] == "none"], "rate")
    summary = {}
    for name, _ in makers:
        rs = [r for r in rows if r["tracer"] == name]
        rate = med(rs, "rate")
        s = {"rate": rate, "ratio_to_none": rate / base}
        if name != "none":
            s.update(shortfall=med(rs, "shortfall") if rs[0]["shortfall"] is not None else None, lost=med(rs, "reported_lost"),
                     cpu_s_per_M=med(rs, "cpu_s_per_M"), peak_rss_mb=max(r["peak_rss_mb"] for r in rs),
                     exact=all(r.get("accounting_exact", True) for r in rs))
        summary[name] = s
        print("%-22s %10.0f %7.0f%% %10s %10s %8s %9s %9s" % (
            name, rate, 100 * rate / base,
            "" if name == "none" or s["shortfall"] is None else "%d" % s["shortfall"],
            "" if name == "none" else "%d" % s["lost"],
            "" if "accounting_exact" not in rs[0] else ("yes" if s["exact"] else "NO"),
            "" if name == "none" or s["cpu_s_per_M"] is None else "%.2f" % s["cpu_s_per_M"],
            "" if name == "none" else "%.0f" % s["peak_rss_mb"]))
    if lossless:
        print("\nhighest storm rate traced without loss (every transition in the output, none "
              "reported lost; bisection, %.0f s steps):" % args.step_seconds)
        for name, r in lossless.items():
            if r is None:
                print("  %-12s none found" % name)
            else:
                print("  %-12s %7.0f conn/s = %8.0f transitions/s (%d transitions)" % (
                    name, r["rate"], r["rate"] * r["expected"] / max(r["connections"], 1),
                    r["expected"]))
    st, ts = summary["socktrace"], summary["tcpstates"]
    nm = summary["socktrace --port %d" % IDLE_PORT]
    pc = summary["socktrace --records closed"]
    tl, ho = summary["tcplife"], summary["hooks only"]
    spread = lambda name: "%.0f%%-%.0f%%" % tuple(  # noqa: E731
        100 * f([r["rate"] for r in rows if r["tracer"] == name]) / base for f in (min, max))
    print("\ntargets (storm rate kept while traced = traced / untraced median; per-round range):")
    print("  every transition traced          %.1f%%  (%s)  target >= 75%%" % (
        100 * st["ratio_to_none"], spread("socktrace")))
    print("  --records closed                 %.1f%%  (%s)  target >= 90%%" % (
        100 * pc["ratio_to_none"], spread("socktrace --records closed")))
    print("  --port matching nothing          %.1f%%  (%s)  target >= 97%%" % (
        100 * nm["ratio_to_none"], spread("socktrace --port %d" % IDLE_PORT)))
    print("  hooks only (the floor)           %.1f%%  (%s)" % (
        100 * ho["ratio_to_none"], spread("hooks only")))
    print("  tcplife (for --records closed)   %.1f%%  (%s)" % (
        100 * tl["ratio_to_none"], spread("tcplife")))
    for name, what in (("tcplife", "lines short of 2 a connection (client, server)"),
                       ("socktrace --records closed", "server closed records short of 1 a connection")):
        shorts = [r["lines_short"] for r in rows if r["tracer"] == name]
        print("  %-26s %s, per round: %s" % (name, what, ", ".join(str(n) for n in shorts)))
    for r in rows:
        if r["tracer"] == "socktrace" and r.get("accounting_exact") is False:
            print("  socktrace round %d: accounting check failed: %d transitions short in the "
                  "output, %d arrived by the summary's counts, lost records %s" % (
                      r["round"], r["shortfall"], r["kernel_arrived"], r["lost"]))
    if any("stale" in r.get("lost", {}) for r in rows if isinstance(r.get("lost"), dict)):
        print("  (lost: stale: a story whose last transitions no program ran for; the kernel "
              "counts no miss for those, so how many transitions it stands for is not known)")
    print("  consumer CPU per million records %.2f s  target <= 0.6 (tcpstates %.2f s)" % (
        st["cpu_s_per_M"], ts["cpu_s_per_M"]))
    print("  storm conn/s vs tcpstates        %.2fx" % (st["rate"] / ts["rate"]))
    if lossless.get("socktrace") and lossless.get("tcpstates"):
        print("  lossless rate vs tcpstates       %.2fx" % (
            lossless["socktrace"]["rate"] / lossless["tcpstates"]["rate"]))
    print("  socktrace lost records == shortfall, every run: %s" % ("yes" if st["exact"] else "NO"))
    if args.baseline:
        for name, mine in (("baseline", st), ("baseline --records closed", pc)):
            b = summary[name]
            print("  %-32s %.1f%% (%s); this checkout %.1f%%: %+.1f points" % (
                name, 100 * b["ratio_to_none"], spread(name), 100 * mine["ratio_to_none"],
                100 * (mine["ratio_to_none"] - b["ratio_to_none"])))
    print("load average before %s, after %s" % (load0, load1))
    others = sum(r.get("other_events", 0) for r in rows)
    if others:
        print("note: %d events of other programs' sockets were seen during the run" % others)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "summary": summary, "lossless": lossless,
                       "load": [load0, load1]}, f, indent=1)


T0 = time.monotonic()
if __name__ == "__main__":
    main()
