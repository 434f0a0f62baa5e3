"""The /proc backend: the same stream of state records, from snapshots.

When eBPF is not available (not root, no bcc, no kernel headers), socktrace
polls /proc/net/tcp and tcp6 every ``--interval`` seconds and reports what
changed between two snapshots.  Its records have the same fields as the eBPF
backend's, plus ``"approx": true``, because what it reports is limited by
what two snapshots can show:

* **Transitions between polls are not invented.**  A socket that appears
  already ESTABLISHED is reported as ``CLOSE -> ESTABLISHED`` with
  ``in_old_ns`` null: it was never seen in SYN_SENT, so no SYN_SENT is made
  up.  Likewise a socket that goes ESTABLISHED -> FIN_WAIT1 -> FIN_WAIT2
  between two polls is one ``ESTABLISHED -> FIN_WAIT2`` record, and a
  socket that lives and dies between two polls is not seen at all.
* **Durations are approximate.**  ``in_old_ns`` of ``X -> Y`` is the time from
  the poll that first saw the socket in X to the poll that saw it in Y, so
  it is off by up to one interval either way.  For a socket that was already
  there when tracing began it is a lower bound, and the record says
  ``"lower_bound": true``.  A TIME_WAIT socket carries its own clock: the
  kernel prints the time left of its fixed 60 s, so the time it entered
  TIME_WAIT is estimated as ``now - (60 s - time left)``, both for TIME_WAIT
  sockets seen for the first time and for sockets seen moving into it.
* A socket that disappears is reported ``X -> CLOSE`` (a TIME_WAIT socket
  that ends: ``TIME_WAIT -> CLOSE``).  A 4-tuple that reappears in a state
  the old socket could not have reached (TIME_WAIT -> SYN_SENT: the port was
  reused), or with a different inode, is a new socket: ``X -> CLOSE`` for the
  old one, then ``CLOSE -> Y`` for the new one.  (Two lines with the same
  4-tuple in one snapshot -- a TIME_WAIT socket and the new connection
  taking it over, for the microseconds before the kernel kills the former
  -- count as one socket, the later line.)

Identity (``sk``).  /proc hides the kernel socket address (the pointer column
is hashed or zeroed by %pK, and procnet does not return it), and the inode is
not stable over a socket's life: it is 0 before accept(), becomes 0 again
when the owner closes the file descriptor (an orphan finishing its close) and
is 0 for TIME_WAIT.  So a socket is identified by its 4-tuple, which is
unique among connected sockets: ``sk`` is a 64-bit BLAKE2b hash of family and
4-tuple (plus the inode for listeners, which SO_REUSEPORT lets share one
address), the same on every run.  It is also the ``twaddr`` key of TIME_WAIT
entries, so the connection table files them like the eBPF backend's.

Owners.  pid and comm come from :class:`tracer.owners.OwnerCache`, asked only
about inodes that were not there at the previous poll (a new socket, or an
accept() giving an existing one its inode): a poll in which nothing changed
never walks /proc/*/fd.  Once known, an owner stays with the socket through
FIN_WAIT2 and TIME_WAIT, where the kernel no longer shows an inode.  As an
ordinary user, sockets of other users' processes keep pid null,
``owner_from`` "unknown".

Speed.  A poll reads both files and keys each line by its raw address tokens
-> (state, inode) tokens, without decoding anything; a poll that finds the
same dict as the previous one is done.  Only lines that are new or changed go
through :func:`tracer.procnet.parse_tcp` (the strict parser).  On a
synthetic 100,000-socket /proc this steady-state poll takes ~0.1 s (see
tests/test_proc_backend.py::test_steady_state_poll_100k).

Baseline.  :meth:`ProcBackend.open` takes the first snapshot.  Those sockets
are not transitions; the first :meth:`read` hands them to the connection
table as internal ``handoff`` records (the table files them, nothing prints
them), so that table dumps and the summary know them, with their owners.
"""

import gc
import hashlib
import os
import time

from . import procnet, records, states

SOURCE = "proc"
TIME_WAIT_LEN_NS = 60 * 1_000_000_000      # TCP_TIMEWAIT_LEN, fixed in the kernel
_TIMER_TIME_WAIT = procnet.TIMER_TIME_WAIT

