"""Map socket inodes to the processes that hold them.

/proc/net/tcp gives each socket's inode; the only way to learn which
process owns it is to read every /proc/<pid>/fd/<n> symlink and look for
"socket:[<inode>]".  That costs 4-8 us per open file descriptor (the
readlink builds the link text in the kernel): 0.6-0.8 s for 100k sockets
on the project VM.  So OwnerCache remembers what it read and walks again
only what may have changed.

>>> import os, socket
>>> s = socket.socket()
>>> cache = OwnerCache()
>>> ino = os.fstat(s.fileno()).st_ino
>>> cache.resolve([ino])[ino][0] == os.getpid()
True
>>> walks = cache.stats["pid_walks"]
>>> cache.resolve([ino]) == {ino: (os.getpid(), read_comm("/proc", os.getpid()))}
True
>>> cache.stats["pid_walks"] == walks    # answered from memory
True
>>> s.close()

Why not psutil here: psutil.pids() reads /proc but drops the directory
entries' inode numbers, which this module uses to notice a reused pid for
free; psutil.Process.net_connections() rescans every fd of the process on
every call; and psutil.Process.name() is not always the kernel comm: for
a 15-character comm it returns the cmdline's basename when that starts
with those 15 characters.  Plain os calls on *proc_root* also let the
tests point the whole thing at a fake tree.
"""

import os
import time

__all__ = ["OwnerCache", "owner_of_inode", "read_comm"]

_SOCKET_PREFIX = "socket:["


