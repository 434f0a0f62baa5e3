"""Output records: how a kernel event becomes one NDJSON object.

The field names and types are those of ``tracer/schema/events.schema.json``,
the published contract; tests validate every line socktrace writes against
it.  Formatting is on the per-event hot path, so addresses, comm strings and
timestamps up to the millisecond are cached: a busy host has few distinct
values of each.

>>> fmt = Formatter(wall_offset_ns=0)
>>> fmt.ts(1_700_000_000_123_456_789)
'2023-11-14T22:13:20.123456Z'
>>> fmt.addr(4, bytes(10) + b"\\xff\\xff" + bytes([127, 0, 0, 1]))
'127.0.0.1'
>>> fmt.addr(6, bytes(10) + b"\\xff\\xff" + bytes([10, 1, 2, 3]))
'::ffff:10.1.2.3'
>>> fmt.addr(6, bytes(15) + b"\\x01")
'::1'
"""

import socket
import time

from . import states, wire

STATE = "state"
LOST = "lost"
CLOSED = "closed"
SOCKET = "socket"
SUMMARY = "summary"


# the last three digits of a timestamp: see Formatter.ts
_US3 = tuple("%03dZ" % us for us in range(1000))


def monotonic_to_wall_ns():
    """CLOCK_REALTIME - CLOCK_MONOTONIC: kernel timestamps are monotonic."""
    return time.time_ns() - time.monotonic_ns()


class Formatter:
    """Caches for the strings every record repeats."""

    def __init__(self, wall_offset_ns=None):
        self.wall_offset = (monotonic_to_wall_ns() if wall_offset_ns is None
                            else wall_offset_ns)
        # Timestamps come in bursts (hundreds per millisecond in a storm):
        # the text up to the milliseconds is made once per millisecond and
        # each record only appends its microseconds ("123Z", from _US3).
        self._ms_ns = -1 << 80         # wall ns where that millisecond starts
        self._ms_text = ""             # "2023-11-14T22:13:20.123"
        self._sec = None
        self._sec_text = ""
        self._addrs = {4: {}, 6: {}}     # family -> {16 raw bytes: text}
        self._comms = {}

    def ts(self, mono_ns):
        """RFC 3339 UTC with microseconds for a CLOCK_MONOTONIC time."""
        us = (mono_ns + self.wall_offset - self._ms_ns) // 1000
        if not 0 <= us < 1000:
            us = self._new_ms(mono_ns + self.wall_offset)
        return self._ms_text + _US3[us]

    def _new_ms(self, wall):
        """Move the millisecond cache to *wall*; returns its microseconds."""
        sec, frac = divmod(wall, 1_000_000_000)
        if sec != self._sec:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        ms, ns = divmod(frac, 1_000_000)
        self._ms_ns = wall - ns
        self._ms_text = "%s.%03d" % (self._sec_text, ms)
        return ns // 1000

    def addr(self, family, raw16):
        """16 bytes as the tracepoint gives them (IPv4 mapped) -> text."""
        cache = self._addrs[family]
        text = cache.get(raw16)
        if text is None:
            if family == 4:
                text = socket.inet_ntop(socket.AF_INET, raw16[12:])
            else:
                text = socket.inet_ntop(socket.AF_INET6, raw16)
            if len(cache) > 65536:
                cache.clear()
            cache[raw16] = text
        return text

    def comm(self, raw):
        text = self._comms.get(raw)
        if text is None:
            text = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            if len(self._comms) > 65536:
                self._comms.clear()
            self._comms[raw] = text
        return text


_NAMES = states.NAMES
_OWNER = wire.OWNER_FROM
_REASON = {k: (None if v == "none" else v) for k, v in wire.REASON.items()}
_VIA = {k: (None if v == "kernel" else v) for k, v in wire.VIA.items()}
_F_IN_OLD = wire.F_IN_OLD
_KIND_STATE = wire.KIND_STATE
# One shared int object per port: the table holds two per connection, and a
# fresh int from each unpack would cost 28 bytes apiece.
_PORTS = tuple(range(65536))


def decode(fmt, raw, source="bpf"):
    """A raw wire tuple -> a state record (dict, schema field order).

    Internal records (hand-offs) come back with ``type`` "handoff"; the
    connection table consumes them and nothing prints them.  This runs once
    per kernel event, so the Formatter caches are probed inline: a method
    call costs more than the dict lookup it wraps.
    """
    (ts_ns, sk, twaddr, in_old, saddr, daddr, pid, sport, dport, family,
     old, new, owner_from, flags, reason, via, kind, comm) = raw
    us = (ts_ns + fmt.wall_offset - fmt._ms_ns) // 1000      # see Formatter.ts
    if not 0 <= us < 1000:
        us = fmt._new_ms(ts_ns + fmt.wall_offset)
    addrs = fmt._addrs[family]
    laddr = addrs.get(saddr) or fmt.addr(family, saddr)
    raddr = addrs.get(daddr) or fmt.addr(family, daddr)
    if pid:
        # the pid itself needs no interning: the table keeps it only inside
        # an interned meta tuple (table._meta)
        comm = fmt._comms.get(comm) or fmt.comm(comm)
    else:
        pid = comm = None
    rec = {
        "type": STATE if kind == _KIND_STATE else "handoff",
        "ts": fmt._ms_text + _US3[us],
        "sk": "%x" % sk,
        "family": family,
        "laddr": laddr,
        "lport": _PORTS[sport],
        "raddr": raddr,
        "rport": _PORTS[dport],
        "old": _NAMES[old],
        "new": _NAMES[new],
        "in_old_ns": in_old if flags & _F_IN_OLD else None,
        "pid": pid,
        "comm": comm,
        "owner_from": _OWNER[owner_from],
        "source": source,
    }
    if via:
        rec["via"] = _VIA[via]
    if reason:
        rec["reason"] = _REASON[reason]
    return rec, ts_ns, sk, twaddr


def lost(ts, count, what, source="bpf"):
    """``what``: ringbuf_lost (records dropped: the ring buffer was full),
    socks_full / tw_full (sockets the kernel maps had no room for: their
    durations and owners may be missing)."""
    return {"type": LOST, "ts": ts, "count": count, "what": what, "source": source}
