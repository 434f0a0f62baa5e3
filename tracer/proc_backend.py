"""The /proc backend: state, closed and socket records, from snapshots.

When eBPF is not available (not root, no bcc, no kernel headers), socktrace
polls /proc/net/tcp and tcp6 every ``--interval`` seconds and reports what
changed between two snapshots.  Like the eBPF backend it hands on finished
records (tracer/backend.py): dicts with exactly the fields tracer/spec.py
declares for their type, in its order, ``"source": "proc"`` and
``"approx": true``, because what it reports is limited by what two snapshots
can show:

* **Transitions between polls are not invented.**  A socket that appears
  already ESTABLISHED is reported as ``CLOSE -> ESTABLISHED`` with
  ``in_old_ns`` null: it was never seen in SYN_SENT, so no SYN_SENT is made
  up.  Likewise a socket that goes ESTABLISHED -> FIN_WAIT1 -> FIN_WAIT2
  between two polls is one ``ESTABLISHED -> FIN_WAIT2`` record (and its
  closed record's path has no FIN_WAIT1), and a socket that lives and dies
  between two polls is not seen at all.
* **Durations are approximate.**  ``in_old_ns`` of ``X -> Y`` is the time from
  the poll that first saw the socket in X to the poll that saw it in Y, so
  it is off by up to one interval either way.  A TIME_WAIT socket carries
  its own clock: the kernel prints the time left of its fixed 60 s, so the
  time it entered TIME_WAIT is estimated as ``now - (60 s - time left)``
  (never before the poll that saw it in its previous state), both for
  TIME_WAIT sockets seen for the first time and for sockets seen moving
  into it.
* A socket that disappears is reported ``X -> CLOSE``, followed by its
  ``closed`` record.  A 4-tuple that reappears in a state the old socket
  could not have reached (TIME_WAIT -> SYN_SENT: the port was reused), or
  with a different inode, is a new socket: ``X -> CLOSE`` and ``closed`` for
  the old one, then ``CLOSE -> Y`` for the new one, with a new ``conn``.
  (Two lines with the same 4-tuple in one snapshot -- a TIME_WAIT socket and
  the new connection taking it over, for the microseconds before the kernel
  kills the former -- count as one socket, the later line.)
* ``reason`` (state and closed records) is only set when a TIME_WAIT socket
  ends: ``"expired"`` when it disappeared, or when another socket took its
  4-tuple after its timer had run out; ``"reused"`` when another socket took
  its 4-tuple while the timer it showed still had time left.  ``via`` is
  always null.
* **Closed records.**  ``path`` is the states the socket was seen in, then
  CLOSE; ``states`` the time spent in each (TIMED_STATES, 0 for states it
  was never seen in); ``lifetime_ns`` from the poll that first saw it (for
  a socket first seen in TIME_WAIT: its estimated entry) to the poll that
  saw it gone.  /proc shows neither resets nor socket errors, so ``end`` is
  ``"normal"`` when the path shows both FINs (it ends in TIME_WAIT or
  LAST_ACK) and otherwise ``"unknown"``; ``error`` is always null.
  Listeners get no closed record, as with the eBPF backend.

Baseline.  :meth:`ProcBackend.open` takes the first snapshot.  It produces
no records: those sockets are only remembered (with their owners), so that
their later transitions, their closed records and :meth:`sockets` know
them.  Their times are lower bounds -- they were there when socktrace
started, maybe long before -- so ``lower_bound`` is true on their closed
and socket records, and on their state records until their first
transition (after it, ``in_old_ns`` is a full, if approximate, time in one
state).  A baseline TIME_WAIT socket is dated by its timer instead: its
socket record says ``"estimate": true``, and its ``TIME_WAIT -> CLOSE``
keeps ``lower_bound`` true, as the eBPF backend's seeded sockets do.

Identity (``conn``).  /proc hides the kernel socket address (the pointer
column is hashed or zeroed by %pK) and the inode is not stable over a
socket's life: it is 0 before accept(), becomes 0 again when the owner
closes the file descriptor (an orphan finishing its close) and is 0 for
TIME_WAIT.  So the backend follows a socket by its 4-tuple, which is unique
among connected sockets (plus the inode for listeners, which SO_REUSEPORT
lets share one address), and gives each socket it sees a ``conn`` of its
own: 16 hex digits starting with 4, ``"%016x" % (1 << 62 | n)`` for the
n-th socket of the run.  It is never reused within a run, not even when a
4-tuple comes back, and cannot collide with the eBPF backend's assigned ids
(16 digits starting with 8) nor, in practice, with a socket cookie.

Role.  ``"listener"`` for a LISTEN socket; ``"server"`` for a socket whose
local port is one that a LISTEN socket of the same family (the same file)
listens on, as of the poll that first saw it; ``"client"`` otherwise.

Owners.  pid and comm come from :class:`tracer.owners.OwnerCache`, asked only
about inodes that were not there at the previous poll (a new socket, or an
accept() giving an existing one its inode): a poll in which nothing changed
never walks /proc/*/fd.  Once known, an owner stays with the socket through
FIN_WAIT2 and TIME_WAIT, where the kernel no longer shows an inode.  As an
ordinary user, sockets of other users' processes keep pid null,
``owner_from`` "unknown"; a known owner is ``owner_from`` "proc".

Speed.  A poll reads both files and keys each line by its raw address tokens
-> (state, inode) tokens, without decoding anything; a poll that finds the
same dict as the previous one is done.  Only lines that are new or changed go
through :func:`tracer.procnet.parse_tcp` (the strict parser).  On a
synthetic 100,000-socket /proc this steady-state poll takes ~0.1 s (see
tests/test_proc_backend.py::test_steady_state_poll_100k).
"""

