"""``socktrace leaks``: which processes keep piling up sockets or fds.

Watches for ``--duration`` seconds, a sample every ``--interval``; each
sample is one sock_diag dump of the ESTABLISHED and CLOSE_WAIT sockets
(what ``ss`` reads) and one walk of /proc/*/fd, which gives both every
socket's owners and every process's number of open fds.  Per process it
keeps three series, CLOSE_WAIT sockets, ESTABLISHED connections and open
fds, and names the processes where one of them keeps growing (see
:func:`judge`), with the evidence: the counts over time, the oldest such
socket with its remote end, where the sockets come from and, for fds, what
they point to now.  A CLOSE_WAIT that lasts the whole watch without the
count growing is reported apart: a leak that is not growing right now.

Filters select sockets as the trace's do; with one of -4/-6, the port
flags, --addr or --state, only processes that held a selected socket in
some sample are watched (their fds counted too); --pid and --comm narrow
the processes.  Without root, processes of other users cannot be watched
(their fd tables are unreadable) and the answer says so once.
"""

import os
import sys
import time

from .. import states
from ..owners import read_comm
from ..text import safe
from . import common

EPILOG = """\
examples:
  socktrace leaks                       watch 10 s, name what keeps growing
  socktrace leaks --duration 60 --port 8080
  socktrace leaks --state close-wait --all
  socktrace leaks --json | jq '.leaking[] | {pid, comm, growing}'
  socktrace leaks --duration 30 --fail-on-leak || page-someone

Growing: over the watch the count rose by at least --min-growth (3), its
least-squares slope is positive, it rose in at least 3 steps (every step
of a 3-sample watch), fell in at most a quarter of them and by at most
half its rise in all, and the later half of the watch went at least a
quarter of the rise above the earlier half's high.  A steady or
fluctuating pool, or one that filled early and stayed (a start-up), is
not named.  A process must be there at the end and in half the samples.
CLOSE_WAIT age ~ is the time since the socket last received data (an
estimate); "seen" is how long this watch saw it (a lower bound; >= when
it was there from the first sample).  A sample that comes late (a busy
host) is taken at once, and the times are the real ones; the watch stops
5 s after --duration whatever is left.
--state picks the sockets watched: close-wait or established.
Exit status: 0 after the watch (leak or not), 3 with --fail-on-leak when a
process is named, 2 usage, 1 run-time failure.  Ctrl-C ends the watch early
and answers for the samples taken.
"""

CLOSE_WAIT = states.CLOSE_WAIT
ESTABLISHED = states.ESTABLISHED
SOCKET_KINDS = ("CLOSE_WAIT", "ESTABLISHED")
KINDS = SOCKET_KINDS + ("fds",)
_KIND_STATE = {"CLOSE_WAIT": CLOSE_WAIT, "ESTABLISHED": ESTABLISHED}
MAX_DURATION = 3600.0
MIN_INTERVAL = 0.1
MAX_SAMPLES = 1000
EXIT_LEAK = 3


def _seconds(lo, hi):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise common.argparse.ArgumentTypeError("not a number of seconds: %r" % text)
        if not lo <= v <= hi:   # NaN fails too
            raise common.argparse.ArgumentTypeError("seconds out of range %g-%g: %r"
                                                    % (lo, hi, text))
        return v
    return parse


def build_parser():
    p = common.parser("leaks", "Watch for a while and name the processes whose CLOSE_WAIT "
                      "sockets,\nESTABLISHED connections or open fds keep growing, "
                      "with the evidence.", EPILOG)
    p.add_argument("--duration", type=_seconds(1.0, MAX_DURATION), default=10.0, metavar="S",
                   help="watch this long, in seconds (default 10, at most 3600)")
    p.add_argument("--interval", type=_seconds(MIN_INTERVAL, MAX_DURATION), default=None,
                   metavar="S", help="seconds between samples (default 1, or a quarter of a "
                   "--duration under 4; at least 0.1)")
    p.add_argument("--min-growth", type=common._positive_int, default=3, metavar="N",
                   help="smallest rise over the watch that counts (default 3)")
    p.add_argument("--all", action="store_true",
                   help="also list every watched process that did not grow")
    p.add_argument("--fail-on-leak", action="store_true",
                   help="exit 3 when a process is named")
    return p


