"""What the one-shot views share: their flags, one snapshot, owners, output.

A snapshot is one sock_diag dump (tracer/sockdiag.py, what ``ss`` reads;
or two, listeners then the sockets on some ports, filtered in the kernel)
plus, when a view needs it, one walk of /proc/*/fd that maps every socket
inode it wants to *every* process holding it (a listener shared by
pre-forked workers is held by all of them; ``ss -p`` lists them all too).
Without root, other users' /proc/PID/fd cannot be read: their sockets keep
no owner, and the view says so once.

>>> fmt_ep(4, "127.0.0.1", 80), fmt_ep(6, "::", 8080), fmt_ep(6, "::1", 0)
('127.0.0.1:80', '[::]:8080', '[::1]:*')
>>> p = parser("demo", "a demo")
>>> args, status = parse_args(p, "demo", ["--port", "80,443", "--state", "time-wait", "-4"])
>>> (status, sorted(port_set(args.port)), args.state, args.family)
(None, [80, 443], ['TIME_WAIT'], 4)
>>> parse_args(p, "demo", ["--port", "x"])[1]
2
"""

import argparse
import os
import sys
import time

from .. import args as cmdline
from .. import netns, sockdiag, states
from ..owners import read_comm
from ..text import one_line, safe

TIME_WAIT_LEN_S = 60.0  # TCP_TIMEWAIT_LEN, include/net/tcp.h: not tunable
LISTEN_BIT = 1 << states.LISTEN


UsageError = cmdline.UsageError


class Failure(Exception):
    """A run-time failure: one line on stderr, exit status 1."""


# the trace's converters, for the views' own flags
_ports = cmdline.ports
_positive_int = cmdline.positive(int)