def read_comm(proc_root, pid):
    """Return the kernel comm of *pid* (<= 15 bytes), or None if it is gone.

    The kernel name is bytes; undecodable bytes come back as backslash
    escapes, so the result is always printable and JSON-safe (but may then
    be longer than 15 characters).

    >>> read_comm("/proc", os.getpid()) == open("/proc/self/comm").read().strip()
    True
    """
    try:
        with open("%s/%d/comm" % (proc_root, pid), "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Only the final newline: a comm may itself end in spaces.
    if data.endswith(b"\n"):
        data = data[:-1]
    return data.decode("utf-8", "backslashreplace")


def _socket_inodes(proc_root, pid):
    """Return the set of socket inodes open in *pid*.

    Raises FileNotFoundError / ProcessLookupError if the process is gone
    and PermissionError if its fd table is not ours to read.
    """
    inodes = set()
    dfd = os.open(
        "%s/%d/fd" % (proc_root, pid), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    )
    try:
        for name in os.listdir(dfd):
            try:
                target = os.readlink(name, dir_fd=dfd)
            except OSError:
                # Closed since the listing, or the process died under us.
                continue
            if target.startswith(_SOCKET_PREFIX):
                try:
                    inodes.add(int(target[8:-1]))
                except ValueError:
                    continue
    finally:
        os.close(dfd)
    return inodes


class _Proc:
    """What one walk of /proc/<pid>/fd found."""

    __slots__ = ("ident", "nfds", "inodes", "comm", "changed")

    def __init__(self, ident, nfds, inodes, comm):
        self.ident = ident  # inode of the /proc/<pid> directory
        self.nfds = nfds  # st_size of /proc/<pid>/fd when walked
        self.inodes = inodes  # frozenset of socket inodes
        self.comm = comm
        self.changed = 0  # walk number at which inodes last changed


class OwnerCache:
    """Socket inode -> (pid, comm), rescanning /proc only when it must.

    *proc_root* is where to look (tests point it at a fake tree).

    resolve() answers from memory when it knows every inode asked for.
    Otherwise it walks the fd tables of new processes and of processes
    whose fd count changed, and only if that is not enough, the others,
    likeliest first, until it has found them all.  Inodes that not even a
    walk of every process could attribute -- sockets of processes we may
    not inspect, kernel-internal sockets, sockets closed meanwhile -- are
    remembered as unresolvable for *unresolved_ttl* seconds: asking for
    them again only checks processes started since, instead of walking
    everything again.

    Answers can go stale when a socket outlives its owner (a daemon's
    parent exits, leaving the socket to the child it forked), so every
    *refresh_interval* seconds a lookup also lists proc_root, forgets dead
    processes and walks new ones.

    When several processes share a socket (fork, SCM_RIGHTS), the lowest
    pid wins: usually the parent, e.g. a pre-fork server's master.

    A pid is the process (thread group) id: only thread group leaders are
    listed in /proc.  Threads created with clone() without CLONE_FILES
    (rare) have their own fd tables and are not seen; nor are the sockets
    of a process whose leader thread exited while other threads live on
    (its /proc/<pid>/fd is then empty).

    *clock* is for tests.  Not thread-safe.
    """

    def __init__(
        self,
        proc_root="/proc",
        unresolved_ttl=30.0,
        refresh_interval=5.0,
        clock=time.monotonic,
    ):
        self.proc_root = proc_root
        self.unresolved_ttl = unresolved_ttl
        self.refresh_interval = refresh_interval
        self._clock = clock
        self._procs = {}  # pid -> _Proc
        self._owners = {}  # inode -> (pid, comm)
        self._unresolvable = set()
        self._unresolvable_until = 0.0
        self._next_refresh = 0.0
        self._last_pid_seen = None
        self._vanished = False
        self._walks = 0  # counter behind _Proc.changed
        # For tests and for the curious: how much work was done.
        self.stats = {
            "resolves": 0,  # calls to resolve()
            "pid_lists": 0,  # listings of proc_root
            "scans": 0,  # lookups that had to walk some fd tables
            "full_scans": 0,  # ... of which went on to pass 2 (see _scan)
            "refreshes": 0,  # periodic checks for dead and new processes
            "pid_walks": 0,  # fd tables walked, in total
        }

    # -- public ---------------------------------------------------------

    def resolve(self, inodes):
        """Return {inode: (pid, comm)} for those of *inodes* it can attribute.

        Inode 0 (TIME_WAIT, orphans, not yet accepted) is never attributed.
        When every inode is already known, and no refresh is due, this
        makes no system call at all.
        """
        self.stats["resolves"] += 1
        now = self._clock()
        if self._procs and now >= self._next_refresh:
            self._refresh(now)
        owners = self._owners
        out = {}
        missing = set()
        for ino in inodes:
            o = owners.get(ino)
            if o is not None:
                out[ino] = o
            elif ino:
                missing.add(ino)
        if not missing:
            return out

        if now >= self._unresolvable_until:
            self._unresolvable.clear()
        unknown = missing - self._unresolvable
        if unknown:
            self._scan(unknown, now)
        else:
            # All of them were already looked for everywhere.  Only a
            # process started since could hold them now (or one that
            # received them over a unix socket: the ttl covers that rare
            # case).  The pid counter in /proc/loadavg tells whether any
            # process or thread was created at all, for one small read.
            last_pid = self._read_last_pid()
            if last_pid is not None and last_pid == self._last_pid_seen:
                return out
            new_pids = self._sync_pids(last_pid)
            if not new_pids and not self._vanished:
                return out
            self.stats["scans"] += 1
            self._walk(new_pids)
            self._rebuild()

        owners = self._owners
        for ino in missing:
            o = owners.get(ino)
            if o is not None:
                out[ino] = o
                self._unresolvable.discard(ino)
        return out

    def owner(self, inode):
        """Return (pid, comm) owning *inode*, or None."""
        return self.resolve((inode,)).get(inode)

    owner_of_inode = owner

    def clear(self):
        """Forget everything; the next lookup walks every process."""
        self._procs.clear()
        self._owners.clear()
        self._unresolvable.clear()
        self._last_pid_seen = None

    # -- scanning -------------------------------------------------------

    def _refresh(self, now):
        self.stats["refreshes"] += 1
        self._next_refresh = now + self.refresh_interval
        new_pids = self._sync_pids(self._read_last_pid())
        if new_pids:
            self._walk(new_pids)
        if new_pids or self._vanished:
            self._rebuild()

    def _scan(self, unknown, now):
        self.stats["scans"] += 1
        self._next_refresh = now + self.refresh_interval
        new_pids = self._sync_pids(self._read_last_pid())
        # Pass 1: processes that appeared since the last scan, and those
        # whose number of open fds changed.  /proc/<pid>/fd's st_size is
        # that number on Linux >= 6.2 (0 before).  Its mtime is useless:
        # procfs sets it when the inode is created and never again (checked
        # on 6.18).  The count misses a close() followed by an open() that
        # reuses the fd -- the usual accept()/close() pattern of a server --
        # hence pass 2.
        walk = list(new_pids)
        fresh = set(new_pids)
        for pid, rec in self._procs.items():
            if pid in fresh:
                continue
            try:
                nfds = os.stat("%s/%d/fd" % (self.proc_root, pid)).st_size
            except OSError:
                continue  # gone, or not ours: pass 2 deals with it
            if nfds != rec.nfds:
                walk.append(pid)
        self._walk(walk)
        self._rebuild()
        left = unknown.difference(self._owners)
        if not left:
            return
        # Pass 2: the processes not walked just now, one at a time, until
        # every unknown inode is found.  Most likely first: processes whose
        # sockets changed most recently (a busy server), then any holding
        # sockets, then the rest.
        self.stats["full_scans"] += 1
        walked = set(walk)
        procs = self._procs
        order = sorted(
            (pid for pid in procs if pid not in walked),
            key=lambda pid: (not procs[pid].inodes, -procs[pid].changed),
        )
        for pid in order:
            self._walk((pid,))
            rec = procs.get(pid)
            if rec is not None and not rec.inodes.isdisjoint(left):
                left.difference_update(rec.inodes)
                if not left:
                    break
        self._rebuild()
        if left:
            # Looked for everywhere: remember them.
            if not self._unresolvable:
                self._unresolvable_until = now + self.unresolved_ttl
            self._unresolvable.update(left)

    def _read_last_pid(self):
        # 5th field of /proc/loadavg: the last pid handed out in our pid
        # namespace.  None where it cannot be read (a fake proc root).
        try:
            with open(self.proc_root + "/loadavg", "rb") as f:
                return int(f.read().split()[4])
        except (OSError, ValueError, IndexError):
            return None

    def _sync_pids(self, last_pid):
        """List proc_root, forget dead pids, return the pids not walked yet.

        The inode number of a /proc/<pid> directory comes free with the
        listing (d_ino) and tells a reused pid from the old process: the
        new process gets a new procfs inode.  (It can also change when the
        kernel evicts the inode under memory pressure; that only costs a
        needless walk.)
        """
        self.stats["pid_lists"] += 1
        self._last_pid_seen = last_pid
        procs = self._procs
        seen = set()
        new = []
        with os.scandir(self.proc_root) as it:
            for entry in it:
                name = entry.name
                if not name.isdigit():
                    continue
                pid = int(name)
                seen.add(pid)
                rec = procs.get(pid)
                if rec is None or rec.ident != entry.inode():
                    new.append((pid, entry.inode()))
        self._vanished = False
        for pid in list(procs):
            if pid not in seen:
                del procs[pid]
                self._vanished = True
        for pid, ident in new:
            # Identity now, contents in _walk().
            procs[pid] = _Proc(ident, -1, frozenset(), None)
        return [pid for pid, _ in new]

    def _walk(self, pids):
        root = self.proc_root
        procs = self._procs
        for pid in pids:
            rec = procs.get(pid)
            if rec is None:
                continue
            self.stats["pid_walks"] += 1
            # Count first: an fd opened during the walk then shows up as a
            # changed count next time rather than being missed for good.
            try:
                nfds = os.stat("%s/%d/fd" % (root, pid)).st_size
            except OSError:
                nfds = -1
            try:
                inodes = _socket_inodes(root, pid)
            except PermissionError:
                # Another user's process and we are not root: its sockets
                # stay unknown.  Keep the record so that it is not "new"
                # again, and its count so pass 1 does not retry it.
                rec.nfds, rec.inodes, rec.comm = nfds, frozenset(), None
                continue
            except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
                del procs[pid]  # exited
                continue
            comm = read_comm(root, pid) if inodes else None
            if inodes and comm is None:
                del procs[pid]  # exited after the walk
                continue
            inodes = frozenset(inodes)
            if inodes != rec.inodes:
                self._walks += 1
                rec.changed = self._walks
            rec.nfds, rec.inodes, rec.comm = nfds, inodes, comm

    def _rebuild(self):
        owners = {}
        # Ascending pids, first one wins: the lowest pid owns a shared
        # socket.
        procs = self._procs
        for pid in sorted(procs):
            rec = procs[pid]
            if rec.inodes:
                val = (pid, rec.comm)
                for ino in rec.inodes:
                    if ino not in owners:
                        owners[ino] = val
        self._owners = owners


def owner_of_inode(inode, proc_root="/proc"):
    """One-off lookup: (pid, comm) of the lowest pid holding *inode*, or None.

    Walks processes in pid order and stops at the first match; use an
    OwnerCache for repeated lookups.
    """
    if not inode:
        return None
    try:
        pids = sorted(int(n) for n in os.listdir(proc_root) if n.isdigit())
    except OSError:
        return None
    for pid in pids:
        try:
            found = inode in _socket_inodes(proc_root, pid)
        except OSError:
            continue
        if found:
            comm = read_comm(proc_root, pid)
            if comm is not None:
                return (pid, comm)
    return None