_S = states.NUMBERS
_TW = _S["TIME_WAIT"]
_LISTEN_TOK = b"%02X" % _S["LISTEN"]
_NAMES = states.NAMES

# Where each state can go next, in one or more steps: a 4-tuple seen in X and
# then in Y not reachable from X is a different socket.
_AFTER_EST = {_S[n] for n in ("FIN_WAIT1", "FIN_WAIT2", "CLOSING", "TIME_WAIT",
                              "CLOSE_WAIT", "LAST_ACK")}
REACHABLE = {
    _S["SYN_SENT"]: {_S["ESTABLISHED"], _S["SYN_RECV"]} | _AFTER_EST,
    _S["SYN_RECV"]: {_S["ESTABLISHED"]} | _AFTER_EST,
    _S["NEW_SYN_RECV"]: {_S["ESTABLISHED"], _S["SYN_RECV"]} | _AFTER_EST,
    _S["ESTABLISHED"]: set(_AFTER_EST),
    _S["FIN_WAIT1"]: {_S["FIN_WAIT2"], _S["CLOSING"], _S["TIME_WAIT"]},
    _S["FIN_WAIT2"]: {_S["TIME_WAIT"]},
    _S["CLOSING"]: {_S["TIME_WAIT"]},
    _S["CLOSE_WAIT"]: {_S["LAST_ACK"]},
    _S["LAST_ACK"]: set(),
    _S["TIME_WAIT"]: set(),
    _S["LISTEN"]: set(),
    _S["CLOSE"]: set(),
}


def _failure(msg):
    from .run import Failure   # lazy: run imports this module lazily too

    return Failure(msg)


