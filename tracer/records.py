"""Kernel records -> output records: bytes from the ring buffer become dicts
with exactly the fields tracer/spec.py declares, in its order.

This is the reference formatter.  tracer/_fmt.c writes the same NDJSON
straight from the bytes, faster; tests/test_fmt.py checks that the two agree
byte for byte (``orjson.dumps`` of these dicts).

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

import errno
import socket
import struct
import time

from . import spec, states, wire
from .text import decode as decode_name

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
        # Timestamps come in bursts: the text up to the milliseconds is made
        # once per millisecond and each record appends its microseconds.
        self._ms_ns = -1 << 80
        self._ms_text = ""
        self._sec = None
        self._sec_text = ""
        self._addrs = {4: {}, 6: {}}     # family -> {16 raw bytes: text}
        self._comms = {}
        self.context = None              # tracer.context.Context, made when needed

    def ts(self, mono_ns):
        """RFC 3339 UTC with microseconds for a CLOCK_MONOTONIC time."""
        us = (mono_ns + self.wall_offset - self._ms_ns) // 1000
        if not 0 <= us < 1000:
            us = self._new_ms(mono_ns + self.wall_offset)
        return self._ms_text + _US3[us]

    def _new_ms(self, wall):
        sec, frac = divmod(wall, 1_000_000_000)
        if sec != self._sec:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        ms, ns = divmod(frac, 1_000_000)
        self._ms_ns = wall - ns
        self._ms_text = "%s.%03d" % (self._sec_text, ms)
        return ns // 1000

    def addr(self, family, raw16):
        """16 bytes as the kernel gives them (IPv4 mapped) -> text."""
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

    def where(self, netns, uid, cgroup_id):
        """A record's context: (netns, uid, cgroup path, container, unit),
        from the kernel's numbers (0 and NONE_U32: not known)."""
        if cgroup_id:
            if self.context is None:
                from .context import Context
                self.context = Context()
            path, container, unit = self.context.describe(cgroup_id)
        else:
            path = container = unit = None
        return (netns or None, None if uid == _NONE_U32 else uid, path, container, unit)

    def comm(self, raw):
        text = self._comms.get(raw)
        if text is None:
            text = decode_name(raw)
            if len(self._comms) > 65536:
                self._comms.clear()
            self._comms[raw] = text
        return text


_NAMES = states.NAMES
# the numbers a kernel record may carry: 0 (and anything unnamed) is no TCP
# state, and a record with one is corrupted: undecodable, not "old": null
_STATE = {num: name for num, name in enumerate(_NAMES) if name}
_NUM = states.NUMBERS
_OWNER = wire.OWNER_FROM
_ROLE = {k: (None if v == "unknown" else v) for k, v in wire.ROLE.items()}
_REASON = {k: (None if v == "none" else v) for k, v in wire.REASON.items()}
_VIA = {k: (None if v == "kernel" else v) for k, v in wire.VIA.items()}
_END = wire.END
_F_IN_OLD = wire.FLAGS["in_old"]
_F_LOWER = wire.FLAGS["lower"]
_F_HEALTH = wire.FLAGS["health"]
_F_RST_SENT = wire.FLAGS["rst_sent"]
_F_RST_RECV = wire.FLAGS["rst_recv"]
_NONE_U32 = wire.NONE_U32
_NO_HEALTH = (None,) * 8
_NO_WHERE = (None,) * 5
_TIMED = tuple((name, _NUM[name]) for name in spec.TIMED_STATES)
_FIN_WAIT1, _CLOSE_WAIT, _CLOSING = _NUM["FIN_WAIT1"], _NUM["CLOSE_WAIT"], _NUM["CLOSING"]
_HDR = struct.Struct("<II")           # a ring buffer record's header: length, page offset
_KIND = struct.Struct("<I")
_BUSY_DISCARD = 3 << 30


def errno_name(num):
    """12 -> 'ENOMEM'; an unknown number -> 'E123'; 0 -> None."""
    if not num:
        return None
    return errno.errorcode.get(num, "E%d" % num)


# -- the three record types about a connection, built in one place each ------
#
# tup: (conn, family, laddr, lport, raddr, rport); owner: (pid, comm,
# owner_from, role); where: (netns, uid, cgroup, container, unit) or None
# (all unknown); health: (bytes_sent, bytes_received, segs_out, segs_in,
# retrans, rtt_us, rttvar_us[, syn_retrans]) or None.  Both backends and the
# reconciliation build their records with these; tracer/spec.py is the
# order, tests check it.