def main(argv):
    return common.run("leaks", build_parser(), view, argv)


def _usage(message):
    sys.stderr.write("socktrace leaks: %s (try socktrace leaks -h)\n" % message)
    return 2


# --- the judgement ----------------------------------------------------------------


def judge(times, values, min_growth=3):
    """The trend of one series: a dict, ``growing`` True when it keeps
    growing.  *values* may hold None where the process was not there;
    only its own samples count, and it must be there at the end and in
    at least half of the samples (and 3).

    >>> t = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    >>> judge(t, [2, 3, 4, 5, 6, 7, 8, 9, 10])["growing"]             # a leak
    True
    >>> judge(t, [10, 10, 10, 10, 10, 10, 10, 10, 10])["growing"]     # steady
    False
    >>> judge(t, [10, 14, 9, 15, 8, 16, 9, 15, 16])["growing"]        # fluctuating
    False
    >>> judge(t, [2, 4, 6, 8, 2, 4, 6, 8, 8])["growing"]              # recycled pool
    False
    >>> judge(t, [0, 6, 10, 10, 10, 10, 10, 10, 10])["growing"]       # filled early
    False
    >>> judge(t, [5, 5, 6, 5, 6, 6, 7, 6, 7])["growing"]              # +2: too little
    False
    >>> judge(t, [None, None, None, None, None, None, 1, 5, 9])["growing"]   # too new
    False
    >>> judge(t, [30, 31, 30, 34, 34, 34, 34, 34, 34])["growing"]     # one burst
    False
    >>> judge(t, [13, 17, 32, 29, 34, 34, 34, 34, 34])["growing"]     # a start-up
    False
    >>> judge(t, [0, 1, 3, 4, 6, 8, 9, 9, 9])["growing"]              # grew, then quiet
    True
    >>> judge(t, [2, 3, 4, 5, 6, 7, 8, 9, None])["growing"]           # gone at the end
    False
    >>> judge([0, 1, 2], [0, 2, 4])["growing"], judge([0, 1, 2], [0, 4, 4])["growing"]
    (True, False)
    """
    pts = [(t, v) for t, v in zip(times, values) if v is not None]
    n = len(pts)
    out = {"first": pts[0][1] if pts else None, "last": pts[-1][1] if pts else None,
           "rise": None, "slope_per_s": None, "steps_up": 0, "steps_down": 0,
           "growing": False}
    if not pts:
        return out
    vs = [v for _, v in pts]
    rise = vs[-1] - vs[0]
    out["rise"] = rise
    ups = sum(1 for a, b in zip(vs, vs[1:]) if b > a)
    downs = [a - b for a, b in zip(vs, vs[1:]) if b < a]
    out["steps_up"], out["steps_down"] = ups, len(downs)
    if n >= 2:
        mt = sum(t for t, _ in pts) / n
        mv = sum(vs) / n
        var = sum((t - mt) ** 2 for t, _ in pts)
        if var > 0:
            out["slope_per_s"] = round(sum((t - mt) * (v - mv) for t, v in pts) / var, 3)
    if (n < 3 or n * 2 < len(values) or values[-1] is None or rise < min_growth
            or not out["slope_per_s"] or out["slope_per_s"] <= 0):
        return out
    steps = n - 1
    if ups < min(3, steps) or len(downs) * 4 > steps or sum(downs) * 2 > rise:
        return out    # one burst, or as many falls as rises
    half = n // 2
    late = max(vs[half:]) - max(vs[:half])
    if late < 1 or late * 4 < rise:
        return out    # filled in the first half, (almost) no new high since
    out["growing"] = True
    return out


