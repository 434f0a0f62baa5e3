"""The exit report for people (stderr); log pipelines get the same figures
as the ``summary`` record.

Its figures honour the filters.  Family and port filters run in the kernel,
before its tallies, so those are the filtered figures; with a filter only
user space applies (--pid, --comm, --addr, --state) the figures come from
the records that passed it (``Tally``).  "Sockets now", the top processes and
remotes and the oldest CLOSE_WAIT come from one snapshot at exit (sock_diag
and /proc, as ``socktrace stat``), filtered the same way.  Times that are
only lower bounds (sockets older than socktrace) stay out of the
percentiles and are counted apart; failed connects (SYN_SENT->CLOSE) have
their own row.

>>> s = {"seconds": 12.5, "scope": "host-wide", "source": "bpf",
...      "start_ts": "2026-12-05T12:00:00.000001Z", "ts": "2026-12-05T12:00:12.500001Z",
...      "transitions": {"ESTABLISHED->FIN_WAIT1": 3},
...      "durations": {"SYN_SENT": {"count": 3, "p50_ns": 41000, "p90_ns": 52000,
...                                 "p99_ns": 52000, "max_ns": 52000}},
...      "current": {"LISTEN": 2}, "ended": {"normal": 3, "refused": 1}, "lower_bounds": 2,
...      "top": {"processes": [["1234/nginx", 7]], "remotes": [["127.0.0.1", 7]],
...              "oldest_close_wait": None},
...      "records": {"received": 9, "self_transitions": 1, "lost": {}}}
>>> print(render(s, {}), end="")
socktrace: 12.5 s, 2026-12-05 12:00:00 to 12:00:12 UTC, eBPF, host-wide
  transition                     count
  ESTABLISHED -> FIN_WAIT1           3
  time in state     count        p50        p90        p99        max
  SYN_SENT              3     41.0us     52.0us     52.0us     52.0us
  (2 times that are only lower bounds, of sockets older than socktrace, left out)
  connections ended: normal 3, refused 1
  sockets now: LISTEN 2
  top processes: 1234/nginx 7
  top remotes: 127.0.0.1 7
  records: 9 received; 1 self-transitions (old == new) dropped
  lost: none
"""

from . import hist, wire
from .columns import duration as _ns
from .text import safe

_SOURCE = {"bpf": "eBPF", "proc": "/proc polling"}
_ROW_NOTE = {"SYN_SENT": "connects that got through", wire.CONNECT_FAILED: "connects that failed"}


def scope(args):
    """'host-wide', or the filters as the user gave them."""
    parts = []
    if getattr(args, "family", None):
        parts.append("-%d" % args.family)
    for flag in ("port", "lport", "rport"):
        for ports in getattr(args, flag, None) or ():
            parts.append("--%s %s" % (flag, ",".join(map(str, ports))))
    for net in getattr(args, "addr", None) or ():
        parts.append("--addr %s" % net)
    for pid in getattr(args, "pid", None) or ():
        parts.append("--pid %d" % pid)
    for comm in getattr(args, "comm", None) or ():
        parts.append("--comm %s" % comm)
    for st in getattr(args, "state", None) or ():
        parts.append("--state %s" % st)
    for uid in getattr(args, "uid", None) or ():
        parts.append("--uid %d" % uid)
    for ns in getattr(args, "netns", None) or ():
        parts.append("--netns %d" % ns)
    for cg in getattr(args, "cgroup", None) or ():
        parts.append("--cgroup %s" % cg[0])
    for cid in getattr(args, "container", None) or ():
        parts.append("--container %s" % cid)
    return "filtered: " + " ".join(parts) if parts else "host-wide"


class Tally:
    """The report's figures from the records a user-space filter let
    through (the kernel's tallies do not know that filter)."""

    def __init__(self):
        self.transitions = {}
        self.hists = {}
        self.ended = {}
        self.lower = 0

    def add(self, records):
        for r in records:
            t = r["type"]
            if t == "state":
                key = (r["old"], r["new"])
                self.transitions[key] = self.transitions.get(key, 0) + 1
                ns = r["in_old_ns"]
                if ns is None or r["old"] in ("CLOSE", "LISTEN"):
                    continue
                if r["lower_bound"]:
                    self.lower += 1
                    continue
                row = wire.CONNECT_FAILED if key == ("SYN_SENT", "CLOSE") else r["old"]
                h = self.hists.get(row)
                if h is None:
                    h = self.hists[row] = [0] * hist.BUCKETS
                h[hist.bucket(ns)] += 1
            elif t == "closed":
                self.ended[r["end"]] = self.ended.get(r["end"], 0) + 1

    def stats(self):
        return {"transitions": dict(self.transitions), "durations": self.hists,
                "ends": dict(self.ended), "lower_bounds": self.lower}