def state_record(ts, tup, owner, old, new, in_old_ns, lower_bound, via, reason, source,
                 approx, where=None):
    conn, family, laddr, lport, raddr, rport = tup
    pid, comm, owner_from, role = owner
    netns, uid, cgroup, container, unit = where or _NO_WHERE
    return {
        "type": "state", "ts": ts, "conn": conn, "family": family, "laddr": laddr,
        "lport": lport, "raddr": raddr, "rport": rport, "old": old, "new": new,
        "in_old_ns": in_old_ns, "lower_bound": lower_bound, "pid": pid, "comm": comm,
        "owner_from": owner_from, "role": role, "netns": netns, "uid": uid,
        "cgroup": cgroup, "container": container, "unit": unit, "via": via,
        "reason": reason, "source": source, "approx": approx,
    }


def closed_record(fmt, ts_ns, tup, owner, start_ns, spent, path, end, error, reason,
                  lower_bound, source, approx, where=None, reset=None, health=None):
    """*spent*: ns by state number (any mapping or sequence); *path*: the
    state numbers left, in order (CLOSE is added)."""
    conn, family, laddr, lport, raddr, rport = tup
    pid, comm, owner_from, role = owner
    netns, uid, cgroup, container, unit = where or _NO_WHERE
    sent, received, segs_out, segs_in, retrans, rtt, rttvar, syn = health or _NO_HEALTH
    names = [_NAMES[s] for s in path]
    names.append("CLOSE")
    return {
        "type": "closed", "ts": fmt.ts(ts_ns), "conn": conn, "family": family,
        "laddr": laddr, "lport": lport, "raddr": raddr, "rport": rport, "pid": pid,
        "comm": comm, "owner_from": owner_from, "role": role, "netns": netns, "uid": uid,
        "cgroup": cgroup, "container": container, "unit": unit,
        "start_ts": fmt.ts(start_ns), "lifetime_ns": max(0, ts_ns - start_ns),
        "states": {name: spent[num] for name, num in _TIMED},
        "path": names, "closed_first": closed_first(names), "end": end, "error": error,
        "reset": reset, "reason": reason, "lower_bound": lower_bound,
        "bytes_sent": sent, "bytes_received": received, "segs_out": segs_out,
        "segs_in": segs_in, "retrans": retrans, "rtt_us": rtt, "rttvar_us": rttvar,
        "syn_retrans": syn, "source": source, "approx": approx,
    }


def socket_record(ts, tup, owner, state, in_state_ns, age_ns, lower_bound, estimate, source,
                  approx, where=None, health=None):
    conn, family, laddr, lport, raddr, rport = tup
    pid, comm, owner_from, role = owner
    netns, uid, cgroup, container, unit = where or _NO_WHERE
    sent, received, segs_out, segs_in, retrans, rtt, rttvar = (health or _NO_HEALTH)[:7]
    return {
        "type": "socket", "ts": ts, "conn": conn, "family": family, "laddr": laddr,
        "lport": lport, "raddr": raddr, "rport": rport, "state": state,
        "in_state_ns": in_state_ns, "age_ns": age_ns, "lower_bound": lower_bound,
        "estimate": estimate, "pid": pid, "comm": comm, "owner_from": owner_from,
        "role": role, "netns": netns, "uid": uid, "cgroup": cgroup,
        "container": container, "unit": unit, "bytes_sent": sent,
        "bytes_received": received, "segs_out": segs_out, "segs_in": segs_in,
        "retrans": retrans, "rtt_us": rtt, "rttvar_us": rttvar,
        "source": source, "approx": approx,
    }


_FIN_OUT_ACKED = frozenset((_NUM["FIN_WAIT2"], _NUM["TIME_WAIT"]))
_FIN_IN = frozenset((_NUM["CLOSE_WAIT"], _NUM["LAST_ACK"], _NUM["CLOSING"], _NUM["TIME_WAIT"]))


def live_health(state, h, client):
    """sock_diag's tcp_info figures of a live socket in *state* (a number)
    -> the health fields.  The kernel's byte counts move with sequence
    numbers, and the SYN and FIN take one each: a *client*'s bytes_acked
    counts its SYN (an accepted socket starts past it), and anyone's its FIN
    once acknowledged; bytes_received the peer's FIN.  The fields are
    payload, as the kernel program gives them for closed records.

    >>> live_health(_NUM["ESTABLISHED"], (101, 7, 5, 4, 0, 40, 20), True)
    (100, 7, 5, 4, 0, 40, 20)
    >>> live_health(_NUM["LAST_ACK"], (100, 8, 5, 4, 0, 40, 20), False)
    (100, 7, 5, 4, 0, 40, 20)
    >>> live_health(_NUM["FIN_WAIT2"], (102, 0, 5, 4, 0, 40, 20), True)
    (100, 0, 5, 4, 0, 40, 20)
    >>> live_health(_NUM["SYN_SENT"], (0, 0, 1, 0, 1, 0, 0), True)
    (0, 0, 1, 0, 1, 0, 0)
    """
    if h is None:
        return None
    acked, received = h[0], h[1]
    if acked and client:
        acked -= 1
    if acked and state in _FIN_OUT_ACKED:
        acked -= 1
    if received and state in _FIN_IN:
        received -= 1
    return (acked, received) + tuple(h[2:])


