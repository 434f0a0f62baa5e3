"""The live connection table: every TCP socket the host has, what state it is
in, since when, owned by whom; and, when a connection ends, its summary.

It sits between decoding and filtering: each state record passes through
:meth:`ConnTable.apply`, which fills in what the kernel could not know (the
owner of a socket older than the tracer, found in the start-up snapshot), and
returns the ``closed`` record when a connection ends.

Sockets are keyed by the kernel's socket address while the full socket lives,
and by the timewait timer's address once a timewait socket holds the
connection: the freed socket address may be reused at once by a new socket
while the old connection still sits in TIME_WAIT.
"""

import random
import struct
import time
from math import exp as _exp
from math import log as _log
from math import log1p as _log1p

from . import states


# Conn.blob: socket address, the steps so far, since (ns) last: a move
# rewrites the tail in one pack, <step><since>, and keeps the rest.
_HEAD = struct.Struct("<QQ")      # socket address, since: a new socket
_TS = struct.Struct("<Q")
_STEP = struct.Struct("<BQ")      # state number, ns spent in it
_STEP_TS = struct.Struct("<BQQ")  # a step, then the new since
_ts = _TS.pack
_step_ts = _STEP_TS.pack
_NUM = states.NUMBERS
_NAME = states.NAMES
_random = random.random            # the module's generator: random.seed() applies
_getrandbits = random.getrandbits
_META = {}                        # (pid, comm, owner_from, family, role, lower bound) -> itself


_META_MAX = 1 << 16                # distinct tuples kept for sharing: see trim_meta


def _meta(*key):
    return _META.setdefault(key, key)


def trim_meta():
    """Forget the interned meta tuples once there are many: over days of
    pid churn _META would only grow.  Sockets keep the tuples they hold;
    only later sockets stop sharing with them.  Once per read (run.py), not
    per event: tracer/_native.c interns into the same dict."""
    if len(_META) > _META_MAX:
        _META.clear()


class Conn:
    """One socket.  A TIME_WAIT storm puts a million of these in the table,
    so what grows (since when, the states left so far with their durations)
    lives in one packed ``bytes`` blob, and every other slot points at a
    string, int or tuple shared by many connections: ``meta`` holds owner,
    family, role and the lower-bound flag, interned.  Measured by
    bench/table_memory.py: under 300 bytes per socket.

    The blob is the socket address, the steps so far, then ``since``: a move
    (once per event, inlined in ConnTable.apply) replaces the last 8 bytes
    with one step and the new since, packed together."""

    __slots__ = ("laddr", "lport", "raddr", "rport", "meta", "state", "blob")

    def __init__(self, rec, sk, since, role=None):
        self.laddr = rec["laddr"]
        self.lport = rec["lport"]
        self.raddr = rec["raddr"]
        self.rport = rec["rport"]
        # _meta inlined: in a storm every other event makes a socket
        key = (rec["pid"], rec["comm"], rec["owner_from"], rec["family"], role, False)
        self.meta = _META.setdefault(key, key)
        self.state = rec["old"]
        self.blob = _HEAD.pack(sk, since)

    pid = property(lambda self: self.meta[0])
    comm = property(lambda self: self.meta[1])
    owner_from = property(lambda self: self.meta[2])
    family = property(lambda self: self.meta[3])
    role = property(lambda self: self.meta[4])
    lower_bound = property(lambda self: self.meta[5])
    since = property(lambda self: _TS.unpack_from(self.blob, len(self.blob) - 8)[0])
    sk = property(lambda self: _TS.unpack_from(self.blob)[0])

    def set_owner(self, pid, comm, how):
        self.meta = _meta(pid, comm, how, *self.meta[3:])

    def set_role(self, role):
        m = self.meta
        self.meta = _meta(m[0], m[1], m[2], m[3], role, m[5])

    def restart(self, since, lower_bound):
        """Re-base a socket older than the tracer: in its state since at least *since*."""
        m = self.meta
        self.meta = _meta(m[0], m[1], m[2], m[3], m[4], lower_bound)
        self.blob = self.blob[:-8] + _TS.pack(since)

    def history(self):
        """[(state name, ns)] of the states left so far, in order."""
        return [(_NAME[n], ns) for n, ns in _STEP.iter_unpack(self.blob[8:-8])]