import gc
import os
import time

from . import hist, procnet, records, spec, states, wire
from .backend import Backend, Failure
from .context import container_id, process_cgroup, unit

SOURCE = "proc"
TIME_WAIT_LEN_NS = 60 * 1_000_000_000      # TCP_TIMEWAIT_LEN, fixed in the kernel
CONN_PROC = 1 << 62                        # bit 62: an id the proc backend assigned
_TIMER_TIME_WAIT = procnet.TIMER_TIME_WAIT

_S = states.NUMBERS
_TW = _S["TIME_WAIT"]
_LISTEN = _S["LISTEN"]
_CLOSE = _S["CLOSE"]
_LISTEN_TOK = b"%02X" % _LISTEN
_NAMES = states.NAMES
_SYN_SENT = _S["SYN_SENT"]


def _row_name(num):
    """A histogram's name: its state's, or that of failed connects."""
    return wire.CONNECT_FAILED if num == wire.HIST_CONNECT_FAILED else _NAMES[num]

_TIMED = tuple((name, _S[name]) for name in spec.TIMED_STATES)
# a path whose last state before CLOSE is one of these saw both FINs
_BOTH_FINS = {_TW, _S["LAST_ACK"]}
# states whose time is not a duration worth a histogram
_UNTIMED = {_LISTEN, _CLOSE}

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
    """What the backend remembers of one socket between polls.

    ``start``: the poll that first saw it (a socket first seen in TIME_WAIT:
    its estimated entry); ``since``: when it entered ``state`` (the poll
    that first saw it there, or the TIME_WAIT estimate); ``path``: the
    states it has left, in order; ``spent``: {state: ns} for those;
    ``lower_bound``: it was in the baseline; ``cur_lower``: ``since`` is
    only a lower bound (a baseline socket before its first transition);
    ``estimate``: ``since`` is a baseline TIME_WAIT's timer estimate;
    ``deadline``: when a TIME_WAIT socket's timer runs out (0: unknown).
    """

    __slots__ = ("conn", "family", "laddr", "lport", "raddr", "rport", "state", "since",
                 "start", "inode", "pid", "comm", "owner_from", "role", "lower_bound",
                 "cur_lower", "estimate", "path", "spent", "deadline", "where")

    def __init__(self, conn, ps, now, t_read, owner, role, baseline):
        self.conn = conn
        self.family = ps.family
        self.laddr, self.lport, self.raddr, self.rport = ps.laddr, ps.lport, ps.raddr, ps.rport
        self.state = ps.state
        self.inode = ps.inode
        self.since = self.start = now
        self.role = role
        self.lower_bound = self.cur_lower = baseline
        self.estimate = False
        self.path = None              # made on the first transition
        self.spent = None
        self.deadline = 0
        self.where = None             # (netns, uid, cgroup, container, unit): the backend's
        if owner is None:
            self.pid = self.comm = None
            self.owner_from = "unknown"
        else:
            self.pid, self.comm = owner
            self.owner_from = "proc"
        if ps.state == _TW and ps.timer == _TIMER_TIME_WAIT:
            self.since = self.start = _tw_entry(ps, now, 0)
            self.deadline = t_read + ps.time_left_ns
            self.estimate = baseline

    @property
    def tup(self):
        return (self.conn, self.family, self.laddr, self.lport, self.raddr, self.rport)

    @property
    def owner(self):
        return (self.pid, self.comm, self.owner_from, self.role)

    def leave(self, until):
        """Account the time in the current state up to *until*; returns it."""
        spent = until - self.since
        if self.path is None:
            self.path = []
            self.spent = {}
        self.path.append(self.state)
        self.spent[self.state] = self.spent.get(self.state, 0) + spent
        return spent


