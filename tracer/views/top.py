"""``socktrace top``: the host's TCP activity, live, on one screen.

Refreshed every second (``-d``): connections opened and closed per second,
sockets per state now and their change since the last refresh, connect
latency p50/p99 (SYN_SENT -> ESTABLISHED over the last minute), failed
connections by how they ended (refused, timeout, reset, ...), the
processes, remote addresses and service ports with the most transitions,
and the processes whose CLOSE_WAIT count grows (a leak: the application
never closes connections its peers ended).

Where the figures come from:

* the trace's own backend (tracer/backend.py, the same filters): eBPF as
  root, else the /proc poller, whose records miss what lives and dies
  between two polls (refused connects, most latencies);
* a sock_diag dump once a refresh (what ``ss`` reads; any user may) for the
  states, and a walk of /proc/*/fd for the owners of the CLOSE_WAIT sockets
  (without root, other users' processes stay unknown), each in a thread of
  its own (tracer/run.py's Background: a slow walk runs less often, never
  delays the screen); the backend is read in the loop that reads the keys.  Keys: ``q`` quit, ``s`` next
sort column, ``f`` filter the lists by text, ``c`` clear the filter, ``p``
pause the screen (counting goes on).  Rendered with rich (full screen);
without a terminal, ``--once`` prints one frame as text or ``--json``.

>>> st = Stats()
>>> st.add([{"type": "state", "old": "CLOSE", "new": "SYN_SENT", "pid": 7, "comm": "curl",
...          "family": 4, "raddr": "10.0.0.1", "lport": 0, "rport": 443, "role": "client",
...          "in_old_ns": None, "lower_bound": False},
...         {"type": "closed", "end": "refused", "pid": 7, "comm": "curl", "family": 4,
...          "raddr": "10.0.0.1", "lport": 5000, "rport": 443, "role": "client"}])
>>> st.tick(1.0)
>>> w = st.window()
>>> w["opened"], w["closed"], dict(w["fails"]), w["procs"][(7, "curl")], w["ports"][443]
(1, 1, {'refused': 1}, [1, 1, 1, 1], [1, 1, 1, 1])
>>> fmt_ns(53852), fmt_ns(1_250_000), fmt_ns(None)
('54us', '1.2ms', '-')
"""

import os
import select
import signal
import sys
import time
from collections import Counter, deque

from .. import sockdiag, states
from ..text import one_line, safe
from . import common

EPILOG = """\
examples:
  socktrace top                     everything, eBPF as root, else /proc
  socktrace top --port 5432         one service
  socktrace top -d 2 --backend proc
  socktrace top --once -d 5         one frame after 5 s, as text (scripts, no terminal)
  socktrace top --once --json | jq .failures

keys: q quit, s sort by the next column (transitions/s, opened, failed,
name), f filter the lists by text (comm, pid, address or port; Enter
applies, Esc cancels), c clear the filter, p pause the screen (counting
goes on).  Ctrl-C and SIGTERM end it too.

TR/s: transitions per second over the last 10 s; OPEN, CLOSE, FAIL:
connections opened, closed and failed (refused, timeout, reset, cancelled,
error, aborted) in the last 10 s, each end counted (a connection between
two local sockets opens twice); CW: CLOSE_WAIT sockets held now.  PORT:
the service's port (the local one of a server, the remote one of a client).  A
process's CLOSE_WAIT change is against the oldest sample of the last 30 s.
Connect latency: SYN_SENT -> ESTABLISHED, the last 60 s.  The /proc backend
(not root) sees no transition that begins and ends between two polls.
"""

WINDOW_S = 10.0          # rates and tops: over the last this many seconds
LATENCY_WINDOW_S = 60.0
LATENCY_MAX = 20000      # samples kept (the most recent)
CW_EVERY_S = 1.0         # owners of CLOSE_WAIT sockets: a /proc walk at most this often
                         # (and twenty times as long as the last one took)
CW_HISTORY_S = 30.0      # a process's CLOSE_WAIT change: against this long ago
RECONCILE_S = 5.0
KEY_POLL_S = 0.05        # the loop's step: keys and records within this
FAILS = ("refused", "timeout", "reset", "cancelled", "error", "aborted")
OTHER_FAILS = ("cancelled", "error", "aborted")
STATE_ORDER = ("ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
               "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING")
SORTS = ("act", "open", "fail", "name")
WILDCARDS = ("0.0.0.0", "::")
_BEGIN = ("CLOSE", "LISTEN")


def build_parser():
    p = common.parser("top", "Live: connections opened and closed per second, states and "
                      "their change,\ntop processes, remote addresses and ports, connect "
                      "latency, failures,\nCLOSE_WAIT growers.", EPILOG)
    p.add_argument("-d", "--delay", type=_delay, default=1.0, metavar="SECONDS",
                   help="refresh every this many seconds (default 1)")
    p.add_argument("--once", action="store_true",
                   help="gather for one refresh (-d), print one frame as text (or --json), "
                        "exit; needs no terminal")
    p.add_argument("--backend", choices=("auto", "bpf", "proc"), default="auto",
                   help="auto: eBPF when possible, else /proc polling (default)")
    p.add_argument("--interval", type=_delay, default=1.0, metavar="SECONDS",
                   help="proc backend poll interval (default 1)")
    for action in p._actions:
        if action.dest == "json":
            action.help = "with --once: the frame as one JSON document"
    return p


