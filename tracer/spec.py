"""Every record socktrace writes, declared once.

The JSON Schema (tracer/schema/events.schema.json) and the README's field
table are generated from these declarations (``python -m tracer.spec
write`` updates both) and tests/test_spec.py checks that the committed copies are
current, that the enums are the header's and states.py's, and that every
record each backend writes has exactly its type's fields, in this order.

Every record of a type carries every field of its type: a value that is not
known is null, never a missing key, so a query written against one capture
runs on the next.

>>> [f.name for f in RECORDS["lost"]]
['type', 'ts', 'count', 'what', 'source']
>>> field("closed", "end").enum[:3]
('normal', 'refused', 'timeout')
"""

import sys
from collections import namedtuple

from . import states, wire

Field = namedtuple("Field", "name type null enum doc pattern")


def F(name, type_, doc="", null=False, enum=None, pattern=None):
    return Field(name, type_, null, tuple(enum) if enum is not None else None, doc, pattern)


TS_PATTERN = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"
STATE_NAMES = tuple(n for n in states.NAMES if n)
# the states a closed record's ``states`` object always has, in path order
TIMED_STATES = ("SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2",
                "CLOSING", "TIME_WAIT", "CLOSE_WAIT", "LAST_ACK")
OWNER_FROM = tuple(wire.OWNER_FROM[k] for k in sorted(wire.OWNER_FROM))
ROLE = tuple(wire.ROLE[k] for k in sorted(wire.ROLE) if wire.ROLE[k] != "unknown")
REASON = tuple(wire.REASON[k] for k in sorted(wire.REASON) if wire.REASON[k] != "none")
VIA = tuple(wire.VIA[k] for k in sorted(wire.VIA) if wire.VIA[k] != "kernel")
END = tuple(wire.END[k] for k in sorted(wire.END))
SOURCES = ("bpf", "proc")
LOST_WHAT = wire.LOSS_COUNTERS + ("undecodable",)
RECORD_TYPES = ("state", "closed", "socket", "lost", "summary")

_TYPE = lambda t: F("type", "const:" + t, "record type")  # noqa: E731
_TS = F("ts", "string", "RFC 3339 UTC, microseconds: when it happened", pattern=TS_PATTERN)
_CONN = F("conn", "string", "connection id, the same on every record of one connection "
          "(its TIME_WAIT included), never shared within a run: the kernel's socket "
          "cookie in hex, as `ss -e` prints after `sk:`, when the kernel had one when "
          "socktrace first saw the socket; else an id socktrace assigns, 16 hex digits "
          "starting with 8; the proc backend always assigns its own, 16 hex digits "
          "starting with 4, never reused within a run",
          pattern=r"^[0-9a-f]{1,16}$")
_TUPLE = (
    F("family", "int", enum=(4, 6)),
    F("laddr", "string", "local address; IPv6 compressed, IPv4-mapped as ::ffff:a.b.c.d"),
    F("lport", "port", "local port; 0 while the kernel has not chosen one (CLOSE->SYN_SENT)"),
    F("raddr", "string", "remote address"),
    F("rport", "port", "remote port"),
)
_OWNER = (
    F("pid", "int", "owning process", null=True),
    F("comm", "string", "its name, from the kernel (bytes that are not UTF-8 as `\\xNN`)",
      null=True),
    F("owner_from", "enum", "connect/listen: the task that called it; listener: an "
      "accepted socket not accepted yet, its listener's owner; accept: the task that "
      "accept()ed it (a pre-fork server's worker); proc: found in /proc; unknown: pid "
      "null", enum=OWNER_FROM),
    F("role", "enum", "client (it connected), server (accepted), listener", null=True,
      enum=ROLE),
)
_WHERE = (
    F("netns", "int", "the socket's network namespace: its inode, as `ls -L -i "
      "/proc/PID/ns/net` shows it; null unknown", null=True),
    F("uid", "int", "the socket's owner uid (what `ss -e` shows as uid); null unknown",
      null=True),
    F("cgroup", "string", "the socket's cgroup v2 path (the cgroup of the process that "
      "made it; an accepted socket: its listener's), as in /proc/PID/cgroup; null "
      "unknown", null=True),
    F("container", "string", "the container id read from cgroup (Docker, containerd and "
      "Kubernetes, CRI-O, Podman), 64 hex digits; null: none", null=True),
    F("unit", "string", "the systemd unit cgroup names (a .service or .scope); null: "
      "none", null=True),
)
_HEALTH = (
    F("bytes_sent", "int", "bytes sent and acknowledged by the peer (tcp_info's "
      "bytes_acked); null unknown", null=True),
    F("bytes_received", "int", "bytes received", null=True),
    F("segs_out", "int", "segments sent", null=True),
    F("segs_in", "int", "segments received", null=True),
    F("retrans", "int", "segments retransmitted (total_retrans)", null=True),
    F("rtt_us", "int", "smoothed round-trip time, microseconds", null=True),
    F("rttvar_us", "int", "its mean deviation, microseconds", null=True),
)
_TAIL = (
    F("source", "enum", "bpf: traced in the kernel; proc: polled from /proc", enum=SOURCES),
    F("approx", "bool", "true from the proc backend: transitions between polls are "
      "not seen and times are off by up to one interval"),
)
_LOWER = F("lower_bound", "bool", "the socket predates socktrace: its times are lower "
           "bounds (or estimates, see estimate)")