def parser(prog, description, epilog=None):
    """An argument parser with the trace's filter flags and --json."""
    p = cmdline.Parser(prog="socktrace " + prog, description=description, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    cmdline.add_filters(p, owner="held by this", state_help="sockets in this state")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    return p


def parse_args(p, prog, argv):
    """(args, None), or (None, exit status) after -h or a usage error."""
    try:
        return p.parse_args(argv), None
    except UsageError as e:
        sys.stderr.write("socktrace %s: %s (try socktrace %s -h)\n" % (prog, one_line(str(e)),
                                                                       prog))
        return None, 2
    except SystemExit as e:  # -h
        return None, (e.code if isinstance(e.code, int) else 0)


def run(prog, p, view, argv):
    """Parse *argv* with *p*, call view(args), map failures to exit statuses."""
    args, status = parse_args(p, prog, argv)
    if status is not None:
        return status
    try:
        if getattr(args, "netns", None):
            enter_netns(args.netns)
        return view(args)
    except (Failure, sockdiag.SockDiagError) as e:
        sys.stderr.write("socktrace %s: %s\n" % (prog, one_line(str(e))))
        return 1
    except OSError as e:
        sys.stderr.write("socktrace %s: %s\n" % (prog, one_line(str(e.strerror or e))))
        return 1
    except KeyboardInterrupt:
        return 130


def enter_netns(inodes):
    """--netns for a view: sock_diag shows the sockets of the caller's own
    network namespace, so the view moves into the one asked for (as ``ip
    netns exec`` does) before it looks."""
    if len(set(inodes)) > 1:
        raise Failure("a view looks at one network namespace at a time: give one --netns")
    (ino,) = set(inodes)
    if netns.own_inode() == ino:
        return
    path = netns.path_of(ino)
    if path is None:
        raise Failure("network namespace %d: no process or /run/netns entry holds it" % ino)
    try:
        netns.enter(path)
    except OSError as e:
        raise Failure("cannot enter network namespace %d: %s" % (ino, e.strerror or e))


def port_set(lists):
    return {x for sub in lists for x in sub}


# --- the snapshot ------------------------------------------------------------


def state_mask(names):
    """sock_diag's idiag_states for these state names (all when empty).
    A pending connection request is NEW_SYN_RECV in the kernel and is
    reported as SYN_RECV: asking for one asks for both."""
    if not names:
        return sockdiag.ALL
    mask = 0
    for n in names:
        mask |= 1 << states.NUMBERS[n]
        if n in ("SYN_RECV", "NEW_SYN_RECV"):
            mask |= (1 << states.SYN_RECV) | (1 << states.NEW_SYN_RECV)
    return mask


class Owners:
    """Socket inode -> every (pid, comm, fd) holding it, from one walk of
    /proc/*/fd.  ``denied``: processes whose fd table we may not read (not
    root); their sockets have no owner here.

    One walk, then a dict lookup per socket: like ``ss -p``, it reads every
    /proc/PID/fd entry once (a readlink each, most of the cost).  A walk in
    a thread beside the dump measured no faster (the GIL; 2 CPUs).
    """

    def __init__(self, proc_root="/proc"):
        self.proc_root = proc_root
        self.by_inode = {}
        self.denied = 0
        self.walked = False
        self._all = None
        self.nfds = {}   # pid -> open fds, from the same walk

    def _collect(self):
        root = self.proc_root
        prefix = "socket:["
        found = {}
        readlink = os.readlink
        listdir = os.listdir
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        try:
            pids = [int(n) for n in listdir(root) if n.isdigit()]
        except OSError as e:
            raise Failure("cannot list %s: %s" % (root, e.strerror))
        pids.sort()
        denied = 0
        nfds = {}
        for pid in pids:
            try:
                dfd = os.open("%s/%d/fd" % (root, pid), flags)
            except PermissionError:
                denied += 1
                continue
            except OSError:
                continue  # exited
            try:
                try:
                    names = listdir(dfd)
                except PermissionError:
                    denied += 1
                    continue
                except OSError:
                    continue
                nfds[pid] = len(names)
                for name in names:
                    try:
                        t = readlink(name, dir_fd=dfd)
                    except OSError:
                        continue
                    if t.startswith(prefix):
                        ino = int(t[8:-1])
                        h = found.get(ino)
                        if h is None:
                            found[ino] = [(pid, int(name))]
                        else:
                            h.append((pid, int(name)))
            finally:
                os.close(dfd)
        self.denied = denied
        self.nfds = nfds
        self._all = found

    def fd_counts(self):
        """pid -> open fds of every process whose fd table this user may
        read: the length of each listing the walk reads anyway (walking now
        if it has not)."""
        if self._all is None:
            self._collect()
        return self.nfds

    def finish(self, wanted):
        """Owners of the inodes in the set *wanted* (the walk done first)."""
        self.walked = True
        if not wanted:
            return self    # nothing to look for (TIME_WAITs only): no walk
        if self._all is None:
            self._collect()
        root = self.proc_root
        comms = {}
        out = self.by_inode
        found = self._all
        for ino in wanted:
            holders = found.get(ino)
            if not holders:
                continue
            lst = []
            for pid, fd in holders:
                comm = comms.get(pid)
                if comm is None:
                    comm = comms[pid] = read_comm(root, pid) or "?"
                lst.append((pid, comm, fd))
            lst.sort()
            out[ino] = lst
        return self

    walk = finish

    def get(self, inode):
        return self.by_inode.get(inode, ()) if inode else ()


class Snapshot:
    """One dump, and (walk_owners()) the owners of its sockets.  The walk
    comes after the dump: a socket closed in between has no owner, one
    opened in between is not in the dump.

    With *sports* / *dports* (sets of ports), listeners come from a dump of
    their own (cheap: the kernel then walks only its listening table) and
    the other sockets from a dump the kernel filters: only those with a
    local port in *sports* or a remote port in *dports* cross into user
    space (sock_diag bytecode, as ``ss 'sport = :80'``).  A view that needs
    the listeners' ports first calls listeners() and rest() itself.
    """

    def __init__(self, family=None, states_mask=sockdiag.ALL, sports=None, dports=None,
                 dump=True):
        self.families = (family,) if family else (4, 6)
        self.t = time.time()
        self.owners = Owners()
        self.cw_idle = {}  # cookie -> tcpi_last_data_recv ms, CLOSE_WAIT only
        self.sockets = []
        if not dump:
            return
        if sports is None and dports is None:
            self.sockets = sockdiag.dump(self.families, states_mask)
        else:
            lsn = self.listeners() if states_mask & LISTEN_BIT else []
            self.sockets = lsn + self.rest(states_mask, sports, dports)

    def listeners(self):
        return sockdiag.dump(self.families, LISTEN_BIT)

    def rest(self, states_mask, sports, dports):
        """Every socket but listeners with a local port in *sports* or a
        remote port in *dports* (all of them when the filter would be too
        long for the kernel)."""
        mask = states_mask & ~LISTEN_BIT
        if not mask or not (sports or dports):
            return []
        if len(sports or ()) + len(dports or ()) > sockdiag.MAX_FILTER_PORTS:
            return [s for s in sockdiag.dump(self.families, mask)
                    if s.lport in sports or s.rport in dports]
        return sockdiag.dump(self.families, mask,
                             bytecode=sockdiag.port_filter(sports or (), dports or ()))

    def walk_owners(self, socks=None):
        socks = self.sockets if socks is None else socks
        return self.owners.finish({s.inode for s in socks if s.inode})

    def close_wait_info(self):
        """tcp_info of the CLOSE_WAIT sockets (one more, small dump):
        time since they last received data, the age estimate."""
        if not any(s.state == states.CLOSE_WAIT for s in self.sockets):
            return self.cw_idle
        for s in sockdiag.dump(self.families, 1 << states.CLOSE_WAIT, info=True):
            if s.last_data_recv_ms is not None:
                self.cw_idle[s.cookie] = s.last_data_recv_ms
        return self.cw_idle


class Match:
    """The filter flags, for DiagSocket tuples and their owners."""

    def __init__(self, args, extra_ports=()):
        self.family = args.family
        self.ports = port_set(args.port) | set(extra_ports)
        self.lports = port_set(args.lport)
        self.rports = port_set(args.rport)
        self.nets = list(args.addr)
        self.pids = set(args.pid)
        self.comms = set(args.comm)
        self.states = set(args.state)
        if "SYN_RECV" in self.states or "NEW_SYN_RECV" in self.states:
            self.states |= {"SYN_RECV", "NEW_SYN_RECV"}
        # sock_diag gives a socket's uid (a timewait socket's is no owner's:
        # it never matches); cgroups and containers are the holders'
        self.uids = set(getattr(args, "uid", ()))
        self.cgroups = tuple(c[0].rstrip("/") + "/" for c in getattr(args, "cgroup", ()))
        self.containers = tuple(getattr(args, "container", ()))
        self.by_owner = bool(self.pids or self.comms or self.cgroups or self.containers)
        # anything sock() would reject
        self.narrows = bool(self.family or self.ports or self.lports or self.rports
                            or self.nets or self.states or self.uids)
        self._nets = {}
        self._cgroup_of = {}

    def sock(self, s, states_too=True):
        """Everything but the owner filters."""
        if self.family and s.family != self.family:
            return False
        if self.ports or self.lports or self.rports:
            lp, rp = s.lport, s.rport
            if not (lp in self.ports or (rp in self.ports and rp) or lp in self.lports
                    or rp in self.rports):
                return False
        if states_too and self.states and states.NAMES[s.state] not in self.states:
            return False
        if self.nets and not (self._in(s.laddr) or self._in(s.raddr)):
            return False
        if self.uids and (s.uid not in self.uids or s.state == states.TIME_WAIT):
            return False
        return True

    def owner(self, holders):
        if not self.by_owner:
            return True
        for pid, comm, _fd in holders:
            if (self.pids or self.comms) and not (pid in self.pids or comm in self.comms):
                continue
            if self.cgroups or self.containers:
                path = self._cgroup(pid)
                if path is None:
                    continue
                if self.cgroups and not (path.rstrip("/") + "/").startswith(self.cgroups):
                    continue
                if self.containers:
                    from ..context import container_id
                    cid = container_id(path)
                    if cid is None or not cid.startswith(self.containers):
                        continue
            return True
        return False

    def _cgroup(self, pid):
        if pid not in self._cgroup_of:
            from ..context import process_cgroup
            self._cgroup_of[pid] = process_cgroup(pid)
        return self._cgroup_of[pid]

    def _in(self, text):
        hit = self._nets.get(text)
        if hit is None:
            import ipaddress
            a = ipaddress.ip_address(text)
            m = getattr(a, "ipv4_mapped", None)
            hit = any(a in n or (m is not None and m in n) for n in self.nets)
            self._nets[text] = hit
        return hit


# --- ages ----------------------------------------------------------------------


def fin_timeout():
    return read_int("/proc/sys/net/ipv4/tcp_fin_timeout", 60)


def age(s, cw_idle, fin_timeout_s=60):
    """(seconds, estimate) for what sock_diag tells; (None, False) else.

    TIME_WAIT: 60 s minus the time left on its timer (exact to the timer
    wheel's granularity).  A FIN_WAIT2 the kernel swapped for a timewait
    minisocket: tcp_fin_timeout minus what is left.  CLOSE_WAIT: the time
    since the socket last received data, an estimate (the FIN may have
    come later: at most this long in CLOSE_WAIT)."""
    if s.timer == 3:
        total = TIME_WAIT_LEN_S if s.state == states.TIME_WAIT else fin_timeout_s
        return max(0.0, total - s.expires_ms / 1000.0), False
    if s.state == states.CLOSE_WAIT:
        ms = cw_idle.get(s.cookie)
        if ms is not None:
            return ms / 1000.0, True
    return None, False


# --- /proc helpers ---------------------------------------------------------------


def read_int(path, default=None):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def port_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split()[:2])
        return lo, hi
    except (OSError, ValueError):
        return None