def reset_of(flags):
    """Who reset the connection, from a closed record's flags."""
    if flags & _F_RST_RECV:
        return "both" if flags & _F_RST_SENT else "received"
    return "sent" if flags & _F_RST_SENT else None


def closed_first(path):
    """Who sent the first FIN, from the states a connection went through."""
    if "FIN_WAIT1" in path or "CLOSING" in path:
        return "local"
    if "CLOSE_WAIT" in path:
        return "remote"
    return None


# -- kernel records ------------------------------------------------------------

def _who(fmt, conn, family, saddr, sport, daddr, dport, pid, comm, owner_from, role):
    return (("%x" % conn, family, fmt.addr(family, saddr), sport, fmt.addr(family, daddr),
             dport),
            (pid or None, fmt.comm(comm) if pid else None, _OWNER[owner_from], _ROLE[role]))


def state(fmt, t, source="bpf"):
    """A st_state tuple (wire.STATE_FIELDS order) -> a state record."""
    (_, pid, ts_ns, conn, in_old, saddr, daddr, sport, dport, family, old, new,
     owner_from, role, flags, reason, via, comm, cgroup, netns, uid) = t
    tup, owner = _who(fmt, conn, family, saddr, sport, daddr, dport, pid, comm,
                      owner_from, role)
    return state_record(fmt.ts(ts_ns), tup, owner, _STATE[old], _STATE[new],
                        in_old if flags & _F_IN_OLD else None, bool(flags & _F_LOWER),
                        _VIA[via], _REASON[reason], source, False,
                        fmt.where(netns, uid, cgroup))


def closed(fmt, t, source="bpf"):
    """A st_closed tuple (wire.unpack_closed) -> a closed record."""
    (_, pid, ts_ns, conn, start_ns, spent, saddr, daddr, sport, dport, error,
     family, owner_from, role, flags, end, reason, path_len, _pad, path, comm,
     cgroup, netns, uid, *health) = t
    tup, owner = _who(fmt, conn, family, saddr, sport, daddr, dport, pid, comm,
                      owner_from, role)
    path = path[:path_len]
    for num in path:
        _STATE[num]                      # KeyError for a number that is no state
    if flags & _F_HEALTH:
        if health[-1] == _NONE_U32:      # syn_retrans: not a connect
            health[-1] = None
    else:
        health = None
    return closed_record(fmt, ts_ns, tup, owner, start_ns, spent, path, _END[end],
                         errno_name(error), _REASON[reason], bool(flags & _F_LOWER), source,
                         False, fmt.where(netns, uid, cgroup), reset_of(flags), health)


def walk(span):
    """Records in a span of ring-buffer bytes (each after its 8-byte header,
    8-aligned, as bpf_backend's reader hands them over) -> (kind, offset)
    pairs and the count of records that could not be read (an unknown kind
    or a length that does not match it)."""
    out = []
    bad = 0
    off, end = 0, len(span)
    sizes = wire.SIZES
    while off + 8 <= end:
        length = _HDR.unpack_from(span, off)[0]
        size = length & ~_BUSY_DISCARD
        body = off + 8
        if not length & _BUSY_DISCARD:
            kind = _KIND.unpack_from(span, body)[0] if size >= 4 and body + 4 <= end else None
            if kind in sizes and sizes[kind] == size and body + size <= end:
                out.append((kind, body))
            else:
                bad += 1
        off = (body + size + 7) & ~7
    return out, bad


def decode(fmt, span, source="bpf"):
    """(records, undecodable count) for a span of ring-buffer bytes."""
    out = []
    items, bad = walk(span)
    unpack_state = wire.STATE.unpack_from
    for kind, off in items:
        try:
            if kind == wire.KIND_STATE:
                out.append(state(fmt, unpack_state(span, off), source))
            else:
                out.append(closed(fmt, wire.unpack_closed(span, off), source))
        except (IndexError, KeyError):      # a number no table names: corrupted
            bad += 1
    return out, bad


def native_config(fmt, source="bpf", cgroups=None):
    """The arguments of ``tracer._fmt.configure`` for output identical to
    ``decode(fmt, span, source)``: the same tables, as plain values;
    *cgroups*: {id: (path, container, unit)} as fmt.where gives them."""
    return fmt.wall_offset, {
        "cgroups": dict(cgroups or {}),
        "states": tuple(_NAMES),
        "owner_from": dict(_OWNER),
        "role": dict(_ROLE),
        "reason": dict(_REASON),
        "via": dict(_VIA),
        "end": dict(_END),
        "errno": {n: errno_name(n) for n in range(1, 256)},
        "timed": _TIMED,
        "source": source,
    }


def lost(ts, count, what, source="bpf"):
    return {"type": "lost", "ts": ts, "count": count, "what": what, "source": source}