RECORDS = {
    "state": (_TYPE("state"), _TS, _CONN) + _TUPLE + (
        F("old", "enum", "state left", enum=STATE_NAMES),
        F("new", "enum", "state entered", enum=STATE_NAMES),
        F("in_old_ns", "int", "time spent in old; null when not seen begin", null=True),
        _LOWER,
    ) + _OWNER + _WHERE + (
        F("via", "enum", "how a transition the kernel never reports was seen: timer "
          "(the timewait timer), peer (the local peer's LAST_ACK->CLOSE); null: "
          "sock:inet_sock_set_state", null=True, enum=VIA),
        F("reason", "enum", "why a timewait socket ended", null=True, enum=REASON),
    ) + _TAIL,
    "closed": (_TYPE("closed"), _TS, _CONN) + _TUPLE + _OWNER + _WHERE + (
        F("start_ts", "string", "when it began (lower_bound: when first seen)",
          pattern=TS_PATTERN),
        F("lifetime_ns", "int", "from start_ts to ts"),
        F("states", "states", "ns spent in each state; 0 for states it never entered"),
        F("path", "path", "the states it went through, in order, ending in CLOSE"),
        F("closed_first", "enum", "local: we sent the first FIN; remote: the peer did",
          null=True, enum=("local", "remote")),
        F("end", "enum", "normal: both FINs; refused: a reset answered the SYN; timeout: "
          "ETIMEDOUT or FIN_WAIT2 timeout; cancelled: closed while connecting; reset: a "
          "reset sent or received; error: another socket error; aborted: closed before "
          "both FINs with no reset or error seen; unknown: its end was not seen (no "
          "program ran for its last transitions: reconciliation found the socket gone, or a "
          "new socket took its memory first, counted as lost stale), or the proc backend "
          "cannot tell",
          enum=END),
        F("error", "string", "the socket's error at close (ECONNREFUSED, ETIMEDOUT, ...)",
          null=True),
        F("reset", "enum", "who reset it: sent (we did: tcp:tcp_send_reset, or a close() "
          "that aborts: SO_LINGER 0, unread data), received (tcp:tcp_receive_reset), both; "
          "null: no reset", null=True, enum=("sent", "received", "both")),
        F("reason", "enum", "why its timewait socket ended", null=True, enum=REASON),
        _LOWER,
    ) + _HEALTH + (
        F("syn_retrans", "int", "a connect's SYN retransmissions; null: not a connect, "
          "or unknown", null=True),
    ) + _TAIL,
    "socket": (_TYPE("socket"), _TS, _CONN) + _TUPLE + (
        F("state", "enum", enum=STATE_NAMES),
        F("in_state_ns", "int", "time in state; null when unknown", null=True),
        F("age_ns", "int", "time since it began; null when unknown", null=True),
        _LOWER,
        F("estimate", "bool", "in_state_ns is the kernel's estimate for a socket older "
          "than socktrace (TIME_WAIT: its timer; CLOSE_WAIT: time since data last came in)"),
    ) + _OWNER + _WHERE + _HEALTH + _TAIL,
    "lost": (
        _TYPE("lost"), _TS,
        F("count", "int", "how many"),
        F("what", "enum", "ringbuf_lost, derived_lost, closed_lost: records the ring "
          "buffer had no room for; socks_full, tw_full: sockets the kernel maps had no "
          "room for; stale: connections whose last transitions no program saw before a "
          "new socket took their memory (their closed record says end unknown); missed, "
          "timer_missed: "
          "tracepoint hits the kernel ran no program for; undecodable: records user space "
          "could not read",
          enum=LOST_WHAT),
        F("source", "enum", enum=SOURCES),
    ),
    "summary": (
        _TYPE("summary"), _TS,
        F("start_ts", "string", "when the run began", pattern=TS_PATTERN),
        F("seconds", "number", "how long the run lasted"),
        F("scope", "string", "\"host-wide\", or \"filtered: \" and the filters: every "
          "figure here honours them"),
        F("transitions", "counts", "transitions seen, by \"OLD->NEW\""),
        F("durations", "durations", "time in each state: count, p50/p90/p99 (log-linear "
          "histogram, within 5%), max; SYN_SENT holds the connects that got through, "
          "\"SYN_SENT->CLOSE\" those that failed; lower bounds left out"),
        F("lower_bounds", "int", "times in a state that were only lower bounds (sockets "
          "older than socktrace), left out of durations"),
        F("ended", "counts", "connections ended, by end (as in closed records)"),
        F("current", "counts", "sockets now, by state (a snapshot at exit, filtered)"),
        F("top", "top", "from the same snapshot: the processes and remote addresses "
          "holding the most sockets ([name, count] pairs), and the oldest CLOSE_WAIT "
          "(local, remote, age_s, owner) or null"),
        F("records", "records", "received, derived and lost records; self_transitions "
          "dropped"),
        F("source", "enum", enum=SOURCES),
    ),
}