def _tw_entry(ps, now, floor):
    """When a TIME_WAIT socket entered TIME_WAIT, from the time it has left of
    its 60 s; never before *floor* (when we saw it in its previous state)."""
    return min(now, max(floor, now - max(0, TIME_WAIT_LEN_NS - ps.time_left_ns)))


class ProcBackend(Backend):
    """Finished records from /proc snapshots (see the module docstring and
    tracer/backend.py).  ``open()`` takes the baseline snapshot, ``read()``
    polls once ``interval`` has passed since the last poll.  *clock* (the
    monotonic clock, in ns) is for tests."""

    source = SOURCE

    def __init__(self, interval=1.0, proc_root="/proc", clock=time.monotonic_ns):
        super().__init__()
        self.interval = interval
        self.interval_ns = int(interval * 1_000_000_000)
        self.proc_root = proc_root
        self.polls = 0
        self.last_poll_s = 0.0    # wall time of the last poll (for benchmarks)
        self._clock = clock
        self._fmt = records.Formatter()
        self._owners = None
        self._snap = {4: {}, 6: {}}
        self._socks = {4: {}, 6: {}}     # raw key -> _Sock
        self._listening = {}             # (family, port) -> LISTEN sockets on it
        self._paths = {fam: os.path.join(proc_root, "net", "tcp" if fam == 4 else "tcp6")
                       for fam in (4, 6)}
        self._last = None
        self._conns = 0
        self._transitions = {}           # "OLD->NEW" -> n
        self._hist = {}                  # state -> [{bucket: n}, max, count]
        self._ends = {}                  # closed records by end
        self._lower = 0                  # times in a state that were lower bounds
        self._netns = None               # this namespace's inode: /proc shows no other
        self._cgroup_of = {}             # pid -> its cgroup v2 path (/proc/PID/cgroup)

    # -- set-up --------------------------------------------------------------

    def open(self):
        if not any(os.path.exists(p) for p in self._paths.values()):
            raise Failure("proc backend: neither %s nor %s exists"
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
        try:
            self._netns = os.stat(os.path.join(self.proc_root, "self", "ns", "net")).st_ino
        except OSError:
            self._netns = None
        self._poll(baseline=True)
        return self

    def close(self):
        """Forget every socket (idempotent); read() then returns nothing."""
        self._snap = {4: {}, 6: {}}
        self._socks = {4: {}, 6: {}}
        self._listening = {}
        self._owners = None
        self._last = None

    # -- reading -------------------------------------------------------------

    def read(self):
        """The state and closed records of one poll when ``interval`` has
        passed since the last one (and open() was called), else []."""
        if self._last is None or self._clock() - self._last < self.interval_ns:
            return []
        return self._poll()

    def lost(self):
        """Always {}: a poll loses nothing it could have seen.  What it cannot
        see (states held for less than an interval) is not a loss that
        could be counted; the records say so with ``approx``."""
        return {}

    def reconcile(self):
        """Always []: there is nothing to reconcile.  Each poll reads the
        whole of /proc/net/tcp{,6}, and a socket missing from it is ended
        (``X -> CLOSE`` and its closed record) by that very poll, so the
        backend never holds a socket the kernel no longer has for longer
        than one interval."""
        return []

    def sockets(self):
        """A ``socket`` record for every socket in the backend's memory: the
        kernel's sockets as of the last poll, with times up to now."""
        now = self._clock()
        ts = self._fmt.ts(now)
        out = []
        for fam in (4, 6):
            for s in self._socks[fam].values():
                out.append(records.socket_record(
                    ts, s.tup, s.owner, _NAMES[s.state], max(0, now - s.since),
                    max(0, now - s.start), s.lower_bound, s.estimate, SOURCE, True, s.where))
        return out

    def report(self):
        """The exit report's figures (tracer/backend.py): every transition
        seen; the time in each state from every ``in_old_ns`` that is not a
        lower bound, LISTEN and CLOSE aside; the sockets in memory by
        state."""
        durations = {}
        order = [num for _, num in _TIMED] + sorted(set(self._hist) - {n for _, n in _TIMED})
        for num in order:
            h = self._hist.get(num)
            if h is None:
                continue
            sparse, mx, n = h
            counts = [0] * hist.BUCKETS
            for b, c in sparse.items():
                counts[b] = c
            d = {"count": n}
            d.update(hist.percentiles(counts))
            d["max_ns"] = mx
            durations[_row_name(num)] = d
        current = {}
        for fam in (4, 6):
            for s in self._socks[fam].values():
                current[s.state] = current.get(s.state, 0) + 1
        return {
            "transitions": dict(self._transitions),
            "durations": durations,
            "current": {_NAMES[num]: current[num] for num in sorted(current)},
            "records": {},
        }

    def stats(self):
        """Tallies for --metrics (as the eBPF backend's): {"transitions":
        {(old, new): n}, "durations": {state: bucket counts}, "ends":
        {end: n}}.  Only from the reading loop's thread."""
        durations = {}
        for num, (sparse, _, _) in self._hist.items():
            counts = [0] * hist.BUCKETS
            for b, c in sparse.items():
                counts[b] = c
            durations[_row_name(num)] = counts
        return {"transitions": {tuple(k.split("->")): n for k, n in self._transitions.items()},
                "durations": durations, "ends": dict(self._ends), "lower_bounds": self._lower}

    # -- one poll --------------------------------------------------------------

    def _read_file(self, family):
        path = self._paths[family]
        try:
            return procnet.read_file(path)
        except FileNotFoundError:
            return b""
        except OSError as e:
            raise Failure("cannot read %s: %s" % (path, e.strerror or e))

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
        raise Failure("%s: unexpected format" % path)

    def _explain(self, family, data):
        """Raise Failure with the strict parser's message (file and line)
        for the first bad line of *data*; return if it finds none."""
        try:
            procnet.parse_tcp(data, family, self._paths[family])
        except procnet.ProcParseError as e:
            raise Failure(str(e))

    def _parse(self, family, header, picked, data):
        """ProcSocket of each picked line (validated by procnet)."""
        blob = header + b"\n" + b"\n".join(picked) + b"\n"
        try:
            return procnet.parse_tcp(blob, family, self._paths[family])
        except procnet.ProcParseError as e:
            self._explain(family, data)      # the same error, with its real line number
            raise Failure(str(e))

    def _resolve(self, inodes):
        if not inodes or self._owners is None:
            return {}
        try:
            return self._owners.resolve(inodes)
        except OSError:
            return {}

    def _new_conn(self):
        self._conns += 1
        return "%016x" % (CONN_PROC | self._conns)

    def _role(self, ps):
        if ps.state == _LISTEN:
            return "listener"
        return "server" if (ps.family, ps.lport) in self._listening else "client"

    def _listen(self, family, port, delta):
        k = (family, port)
        n = self._listening.get(k, 0) + delta
        if n > 0:
            self._listening[k] = n
        else:
            self._listening.pop(k, None)

    def _poll(self, baseline=False):
        t0 = time.perf_counter()
        t_read = self._clock()
        data = {fam: self._read_file(fam) for fam in (4, 6)}
        now = self._clock()
        self._last = now
        self.polls += 1

        gone_all = []      # _Sock
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
                gone_all.append(socks.pop(k))
            if not fresh:
                continue
            for k, ps in zip(picked, parsed):
                fresh_all.append((fam, k, ps))
                if ps.inode:
                    s = socks.get(k)
                    if s is None or s.inode != ps.inode:
                        need.add(ps.inode)
        owners = self._resolve(need)
        # New listeners count before roles are given (an accepted socket can
        # show up in the same poll as its listener); listeners that went
        # away count until after (it may have been accepted just before).
        for fam, k, ps in fresh_all:
            if ps.state == _LISTEN:
                self._listen(fam, ps.lport, 1)
        out = []
        if baseline:
            for fam, k, ps in fresh_all:
                s = self._socks[fam][k] = _Sock(self._new_conn(), ps, now, t_read,
                                                owners.get(ps.inode), self._role(ps), True)
                s.where = self._where(s, ps)
            self.last_poll_s = time.perf_counter() - t0
            return out

        for s in gone_all:
            self._end(out, s, now, "expired" if s.state == _TW else None)
        for fam, k, ps in fresh_all:
            socks = self._socks[fam]
            s = socks.get(k)
            owner = owners.get(ps.inode) if ps.inode else None
            if s is not None:
                old, new = s.state, ps.state
                if (s.inode and ps.inode and s.inode != ps.inode) or (
                        new != old and new not in REACHABLE.get(old, ())):
                    # another socket on the same 4-tuple
                    reason = None
                    if old == _TW:
                        reason = "reused" if now < s.deadline else "expired"
                    self._end(out, s, now, reason)
                else:
                    s.inode = ps.inode
                    if owner is not None:
                        known = s.pid
                        s.pid, s.comm = owner
                        s.owner_from = "proc"
                        if not known:
                            s.where = self._where(s, ps)
                    if new != old:
                        since = now
                        if new == _TW and ps.timer == _TIMER_TIME_WAIT:
                            since = _tw_entry(ps, now, s.since)
                            s.deadline = t_read + ps.time_left_ns
                        lower = s.cur_lower
                        in_old = s.leave(since)
                        out.append(self._state(s, old, new, in_old, lower, now, None))
                        s.state = new
                        s.since = since
                        s.cur_lower = s.estimate = False
                    continue
            s = socks[k] = _Sock(self._new_conn(), ps, now, t_read, owner,
                                 self._role(ps), False)
            s.where = self._where(s, ps)
            out.append(self._state(s, _CLOSE, s.state, None, False, now, None))
        for s in gone_all:
            if s.state == _LISTEN:
                self._listen(s.family, s.lport, -1)
        self.last_poll_s = time.perf_counter() - t0
        return out

    # -- records -----------------------------------------------------------------

    def _where(self, s, ps):
        """A socket's context from what /proc gives: the namespace polled,
        the uid column (0 for TIME_WAIT: not its owner's), and the cgroup of
        its owner process (/proc/PID/cgroup), read once per process."""
        uid = None if ps.state == _TW else ps.uid
        path = None
        if s.pid:
            path = self._cgroup_of.get(s.pid)
            if path is None:
                path = self._cgroup_of[s.pid] = process_cgroup(s.pid, self.proc_root) or ""
                if len(self._cgroup_of) > 65536:
                    self._cgroup_of.clear()
        path = path or None
        return (self._netns, uid, path, container_id(path) if path else None,
                unit(path) if path else None)

    def _end(self, out, s, now, reason):
        """The end of socket *s*, seen at *now*: its ``X -> CLOSE`` and, but
        for a listener, its closed record."""
        old, lower = s.state, s.cur_lower
        in_old = s.leave(now)
        out.append(self._state(s, old, _CLOSE, in_old, lower, now, reason))
        if s.role == "listener":
            return
        spent = s.spent
        end = "normal" if s.path[-1] in _BOTH_FINS else "unknown"
        self._ends[end] = self._ends.get(end, 0) + 1
        out.append(records.closed_record(
            self._fmt, now, s.tup, s.owner, s.start,
            {num: spent.get(num, 0) for _, num in _TIMED}, s.path, end, None, reason,
            s.lower_bound, SOURCE, True, s.where))

    def _state(self, s, old, new, in_old, lower, now, reason):
        """A state record, counted for report()."""
        key = _NAMES[old] + "->" + _NAMES[new]
        self._transitions[key] = self._transitions.get(key, 0) + 1
        if lower and in_old is not None and old not in _UNTIMED:
            self._lower += 1
        elif in_old is not None and old not in _UNTIMED:
            # failed connects apart from those that got through (as the kernel's)
            row = wire.HIST_CONNECT_FAILED if (old, new) == (_SYN_SENT, _CLOSE) else old
            h = self._hist.get(row)
            if h is None:
                h = self._hist[row] = [{}, 0, 0]
            b = hist.bucket(in_old)
            h[0][b] = h[0].get(b, 0) + 1
            if in_old > h[1]:
                h[1] = in_old
            h[2] += 1
        return records.state_record(self._fmt.ts(now), s.tup, s.owner, _NAMES[old],
                                    _NAMES[new], in_old, lower, None, reason, SOURCE, True,
                                    s.where)