def _delay(text):
    import math
    try:
        v = float(text)
    except ValueError:
        raise common.argparse.ArgumentTypeError("not a number: %r" % text)
    if not math.isfinite(v) or v < 0.1 or v > 3600:
        raise common.argparse.ArgumentTypeError("must be within 0.1-3600 s: %r" % text)
    return v


def main(argv):
    return common.run("top", build_parser(), view, argv)


# --- counting ----------------------------------------------------------------------


def _service_port(r):
    """The port that names the service: the local one on a server or
    listener, the remote one on a client."""
    role = r.get("role")
    if role in ("server", "listener"):
        return r.get("lport") or None
    return r.get("rport") or r.get("lport") or None


class Stats:
    """Per-refresh buckets of what the records said; the last WINDOW_S of
    them make the rates and the tops.  Each key's counts: [transitions,
    opened, closed, failed]."""

    def __init__(self, window_s=WINDOW_S):
        self.window_s = window_s
        self.buckets = deque()            # (seconds it covers, bucket)
        self.cur = self._bucket()
        self.latency = deque(maxlen=LATENCY_MAX)   # (monotonic s, ns)
        self.fail_total = Counter()
        self.opened_total = 0
        self.closed_total = 0
        self.records = 0

    @staticmethod
    def _bucket():
        return {"opened": 0, "closed": 0, "fails": Counter(), "procs": {}, "remotes": {},
                "ports": {}}

    def add(self, recs, now=None):
        b = self.cur
        procs, remotes, ports = b["procs"], b["remotes"], b["ports"]
        self.records += len(recs)
        for r in recs:
            kind = r["type"]
            if kind == "state":
                i = 0
                old, new = r["old"], r["new"]
                if old in _BEGIN and new not in _BEGIN:
                    i = 1
                    b["opened"] += 1
                    self.opened_total += 1
                elif (old == "SYN_SENT" and new == "ESTABLISHED" and r["in_old_ns"] is not None
                      and not r["lower_bound"]):
                    self.latency.append((now if now is not None else time.monotonic(),
                                         r["in_old_ns"], r["pid"], r["raddr"]))
                idx = (0, i) if i else (0,)
            elif kind == "closed":
                b["closed"] += 1
                self.closed_total += 1
                end = r["end"]
                if end in FAILS:
                    b["fails"][end] += 1
                    self.fail_total[end] += 1
                    idx = (2, 3)
                else:
                    idx = (2,)
            else:
                continue
            pid = r["pid"]
            keys = []
            if pid is not None:
                keys.append((procs, (pid, r["comm"] or "?")))
            raddr = r["raddr"]
            if raddr and raddr not in WILDCARDS:
                keys.append((remotes, (r["family"], raddr)))
            port = _service_port(r)
            if port:
                keys.append((ports, port))
            for d, k in keys:
                c = d.get(k)
                if c is None:
                    c = d[k] = [0, 0, 0, 0]
                for j in idx:
                    c[j] += 1

    def tick(self, seconds):
        """Close the current bucket (it covered *seconds*); drop what fell
        out of the window."""
        self.buckets.append((max(seconds, 1e-3), self.cur))
        self.cur = self._bucket()
        total = sum(s for s, _ in self.buckets)
        while len(self.buckets) > 1 and total - self.buckets[0][0] >= self.window_s - 1e-6:
            total -= self.buckets.popleft()[0]

    def window(self):
        """The window's sums: {"seconds", "opened", "closed", "fails", "procs",
        "remotes", "ports", "last": (seconds, bucket) of the last refresh}."""
        out = self._bucket()
        out["seconds"] = sum(s for s, _ in self.buckets) or 1.0
        for _s, b in self.buckets:
            out["opened"] += b["opened"]
            out["closed"] += b["closed"]
            out["fails"].update(b["fails"])
            for name in ("procs", "remotes", "ports"):
                acc = out[name]
                for k, c in b[name].items():
                    a = acc.get(k)
                    if a is None:
                        acc[k] = list(c)
                    else:
                        for j in range(4):
                            a[j] += c[j]
        out["last"] = self.buckets[-1] if self.buckets else (1.0, self._bucket())
        return out

    def latencies(self, now):
        """(all connect latencies of the window sorted, {pid: sorted},
        {raddr: sorted})."""
        lat = self.latency
        while lat and lat[0][0] < now - LATENCY_WINDOW_S:
            lat.popleft()
        by_pid, by_addr = {}, {}
        for _t, ns, pid, raddr in lat:
            by_pid.setdefault(pid, []).append(ns)
            by_addr.setdefault(raddr, []).append(ns)
        for d in (by_pid, by_addr):
            for v in d.values():
                v.sort()
        return sorted(x[1] for x in lat), by_pid, by_addr