def sk_of(family, key):
    """The stable identity of a socket: 64 bits of BLAKE2b of family and the
    raw /proc tokens of its 4-tuple (never 0)."""
    digest = hashlib.blake2b(b"%d " % family + key, digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def scan(data):
    """The bytes of /proc/net/tcp{,6} -> (header, snapshot, keys, lines).

    *snapshot*: raw ``b"LOCAL REMOTE"`` tokens (``b"LOCAL REMOTE INODE"`` for
    listeners) -> (state token, inode token); *keys* and *lines* are in file
    order, for finding the lines of the keys that changed.  Nothing is
    decoded or validated here: a line is validated by procnet.parse_tcp the
    first time it shows a key or value not seen before.  Raises IndexError on
    a line with fewer than ten columns.
    """
    lines = data.split(b"\n")
    header = lines[0]
    del lines[0]
    if lines and not lines[-1]:
        lines.pop()
    snap = {}
    keys = []
    append = keys.append
    listen = _LISTEN_TOK
    # Nothing made here can form a cycle; the collector would only re-walk the
    # growing dict every 700 tuples (procnet.parse_tcp does the same).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for line in lines:
            f = line.split(None, 10)
            s = f[3]
            if s != listen:
                k = f[1] + b" " + f[2]
            else:
                k = f[1] + b" " + f[2] + b" " + f[9]
            snap[k] = (s, f[9])
            append(k)
    finally:
        if gc_was_enabled:
            gc.enable()
    return header, snap, keys, lines


class _Sock:
    """What the backend remembers of one socket between polls."""

    __slots__ = ("sk", "family", "laddr", "lport", "raddr", "rport", "state", "since",
                 "inode", "pid", "comm", "owner_from", "lower_bound")

    def __init__(self, family, key, ps, now, owner, baseline):
        self.sk = sk_of(family, key)
        self.family = family
        self.laddr, self.lport, self.raddr, self.rport = ps.laddr, ps.lport, ps.raddr, ps.rport
        self.state = ps.state
        self.inode = ps.inode
        self.since = now
        self.lower_bound = baseline
        if owner is None:
            self.pid = self.comm = None
            self.owner_from = "unknown"
        else:
            self.pid, self.comm = owner
            self.owner_from = "proc"
        if ps.state == _TW and ps.timer == _TIMER_TIME_WAIT:
            self.since = _tw_entry(ps, now, 0)
            self.lower_bound = False


def _tw_entry(ps, now, floor):
    """When a TIME_WAIT socket entered TIME_WAIT, from the time it has left of
    its 60 s; never before *floor* (when we saw it in its previous state)."""
    return min(now, max(floor, now - max(0, TIME_WAIT_LEN_NS - ps.time_left_ns)))


class ProcBackend:
    """Decoded state records from /proc snapshots.  ``open()`` takes the
    baseline snapshot, ``read()`` polls once ``interval`` has passed since
    the last poll and returns ``(rec, ts_ns, sk, twaddr)`` items, as
    ``records.decode`` makes them for the eBPF backend; ``lost()`` is always
    empty (a poll loses nothing it could have seen), ``close()`` forgets."""

    source = SOURCE

    def __init__(self, interval=1.0, proc_root="/proc"):
        self.interval = interval
        self.interval_ns = int(interval * 1_000_000_000)
        self.proc_root = proc_root
        self.notes = []
        self.polls = 0
        self.last_poll_s = 0.0    # wall time of the last poll (for benchmarks)
        self._fmt = records.Formatter()
        self._owners = None
        self._snap = {4: {}, 6: {}}
        self._socks = {4: {}, 6: {}}     # raw key -> _Sock
        self._paths = {fam: os.path.join(proc_root, "net", "tcp" if fam == 4 else "tcp6")
                       for fam in (4, 6)}
        self._last = None
        self._pending = []

    # -- set-up --------------------------------------------------------------

    def open(self):
        if not any(os.path.exists(p) for p in self._paths.values()):
            raise _failure("proc backend: neither %s nor %s exists"
                           % (self._paths[4], self._paths[6]))
        try:
            from . import owners
        except ImportError as e:
            self.notes.append("proc backend: owners unknown (%s)" % e)
        else:
            self._owners = owners.OwnerCache(self.proc_root)
        if os.geteuid() != 0:
            self.notes.append("not root: owners of other users' sockets are unknown")
        self.notes.append("polling %s/net/tcp{,6} every %gs: states held for less are "
                          "not seen, durations are approximate" % (self.proc_root, self.interval))
        self._pending = self._poll(baseline=True)
        return self

    def close(self):
        self._snap = {4: {}, 6: {}}
        self._socks = {4: {}, 6: {}}
        self._pending = []
        self._owners = None

    # -- reading -------------------------------------------------------------

    def read(self):
        """The baseline's hand-offs on the first call; afterwards the
        transitions of one poll when ``interval`` has passed, else []."""
        if self._pending:
            out, self._pending = self._pending, []
            return out
        if self._last is not None and time.monotonic_ns() - self._last < self.interval_ns:
            return []
        return self._poll()

    def lost(self):
        return {}

    # -- one poll --------------------------------------------------------------

    def _read_file(self, family):
        path = self._paths[family]
        try:
            return procnet.read_file(path)
        except FileNotFoundError:
            return b""
        except OSError as e:
            raise _failure("cannot read %s: %s" % (path, e.strerror or e))

    def _scan(self, family, data):
        if not data:
            return b"", {}, [], []
        path = self._paths[family]
        try:
            header, snap, keys, lines = scan(data)
            if header.split()[:1] != [b"sl"]:
                raise IndexError
            return header, snap, keys, lines
        except IndexError:
            pass
        self._explain(family, data)
        raise _failure("%s: unexpected format" % path)

    def _explain(self, family, data):
        """Raise Failure with the strict parser's message (file and line)
        for the first bad line of *data*; return if it finds none."""
        try:
            procnet.parse_tcp(data, family, self._paths[family])
        except procnet.ProcParseError as e:
            raise _failure(str(e))

    def _parse(self, family, header, picked, data):
        """ProcSocket of each picked line (validated by procnet)."""
        blob = header + b"\n" + b"\n".join(picked) + b"\n"
        try:
            return procnet.parse_tcp(blob, family, self._paths[family])
        except procnet.ProcParseError as e:
            self._explain(family, data)      # the same error, with its real line number
            raise _failure(str(e))

    def _resolve(self, inodes):
        if not inodes or self._owners is None:
            return {}
        try:
            return self._owners.resolve(inodes)
        except OSError:
            return {}

    def _poll(self, baseline=False):
        t0 = time.perf_counter()
        data = {fam: self._read_file(fam) for fam in (4, 6)}
        now = time.monotonic_ns()
        self._last = now
        self.polls += 1

        gone_all = []      # (family, _Sock)
        fresh_all = []     # (family, key, ProcSocket)
        need = set()       # inodes whose owner we do not know
        for fam in (4, 6):
            header, snap, keys, lines = self._scan(fam, data[fam])
            prev = self._snap[fam]
            if snap == prev:
                continue                      # the steady state: done
            socks = self._socks[fam]
            fresh = snap.items() - prev.items()
            parsed = ()
            if fresh:
                want = {k for k, _ in fresh}
                picked = {}
                for k, line in zip(keys, lines):
                    if k in want:
                        picked[k] = line      # the last of duplicates, as in snap
                parsed = self._parse(fam, header, list(picked.values()), data[fam])
            self._snap[fam] = snap
            for k in prev.keys() - snap.keys():
                gone_all.append((fam, socks.pop(k)))
            if not fresh:
                continue
            for k, ps in zip(picked, parsed):
                fresh_all.append((fam, k, ps))
                if ps.inode:
                    s = socks.get(k)
                    if s is None or s.inode != ps.inode:
                        need.add(ps.inode)
        owners = self._resolve(need)
        out = []
        if baseline:
            for fam, k, ps in fresh_all:
                s = self._socks[fam][k] = _Sock(fam, k, ps, now, owners.get(ps.inode), True)
                out.append(self._handoff(s, now))
            self.last_poll_s = time.perf_counter() - t0
            return out

        for fam, s in gone_all:
            out.append(self._item(s, s.state, _S["CLOSE"], now - s.since, now))
        for fam, k, ps in fresh_all:
            socks = self._socks[fam]
            s = socks.get(k)
            owner = owners.get(ps.inode) if ps.inode else None
            if s is not None:
                old, new = s.state, ps.state
                if (s.inode and ps.inode and s.inode != ps.inode) or (
                        new != old and new not in REACHABLE.get(old, ())):
                    # another socket on the same 4-tuple
                    out.append(self._item(s, old, _S["CLOSE"], now - s.since, now))
                    s = None
                else:
                    s.inode = ps.inode
                    if owner is not None:
                        s.pid, s.comm = owner
                        s.owner_from = "proc"
                    if new != old:
                        since = now
                        if new == _TW and ps.timer == _TIMER_TIME_WAIT:
                            since = _tw_entry(ps, now, s.since)
                        out.append(self._item(s, old, new, since - s.since, now))
                        s.state = new
                        s.since = since
                        s.lower_bound = False
                    continue
            s = socks[k] = _Sock(fam, k, ps, now, owner, False)
            out.append(self._item(s, _S["CLOSE"], s.state, None, now))
        self.last_poll_s = time.perf_counter() - t0
        return out

    def _item(self, s, old, new, in_old, now, kind="state"):
        rec = {
            "type": kind,
            "ts": self._fmt.ts(now),
            "sk": "%x" % s.sk,
            "family": s.family,
            "laddr": s.laddr,
            "lport": s.lport,
            "raddr": s.raddr,
            "rport": s.rport,
            "old": _NAMES[old],
            "new": _NAMES[new],
            "in_old_ns": in_old,
            "pid": s.pid,
            "comm": s.comm,
            "owner_from": s.owner_from,
            "source": SOURCE,
            "approx": True,
        }
        if s.lower_bound and in_old is not None:
            rec["lower_bound"] = True
        return rec, now, s.sk, (s.sk if (old == _TW or new == _TW) else 0)

    def _handoff(self, s, now):
        """A baseline socket for the connection table: filed, never printed
        (the table prints no ``handoff``).  With in_old_ns null the table
        dates it from its own start, as a lower bound; a TIME_WAIT socket,
        whose entry time is estimated, is filed at that time instead."""
        if s.lower_bound:
            return self._item(s, s.state, s.state, None, now, "handoff")
        return self._item(s, s.state, s.state, 0, s.since, "handoff")