# --- sampling -----------------------------------------------------------------------


class Watch:
    """The samples: times, per-process counts, and the sockets of the last one."""

    def __init__(self, args, m, kinds):
        self.args = args
        self.m = m
        mask = 0
        for k in kinds:
            if k != "fds":
                mask |= 1 << _KIND_STATE[k]
        self.mask = mask
        self.sports = m.ports | m.lports
        self.dports = m.ports | m.rports
        self.times = []       # seconds since the first sample
        self.fds = []         # per sample: pid -> open fds
        self.counts = []      # per sample: pid -> [CLOSE_WAIT, ESTABLISHED]
        self.comms = {}       # pid -> comm, the latest seen
        self.seen = {}        # (cookie, state) -> time first seen, sockets of the last sample
        self.last = None      # (snapshot, [(socket, holders)])
        self.denied = 0
        self.me = os.getpid()

    def sample(self, t):
        args, m = self.args, self.m
        if self.sports or self.dports:
            snap = common.Snapshot(args.family, self.mask, sports=self.sports, dports=self.dports)
        else:
            snap = common.Snapshot(args.family, self.mask)
        socks = [s for s in snap.sockets if m.sock(s)] if m.narrows else snap.sockets
        owners = snap.owners
        nfds = dict(owners.fd_counts())
        nfds.pop(self.me, None)
        owners.finish({s.inode for s in socks if s.inode})
        self.denied = max(self.denied, owners.denied)
        counts = {}
        held = []
        seen = {}
        old = self.seen
        for s in socks:
            key = (s.cookie, s.state)
            seen[key] = old.get(key, t)
            holders = owners.get(s.inode)
            if not holders:
                continue
            held.append((s, holders))
            col = 0 if s.state == CLOSE_WAIT else 1
            done = set()
            for pid, comm, _fd in holders:
                if pid in done or pid == self.me:
                    continue     # one process, the socket at two fds
                done.add(pid)
                self.comms[pid] = comm
                c = counts.get(pid)
                if c is None:
                    c = counts[pid] = [0, 0]
                c[col] += 1
        self.seen = seen
        self.times.append(t)
        self.fds.append(nfds)
        self.counts.append(counts)
        self.last = (snap, held)

    def series(self, pid):
        """{kind: [count or None per sample]}: None where the process was
        not there (or its fd table could not be read)."""
        out = {k: [] for k in KINDS}
        for nfds, counts in zip(self.fds, self.counts):
            n = nfds.get(pid)
            if n is None:
                for k in KINDS:
                    out[k].append(None)
                continue
            c = counts.get(pid, (0, 0))
            out["CLOSE_WAIT"].append(c[0])
            out["ESTABLISHED"].append(c[1])
            out["fds"].append(n)
        return out


def run_watch(w, n_samples, interval, progress):
    """Take the samples on schedule (a late one is taken at once, the times
    recorded are the real ones).  Returns True if Ctrl-C cut it short."""
    t0 = time.monotonic()
    hard_stop = t0 + interval * (n_samples - 1) + max(5.0, interval)
    try:
        for k in range(n_samples):
            target = t0 + k * interval
            now = time.monotonic()
            if now < target:
                time.sleep(target - now)
            elif k and now > hard_stop:
                break
            w.sample(round(time.monotonic() - t0, 3))
            if progress:
                left = max(0.0, t0 + interval * (n_samples - 1) - time.monotonic())
                progress = _say("\rsocktrace leaks: sample %d/%d, %.0f s left " % (
                    k + 1, n_samples, left))
    except KeyboardInterrupt:
        return True
    finally:
        if progress:
            _say("\r" + " " * 50 + "\r")
    return False


