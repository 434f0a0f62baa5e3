"""The exit report for people (stderr); log pipelines get the same figures
as the ``summary`` record.

>>> s = {"transitions": {"ESTABLISHED->FIN_WAIT1": 3}, "current": {"LISTEN": 2},
...      "durations": {"SYN_SENT": {"count": 3, "p50_ns": 41000, "p90_ns": 52000,
...                                 "p99_ns": 52000, "max_ns": 52000}},
...      "records": {"received": 9, "self_transitions": 1, "lost": {}}}
>>> print(render(s, {}), end="")
socktrace: 3 transitions
  transition                     count
  ESTABLISHED -> FIN_WAIT1           3
  time in state    count        p50        p90        p99        max
  SYN_SENT            3     41.0us     52.0us     52.0us     52.0us
  sockets now: LISTEN 2
  records: 9 received; 1 self-transitions (old == new) dropped
  lost: none
"""

from .columns import duration as _ns


def render(summary, lost):
    lines = ["socktrace: %d transitions" % sum(summary["transitions"].values())]
    if summary["transitions"]:
        lines.append("  %-28s %7s" % ("transition", "count"))
        for name, n in summary["transitions"].items():
            lines.append("  %-28s %7d" % (name.replace("->", " -> "), n))
    if summary["durations"]:
        lines.append("  %-12s %8s %10s %10s %10s %10s" % (
            "time in state", "count", "p50", "p90", "p99", "max"))
        for name, d in summary["durations"].items():
            lines.append("  %-12s %8d %10s %10s %10s %10s" % (
                name, d["count"], _ns(d["p50_ns"]), _ns(d["p90_ns"]),
                _ns(d["p99_ns"]), _ns(d["max_ns"])))
    now = " ".join("%s %d" % kv for kv in sorted(summary["current"].items()))
    lines.append("  sockets now: %s" % (now or "none"))
    rec = summary.get("records") or {}
    if "received" in rec:
        lines.append("  records: %d received; %d self-transitions (old == new) dropped"
                     % (rec["received"], rec.get("self_transitions", 0)))
    if rec.get("impossible_durations"):
        lines.append("  impossible durations (a state ending before it began), taken as 0: %d"
                     % rec["impossible_durations"])
    lines.append("  lost: %s" % (", ".join("%s %d" % kv for kv in lost.items()) or "none"))
    return "\n".join(lines) + "\n"