class Reservoir:
    """Durations of one state: exact count and max, percentiles from a
    uniform sample of at most ``size`` values (bounded memory for days).

    Sampling is Li's "Algorithm L": once the sample is full it draws how
    many values to skip before the next replacement, so a typical add is a
    counter bump rather than a random draw (this runs once per event).
    ``due`` is the count of the next value that goes into the sample: adding
    a value is count += 1, max, and one test against ``due`` (done where the
    values arrive: ConnTable.apply and tracer/_native.c), and only a due
    value costs the call to ``take``.
    """

    __slots__ = ("count", "max", "due", "sample", "size", "_w", "_bits")

    def __init__(self, size=10_000):
        self.count = 0
        self.max = 0
        self.due = 0          # while the sample fills, every value is due
        self.sample = []
        self.size = size
        self._w = 1.0
        self._bits = size.bit_length()

    def take(self, ns):
        """The rest of adding a due value (already counted).  While the
        table warms up this is a third of all adds, hence the local names."""
        size = self.size
        if self.count <= size:
            self.sample.append(ns)
            if self.count < size:
                return
        else:
            # random.randrange(size) the way it draws (the same stream),
            # without its argument checks: a third of the cost of a take
            i = _getrandbits(self._bits)
            while i >= size:
                i = _getrandbits(self._bits)
            self.sample[i] = ns
        # the next skip; 1 - random() is in (0, 1]: log() never sees 0
        self._w = w = self._w * _exp(_log(1.0 - _random()) / size)
        gap = _log(1.0 - _random()) / _log1p(-w) if w < 1.0 else 0.0
        self.due = self.count + int(gap) + 1

    def percentiles(self, ps=(50, 90, 99)):
        data = sorted(self.sample)
        out = {}
        for p in ps:
            out["p%d_ns" % p] = data[min(len(data) - 1, int(len(data) * p / 100))] if data else None
        return out


class _Exits:
    """What the table counts per state left: transitions to each next state
    (``to``: name -> count) and the durations of the state (a Reservoir;
    None for CLOSE and LISTEN, which are not timed).  One lookup by the
    state's name finds both, and its number for Conn.blob."""

    __slots__ = ("num", "to", "durations")

    def __init__(self, name):
        self.num = _NUM.get(name)
        self.to = {}
        timed = self.num is not None and name not in ("CLOSE", "LISTEN")
        self.durations = Reservoir() if timed else None