# --- output ----------------------------------------------------------------------


def fmt_ep(family, addr, port):
    a = "[%s]" % addr if family == 6 else addr
    return "%s:%s" % (a, port if port else "*")


def owners_json(holders):
    return [{"pid": p, "comm": c, "fd": fd} for p, c, fd in holders]


def fmt_owners(holders, limit=None):
    """``nginx/812 813 814 fd 6``: one group per name, pids in order, the fd
    when every holder has it at the same number (as pre-fork workers do).

    >>> fmt_owners([(812, "nginx", 6), (813, "nginx", 6), (900, "x\\x1b", 3)])
    'nginx/812 813 fd 6, x\\\\x1b/900 fd 3'
    >>> fmt_owners([(1, "a", 3), (2, "a", 4), (3, "a", 5)], limit=6)
    'a/1 2…'
    """
    if not holders:
        return "-"
    groups = {}
    for p, c, fd in holders:
        g = groups.get(c)
        if g is None:
            g = groups[c] = ([], set())
        g[0].append(p)
        g[1].add(fd)
    parts = []
    for c, (pids, fds) in groups.items():
        t = "%s/%s" % (safe(c), " ".join(map(str, pids)))
        if len(fds) == 1:
            t += " fd %d" % next(iter(fds))
        parts.append(t)
    text = ", ".join(parts)
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def wrap(text, width, indent):
    """*text* on lines of at most *width*, the later ones indented."""
    import textwrap
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent,
                         break_long_words=True, break_on_hyphens=False)