def _say(text):
    """Progress on the terminal; False (no more of it) if it went away."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
        return True
    except (OSError, ValueError):
        return False


# --- evidence ------------------------------------------------------------------------


def fd_kinds(pid, top=3):
    """What the open fds of *pid* point to now: the *top* most common
    targets, sockets, pipes and anonymous inodes counted by kind."""
    d = "/proc/%d/fd" % pid
    found = {}
    try:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            names = os.listdir(dfd)
        except OSError:
            return None
        for name in names:
            try:
                raw = os.readlink(name.encode(), dir_fd=dfd)
            except OSError:
                continue
            if raw.startswith(b"socket:["):
                t = "socket"
            elif raw.startswith(b"pipe:["):
                t = "pipe"
            else:   # a path is bytes: what is not UTF-8 becomes \xNN
                t = raw.decode("utf-8", "backslashreplace")
            found[t] = found.get(t, 0) + 1
    finally:
        os.close(dfd)
    ranked = sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"target": t, "count": n} for t, n in ranked[:top]]


def _top(counter, n=3):
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def evidence(w, pid, now_t, cw_idle, fin):
    """The oldest socket of each kind *pid* holds at the last sample, and
    where that kind's sockets are: local ports, remote addresses, remote
    ends (address and port: a client's service)."""
    _snap, held = w.last
    mine = {k: [] for k in SOCKET_KINDS}
    for s, holders in held:
        for hp, _comm, fd in holders:
            if hp == pid:
                mine["CLOSE_WAIT" if s.state == CLOSE_WAIT else "ESTABLISHED"].append((s, fd))
                break
    oldest, ports, remotes, ends = {}, {}, {}, {}
    for kind, lst in mine.items():
        if not lst:
            oldest[kind] = None
            ports[kind] = []
            remotes[kind] = []
            ends[kind] = []
            continue
        rows = []
        for s, fd in lst:
            a, est = common.age(s, cw_idle, fin)
            first = w.seen.get((s.cookie, s.state), now_t)
            rows.append((a if a is not None else now_t - first, now_t - first, s, fd, a, est,
                         first == w.times[0]))
        rows.sort(key=lambda r: (-r[0], -r[1], r[2].lport, r[2].raddr, r[2].rport))
        _k, seen, s, fd, a, est, from_start = rows[0]
        oldest[kind] = {
            "family": s.family, "laddr": s.laddr, "lport": s.lport, "raddr": s.raddr,
            "rport": s.rport, "fd": fd, "recv_q": s.rqueue, "send_q": s.wqueue,
            "age_s": None if a is None else round(a, 3), "age_estimate": bool(est),
            "seen_s": round(seen, 3), "seen_from_start": from_start,
            "cookie": "%x" % s.cookie, "inode": s.inode,
        }
        pc, rc, ec = {}, {}, {}
        for s, _fd in lst:
            pc[s.lport] = pc.get(s.lport, 0) + 1
            rc[(s.family, s.raddr)] = rc.get((s.family, s.raddr), 0) + 1
            ec[(s.family, s.raddr, s.rport)] = ec.get((s.family, s.raddr, s.rport), 0) + 1
        ports[kind] = [{"port": p, "sockets": n} for p, n in _top(pc)]
        remotes[kind] = [{"family": f, "addr": a, "sockets": n} for (f, a), n in _top(rc)]
        ends[kind] = [{"family": f, "addr": a, "port": p, "sockets": n}
                      for (f, a, p), n in _top(ec)]
    return oldest, ports, remotes, ends


# --- the view -------------------------------------------------------------------------


def view(args):
    bad = [s for s in args.state if s not in SOCKET_KINDS]
    if bad:
        return _usage("leaks watches ESTABLISHED and CLOSE_WAIT sockets, not %s"
                      % ", ".join(bad))
    if args.interval is None:
        args.interval = min(1.0, args.duration / 4.0)
    if args.interval > args.duration / 2.0 + 1e-9:
        return _usage("--interval %g leaves fewer than 3 samples in --duration %g"
                      % (args.interval, args.duration))
    n_samples = int(args.duration / args.interval + 1e-9) + 1
    if n_samples > MAX_SAMPLES:
        return _usage("%d samples: at most %d (a longer --interval)"
                      % (n_samples, MAX_SAMPLES))
    kinds = [k for k in SOCKET_KINDS if not args.state or k in args.state] + ["fds"]
    m = common.Match(args)
    w = Watch(args, m, kinds)
    start = time.time()
    progress = _isatty(sys.stderr)
    interrupted = run_watch(w, n_samples, args.interval, progress)
    if len(w.times) < 3:
        if interrupted:
            return 130
        raise common.Failure("fewer than 3 samples were taken")
    doc = analyse(args, m, w, kinds, start, interrupted)
    if args.json:
        rows = len(doc["times_s"]) * (len(doc["leaking"]) + len(doc["steady"] or ()))
        common.emit(doc=doc, rows=rows)
    else:
        common.emit(text_lines=render(doc, kinds))
    if args.fail_on_leak and doc["leaking"]:
        return EXIT_LEAK
    return 0


def _isatty(f):
    try:
        return f.isatty()
    except (AttributeError, ValueError):
        return False


def analyse(args, m, w, kinds, start, interrupted):
    socket_filter = bool(m.family or m.ports or m.lports or m.rports or m.nets or m.states)
    if socket_filter:
        pids = set()
        for c in w.counts:
            pids.update(c)
    else:
        pids = set()
        for f in w.fds:
            pids.update(f)
    pids.discard(w.me)
    if m.pids:
        pids &= m.pids
    comms = {}
    for pid in pids:
        comms[pid] = read_comm("/proc", pid) or w.comms.get(pid) or "?"
    if m.comms:
        pids = {p for p in pids if comms[p] in m.comms}
    times = w.times
    now_t = times[-1]
    snap, held = w.last
    fin = common.fin_timeout()
    cw_idle = snap.close_wait_info() if any(s.state == CLOSE_WAIT for s, _ in held) else {}

    leaking, stuck, steady = [], [], []
    for pid in sorted(pids):
        ser = w.series(pid)
        if all(not v for v in ser["fds"]):
            continue     # a kernel thread, or gone before the first sample
        trends = {k: judge(times, ser[k], args.min_growth) for k in kinds}
        growing = [k for k in kinds if trends[k]["growing"]]
        entry = {"pid": pid, "comm": comms[pid], "growing": growing,
                 "now": {k: ser[k][-1] for k in kinds},
                 "series": {k: ser[k] for k in kinds}, "trend": trends}
        if growing:
            oldest, ports, remotes, ends = evidence(w, pid, now_t, cw_idle, fin)
            entry["oldest"] = {k: oldest[k] for k in kinds if k != "fds"}
            entry["local_ports"] = {k: ports[k] for k in kinds if k != "fds"}
            entry["remote_addrs"] = {k: remotes[k] for k in kinds if k != "fds"}
            entry["remote_ends"] = {k: ends[k] for k in kinds if k != "fds"}
            entry["fd_targets"] = fd_kinds(pid) if "fds" in growing else None
            leaking.append(entry)
            continue
        # CLOSE_WAIT sockets there in every sample: never closed during
        # the watch, though the count did not grow
        if "CLOSE_WAIT" in kinds and ser["CLOSE_WAIT"][-1]:
            held_all = 0
            for s, holders in held:
                if s.state == CLOSE_WAIT and w.seen.get((s.cookie, s.state)) == times[0] \
                        and any(h[0] == pid for h in holders):
                    held_all += 1
            if held_all:
                oldest, ports, remotes, ends = evidence(w, pid, now_t, cw_idle, fin)
                entry["held_whole_watch"] = held_all
                entry["oldest"] = {"CLOSE_WAIT": oldest["CLOSE_WAIT"]}
                entry["local_ports"] = {"CLOSE_WAIT": ports["CLOSE_WAIT"]}
                entry["remote_addrs"] = {"CLOSE_WAIT": remotes["CLOSE_WAIT"]}
                entry["remote_ends"] = {"CLOSE_WAIT": ends["CLOSE_WAIT"]}
                stuck.append(entry)
                continue
        steady.append(entry)

    def rank(e):
        return (-max((e["trend"][k]["rise"] or 0) for k in e["growing"]), e["pid"])
    leaking.sort(key=rank)
    stuck.sort(key=lambda e: (-e["held_whole_watch"], e["pid"]))
    notes = []
    if w.denied:
        notes.append("%d processes not watched: this user may not read their /proc/PID/fd "
                     "(run as root to watch them)" % w.denied)
    if interrupted:
        notes.append("interrupted: %d samples of %d" % (
            len(times), int(args.duration / args.interval + 1e-9) + 1))
    return {
        "command": "leaks", "ts": common.iso(start), "duration_s": round(now_t, 3),
        "interval_s": args.interval, "samples": len(times), "times_s": times,
        "watching": kinds, "min_growth": args.min_growth,
        "processes_watched": len(leaking) + len(stuck) + len(steady),
        "leaking": leaking, "close_wait_held": stuck,
        "steady": steady if args.all else None,
        "owners_complete": not w.denied, "notes": notes,
    }


# --- text ------------------------------------------------------------------------------


def fmt_series(values, room):
    """Plain numbers, as many as fit in *room* characters: evenly spaced
    samples, the first and last always; '-' where the process was not there.

    >>> fmt_series([1, 2, None, 4], 40)
    '1 2 - 4'
    >>> fmt_series(list(range(100)), 20)
    '0 16 33 50 66 82 99'
    """
    cells = ["-" if v is None else str(v) for v in values]
    n = len(cells)
    text = " ".join(cells)
    k = n
    while len(text) > room and k > 2:
        k -= 1
        idx = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
        text = " ".join(cells[i] for i in idx)
    return text


def _secs(x):
    return "%.1f s" % x if x < 100 else "%d s" % x


def _ep(family, addr, port):
    return safe(common.fmt_ep(family, addr, port))


def _oldest_lines(kind, o, w, indent):
    """Two lines: what it is and how old, then its two ends."""
    age = []
    if o["age_s"] is not None:
        age.append("age " + common.fmt_age(o["age_s"], o["age_estimate"]))
    seen = common.fmt_age(o["seen_s"])
    age.append("seen " + (">=" + seen if o["seen_from_start"] else seen))
    out = common.wrap("oldest %s: fd %d, %s" % (kind, o["fd"], ", ".join(age)), w, indent)
    out.extend(common.wrap("local %s  remote %s" % (
        _ep(o["family"], o["laddr"], o["lport"]), _ep(o["family"], o["raddr"], o["rport"])),
        w, indent + "  "))
    return out


def _pack(head, items, w, indent, more_indent="    "):
    """*head* and then *items* separated by ", ", on lines of at most *w*,
    broken between items (an item longer than a line is broken itself).

    >>> _pack("open fds now:", ["socket x28", "/tmp/a/leaky.out x2", "/dev/null x1"], 50, "  ")
    ['  open fds now: socket x28, /tmp/a/leaky.out x2,', '    /dev/null x1']
    """
    out = []
    line = indent + head
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if len(line) + 1 + len(piece) <= w:
            line += " " + piece
            continue
        out.append(line)
        if len(more_indent) + len(piece) > w:
            wrapped = common.wrap(piece, w, more_indent)
            out.extend(wrapped[:-1])
            line = wrapped[-1]
        else:
            line = more_indent + piece
    out.append(line)
    return out


def _where_line(kind, n, ports, remotes, ends):
    """Where *n* sockets of *kind* are: a server's local port and who
    connects to it, or (local ports all different) a client's services."""
    if not ports:
        return None
    if ports[0]["sockets"] * 2 >= n:
        p = ", ".join("%d (%d)" % (x["port"], x["sockets"]) for x in ports)
        r = ", ".join("%s (%d)" % (safe(x["addr"]), x["sockets"]) for x in remotes)
        return "%s on local port %s; from %s" % (kind, p, r)
    e = ", ".join("%s (%d)" % (_ep(x["family"], x["addr"], x["port"]), x["sockets"])
                  for x in ends)
    return "%s to %s" % (kind, e)


def _series_lines(e, kinds, dur, width, indent="  "):
    out = []
    for k in kinds:
        t = e["trend"][k]
        label = "%s%-11s " % (indent, k)
        tail = ""
        if k in e["growing"]:
            tail = "  (%+d in %s)" % (t["rise"], _secs(dur))
        out.append(label + fmt_series(e["series"][k], width - len(label) - len(tail)) + tail)
    return out


def render(doc, kinds):
    w = common.width()
    out = []
    dur = doc["duration_s"]
    out.append("socktrace leaks: %d samples in %s (every %g s) from %s" % (
        doc["samples"], _secs(dur), doc["interval_s"], doc["ts"][:19] + "Z"))
    n = doc["processes_watched"]
    out.append("%d process%s watched; growing = by >= %d and still rising (see -h)" % (
        n, "" if n == 1 else "es", doc["min_growth"]))
    if not doc["leaking"]:
        out.append("")
        names = ["open fds" if k == "fds" else k for k in doc["watching"]]
        out.append("no process's %s kept growing" % (
            names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]))
    for e in doc["leaking"]:
        out.append("")
        what = ", ".join("open fds" if k == "fds" else k for k in e["growing"])
        out.extend(common.wrap("%s/%d: %s growing" % (safe(e["comm"]), e["pid"], what), w, ""))
        out.extend(_series_lines(e, kinds, dur, w))
        for k in SOCKET_KINDS:
            o = e["oldest"].get(k)
            if o is None or (k not in e["growing"] and k != "CLOSE_WAIT"):
                continue
            out.extend(_oldest_lines(k, o, w, "  "))
            where = _where_line(k, e["now"][k], e["local_ports"][k], e["remote_addrs"][k],
                                e["remote_ends"][k])
            if where and k in e["growing"]:
                out.extend(common.wrap(where, w, "  "))
        if e.get("fd_targets"):
            out.extend(_pack("open fds now:", ["%s x%d" % (safe(x["target"]), x["count"])
                                               for x in e["fd_targets"]], w, "  "))
    if doc["close_wait_held"]:
        out.append("")
        out.append("CLOSE_WAIT held the whole watch (not growing, never closed):")
        for e in doc["close_wait_held"]:
            out.extend(common.wrap("%s/%d: %d CLOSE_WAIT, %d of them through every sample" % (
                safe(e["comm"]), e["pid"], e["now"]["CLOSE_WAIT"], e["held_whole_watch"]),
                w, "  "))
            o = e["oldest"]["CLOSE_WAIT"]
            if o is not None:
                out.extend(_oldest_lines("CLOSE_WAIT", o, w, "    "))
    if doc["steady"] is not None:
        out.append("")
        if doc["steady"]:
            heads = {"CLOSE_WAIT": "CLOSE_WAIT", "ESTABLISHED": "ESTAB", "fds": "FDS"}
            rows = [["PROCESS"] + [heads[k] for k in kinds]]
            for e in doc["steady"]:
                row = ["%s/%d" % (safe(e["comm"]), e["pid"])]
                for k in kinds:
                    t = e["trend"][k]
                    row.append("-" if t["last"] is None else
                               "%d (%+d)" % (t["last"], t["rise"]))
                rows.append(row)
            out.append("not growing (now, change over the watch):")
            out.extend(common.table(rows, "<" + ">" * len(kinds), maxw=w))
        else:
            out.append("no other process watched")
    for n in doc["notes"]:
        out.append("note: " + safe(n))
    return out