class ConnTable:
    def __init__(self, start_ns, cap=2_000_000, source="bpf"):
        self.start_ns = start_ns
        self.cap = cap
        self.source = source
        # these dicts live as long as the table: tracer/_native.c holds them
        self.live = {}        # socket address -> Conn
        self.tw = {}          # timewait timer address -> Conn
        self.seed = {}        # (family, laddr, lport, raddr, rport) -> Conn from the snapshot
        self.seed_expires = {}  # same key -> when a snapshot TIME_WAIT runs out (ns)
        self.seed_listen = {}  # (family, laddr, lport) -> (pid, comm)
        self.evicted = 0
        self.exits = {}       # state name -> _Exits: transitions, durations

    # -- start-up snapshot -------------------------------------------------

    def seed_from(self, sockets, owners):
        """Remember the sockets that exist before tracing starts.

        *sockets*: procnet.ProcSocket entries; *owners*: inode -> (pid, comm).
        /proc hides the kernel socket address (the pointer column is hashed),
        so they are matched to later events by their 4-tuple.
        """
        for s in sockets:
            pid, comm = owners.get(s.inode, (None, None))
            name = states.NAMES[s.state]
            key = (s.family, s.laddr, s.lport, s.raddr, s.rport)
            conn = Conn({"family": s.family, "laddr": s.laddr, "lport": s.lport,
                         "raddr": s.raddr, "rport": s.rport, "pid": pid, "comm": comm,
                         "owner_from": "proc" if pid else "unknown", "old": name},
                        0, self.start_ns)
            conn.restart(self.start_ns, True)
            self.seed[key] = conn
            if name == "TIME_WAIT":
                # the kernel never tells us about timewait sockets it had
                # before we started: /proc gives the time they have left
                self.seed_expires[key] = self.start_ns + s.time_left_ns
            if name == "LISTEN" and pid:
                self.seed_listen[(s.family, s.laddr, s.lport)] = (pid, comm)

    def _seed_owner(self, rec):
        key = (rec["family"], rec["laddr"], rec["lport"], rec["raddr"], rec["rport"])
        hit = self.seed.pop(key, None)
        if hit is not None:
            self.seed_expires.pop(key, None)
            return hit.pid, hit.comm, hit.owner_from
        if rec["old"] == "LISTEN":
            # accepted by a listener that predates us
            fam = rec["family"]
            for laddr in (rec["laddr"], "0.0.0.0" if fam == 4 else "::", "::"):
                owner = self.seed_listen.get((fam, laddr, rec["lport"]))
                if owner:
                    return owner[0], owner[1], "listener"
        return None, None, "unknown"

    # -- the stream ----------------------------------------------------------

    def apply(self, rec, ts_ns, sk, twaddr):
        """Update the table with one decoded record; fill in what it lacks.
        Returns a ``closed`` record when a connection has ended, else None.

        This runs once per event, so adding to a Reservoir and the socket's move
        (see Conn) are inlined: a method call costs more than the steps it
        wraps."""
        if twaddr:
            conn = self.tw.get(twaddr)
            if conn is None:
                conn = self.live.pop(sk, None)
                if conn is not None:
                    self.tw[twaddr] = conn
        else:
            conn = self.live.get(sk)
        if conn is None:
            conn = self._new(rec, ts_ns, sk, twaddr)

        meta = conn.meta
        if rec["pid"] is None:
            if meta[0] is not None:
                rec["pid"], rec["comm"], rec["owner_from"] = meta[0], meta[1], meta[2]
        elif meta[0] is None:
            conn.set_owner(rec["pid"], rec["comm"], rec["owner_from"])

        old = rec["old"]
        in_old = rec["in_old_ns"]
        if in_old is None and meta[5] and old == conn.state:
            in_old = ts_ns - conn.since
            rec["in_old_ns"] = in_old
            rec["lower_bound"] = True
        if rec["type"] != "state":
            return None      # a hand-off: FIN_WAIT2 goes on, held by a timewait socket

        new = rec["new"]
        exits = self.exits.get(old) or self._exits(old)
        to = exits.to
        to[new] = to.get(new, 0) + 1
        res = exits.durations
        if in_old is not None and res is not None:
            n = res.count = res.count + 1           # adding to the Reservoir
            if in_old > res.max:
                res.max = in_old
            if n >= res.due:
                res.take(in_old)
            conn.blob = conn.blob[:-8] + _step_ts(exits.num, in_old, ts_ns)   # a step, then since
        else:
            conn.blob = conn.blob[:-8] + _ts(ts_ns)
        conn.state = new

        if new == "CLOSE":
            if twaddr:
                self.tw.pop(twaddr, None)
            elif self.live.get(sk) is conn:
                del self.live[sk]
            return self._closed(conn, rec, ts_ns)
        return None

    def _exits(self, name):
        exits = self.exits[name] = _Exits(name)
        return exits

    def _new(self, rec, ts_ns, sk, twaddr):
        old = rec["old"]
        new = rec["new"]
        if old == "CLOSE":
            conn = Conn(rec, sk, ts_ns, "client" if new == "SYN_SENT" else
                        "listener" if new == "LISTEN" else None)
        elif old == "LISTEN" and new == "SYN_RECV":
            conn = Conn(rec, sk, ts_ns, "server")
        else:
            conn = Conn(rec, sk, ts_ns)
            # a socket older than the tracer
            pid, comm, how = self._seed_owner(rec)
            if rec["pid"] is None and pid is not None:
                rec["pid"], rec["comm"], rec["owner_from"] = pid, comm, how
                conn.set_owner(pid, comm, how)
            if rec["in_old_ns"] is None:
                conn.restart(self.start_ns, True)
            if (rec["family"], rec["laddr"], rec["lport"]) in self.seed_listen:
                conn.set_role("server")
        if old == "LISTEN" and rec["pid"] is None:
            pid, comm, how = self._seed_owner(rec)
            if pid is not None:
                rec["pid"], rec["comm"], rec["owner_from"] = pid, comm, how
                conn.set_owner(pid, comm, how)
        if len(self.live) + len(self.tw) >= self.cap:
            self._evict()
        if twaddr:
            self.tw[twaddr] = conn
        else:
            self.live[sk] = conn
        return conn

    def _evict(self):
        """Drop the oldest entry (dicts keep insertion order); counted."""
        victim = self.tw if len(self.tw) > len(self.live) else self.live
        if victim:
            del victim[next(iter(victim))]
            self.evicted += 1

    def _closed(self, conn, rec, ts_ns):
        meta = conn.meta
        if meta[4] == "listener":
            return None
        # the history read straight from the blob, in one pass (see Conn.history)
        path = []
        spent = {}
        lifetime = 0
        for num, ns in _STEP.iter_unpack(conn.blob[8:-8]):
            name = _NAME[num]
            path.append(name)
            spent[name] = spent.get(name, 0) + ns
            lifetime += ns
        if "FIN_WAIT1" in path:
            first = "local"
        elif "CLOSE_WAIT" in path:
            first = "remote"
        else:
            first = None
        last = path[-1] if path else rec["old"]
        if last == "SYN_SENT":
            end = "refused" if (rec["in_old_ns"] or 0) < 3_000_000_000 else "timeout"
        elif last == "TIME_WAIT" or last == "LAST_ACK":
            end = "normal"
        elif last == "FIN_WAIT2" and rec.get("reason") == "expired":
            end = "timeout"
        elif last == "FIN_WAIT2" and rec.get("reason") == "reused":
            end = "normal"
        else:
            end = "reset"
        path.append("CLOSE")
        out = {
            "type": "closed",
            "ts": rec["ts"],
            "sk": rec["sk"],
            "family": meta[3],
            "laddr": rec["laddr"],
            "lport": rec["lport"],
            "raddr": rec["raddr"],
            "rport": rec["rport"],
            "pid": rec["pid"],
            "comm": rec["comm"],
            "owner_from": rec["owner_from"],
            "role": meta[4],
            "lifetime_ns": lifetime,
            "states": spent,
            "path": path,
            "closed_first": first,
            "end": end,
            "source": rec["source"],
        }
        if meta[5]:
            out["lower_bound"] = True
        if self.source == "proc":
            out["approx"] = True
        return out

    # -- views ---------------------------------------------------------------

    def sockets(self, now_ns, fmt_ts):
        """The table as ``socket`` records, like ``ss -tanp`` with ages.
        Sockets known only from the start-up snapshot (no event yet) have
        ``sk`` "0": /proc does not show socket addresses."""
        for conn in self._all(now_ns):
            rec = {
                "type": "socket",
                "ts": fmt_ts(now_ns),
                "sk": "%x" % conn.sk,
                "family": conn.family,
                "laddr": conn.laddr,
                "lport": conn.lport,
                "raddr": conn.raddr,
                "rport": conn.rport,
                "state": conn.state,
                "in_state_ns": now_ns - conn.since,
                "age_ns": now_ns - conn.since + sum(ns for _, ns in conn.history()),
                "pid": conn.pid,
                "comm": conn.comm,
                "owner_from": conn.owner_from,
                "source": self.source,
            }
            if conn.lower_bound:
                rec["lower_bound"] = True
            if self.source == "proc":
                rec["approx"] = True
            yield rec

    def _all(self, now_ns):
        for key, end in list(self.seed_expires.items()):
            if end <= now_ns:
                del self.seed_expires[key]
                self.seed.pop(key, None)
        return list(self.live.values()) + list(self.tw.values()) + list(self.seed.values())

    def current_states(self, now_ns=None):
        counts = {}
        for conn in self._all(now_ns if now_ns is not None else time.monotonic_ns()):
            counts[conn.state] = counts.get(conn.state, 0) + 1
        return counts

    @property
    def transitions(self):
        """{(old, new): count} of every transition seen."""
        return {(old, new): n for old, exits in self.exits.items()
                for new, n in exits.to.items()}

    def summary(self, ts):
        transitions = sorted(self.transitions.items())
        durations = {}
        for name, exits in sorted(self.exits.items()):
            res = exits.durations
            if res is None or not res.count:
                continue
            d = {"count": res.count, "max_ns": res.max}
            d.update(res.percentiles())
            durations[name] = d
        return {
            "type": "summary",
            "ts": ts,
            "transitions": {"%s->%s" % k: v for k, v in transitions},
            "durations": durations,
            "current": self.current_states(),
            "evicted": self.evicted,
            "source": self.source,
        }