def durations(hists):
    """{state: {count, p50_ns, p90_ns, p99_ns, max_ns}} from bucket counts."""
    out = {}
    for name, counts in hists.items():
        if not any(counts):
            continue
        d = {"count": hist.count(counts)}
        d.update(hist.percentiles(counts))
        d["max_ns"] = hist.value(max(b for b, n in enumerate(counts) if n))
        out[name] = d
    return out


def exit_snapshot(args, top=5):
    """Sockets now, by state; the top processes and remote addresses; the
    oldest CLOSE_WAIT: one sock_diag dump and /proc walk, the filters
    applied as ``socktrace stat`` applies them."""
    from collections import Counter

    from . import states
    from .views import common

    m = common.Match(args)
    snap = common.Snapshot(args.family)
    socks = [s for s in snap.sockets if m.sock(s)] if m.narrows else snap.sockets
    owners = snap.walk_owners(socks)
    if m.by_owner:
        socks = [s for s in socks if m.owner(owners.get(s.inode))]
    current = Counter(states.NAMES[s.state] if s.state != states.NUMBERS["NEW_SYN_RECV"]
                      else "SYN_RECV" for s in socks)
    procs = Counter()
    remotes = Counter()
    for s in socks:
        for pid, comm, _fd in owners.get(s.inode) or ():
            procs["%d/%s" % (pid, comm)] += 1
        if s.state != states.LISTEN:
            remotes[s.raddr] += 1
    oldest = None
    waits = [s for s in socks if s.state == states.CLOSE_WAIT]
    if waits:
        idle = snap.close_wait_info()
        aged = [(common.age(s, idle)[0] or 0.0, s) for s in waits]
        sec, s = max(aged, key=lambda a: a[0])
        holders = owners.get(s.inode) or ()
        oldest = {"local": common.fmt_ep(s.family, s.laddr, s.lport),
                  "remote": common.fmt_ep(s.family, s.raddr, s.rport),
                  "age_s": round(sec, 3),
                  "owner": " ".join("%d/%s" % (p, c) for p, c, _ in holders) or None}
    return dict(sorted(current.items())), {
        "processes": [[k, n] for k, n in procs.most_common(top)],
        "remotes": [[k, n] for k, n in remotes.most_common(top)],
        "oldest_close_wait": oldest}


def render(summary, lost):
    s = summary
    head = "socktrace: %.1f s, %s to %s UTC, %s, %s" % (
        s["seconds"], s["start_ts"][:19].replace("T", " "), s["ts"][11:19],
        _SOURCE.get(s["source"], s["source"]), safe(s["scope"]))
    lines = [head]
    if s["transitions"]:
        lines.append("  %-28s %7s" % ("transition", "count"))
        for name, n in s["transitions"].items():
            lines.append("  %-28s %7d" % (name.replace("->", " -> "), n))
    else:
        lines.append("  no transitions")
    if s["durations"]:
        lines.append("  %-15s %7s %10s %10s %10s %10s" % (
            "time in state", "count", "p50", "p90", "p99", "max"))
        for name, d in s["durations"].items():
            note = _ROW_NOTE.get(name) if len(s["durations"]) > 1 and \
                wire.CONNECT_FAILED in s["durations"] else None
            lines.append("  %-15s %7d %10s %10s %10s %10s%s" % (
                name, d["count"], _ns(d["p50_ns"]), _ns(d["p90_ns"]),
                _ns(d["p99_ns"]), _ns(d["max_ns"]), "  " + note if note else ""))
    if s.get("lower_bounds"):
        lines.append("  (%d times that are only lower bounds, of sockets older than "
                     "socktrace, left out)" % s["lower_bounds"])
    ended = s.get("ended") or {}
    lines.append("  connections ended: %s" % (
        ", ".join("%s %d" % kv for kv in ended.items()) or "none"))
    now = " ".join("%s %d" % kv for kv in sorted(s["current"].items()))
    lines.append("  sockets now: %s" % (now or "none"))
    top = s.get("top") or {}
    if top.get("processes"):
        lines.append("  top processes: %s" % ", ".join(
            "%s %d" % (safe(k), n) for k, n in top["processes"]))
    if top.get("remotes"):
        lines.append("  top remotes: %s" % ", ".join("%s %d" % (k, n) for k, n in top["remotes"]))
    cw = top.get("oldest_close_wait")
    if cw:
        lines.append("  oldest CLOSE_WAIT: %s > %s, ~%s, %s" % (
            cw["local"], cw["remote"], _ns(int(cw["age_s"] * 1e9)),
            safe(cw["owner"] or "owner unknown")))
    rec = s.get("records") or {}
    if "received" in rec:
        lines.append("  records: %d received; %d self-transitions (old == new) dropped"
                     % (rec["received"], rec.get("self_transitions", 0)))
    if rec.get("impossible_durations"):
        lines.append("  impossible durations (a state ending before it began), taken as 0: %d"
                     % rec["impossible_durations"])
    lines.append("  lost: %s" % (", ".join("%s %d" % kv for kv in lost.items()) or "none"))
    return "\n".join(lines) + "\n"