def field(rtype, name):
    return next(f for f in RECORDS[rtype] if f.name == name)


def names(rtype):
    return tuple(f.name for f in RECORDS[rtype])


# -- JSON Schema ------------------------------------------------------------

def _json_type(f):
    t = f.type
    if t.startswith("const:"):
        return {"const": t[6:]}
    if t == "enum":
        out = {"enum": list(f.enum) + ([None] if f.null else [])}
    elif t == "int":
        out = {"enum": list(f.enum)} if f.enum else {"type": "integer", "minimum": 0}
    elif t == "port":
        out = {"type": "integer", "minimum": 0, "maximum": 65535}
    elif t == "string":
        out = {"type": "string"}
        if f.pattern:
            out["pattern"] = f.pattern
    elif t == "bool":
        out = {"type": "boolean"}
    elif t == "states":
        out = {"type": "object", "additionalProperties": False,
               "required": list(TIMED_STATES),
               "properties": {s: {"type": "integer", "minimum": 0} for s in TIMED_STATES}}
    elif t == "path":
        out = {"type": "array", "items": {"enum": list(STATE_NAMES)}}
    elif t == "counts":
        out = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
    elif t == "durations":
        num = {"type": ["integer", "null"], "minimum": 0}
        out = {"type": "object", "additionalProperties": {
            "type": "object", "properties": {k: num for k in (
                "count", "p50_ns", "p90_ns", "p99_ns", "max_ns")}}}
    elif t == "records":
        out = {"type": "object"}
    elif t == "number":
        out = {"type": "number", "minimum": 0}
    elif t == "top":
        pair = {"type": "array", "prefixItems": [{"type": "string"},
                                                 {"type": "integer", "minimum": 0}],
                "minItems": 2, "maxItems": 2}
        out = {"type": "object", "required": ["processes", "remotes", "oldest_close_wait"],
               "properties": {"processes": {"type": "array", "items": pair},
                              "remotes": {"type": "array", "items": pair},
                              "oldest_close_wait": {"type": ["object", "null"]}}}
    else:
        raise ValueError("unknown field type %r" % t)
    if f.null and "type" in out:
        out["type"] = [out["type"], "null"]
    if f.doc:
        out["description"] = f.doc
    return out


def json_schema():
    variants = []
    for rtype, fields in RECORDS.items():
        variants.append({
            "type": "object",
            "properties": {f.name: _json_type(f) for f in fields},
            "required": [f.name for f in fields],
            "additionalProperties": False,
        })
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://socktrace.invalid/events.schema.json",
        "title": "socktrace NDJSON record",
        "description": "One line of socktrace output; type says which record it is. "
                       "Generated from tracer/spec.py: python -m tracer.spec schema",
        "oneOf": variants,
    }


# -- the README's table ------------------------------------------------------

def _md_type(f):
    t = f.type
    if t.startswith("const:"):
        return '`"%s"`' % t[6:]
    if f.enum:
        t = " \\| ".join("`%s`" % v for v in f.enum)
    return t + (" or null" if f.null else "")


def markdown_table():
    lines = []
    for rtype, fields in RECORDS.items():
        lines.append("**%s**\n" % rtype)
        lines.append("| field | type | meaning |")
        lines.append("|---|---|---|")
        for f in fields:
            lines.append("| `%s` | %s | %s |" % (f.name, _md_type(f), f.doc.replace("|", "\\|")))
        lines.append("")
    return "\n".join(lines)


TABLE_BEGIN = "<!-- records: generated by python -m tracer.spec write -->"
TABLE_END = "<!-- end of records -->"


def readme_with_table(text):
    """*text* (the README) with the generated table between its markers."""
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    return head + TABLE_BEGIN + "\n" + markdown_table() + TABLE_END + tail


def schema_text():
    import json

    return json.dumps(json_schema(), indent=2) + "\n"


def main(argv=None):
    """``schema`` and ``table`` print; ``write`` updates the committed
    schema and the README's table in place (from the checkout's root)."""
    what = (argv if argv is not None else sys.argv[1:]) or ["schema"]
    if what[0] == "schema":
        sys.stdout.write(schema_text())
    elif what[0] == "table":
        sys.stdout.write(markdown_table())
    elif what[0] == "write":
        from pathlib import Path

        from .schema import PATH

        PATH.write_text(schema_text())
        readme = Path(__file__).resolve().parent.parent / "README.md"
        readme.write_text(readme_with_table(readme.read_text()))
    else:
        sys.stderr.write("usage: python -m tracer.spec schema|table|write\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