def fmt_age(sec, estimate=False):
    if sec is None:
        return "-"
    if sec < 60:
        t = "%.1fs" % sec if sec < 10 else "%ds" % sec
    elif sec < 3600:
        t = "%dm%02ds" % (sec // 60, sec % 60)
    elif sec < 86400:
        t = "%dh%02dm" % (sec // 3600, sec % 3600 // 60)
    else:
        t = "%dd%02dh" % (sec // 86400, sec % 86400 // 3600)
    return ("~" + t) if estimate else t


def width():
    return max(80, cmdline.terminal_columns())


def table(rows, aligns, maxw=None, sep="  "):
    """Rows of strings -> lines, columns padded (*aligns*: one < or > per
    column); a left-aligned last column is not padded."""
    if not rows:
        return []
    n = len(rows[0])
    w = [0] * n
    for r in rows:
        for i, c in enumerate(r):
            if len(c) > w[i]:
                w[i] = len(c)
    out = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            if aligns[i] == ">":
                cells.append(c.rjust(w[i]))
            elif i == n - 1:
                cells.append(c)
            else:
                cells.append(c.ljust(w[i]))
        line = sep.join(cells).rstrip()
        if maxw and len(line) > maxw:
            line = line[: maxw - 1] + "…"
        out.append(line)
    return out


BIG_DOC_ROWS = 5000


def dumps(doc, rows=0):
    """*doc* as compact JSON text.  orjson for a document of many rows;
    the standard library below BIG_DOC_ROWS, where importing orjson
    (~10 ms here) would cost more than it saves.  Same text either way for
    these documents (their floats are rounded to 3 decimals; the two differ
    only on exponents: 1e-07 against 1e-7).

    >>> dumps({"comm": "a\\x1b", "age_s": 1.5, "n": None}) == dumps({"comm": "a\\x1b", "age_s": 1.5, "n": None}, rows=10**6)
    True
    """
    if rows >= BIG_DOC_ROWS:
        try:
            import orjson
        except ImportError:
            pass
        else:
            return orjson.dumps(doc).decode()
    import json
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def emit(text_lines=None, doc=None, rows=0):
    """Write the answer: one JSON document, or text lines."""
    try:
        if doc is not None:
            sys.stdout.write(dumps(doc, rows) + "\n")
        else:
            sys.stdout.write("\n".join(text_lines) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # `socktrace ports | head -1`: end quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
    return 0


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%06dZ" % (int(t * 1e6) % 1000000)


def note_owners(owners):
    if owners.denied:
        return ("owners unknown for the sockets of %d processes whose /proc/PID/fd "
                "this user may not read (run as root to see them)" % owners.denied)
    return None