def percentile(sorted_vals, q):
    """Nearest rank.

    >>> percentile([1, 2, 3, 4], 0.5), percentile([1, 2, 3, 4], 0.99), percentile([], 0.5)
    (2, 4, None)
    """
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, -(-int(q * 1000) * len(sorted_vals) // 1000) - 1))
    return sorted_vals[k]


# --- sock_diag and owners --------------------------------------------------------


class Sampler:
    """Sockets per state now: one sock_diag dump (with --pid or --comm, and
    a walk of /proc/*/fd for their owners).  ``__call__`` returns [sample]:
    it runs as a run.Background job, once a refresh."""

    def __init__(self, match, family):
        self.match = match
        self.families = (family,) if family else (4, 6)

    def __call__(self):
        t = time.monotonic()
        m = self.match
        socks = sockdiag.dump(self.families, sockdiag.ALL)
        if m.narrows:
            socks = [s for s in socks if m.sock(s)]
        denied = None
        if m.by_owner:
            owners = common.Owners().finish({s.inode for s in socks if s.inode})
            socks = [s for s in socks if m.owner(owners.get(s.inode))]
            denied = owners.denied
        counts = Counter()
        names = states.NAMES
        for s in socks:
            counts[names[s.state]] += 1
        if "NEW_SYN_RECV" in counts:
            counts["SYN_RECV"] += counts.pop("NEW_SYN_RECV")
        return [{"kind": "states", "t": t, "states": counts, "total": len(socks),
                 "denied": denied}]


class CloseWaitSampler:
    """CLOSE_WAIT sockets per process: a dump of the CLOSE_WAIT sockets only
    (the kernel picks them) and a walk of /proc/*/fd for their inodes, the
    costly part; a run.Background job once a refresh, at most every
    CW_EVERY_S (less often when a walk is slow: the job waits twenty times
    as long as it took)."""

    def __init__(self, match, family):
        self.match = match
        self.families = (family,) if family else (4, 6)

    def __call__(self):
        t = time.monotonic()
        m = self.match
        socks = [s for s in sockdiag.dump(self.families, 1 << states.CLOSE_WAIT)
                 if s.inode and (not m.narrows or m.sock(s))]
        cw = Counter()
        denied = None
        if socks:
            owners = common.Owners().finish({s.inode for s in socks})
            denied = owners.denied
            for s in socks:
                holders = owners.get(s.inode)
                if not m.owner(holders):
                    continue
                seen = set()
                for pid, comm, _fd in holders:
                    if pid not in seen:
                        seen.add(pid)
                        cw[(pid, comm)] += 1
        return [{"kind": "cw", "t": t, "cw": cw, "denied": denied}]


class CloseWaitHistory:
    """CLOSE_WAIT per process over the last CW_HISTORY_S: who grows.

    >>> h = CloseWaitHistory()
    >>> h.add(0.0, {(9, "leak"): 1, (8, "ok"): 2}); h.add(10.0, {(9, "leak"): 4, (8, "ok"): 2})
    >>> h.rows()
    [(9, 'leak', 4, 3, 10.0), (8, 'ok', 2, 0, 10.0)]
    """

    def __init__(self, keep_s=CW_HISTORY_S):
        self.keep_s = keep_s
        self.samples = deque()

    def add(self, t, counts):
        self.samples.append((t, dict(counts)))
        while len(self.samples) > 1 and self.samples[1][0] <= t - self.keep_s:
            self.samples.popleft()

    def now(self):
        return self.samples[-1][1] if self.samples else {}

    def rows(self):
        """(pid, comm, now, change, over seconds), growers first."""
        if not self.samples:
            return []
        t0, first = self.samples[0]
        t1, last = self.samples[-1]
        out = [(pid, comm, n, n - first.get((pid, comm), 0), t1 - t0)
               for (pid, comm), n in last.items()]
        out.sort(key=lambda r: (-r[3], -r[2], r[0]))
        return out


# --- one frame ----------------------------------------------------------------------


class UI:
    """What the keys changed."""

    def __init__(self):
        self.sort = 0
        self.filter = ""
        self.paused = False
        self.prompt = None     # the filter being typed, or None


def _rate(n, seconds):
    return n / seconds if seconds > 0 else 0.0


def frame(stats, sample, prev_sample, cw_hist, source, now, ui, notes=(), lost=None):
    """The figures of one refresh as a dict (what --json prints)."""
    w = stats.window()
    secs = w["seconds"]
    last_s, last = w["last"]
    lat, lat_pid, lat_addr = stats.latencies(now)
    sort = SORTS[ui.sort]
    cw_now = cw_hist.now()
    cw_by_pid = {}
    for (pid, _c), n in cw_now.items():
        cw_by_pid[pid] = cw_by_pid.get(pid, 0) + n

    def order(items, name):
        # items: (key, counts); ties by name
        if sort == "name":
            return sorted(items, key=lambda kv: name(kv[0]))
        col = {"act": 0, "open": 1, "fail": 3}[sort]
        return sorted(items, key=lambda kv: (-kv[1][col], -kv[1][0], name(kv[0])))

    def fields(c):
        return {"transitions_per_s": round(_rate(c[0], secs), 2), "opened": c[1],
                "closed": c[2], "failed": c[3]}

    procs = [dict({"pid": pid, "comm": comm, "close_wait": cw_by_pid.get(pid, 0),
                   "connect_p50_ns": percentile(lat_pid.get(pid, ()), 0.5)}, **fields(c))
             for (pid, comm), c in order(w["procs"].items(), lambda k: (k[1], k[0]))]
    remotes = [dict({"family": f, "addr": a,
                     "connect_p50_ns": percentile(lat_addr.get(a, ()), 0.5)}, **fields(c))
               for (f, a), c in order(w["remotes"].items(), lambda k: (k[1], k[0]))]
    ports = [dict({"port": p}, **fields(c))
             for p, c in order(w["ports"].items(), lambda k: k)]
    st_rows = []
    if sample is not None:
        prev = prev_sample["states"] if prev_sample is not None else sample["states"]
        for name in STATE_ORDER:
            n, o = sample["states"].get(name, 0), prev.get(name, 0)
            if n or o:
                st_rows.append({"state": name, "now": n, "change": n - o})
    doc = {
        "command": "top", "ts": common.iso(time.time()), "source": source,
        "window_s": round(secs, 3),
        "opened_per_s": round(_rate(last["opened"], last_s), 2),
        "closed_per_s": round(_rate(last["closed"], last_s), 2),
        "opened_per_s_window": round(_rate(w["opened"], secs), 2),
        "closed_per_s_window": round(_rate(w["closed"], secs), 2),
        "opened_total": stats.opened_total, "closed_total": stats.closed_total,
        "sockets": sample["total"] if sample is not None else None,
        "sockets_change": (sample["total"] - prev_sample["total"]
                           if sample is not None and prev_sample is not None else 0),
        "states": st_rows,
        "connect_latency": {"window_s": LATENCY_WINDOW_S, "count": len(lat),
                            "p50_ns": percentile(lat, 0.50), "p99_ns": percentile(lat, 0.99)},
        "failures": [{"end": e, "last": last["fails"].get(e, 0), "window": w["fails"].get(e, 0),
                      "total": stats.fail_total.get(e, 0)} for e in FAILS],
        "processes": procs, "remote_addresses": remotes, "ports": ports,
        "close_wait": [{"pid": pid, "comm": comm, "close_wait": n, "change": d,
                        "over_s": round(over, 1)}
                       for pid, comm, n, d, over in cw_hist.rows()],
        "sort": sort, "filter": ui.filter or None,
        "lost": dict(lost or {}), "notes": list(notes),
    }
    return doc


# --- rendering -----------------------------------------------------------------------


def fmt_ns(ns):
    if ns is None:
        return "-"
    if ns < 1_000:
        return "%dns" % ns
    if ns < 1_000_000:
        return "%.0fus" % (ns / 1e3) if ns >= 10_000 else "%.1fus" % (ns / 1e3)
    if ns < 1_000_000_000:
        return "%.1fms" % (ns / 1e6) if ns < 100_000_000 else "%.0fms" % (ns / 1e6)
    return "%.1fs" % (ns / 1e9)


def fmt_rate(v):
    if v == 0:
        return "0"
    return "%.1f" % v if v < 100 else "%d" % round(v)


def _change(n):
    return "+%d" % n if n > 0 else ("%d" % n if n < 0 else "")


def _addr(family, addr):
    return "[%s]" % addr if family == 6 else addr


def _matches(text, flt):
    return not flt or flt.lower() in text.lower()


def layout(w, body):
    """Rows of panels for a screen *w* wide with *body* lines under the
    header: [(lines, [(panel, ratio), ...])].  Panels are dropped, not
    squeezed, when there is no room: each gets its heading and 2 rows.

    >>> [(n, [p for p, _ in row]) for n, row in layout(80, 21)]
    [(9, ['states', 'procs']), (6, ['remotes', 'ports']), (6, ['cw', 'fails'])]
    >>> [(n, [p for p, _ in row]) for n, row in layout(200, 47)]
    [(21, ['states', 'procs', 'fails']), (26, ['remotes', 'ports', 'cw'])]
    >>> [(n, [p for p, _ in row]) for n, row in layout(50, 10)]
    [(4, ['procs']), (3, ['cw']), (3, ['states'])]
    """
    if body < 3:
        return []
    if w >= 150 and body >= 12:
        a = body * 45 // 100
        return [(a, [("states", 1), ("procs", 2), ("fails", 1)]),
                (body - a, [("remotes", 1), ("ports", 1), ("cw", 1)])]
    if w >= 60:
        rows = [[("states", 1), ("procs", 2)], [("remotes", 3), ("ports", 2)],
                [("cw", 3), ("fails", 2)]]
        if body >= 16:
            b = c = body * 30 // 100
            return list(zip((body - b - c, b, c), rows))
        if body >= 6:
            return list(zip((body - body // 2, body // 2), rows))
        return [(body, rows[0])]
    panels = ["procs", "cw", "states", "ports", "remotes"]
    k = min(len(panels), body // 3)
    return [(body // k + (1 if i < body % k else 0), [(p, 1)])
            for i, p in enumerate(panels[:k])]


def render(doc, w, h, ui):
    """The frame as rich renderables for a w x h screen."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    wide = w >= 150
    lines = []
    key_help = ("q quit  s sort  f filter  c clear  p pause" if w >= 100
                else "q quit s sort f filter p pause")
    title = "socktrace top  %s  %s UTC" % (doc["source"], doc["ts"][11:19])
    if ui.paused:
        title += "  PAUSED"
    if doc["lost"]:
        title += "  lost %d" % sum(doc["lost"].values())
    if ui.prompt is not None:
        right = "filter: %s_" % ui.prompt
    else:
        right = "sort:%s%s  %s" % (SORTS[ui.sort], "  filter '%s'" % safe(ui.filter)
                                   if ui.filter else "", key_help)
    t = Text(title, style="bold")
    gap = w - len(title) - len(right)
    if gap >= 2:
        t.append(" " * gap + right)
    else:
        t.append("  " + right)
    lines.append(t)
    lat = doc["connect_latency"]
    s2 = "opened %s/s  closed %s/s" % (fmt_rate(doc["opened_per_s"]),
                                        fmt_rate(doc["closed_per_s"]))
    if wide:
        s2 += " (%ds avg %s %s; total %d %d)" % (
            doc["window_s"], fmt_rate(doc["opened_per_s_window"]),
            fmt_rate(doc["closed_per_s_window"]), doc["opened_total"], doc["closed_total"])
    if doc["sockets"] is not None:
        s2 += "  sockets %d" % doc["sockets"]
        if doc["sockets_change"]:
            s2 += " (%s)" % _change(doc["sockets_change"])
    s2 += "  connect p50 %s p99 %s" % (fmt_ns(lat["p50_ns"]), fmt_ns(lat["p99_ns"]))
    n = " n=%d" % lat["count"]
    if wide or (lat["count"] and len(s2) + len(n) <= w):
        s2 += n
    lines.append(Text(s2))
    f = {r["end"]: r for r in doc["failures"]}
    other_w = sum(f[e]["window"] for e in OTHER_FAILS)
    other_t = sum(f[e]["total"] for e in OTHER_FAILS)
    s3 = "failed %ds/total:  refused %d/%d  timeout %d/%d  reset %d/%d  other %d/%d" % (
        doc["window_s"], f["refused"]["window"], f["refused"]["total"],
        f["timeout"]["window"], f["timeout"]["total"], f["reset"]["window"],
        f["reset"]["total"], other_w, other_t)
    style = "bold red" if any(f[e]["window"] for e in FAILS) else ""
    lines.append(Text(s3, style=style))
    budget = h
    head = list(lines)
    for n in doc["notes"][:1]:
        head.append(Text("note: " + safe(n), style="yellow"))
    budget -= len(head)
    for x in head:
        x.no_wrap = True
        x.overflow = "ellipsis"

    flt = ui.filter
    # what each panel would list (the filter applied)
    data = {
        "states": doc["states"],
        "procs": [r for r in doc["processes"]
                  if _matches("%s/%d" % (r["comm"], r["pid"]), flt)],
        "remotes": [r for r in doc["remote_addresses"] if _matches(r["addr"], flt)],
        "ports": [r for r in doc["ports"] if _matches(str(r["port"]), flt)],
        "cw": [r for r in doc["close_wait"] if _matches("%s/%d" % (r["comm"], r["pid"]), flt)],
        "fails": sorted(doc["failures"], key=lambda r: (-r["window"], -r["total"])),
    }

    def table(cols):
        tb = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False, expand=False,
                   header_style="bold reverse", collapse_padding=True)
        for name, justify, kw in cols:
            tb.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis", **kw)
        return tb

    def empty(tb, ncols, what):
        tb.add_row(*([Text(what, style="dim")] + [""] * (ncols - 1)))

    def states_panel(n):
        tb = table([("STATE", "left", {}), ("NOW", "right", {}), ("CHG", "right", {})])
        for r in data["states"][:n]:
            tb.add_row(r["state"], str(r["now"]), _change(r["change"]))
        if not doc["states"]:
            empty(tb, 3, "(no sample yet)")
        return tb

    def activity_panel(head, rows, key, none, cw=False, p50=False):
        """A list by activity: KEY, TR/s, OPEN, [CLOSE], FAIL, [CW],
        [CONN p50]; CLOSE and CONN p50 only in the wide layout."""
        p50 = p50 and wide
        cols = [head, ("TR/s", "right", {}), ("OPEN", "right", {})]
        if wide:
            cols.append(("CLOSE", "right", {}))
        cols.append(("FAIL", "right", {}))
        if cw:
            cols.append(("CW", "right", {}))
        if p50:
            cols.append(("CONN p50", "right", {}))
        tb = table(cols)
        for r in rows:
            cells = [key(r), fmt_rate(r["transitions_per_s"]), str(r["opened"])]
            if wide:
                cells.append(str(r["closed"]))
            cells.append(str(r["failed"]))
            if cw:
                cells.append(str(r["close_wait"]) if r["close_wait"] else "")
            if p50:
                cells.append(fmt_ns(r["connect_p50_ns"]))
            tb.add_row(*cells)
        if not rows:
            empty(tb, len(cols), none)
        return tb

    def procs_panel(n):
        return activity_panel(("PROCESS", "left", {"ratio": 1, "min_width": 10}),
                              data["procs"][:n], lambda r: safe("%s/%d" % (r["comm"], r["pid"])),
                              "(no process seen)", cw=True, p50=True)

    def remotes_panel(n):
        return activity_panel(("REMOTE ADDR", "left", {"ratio": 1, "min_width": 9}),
                              data["remotes"][:n],
                              lambda r: safe(_addr(r["family"], r["addr"])), "(none)", p50=True)

    def ports_panel(n):
        return activity_panel(("PORT", "left", {"ratio": 1}), data["ports"][:n],
                              lambda r: str(r["port"]), "(none)")

    def cw_panel(n):
        over = max([r["over_s"] for r in doc["close_wait"]] or [0])
        tb = table([("CLOSE_WAIT BY PROCESS", "left", {"ratio": 1, "min_width": 10}),
                    ("CW", "right", {}), ("CHG/%ds" % over if over >= 1 else "CHG", "right", {})])
        rows = data["cw"][:n]
        for r in rows:
            tb.add_row(safe("%s/%d" % (r["comm"], r["pid"])), str(r["close_wait"]),
                       Text(_change(r["change"]) or "=",
                            style="bold red" if r["change"] > 0 else ""))
        if not rows:
            empty(tb, 3, "(no CLOSE_WAIT)")
        return tb

    def fails_panel(n):
        tb = table([("FAILED", "left", {"ratio": 1}), ("LAST", "right", {}),
                    ("%dS" % doc["window_s"], "right", {}), ("TOTAL", "right", {})])
        for r in data["fails"][:n]:
            tb.add_row(r["end"], str(r["last"]), str(r["window"]), str(r["total"]))
        return tb

    panels = {"states": states_panel, "procs": procs_panel, "remotes": remotes_panel,
              "ports": ports_panel, "cw": cw_panel, "fails": fails_panel}
    body = []
    plan = layout(w, budget)
    carry = 0
    for i, (nlines, row) in enumerate(plan):
        # lines a row does not need go to the rows below it
        have = nlines + carry
        need = 1 + max(max(1, len(data[name])) for name, _ in row)
        use = have if i == len(plan) - 1 else min(have, need)
        carry = have - use
        g = Table.grid(expand=True, padding=(0, 2))
        for _name, ratio in row:
            g.add_column(ratio=ratio)
        g.add_row(*(panels[name](use - 1) for name, _ in row))
        body.append(g)
    return Group(*(head + body))


# --- the terminal ----------------------------------------------------------------------


class Keys:
    """stdin in cbreak mode (keys arrive one by one, no echo; Ctrl-C still
    signals), restored by restore() whatever happened."""

    def __init__(self, fd):
        import termios
        import tty
        self.fd = fd
        self._termios = termios
        self.saved = termios.tcgetattr(fd)
        tty.setcbreak(fd, termios.TCSANOW)

    def read(self, timeout):
        try:
            r, _, _ = select.select([self.fd], [], [], timeout)
        except InterruptedError:
            return ""
        if not r:
            return ""
        try:
            data = os.read(self.fd, 64)
        except (BlockingIOError, InterruptedError):
            return ""
        if not data:
            return ""
        text = data.decode("utf-8", "replace")
        if text.startswith("\x1b") and len(text) > 1:
            return ""   # an arrow or function key: not ours
        return text

    def suspend(self):
        self._termios.tcsetattr(self.fd, self._termios.TCSADRAIN, self.saved)

    def resume(self):
        import tty
        tty.setcbreak(self.fd, self._termios.TCSANOW)

    restore = suspend


class Flags:
    def __init__(self):
        self.stop = False
        self.resized = False
        self.suspend = False

    def on_stop(self, signum, frame):
        self.stop = True

    def on_winch(self, signum, frame):
        self.resized = True

    def on_tstp(self, signum, frame):
        self.suspend = True

    def install(self):
        for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"):
            signal.signal(getattr(signal, name), self.on_stop)
        signal.signal(signal.SIGWINCH, self.on_winch)
        signal.signal(signal.SIGTSTP, self.on_tstp)


def handle_key(ch, ui):
    """Apply one key; True to quit.

    >>> ui = UI()
    >>> [handle_key(c, ui) for c in "sf80\\n"], ui.sort, ui.filter, ui.prompt
    ([False, False, False, False, False], 1, '80', None)
    >>> handle_key("q", ui)
    True
    """
    if ui.prompt is not None:
        if ch in ("\n", "\r"):
            ui.filter, ui.prompt = ui.prompt.strip(), None
        elif ch == "\x1b":
            ui.prompt = None
        elif ch in ("\x7f", "\b"):
            ui.prompt = ui.prompt[:-1]
        elif ch.isprintable() and len(ui.prompt) < 40:
            ui.prompt += ch
        return False
    if ch in ("q", "Q"):
        return True
    if ch == "s":
        ui.sort = (ui.sort + 1) % len(SORTS)
    elif ch == "S":
        ui.sort = (ui.sort - 1) % len(SORTS)
    elif ch in ("f", "/"):
        ui.prompt = ""
    elif ch == "c":
        ui.filter = ""
    elif ch in ("p", " "):
        ui.paused = not ui.paused
    return False


# --- the view ----------------------------------------------------------------------------


def _backend_args(args):
    import argparse
    return argparse.Namespace(backend=args.backend, max_sockets=262144, ringbuf_mb=16,
                              family=args.family, pid=list(args.pid), interval=args.interval)


def view(args):
    if args.json and not args.once:
        sys.stderr.write("socktrace top: --json needs --once (the live screen is text)\n")
        return 2
    if not args.once and not os.isatty(sys.stdout.fileno()):
        sys.stderr.write("socktrace top: standard output is not a terminal; use --once "
                         "for one frame as text (or --json)\n")
        return 2
    try:
        import rich  # noqa: F401  (a clear message when missing)
    except ImportError as e:
        raise common.Failure("cannot import rich (%s); run socktrace from its environment: "
                             ".venv/bin/socktrace" % e)
    if sys.flags.no_site and args.backend != "proc":
        # the checkout's launcher starts views without site (tracer/launch.py);
        # the trace's eBPF backend needs bcc, from the system's site-packages
        import site
        site.main()
    from ..backend import Failure as BackendFailure
    from ..backend import open_backend
    from ..filters import Filter, context_filters
    from ..run import Background

    m = common.Match(args)
    ports, lports, rports = sorted(m.ports), sorted(m.lports), sorted(m.rports)
    keep = Filter(family=args.family, ports=ports, lports=lports, rports=rports,
                  pids=args.pid, comms=args.comm, states=args.state, nets=args.addr,
                  **context_filters(args))
    flags = Flags()
    flags.install()      # before the backend: a Ctrl-C while it loads ends it cleanly
    screen = None if args.once else Screen()
    backend = None
    jobs = []
    try:
        if screen is not None:
            # the screen and the keys first: a key typed while the eBPF
            # program compiles is neither echoed nor lost
            screen.start()
            screen.message("socktrace top: starting the trace (%s backend)..." % args.backend)
        try:
            backend = open_backend(_backend_args(args), ports, lports, rports,
                                   record_types=("state", "closed"))
        except BackendFailure as e:
            raise common.Failure(str(e))
        if flags.stop:
            return 0
        jobs = [Background("listing sockets", Sampler(m, args.family), every=args.delay),
                Background("finding the owners of CLOSE_WAIT sockets",
                           CloseWaitSampler(m, args.family),
                           every=max(args.delay, CW_EVERY_S)),
                Background("reconciling with the kernel's sockets", backend.reconcile,
                           every=RECONCILE_S)]
        for j in jobs:
            j.start()
        jobs[0].request()
        jobs[1].request()
        if args.once:
            return _once(args, backend, keep, jobs, flags)
        return _live(args, backend, keep, jobs, flags, screen)
    except BackendFailure as e:
        raise common.Failure(str(e))
    finally:
        for j in jobs:
            j.stop()
        if backend is not None:
            backend.close()
        if screen is not None:
            screen.stop()


class Screen:
    """The full screen (rich.live.Live on the alternate screen) and stdin
    in cbreak mode; stop() gives the terminal back as it was, suspend()
    for Ctrl-Z."""

    def __init__(self):
        from rich.console import Console
        self.console = Console(highlight=False, emoji=False, markup=False)
        self.live = None
        self.keys = None

    def start(self):
        from rich.live import Live
        if self.keys is None and os.isatty(sys.stdin.fileno()):
            self.keys = Keys(sys.stdin.fileno())
        elif self.keys is not None:
            self.keys.resume()
        if self.live is None:
            self.live = Live(console=self.console, screen=True, auto_refresh=False,
                             transient=False, redirect_stdout=False, redirect_stderr=False)
        self.live.start()

    def message(self, text):
        from rich.text import Text
        self.show(Text(text, no_wrap=True, overflow="ellipsis"))

    def show(self, renderable):
        self.live.update(renderable, refresh=True)

    def size(self):
        return self.console.size

    def read_keys(self, timeout):
        if self.keys is None:
            time.sleep(timeout)
            return ""
        return self.keys.read(timeout)

    def suspend(self):
        """Ctrl-Z: the terminal back to the shell, stopped until fg."""
        self.live.stop()
        if self.keys is not None:
            self.keys.suspend()
        os.kill(os.getpid(), signal.SIGSTOP)
        self.start()

    def stop(self):
        try:
            if self.live is not None:
                self.live.stop()
                self.live = None
        finally:
            if self.keys is not None:
                self.keys.restore()
                self.keys = None


class _State:
    def __init__(self, backend, keep):
        self.backend = backend
        self.keep = keep if keep.active else None
        self.stats = Stats()
        self.cw = CloseWaitHistory()
        self.sample = None
        self.prev = None
        self.lost = Counter()
        self.notes = [one_line(n) for n in backend.notes]
        self.denied_noted = False

    def pump(self, now):
        recs = self.backend.read()
        if self.keep is not None:
            recs = [r for r in recs if self.keep(r)]
        if recs:
            self.stats.add(recs, now)
        for what, n in self.backend.lost().items():
            self.lost[what] += n
        return len(recs)

    def take(self, jobs, now):
        for job in jobs[:2]:
            self.take_sample(job.take())
        ended = jobs[2].take()
        if ended:
            if self.keep is not None:
                ended = [r for r in ended if self.keep(r)]
            self.stats.add(ended, now)

    def take_sample(self, got):
        for s in got:
            if s["kind"] == "cw":
                self.cw.add(s["t"], s["cw"])
            else:
                if self.sample is not None:
                    self.prev = self.sample
                self.sample = s
            if s["denied"] and not self.denied_noted:
                self.denied_noted = True
                self.notes.append("owners unknown for the sockets of %d processes whose "
                                  "/proc/PID/fd this user may not read (run as root to see "
                                  "them)" % s["denied"])

    def frame(self, now, ui):
        return frame(self.stats, self.sample, self.prev, self.cw, self.backend.source, now, ui,
                     self.notes, self.lost)


def _once(args, backend, keep, jobs, flags):
    from rich.console import Console

    st = _State(backend, keep)
    t0 = time.monotonic()
    end = t0 + args.delay
    while not flags.stop:
        now = time.monotonic()
        st.pump(now)
        if now >= end:
            break
        time.sleep(min(KEY_POLL_S, max(0.0, end - now)))
    # the first samples (asked for at the start), and new ones now: the
    # changes span the delay
    deadline = time.monotonic() + 5.0
    while not flags.stop and time.monotonic() < deadline:
        st.take(jobs, time.monotonic())
        if st.sample is not None and st.cw.samples:
            break
        time.sleep(0.01)
    if not flags.stop:
        st.take_sample(jobs[0].job())
        st.take_sample(jobs[1].job())
    now = time.monotonic()
    st.pump(now)
    st.stats.tick(now - t0)
    st.take(jobs, now)
    ui = UI()
    doc = st.frame(now, ui)
    if args.json:
        return common.emit(doc=doc)
    w = common.width()
    h = _once_height()
    console = Console(file=sys.stdout, width=w, height=h, color_system=None,
                      force_terminal=False, highlight=False, emoji=False, markup=False,
                      soft_wrap=False, legacy_windows=False)
    with console.capture() as cap:
        console.print(render(doc, w, h, ui), crop=True)
    try:
        # without the padding a screen needs
        sys.stdout.write("".join(x.rstrip() + "\n" for x in cap.get().splitlines()))
        sys.stdout.flush()
    except BrokenPipeError:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
    return 0


def _once_height():
    from ..args import terminal_columns
    return max(24, terminal_columns("LINES", "lines", 40))


def _live(args, backend, keep, jobs, flags, screen):
    st = _State(backend, keep)
    ui = UI()
    t_tick = time.monotonic()
    next_tick = t_tick + args.delay
    doc = st.frame(t_tick, ui)

    def draw():
        w, h = screen.size()
        screen.show(render(doc, w, h, ui))

    draw()
    while not flags.stop:
        now = time.monotonic()
        st.pump(now)
        redraw = False
        if flags.resized:
            flags.resized = False
            redraw = True
        if flags.suspend:
            flags.suspend = False
            screen.suspend()
            redraw = True
        if now >= next_tick:
            st.stats.tick(now - t_tick)
            t_tick = now
            next_tick = max(next_tick + args.delay, now + 0.1 * args.delay)
            st.take(jobs, now)
            if not ui.paused:
                doc = st.frame(now, ui)
            redraw = True
        text = screen.read_keys(max(0.0, min(KEY_POLL_S, next_tick - time.monotonic())))
        for ch in text:
            if handle_key(ch, ui):
                flags.stop = True
                break
        if text and not flags.stop:
            if not ui.paused:
                doc = st.frame(now, ui)     # the new sort or filter, now
            redraw = True
        if redraw and not flags.stop:
            draw()
    return 0
