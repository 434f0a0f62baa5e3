"""The eBPF backend: compile bpf/socktrace.bpf.c with bcc, attach it to the
tracepoints, and read its finished records in batches straight from the ring
buffer.  The kernel keeps each connection's story (tracer/backends.py says
what every backend hands on); this module loads, reads and cleans up.

bcc's own ring buffer reader calls back into Python once per record, which
caps a consumer at ~250k records/s before it has done any work.  Here the
ring buffer map is memory-mapped and walked in a plain loop (the layout is the
kernel's, kernel/bpf/ringbuf.c: a consumer page, a producer page, then the
data pages mapped twice so that a record never wraps).

Everything that can be missing on a host is checked up front and reported as
:class:`Unavailable` with one line saying what is missing, so that ``--backend
auto`` can fall back to /proc and ``--backend bpf`` can fail clearly.
"""

import ctypes
import errno
import mmap
import operator
import os
import platform
import select
import socket
import struct
import time

from . import hist, privileges, records, states, wire
from .backend import Backend, Failure, Unavailable
from .filters import Filter

TRACEFS = "/sys/kernel/tracing"
DEFAULT_MAX_SOCKS = 262144
DEFAULT_RINGBUF_MB = 16

_U64 = struct.Struct("<Q")
_HDR = struct.Struct("<II")
_U32 = struct.Struct("<I")
_BUSY = 1 << 31
_LEN_MASK = 0x3FFFFFFF
# One read takes at most this many bytes of records (about 8k state
# records); run.py reads again at once when a read was this large.  Behind a
# storm, a read of the whole ring (16 MB) was decoded and formatted in one
# go: the consumer's peak RSS reached 530 MB and the allocator faulted its
# pages in again for every read.
MAX_READ_BYTES = 8192 * (wire.STATE.size + 8)


def kernel_version(release=None):
    """``'6.18.44-fc-v669'`` -> ``(6, 18)``."""
    parts = (release or platform.release()).split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def ensure_tracefs(root=TRACEFS):
    """Mount tracefs if it is not mounted (it may not be, at boot)."""
    if os.path.isdir(os.path.join(root, "events")):
        return root
    legacy = "/sys/kernel/debug/tracing"
    if os.path.isdir(os.path.join(legacy, "events")):
        return legacy
    try:
        import subprocess

        subprocess.run(["mount", "-t", "tracefs", "nodev", root],
                       check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        why = (getattr(e, "stderr", None) or b"").decode(errors="replace").strip() or e
        raise Unavailable("tracefs is not mounted at %s and mounting it failed (%s)"
                          % (root, _one_line(why)))
    if not os.path.isdir(os.path.join(root, "events")):
        raise Unavailable("tracefs mounted at %s has no events directory" % root)
    return root


def kallsyms_address(name, path="/proc/kallsyms"):
    """Address of kernel symbol *name*, or 0 when absent or hidden (as non-root
    sees all-zero addresses)."""
    try:
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == name:
                    return int(fields[0], 16)
    except OSError:
        pass
    return 0


def _sysctl_int(name, default):
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def preflight():
    """Why eBPF cannot run on this host, or None.  Cheap: no compilation."""
    missing = privileges.missing_for_bpf()
    if missing:
        return ("not root and without %s (eBPF needs root, or CAP_BPF, CAP_PERFMON and "
                "CAP_DAC_READ_SEARCH)" % " and ".join(missing))
    try:
        import bcc  # noqa: F401
    except ImportError:
        return ("bcc is not installed for this Python (apt-get install python3-bpfcc, "
                "and a venv made with --system-site-packages)")
    except Exception as e:       # libbcc itself missing or broken (OSError, ...)
        return "bcc cannot be loaded: %s" % _one_line(e)
    if not os.path.exists("/lib/modules/%s/build" % platform.release()):
        return ("no kernel headers for %s at /lib/modules/%s/build "
                "(install linux-headers, see README)" % (platform.release(), platform.release()))
    return None


class BpfBackend(Backend):
    """The kernel's finished records (the interface: tracer/backend.py)."""

    source = "bpf"
    threadsafe_dumps = True          # sockets() reads only the kernel (own caches)

    def __init__(self, max_socks=DEFAULT_MAX_SOCKS, ringbuf_mb=DEFAULT_RINGBUF_MB,
                 family=None, ports=(), lports=(), rports=(), pids=(),
                 timewait=True, record_types=("state", "closed"), uids=(), netns=(),
                 cgroups=()):
        self.max_socks = max_socks
        self.ringbuf_pages = _pow2_pages(ringbuf_mb)
        self.family = family
        self.ports, self.lports, self.rports = set(ports), set(lports), set(rports)
        self.pids = set(pids)
        self.uids, self.netns = set(uids), set(netns)
        self.cgroups = sorted(set(cgroups))      # (id, level) pairs
        self.timewait = timewait
        self.record_types = frozenset(record_types)
        self.notes = []              # one-line caveats for stderr (degraded features)
        self._suspects = set()       # reconcile(): stories missing from one dump
        self._unreachable = set()    # reconcile(): namespaces setns() refused
        self._bpf = None
        self._rb = None
        self._epoll = None
        self._backup_link = None
        self._quiet = False            # quiesce(): no program attached any more
        self._counters_seen = {}
        self._undecodable = 0
        self._fmt = records.Formatter()
        # reconcile() and sockets() may run in threads of their own (run.py):
        # their own caches
        self._rfmt = records.Formatter()
        self._dfmt = records.Formatter()
        # sock_diag's rows as read once the programs were attached
        self.start_sockets = None

    # -- set-up --------------------------------------------------------------

    def cflags(self):
        """The -D settings for the BPF program (see its header comment)."""
        flags = [
            "-DST_MAX_SOCKS=%d" % self.max_socks,
            "-DST_RINGBUF_PAGES=%d" % self.ringbuf_pages,
            "-DST_FIN_TIMEOUT=%d" % max(1, _sysctl_int("net.ipv4.tcp_fin_timeout", 60)),
        ]
        if self.use_perfbuf:
            flags.append("-DST_USE_PERFBUF")
        if self.tp_category == "tcp":
            flags.append("-DST_TCP_SET_STATE")
        if kernel_version() < (6, 15):
            # an accepted socket's LISTEN->SYN_RECV comes before its tuple
            # is set (fixed in 6.15): the port filters wait for the next one
            flags.append("-DST_LATE_CHILD_TUPLE")
        handler = kallsyms_address("tw_timer_handler") if self.timewait else 0
        if self.timewait and not handler:
            self.notes.append("TIME_WAIT not traced: tw_timer_handler not in /proc/kallsyms"
                              + ("" if privileges.has("CAP_SYSLOG") else
                                 " (its addresses need CAP_SYSLOG)"))
        flags.append("-DST_TW_HANDLER=0x%xULL" % handler)
        if handler:
            flags += self._btf_flags()
        flags += self._sock_flags()
        flags += self._context_flags()
        flags += self._raw_tp_flags()
        if "state" not in self.record_types:
            flags.append("-DST_NO_STATE")
        if "closed" not in self.record_types:
            flags.append("-DST_NO_CLOSED")
        if self.family:
            flags.append("-DST_FILTER_FAMILY=%d" % self.family)
        if self.ports or self.lports or self.rports:
            flags.append("-DST_FILTER_PORTS")
        if self.gated:
            flags.append("-DST_GATE_TIMERS")
        if self.lports:
            flags.append("-DST_FILTER_LPORTS")
        if self.pids:
            flags.append("-DST_FILTER_PIDS")
        if self.uids:
            if "-DST_OFF_SK_UID" not in " ".join(flags):
                raise Unavailable("--uid: this kernel's BTF has no sock.sk_uid")
            flags.append("-DST_FILTER_UID")
        if self.netns:
            if "-DST_OFF_NET_INUM" not in " ".join(flags):
                raise Unavailable("--netns: this kernel's BTF has no socket namespace")
            flags.append("-DST_FILTER_NETNS")
        if self.cgroups:
            flags += self._cgroup_filter_flags(flags)
        return flags

    def _cgroup_filter_flags(self, flags):
        """--cgroup/--container in the kernel: the socket's cgroup's
        ancestor at each filter's level (struct cgroup: level, and
        ancestors[], or ancestor_ids[] before 6.0)."""
        from . import btf

        if len(self.cgroups) > _CGROUP_FILTERS:
            raise Unavailable("at most %d --cgroup/--container filters" % _CGROUP_FILTERS)
        if "-DST_OFF_KN_ID" not in " ".join(flags):
            raise Unavailable("--cgroup: this kernel's BTF has no socket cgroup")
        for member, extra in (("ancestors", []), ("ancestor_ids", ["-DST_CGROUP_ANCESTOR_IDS"])):
            try:
                offs = btf.member_offsets({"cgroup": ["level", member]})
            except btf.BTFError:
                continue
            return ["-DST_FILTER_CGROUP",
                    "-DST_OFF_CGROUP_LEVEL=%d" % offs[("cgroup", "level")][0],
                    "-DST_OFF_CGROUP_ANCESTORS=%d" % offs[("cgroup", member)][0]] + extra
        raise Unavailable("--cgroup: this kernel's BTF has no cgroup ancestors")

    @property
    def gated(self):
        """Do the timer programs wait for a followed socket (the BPF
        program's "gate")?  Only when filters keep sockets out of its maps:
        the --pid filter applies to records, every socket is followed."""
        return bool(self.family or self.ports or self.lports or self.rports or self.uids
                    or self.netns or self.cgroups)

    def _btf_flags(self):
        from . import btf

        try:
            offs = btf.member_offsets({"inet_timewait_sock": ["tw_substate", "tw_timer"],
                                       "timer_list": ["expires"]})
        except btf.BTFError as e:
            self.notes.append("FIN_WAIT2 timewait sockets reported as TIME_WAIT: %s" % e)
            return []
        flags = [
            "-DST_OFF_TW_TIMER=%d" % offs[("inet_timewait_sock", "tw_timer")][0],
            "-DST_OFF_TW_SUBSTATE=%d" % offs[("inet_timewait_sock", "tw_substate")][0],
            "-DST_OFF_TIMER_EXPIRES=%d" % offs[("timer_list", "expires")][0],
        ]
        # Is a timewait timer armed again, on the same socket?  (tw_rearmed()
        # in the program: a re-arm whose timer_start the kernel skipped.)
        try:
            more = btf.member_offsets({"timer_list": ["entry"], "hlist_node": ["pprev"],
                                       "sock_common": ["skc_dport", "skc_num"]})
        except btf.BTFError:
            return flags
        if more[("sock_common", "skc_num")][0] == more[("sock_common", "skc_dport")][0] + 2:
            flags += [
                "-DST_OFF_TIMER_PPREV=%d" % (more[("timer_list", "entry")][0]
                                             + more[("hlist_node", "pprev")][0]),
                "-DST_OFF_TW_PORTS=%d" % more[("sock_common", "skc_dport")][0],
            ]
        return flags

    def _sock_flags(self):
        """The socket cookie (connection ids that join with ss -e) and the
        socket's error (how a connection ended), at BTF offsets."""
        from . import btf

        try:
            offs = btf.member_offsets({"sock_common": ["skc_cookie", "skc_net"],
                                       "sock": ["sk_err"], "net": ["ns"],
                                       "ns_common": ["inum"]})
        except btf.BTFError as e:
            self.notes.append("own connection ids only, no socket errors: %s" % e)
            return []
        # possible_net_t is { struct net *net; }: skc_net's offset is the pointer's
        return ["-DST_OFF_SKC_COOKIE=%d" % offs[("sock_common", "skc_cookie")][0],
                "-DST_OFF_SK_ERR=%d" % offs[("sock", "sk_err")][0],
                "-DST_OFF_SKC_NET=%d" % offs[("sock_common", "skc_net")][0],
                "-DST_OFF_NET_INUM=%d" % (offs[("net", "ns")][0]
                                          + offs[("ns_common", "inum")][0])]

    def _context_flags(self):
        """Offsets for each record's context (uid, cgroup) and a closed
        record's health, and for the acceptor as owner: each group on its
        own, so that a kernel without one field loses that field only (a
        note says which).  A group may have a second layout to try (the
        cgroup before 5.15), with the -D it needs."""
        from . import btf

        flags = []
        for what, layouts in _CONTEXT_MACROS:
            for extra, macros in layouts:
                wanted = {}
                for chain in macros.values():
                    for struct_name, member in chain:
                        wanted.setdefault(struct_name, []).append(member)
                try:
                    offs = btf.member_offsets(wanted)
                except btf.BTFError as e:
                    why = e
                    continue
                # a chain of members (struct sock's sk_cgrp_data, then its
                # cgroup pointer) is one offset: their sum
                flags += extra + ["-D%s=%d" % (macro, sum(offs[k][0] for k in chain))
                                  for macro, chain in macros.items()]
                break
            else:
                self.notes.append("no %s: %s" % (what, why))
        return flags

    def _raw_tp_flags(self):
        """-D settings that switch the program to raw tracepoints (see the
        program's "attachment" section for why), or [] for the classic ones:
        kernels without a ring buffer or without sock:inet_sock_set_state,
        no BTF for the struct sock fields, or SOCKTRACE_TRACEPOINTS=classic
        (tests and benchmarks compare the two)."""
        if (os.environ.get("SOCKTRACE_TRACEPOINTS") == "classic" or self.use_perfbuf
                or self.tp_category != "sock"):
            return []
        from . import btf

        wanted = {}
        for struct_name, member in _RAW_TP_MACROS.values():
            wanted.setdefault(struct_name, []).append(member)
        try:
            offs = btf.member_offsets(wanted)
        except btf.BTFError:
            return []
        # the program reads daddr .. family of struct sock_common in one go
        # (ST_SKC_SPAN bytes from skc_daddr to the end of skc_family)
        at = {m: offs[("sock_common", m)][0]
              for m in ("skc_daddr", "skc_rcv_saddr", "skc_dport", "skc_family")}
        end = at["skc_family"] + 2
        if not (at["skc_daddr"] <= min(at.values()) and end - at["skc_daddr"] <= 32
                and at["skc_rcv_saddr"] + 4 <= end and at["skc_dport"] + 2 <= end):
            return []
        return ["-DST_RAW_TP"] + ["-D%s=%d" % (macro, offs[key][0])
                                  for macro, key in _RAW_TP_MACROS.items()]

    def open(self):
        why = preflight()
        if why:
            raise Unavailable(why)
        tracefs = ensure_tracefs()
        events = os.path.join(tracefs, "events")
        if os.path.isdir(os.path.join(events, "sock", "inet_sock_set_state")):
            self.tp_category = "sock"
        elif os.path.isdir(os.path.join(events, "tcp", "tcp_set_state")):
            self.tp_category = "tcp"
        else:
            raise Unavailable("this kernel (%s) has neither sock:inet_sock_set_state "
                              "nor tcp:tcp_set_state" % platform.release())
        # the ring buffer came in 5.8; SOCKTRACE_BUFFER=perf takes the older
        # kernels' perf buffer anyway (tests compare the two)
        self.use_perfbuf = (kernel_version() < (5, 8)
                            or os.environ.get("SOCKTRACE_BUFFER") == "perf")
        if kernel_version() < (5, 12):
            # bpf_prog_info.recursion_misses came in 5.12
            self.notes.append("kernel %s does not count the events it skips a BPF program "
                              "for (recursion_misses needs Linux 5.12): such losses go "
                              "unreported" % platform.release())

        from bcc import BPF  # lazy: the proc backend must work without bcc

        src = wire.bpf_dir() / "socktrace.bpf.c"
        cflags = self.cflags()
        # bcc prints compiler errors to stderr itself; keep ours to one line.
        try:
            with _quiet_stderr():
                self._bpf = BPF(src_file=str(src).encode(),
                                cflags=["-I%s" % wire.bpf_dir(), "-w"] + cflags)
                if self.use_perfbuf:
                    # bcc attached the programs as it loaded them: until a
                    # CPU's perf buffer is open, what they send there fails
                    # (-ENOENT) and counts as lost (seen on 6.1 in a VM,
                    # where seeding took long enough for a record to hit)
                    self._pending = []
                    self._perf_lost = 0
                    self._bpf[b"events"].open_perf_buffer(self._on_perf, page_cnt=256,
                                                         lost_cb=self._on_perf_lost)
                if "-DST_RAW_TP" in cflags:
                    self._attach_backup()
        except Exception as e:  # bcc raises bare Exception on compile/load errors
            self.close()
            raise Unavailable("BPF program failed to load: %s" % _one_line(e))
        self._fill_filters()
        self._seed_older_sockets()
        if not self.use_perfbuf:
            self._rb = _RingReader(self._bpf[b"events"].map_fd, self.ringbuf_pages * mmap.PAGESIZE)
            # edge-triggered: only the program's occasional wake-ups (see
            # wake_flag) end a wait early, not every record in the ring
            self._epoll = select.epoll()
            self._epoll.register(self._bpf[b"events"].map_fd, select.EPOLLIN | select.EPOLLET)
        self._counters = self._bpf[b"counters"]
        self._native = self._native_formatter()
        if self._native is None:
            self.read_ndjson = None
        return self

    def _attach_backup(self):
        """The second inet_sock_set_state program (see the BPF program's
        "attachment" section).  It must run after the main one, which bcc
        attached when it loaded the program; bcc keeps one program per raw
        tracepoint, so this link is ours to close."""
        from bcc import BPF
        from bcc.libbcc import lib

        fn = self._bpf.load_func(_BACKUP, BPF.RAW_TRACEPOINT)
        fd = lib.bpf_attach_raw_tracepoint(fn.fd, b"inet_sock_set_state")
        if fd < 0:
            raise Exception("attaching %s failed: %s" % (_BACKUP.decode(), os.strerror(ctypes.get_errno())))
        self._backup_link = fd

    def _fill_filters(self):
        if self.ports or self.lports or self.rports:
            table = self._bpf[b"port_filter"]
            bits = {}
            for group, bit in ((self.ports, 1), (self.lports, 2), (self.rports, 4)):
                for p in group:
                    bits[p] = bits.get(p, 0) | bit
            for p, b in bits.items():
                table[ctypes.c_int(p)] = ctypes.c_ubyte(b)
        if self.pids:
            table = self._bpf[b"pid_filter"]
            for pid in self.pids:
                table[ctypes.c_uint(pid)] = ctypes.c_ubyte(1)
        for name, values in ((b"uid_filter", self.uids), (b"netns_filter", self.netns)):
            if values:
                table = self._bpf[name]
                for v in values:
                    table[ctypes.c_uint(v)] = ctypes.c_ubyte(1)
        if self.cgroups:
            table = self._bpf[b"cgroup_filter"]
            for i, (cid, level) in enumerate(self.cgroups):
                leaf = table.Leaf()
                leaf.id, leaf.level = cid, level
                table[ctypes.c_int(i)] = leaf

    def _seed_older_sockets(self):
        """Hand the kernel what sock_diag knows of the sockets that exist
        now (seeds map, by cookie: the dump gives every socket one), so that
        a socket older than us keeps its kernel id, owner and age when its
        next transition or its timewait end comes.  Taken after the programs
        are attached, so that a socket is either in the dump or seen from
        its first transition (a socket that moves in between is reported
        with an own id, as a lower bound).  Every network namespace a file
        holds is dumped (tracer/netns.py); one that cannot be entered is
        named in a note, and its older sockets get own ids.

        With filters the timer programs wait for a followed socket (the
        gate); a matching older socket that is already closing can enter
        or leave TIME_WAIT with no transition of it seen first, so then the
        gate stays open for good (followed[1] = 1)."""
        from . import sockdiag

        now = time.monotonic_ns()
        try:
            rows = sockdiag.dump(info=True)
        except (sockdiag.SockDiagError, OSError) as e:
            self.notes.append("sockets older than socktrace: no sock_diag dump (%s)" % e)
            if self.gated:
                self._bpf[b"followed"][ctypes.c_int(1)] = ctypes.c_int64(1)
            return
        self.start_sockets = rows
        own_ns = sockdiag.own_netns_inode()
        tagged = [(own_ns, r) for r in rows] + self._rows_elsewhere(own_ns)
        matches = Filter(family=self.family, ports=self.ports, lports=self.lports,
                         rports=self.rports)
        # every listener, whatever the filters: what it accepts may pass
        # them (--rport P) and takes its owner (listener_aside() in the
        # program does the same for listeners that come later).  Only this
        # namespace's: the program finds a listener by address and port,
        # and another namespace's 0.0.0.0:80 would take the place of ours.
        listeners = [r for r in rows if r.state == states.LISTEN]
        # request sockets (sock_diag shows them as SYN_RECV) become new
        # full sockets of their own: no seeds
        tagged = [(ns, r) for ns, r in tagged if r.cookie and r.state not in _REQUEST and matches(
            {"type": "socket", "family": r.family, "lport": r.lport, "rport": r.rport})
            and self._seed_wanted(r, ns)]
        rows = [r for _, r in tagged]
        owned = _owners_of(rows + [r for r in listeners if r not in rows])
        listening = {(ns, r.family, r.lport) for ns, r in tagged if r.state == states.LISTEN}
        table = self._bpf[b"seeds"]
        leaf = table.Leaf
        closing = False
        for ns, r in tagged:
            pid, comm = owned.get(r.inode, (0, b""))
            since, flags = seed_since(r, now)
            role = ("listener" if r.state == states.LISTEN else
                    "server" if (ns, r.family, r.lport) in listening else "client")
            # a timewait socket's uid is 0 in sock_diag: not its owner's.
            # The cgroup: the program reads a full socket's own (a timewait
            # socket has none, and sock_diag gives none for it either).
            uid = wire.NONE_U32 if r.state == states.TIME_WAIT else r.uid
            packed = wire.SEED.pack(
                since, _raw16(r.family, r.laddr), _raw16(r.family, r.raddr), r.lport,
                r.rport, pid, r.family, _OWNER_PROC if pid else _OWNER_UNKNOWN,
                _ROLES[role], flags, r.state, b"", comm[:wire.COMM_LEN], 0, uid, ns)
            try:
                table[ctypes.c_uint64(r.cookie)] = leaf.from_buffer_copy(packed)
            except Exception:        # bcc: the map is full
                self.notes.append("seeds map full: some sockets older than socktrace "
                                  "get own ids")
                break
            closing = closing or r.state in _CLOSING
        if self.gated and closing:
            self._bpf[b"followed"][ctypes.c_int(1)] = ctypes.c_int64(1)
        self._seed_listeners(listeners, owned)

    def _rows_elsewhere(self, own_ns):
        """(namespace, row) for the sockets of every other network
        namespace a file holds (containers), each dumped from inside it."""
        from . import netns, sockdiag

        out = []
        for ns in netns.every():
            if ns == own_ns or (self.netns and ns not in self.netns):
                continue
            try:
                out += [(ns, r) for r in sockdiag.dump(info=True, netns=ns)]
            except sockdiag.SockDiagError as e:
                if e.errno not in _NS_GONE:
                    self._cannot_enter(ns, e)
        return out

    def _cannot_enter(self, ns, e):
        self._unreachable.add(ns)
        self.notes.append("cannot look into network namespace %d (%s): its sockets older "
                          "than socktrace get own ids, and its connections that end unseen "
                          "keep their stories" % (ns, str(e).rsplit(": ", 1)[-1]))

    def _seed_wanted(self, r, ns):
        """The context filters for a socket older than us.  A full socket's
        first transition is decided by the program itself (it reads the
        socket); a timewait socket ends through the timer programs, which do
        not filter, so one passes only when sock_diag can decide: it shows
        no uid and no cgroup for it."""
        if self.netns and ns not in self.netns:
            return False
        tw = r.state == states.TIME_WAIT
        if self.uids and (tw or r.uid not in self.uids):
            return False
        return not (self.cgroups and tw)

    def _seed_listeners(self, rows, owned):
        """Listeners older than socktrace, with their owners, where the
        program looks up who owns what a listener accepts (else the
        connections an old server accepts would have no owner)."""
        table = self._bpf[b"listeners"]
        for r in rows:
            if r.state != states.LISTEN:
                continue
            pid, comm = owned.get(r.inode, (0, b""))
            if not pid:
                continue
            key = table.Key()
            ctypes.memmove(ctypes.addressof(key), _raw16(r.family, r.laddr), 16)
            key.port = r.lport
            leaf = table.Leaf()
            leaf.sk = 0                  # not known from sock_diag: see the program
            leaf.pid = pid
            ctypes.memmove(ctypes.addressof(leaf) + type(leaf).comm.offset, comm[:wire.COMM_LEN],
                           min(len(comm), wire.COMM_LEN))
            try:
                table[key] = leaf
            except Exception:            # full: those accept with unknown owners
                break

    # -- reading -------------------------------------------------------------

    def read_span(self):
        """What arrived since the last call, as bytes in the ring buffer's
        layout: each record after its 8-byte header, 8-aligned."""
        if self._rb is not None:
            return self._rb.read()
        self._bpf.perf_buffer_poll(timeout=0)
        out, self._pending = self._pending, []
        # one perf buffer per CPU, read one after the other: a socket whose
        # transitions ran on two CPUs came out of order (seen on 6.1).  Time
        # order, as the one ring buffer gives (stable: a closed record stays
        # after the transition it shares its time with).
        out.sort(key=_record_ts)
        return b"".join(out)

    def wait(self, seconds):
        """Sleep at most *seconds*, less when the program says a batch of
        records is waiting."""
        if self._epoll is None:
            time.sleep(seconds)
        else:
            self._epoll.poll(seconds)

    def read(self):
        """The records that arrived since the last call, as output dicts
        (tracer/spec.py); what could not be decoded is counted for lost()."""
        recs, bad = records.decode(self._fmt, self.read_span())
        self._undecodable += bad
        return recs

    def _native_formatter(self):
        """The C formatter (tracer/_fmt.c), configured with this backend's
        tables, or None when it was not built (or SOCKTRACE_PURE_PYTHON=1,
        to compare): then run.py formats in Python, with the same output."""
        if os.environ.get("SOCKTRACE_PURE_PYTHON"):
            return None
        try:
            from . import _fmt
        except ImportError:
            return None
        self._cgroups = {}           # cgroup id -> (path, container, unit), as C has it
        self._configure = _fmt.configure
        self._configure(*records.native_config(self._fmt))
        if self._rb is not None:
            self._rb.committed = _fmt.committed
        return _fmt.format

    def read_ndjson(self):
        """What read() returns, already as NDJSON bytes: (bytes, records)."""
        span = self.read_span()
        data, bad, missing, lines = self._native(span)
        while missing:
            # cgroups the C formatter has no text for (at most 64 a call):
            # resolved here once (tracer/context.py), handed over, and the
            # span formatted again.  Each round adds ids: it ends.
            for cid in missing:
                self._cgroups[cid] = self._fmt.where(0, 0, cid)[2:]
            self._configure(*records.native_config(self._fmt, cgroups=self._cgroups))
            data, bad, missing, lines = self._native(span)
        self._undecodable += bad
        return data, lines

    def _on_perf(self, cpu, data, size):
        # laid out as the ring buffer's records, so that one decoder serves.
        # perf pads a sample's data so that it and its 4-byte size end on 8
        # bytes (a 96-byte record comes as 100): the length is its kind's.
        body = ctypes.string_at(data, size)
        want = wire.SIZES.get(_U32.unpack_from(body)[0]) if size >= 4 else None
        if want is not None and want <= size:
            body, size = body[:want], want
        self._pending.append(_HDR.pack(size, 0) + body + bytes(-size % 8))

    def _on_perf_lost(self, count):
        self._perf_lost += count

    def counters(self):
        """Kernel-side counters summed over CPUs, by name, plus the kernel's
        own count of runs it skipped (see _missed)."""
        # the kernel's skip counts first: see _missed for why the order matters
        missed = self._missed()
        # one batch read of every slot (lost() asks once per read of the ring)
        sums = _per_cpu_sums(self._counters)
        per_slot = len(wire.COUNTERS)
        out = {name: sum(sums[slot * per_slot + idx] for slot in range(_NR_SLOTS))
               for idx, name in wire.COUNTERS.items()}
        if self.use_perfbuf:
            out["ringbuf_lost"] += self._perf_lost
        missed["missed"] -= out["recovered"]
        out.update(missed)
        return out

    def _missed(self):
        """The kernel does not run a tracepoint program on a CPU where a BPF
        program is already running (an interrupt arrived during one, and
        its softirq changed a TCP state): the event is dropped and only the
        program's recursion_misses counter knows.  ``missed``: transitions
        never seen; ``timer_missed``: timer events never seen (some TIME_WAIT
        may be misreported).  0 on kernels before 5.12, which do not count.

        With raw tracepoints the backup program handles most transitions the
        main one is skipped for; counters() takes its ``recovered`` count
        off.  The skip count is read first: a skip and its recovery are
        ~100 ns apart, so reading them in this order can miss a skip whose
        recovery it counts (a transient undercount that the next read
        corrects: lost() only reports increases); the reverse would need
        the two further apart than the reads (tens of microseconds).
        The backup's own skips are not losses: it is skipped only while it
        runs itself, and then the main program is free."""
        out = {"missed": 0, "timer_missed": 0, "reset_missed": 0}
        for fn in self._bpf.funcs.values():
            name = fn.name if isinstance(fn.name, bytes) else fn.name.encode()
            if name == _BACKUP:
                continue
            what = ("timer_missed" if b"timer" in name else
                    "reset_missed" if b"reset" in name else "missed")
            out[what] = out.get(what, 0) + _prog_misses(fn.fd)
        return out

    def lost(self):
        """{counter name: increase since the last call} for the loss
        counters with non-zero increases, and records user space could not
        decode (``undecodable``)."""
        now = self.counters()
        now["undecodable"] = self._undecodable
        new = {}
        for name in wire.LOSS_COUNTERS + ("undecodable",):
            d = now[name] - self._counters_seen.get(name, 0)
            if d > 0:
                new[name] = d
                self._counters_seen[name] = now[name]
        return new

    # -- what the kernel knows now ----------------------------------------------

    def stats(self):
        """The kernel's tallies for the exit report and --metrics:
        {"transitions": {(old, new): n}, "durations": {state: hist counts}
        (SYN_SENT: connects that got through; "SYN_SENT->CLOSE": those that
        failed), "ends": {end: n}, "lower_bounds": n}."""
        ns = wire.NR_STATES
        per_slot = ns * ns
        trans = {}
        table = _per_cpu_sums(self._bpf[b"transitions"])
        for idx in range(per_slot):
            n = sum(table[slot * per_slot + idx] for slot in range(_NR_SLOTS))
            if n:
                trans[(states.NAMES[idx // ns], states.NAMES[idx % ns])] = n
        durations = {}
        table = _per_cpu_sums(self._bpf[b"hist"])
        per_slot = ns * hist.BUCKETS
        rows = [(states.NAMES[old], old) for old in sorted({states.NUMBERS[o] for o, _ in trans})]
        if ("SYN_SENT", "CLOSE") in trans:
            rows.append((wire.CONNECT_FAILED, wire.HIST_CONNECT_FAILED))
        for name, row in rows:
            counts = [sum(table[slot * per_slot + row * hist.BUCKETS + b]
                          for slot in range(_NR_SLOTS)) for b in range(hist.BUCKETS)]
            if any(counts):
                durations[name] = counts
        c = self.counters()
        ends = {end: c["end_" + end] for end in wire.END.values() if c["end_" + end]}
        return {"transitions": trans, "durations": durations, "ends": ends,
                "lower_bounds": c["lower"]}

    def stories(self):
        """What the kernel holds now: [(story, "socks" | "tws", map key)]
        and the seeds not yet taken, {cookie: seed}."""
        out = []
        for name in ("socks", "tws"):
            keys, data = _batch_read(self._bpf[name.encode()])
            out += [(v, name, k) for k, v in zip(keys, wire.stories(data))]
        keys, data = _batch_read(self._bpf[b"seeds"])
        seeds = dict(zip(keys, map(wire.Seed._make, wire.SEED.iter_unpack(data))))
        return out, seeds

    @staticmethod
    def _tuple(v, fmt):
        fam = v.family
        return (fam, fmt.addr(fam, v.saddr), v.sport, fmt.addr(fam, v.daddr), v.dport)

    def _dump(self, info=True):
        from . import sockdiag

        try:
            return sockdiag.dump(info=info), sockdiag.own_netns_inode()
        except (sockdiag.SockDiagError, OSError) as e:
            raise Failure("cannot list sockets (sock_diag): %s" % e)

    def sockets(self):
        """Every socket of this network namespace now (sock_diag), with the
        story the kernel holds for it: its id, owner and ages.  A socket we
        hold no story of (older than us, and sock_diag's dump at start did
        not see it) gets its cookie as id, its owner from /proc, and no age."""
        rows, netns = self._dump()
        now = time.monotonic_ns()
        found, seeds = self.stories()
        by_tuple = {self._tuple(v, self._dfmt): v for v, _, _ in found}
        # a client still in SYN_SENT has local port 0 in its story (the port
        # is chosen after CLOSE -> SYN_SENT): matched by its addresses and
        # remote port, so two connects from one address to one destination
        # at once may swap ids in a dump
        for (fam, laddr, lport, raddr, rport), v in list(by_tuple.items()):
            if not lport:
                by_tuple.setdefault(("connecting", fam, laddr, raddr, rport), v)
        ts = self._dfmt.ts(now)
        out = []
        unknown = [r for r in rows if (r.family, r.laddr, r.lport, r.raddr, r.rport)
                   not in by_tuple and r.cookie not in seeds]
        owned = _owners_of(unknown)
        listening = {(r.family, r.lport) for r in rows if r.state == states.LISTEN}
        for r in rows:
            v = by_tuple.get((r.family, r.laddr, r.lport, r.raddr, r.rport))
            if v is None and r.state == states.SYN_SENT:
                v = by_tuple.get(("connecting", r.family, r.laddr, r.raddr, r.rport))
            if v is None:
                v = seeds.get(r.cookie)
                conn = r.cookie
                if v is not None:
                    start = since = v.since_ns
                    flags = v.flags
            else:
                conn, start, since, flags = v.conn, v.start_ns, v.ts, v.flags
                if v.state != r.state:
                    since = None     # moved since the map was read
            # a timewait socket's uid in sock_diag is 0, not its owner's
            uid = None if r.state == states.TIME_WAIT else r.uid
            cgroup = 0
            if v is None:
                pid, comm = owned.get(r.inode, (0, b""))
                owner_from = "proc" if pid else "unknown"
                role = ("listener" if r.state == states.LISTEN else
                        "server" if (r.family, r.lport) in listening else "client")
                in_state = age = None
                lower, estimate = True, False
            else:
                cgroup = v.cgroup
                if uid is None and v.uid != wire.NONE_U32:
                    uid = v.uid
                pid, comm = v.pid, v.comm
                owner_from = wire.OWNER_FROM[v.owner_from]
                role = records._ROLE[v.role]
                in_state = now - since if since is not None else None
                age = now - start
                lower = bool(flags & _F_LOWER)
                estimate = bool(flags & _F_ESTIMATE) and getattr(v, "cur_lower", 1) == 1
            where = self._dfmt.where(netns, wire.NONE_U32 if uid is None else uid, cgroup)
            out.append(records.socket_record(
                ts, ("%x" % conn, r.family, r.laddr, r.lport, r.raddr, r.rport),
                (pid or None, self._dfmt.comm(comm) if pid else None, owner_from, role),
                states.NAMES[r.state], in_state, age, lower, estimate, "bpf", False,
                where, records.live_health(r.state, r.health, role == "client")))
        return out

    def reconcile(self):
        """Stories the kernel still holds for sockets that are gone: the
        socket ended without an event we saw (a program run the kernel
        skipped, counted as lost; a socket older than us that left no
        trace).  A story whose socket is missing from two dumps in a row
        is ended with a closed record (end "unknown") and removed: two,
        because a dump and a read of the maps are not one atomic view, and
        a socket that just closed has its own end.  Stories of other
        network namespaces (containers) are checked against a dump made
        inside theirs (tracer/netns.py); one that cannot be entered is
        said once in a note, and its stories are left alone."""
        rows, own = self._dump(info=False)         # tcp_info: not needed here
        # by family and ports, not addresses: no text to make for 100k
        # stories, and a story another socket's ports match only stays a
        # little longer (ids are never ended by mistake).  Only those four
        # fields of each story are unpacked (wire.STORY_WHERE): decoding
        # 100k stories whole took 0.27 s of this thread's 0.69 s.
        from .sockdiag import DiagSocket
        at = DiagSocket._fields.index
        where_of = operator.itemgetter(at("family"), at("lport"), at("rport"))
        cookie_of = operator.itemgetter(at("cookie"))
        present = {own: (set(map(where_of, rows)), set(map(cookie_of, rows)))}
        now = time.monotonic_ns()
        missing, data_of = [], {}
        for where in ("socks", "tws"):
            keys, data_of[where] = _batch_read(self._bpf[where.encode()])
            # a client still connecting has no local port in its story yet
            # (it is chosen after CLOSE -> SYN_SENT): it cannot be matched
            for i, (sport, dport, fam, ns) in enumerate(
                    wire.STORY_WHERE.iter_unpack(data_of[where])):
                if not sport:
                    continue
                if ns not in present:
                    present[ns] = self._present_in(ns, where_of, cookie_of)
                there = present[ns]
                if there is not None and (fam, sport, dport) not in there[0]:
                    missing.append(((where, keys[i]), i))
        # seeds: sockets older than us that have not moved yet, by cookie
        keys, data_of["seeds"] = _batch_read(self._bpf[b"seeds"])
        for i, (ns,) in enumerate(wire.SEED_NETNS.iter_unpack(data_of["seeds"])):
            if ns not in present:
                present[ns] = self._present_in(ns, where_of, cookie_of)
            there = present[ns]
            if there is not None and keys[i] not in there[1]:
                missing.append((("seeds", keys[i]), i))
        missing = dict(missing)
        gone = missing.keys() & self._suspects
        self._suspects = missing.keys() - gone
        out = []
        for where, key in sorted(gone):
            table = self._bpf[where.encode()]
            v = (wire.seed_at if where == "seeds" else wire.story_at)(data_of[where],
                                                                       missing[where, key])
            try:
                del table[table.Key(key)]
            except KeyError:
                continue             # it ended meanwhile, with its own record
            if records._ROLE.get(getattr(v, "role", 0)) != "listener":
                out.append(self._vanished(v, where, key, now))
        return out

    def _present_in(self, ns, where_of, cookie_of):
        """({(family, lport, rport)}, {cookie}) of the sockets of network
        namespace *ns* now; None when it cannot be looked into."""
        if not ns or ns in self._unreachable:
            return None
        from . import sockdiag
        try:
            rows = sockdiag.dump(info=False, netns=ns)
        except sockdiag.SockDiagError as e:
            if e.errno not in _NS_GONE:
                self._cannot_enter(ns, e)
            return None
        return set(map(where_of, rows)), set(map(cookie_of, rows))

    def _vanished(self, v, where, key, now):
        """A closed record for a story whose end the kernel never showed us."""
        seed = where == "seeds"
        fmt = self._rfmt
        start = v.since_ns if seed else v.start_ns
        spent = [0] * wire.NR_STATES if seed else list(v.spent)
        spent[v.state] += max(0, now - (v.since_ns if seed else v.ts))
        path = ([] if seed else list(v.path[:v.path_len])) + [v.state]
        fam, pid = v.family, v.pid
        tup = ("%x" % (key if seed else v.conn), fam, fmt.addr(fam, v.saddr), v.sport,
               fmt.addr(fam, v.daddr), v.dport)
        owner = (pid or None, fmt.comm(v.comm) if pid else None,
                 wire.OWNER_FROM[v.owner_from], records._ROLE[v.role])
        where = fmt.where(v.netns, v.uid, v.cgroup)
        return records.closed_record(fmt, now, tup, owner, start, spent, path, "unknown", None,
                                     None, bool(v.flags & _F_LOWER) or seed, "bpf", False,
                                     where)

    def report(self):
        """The exit report's figures, from the kernel's own tallies."""
        st = self.stats()
        durations = {}
        for name, counts in st["durations"].items():
            d = {"count": hist.count(counts)}
            d.update(hist.percentiles(counts))
            top = max(b for b, n in enumerate(counts) if n)
            d["max_ns"] = hist.value(top)
            durations[name] = d
        try:
            rows, _ = self._dump()
        except Failure:
            rows = []
        current = {}
        for r in rows:
            name = states.NAMES[r.state]
            current[name] = current.get(name, 0) + 1
        c = self.counters()
        return {
            "transitions": {"%s->%s" % k: n for k, n in sorted(st["transitions"].items())},
            "durations": durations,
            "current": current,
            "records": {"state": c["state_sent"], "closed": c["closed_sent"],
                        "derived": c["derived_sent"], "handoffs": c["handoff"],
                        "self_transitions": c["self"],
                        "impossible_durations": c["impossible"]},
        }

    def quiesce(self):
        """Detach every program, keeping the maps and the ring.  Run while
        programs still send, the last read and the summary's counters would
        disagree by what came between them, and what the ring held beyond
        that read would never be written nor counted (47,839 records of a
        churn that went on while socktrace stopped: tests/test_shutdown.py)."""
        if self._bpf is None or self._quiet:
            return
        self._quiet = True
        if self._backup_link is not None:
            os.close(self._backup_link)
            self._backup_link = None
        for tp in list(self._bpf.raw_tracepoint_fds):
            self._bpf.detach_raw_tracepoint(tp)
        for tp in list(self._bpf.tracepoint_fds):
            try:
                self._bpf.detach_tracepoint(tp)
            except Exception:            # bcc's own words; close() tries again
                pass
        # a run that began before its link went may still be writing: the
        # kernel lets go of a detached program after an RCU grace period,
        # not at once, and a run takes microseconds
        time.sleep(0.02)

    def close(self):
        """Detach every program and free the maps (idempotent)."""
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._rb is not None:
            self._rb.close()
            self._rb = None
        if self._backup_link is not None:
            os.close(self._backup_link)
            self._backup_link = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None


def committed(span):
    """How many bytes of an unread ring-buffer span hold committed records:
    up to the first one a producer has reserved but not committed (BUSY),
    or one that does not fit in the span.  tracer/_fmt.c has the same,
    used when it is built (this loop costs 0.17 us a record)."""
    off, end = 0, len(span)
    unpack = _HDR.unpack_from
    while off + 8 <= end:
        length = unpack(span, off)[0]
        if length & _BUSY:
            break
        nxt = (off + 8 + (length & _LEN_MASK) + 7) & ~7
        if nxt > end:
            break
        off = nxt
    return off


class _RingReader:
    """Reads a BPF ring buffer map through mmap, many records per call."""

    def __init__(self, map_fd, size):
        page = mmap.PAGESIZE
        self.mask = size - 1
        self.cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        # producer page + data mapped twice, read-only
        self.prod = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED,
                              mmap.PROT_READ, offset=page)
        self.data_off = page
        # The positions are shared with producers on other CPUs, so each is
        # read and written as one 8-byte access (memoryview "Q" items).
        # struct.pack_into would not do: it zeroes its target, then writes
        # it byte by byte, and a producer that reads consumer_pos in between
        # sees a buffer that looks full and drops its record (that was the
        # "reservation fails with the buffer nearly empty" of bench/README).
        self.committed = None         # tracer._fmt.committed, when built
        self._cons_pos = memoryview(self.cons).cast("Q")
        self._prod_pos = memoryview(self.prod)[:8].cast("Q")

    def read(self):
        """The committed records since the last read, as bytes in the ring
        buffer's layout (each after its 8-byte header, 8-aligned), at most
        MAX_READ_BYTES.  Lengths are followed record by record, to stop at
        the first one a producer has reserved but not yet committed (BUSY);
        the data pages are mapped twice, so the span is one copy even where
        it wraps."""
        cons_pos = self._cons_pos[0]
        prod_pos = self._prod_pos[0]
        if prod_pos <= cons_pos:
            return b""
        limit = min(prod_pos, cons_pos + MAX_READ_BYTES)
        base = self.data_off + (cons_pos & self.mask)
        with memoryview(self.prod) as view, view[base:base + limit - cons_pos] as span:
            off = (self.committed or committed)(span)
            out = span[:off].tobytes()
        # release the space to the producers
        self._cons_pos[0] = cons_pos + off
        return out

    def close(self):
        self._cons_pos.release()
        self._prod_pos.release()
        self.cons.close()
        self.prod.close()


# struct members the raw tracepoint programs read, by -D macro
_RAW_TP_MACROS = {
    "ST_OFF_SK_PROTOCOL": ("sock", "sk_protocol"),
    "ST_OFF_SKC_FAMILY": ("sock_common", "skc_family"),
    "ST_OFF_SKC_DPORT": ("sock_common", "skc_dport"),
    "ST_OFF_SKC_RCV_SADDR": ("sock_common", "skc_rcv_saddr"),
    "ST_OFF_SKC_DADDR": ("sock_common", "skc_daddr"),
    "ST_OFF_SKC_V6_RCV_SADDR": ("sock_common", "skc_v6_rcv_saddr"),
    "ST_OFF_SKC_V6_DADDR": ("sock_common", "skc_v6_daddr"),
    "ST_OFF_INET_SPORT": ("inet_sock", "inet_sport"),
    "ST_OFF_TIMER_FUNCTION": ("timer_list", "function"),
}

# BTF offsets of what the program reads for context, health and the
# acceptor (see its header comment), by group: a group missing from a
# kernel's BTF costs that group's fields only.
_CGROUP = {"ST_OFF_SK_CGROUP": (("sock", "sk_cgrp_data"), ("sock_cgroup_data", "cgroup")),
           "ST_OFF_CGROUP_KN": (("cgroup", "kn"),),
           "ST_OFF_KN_ID": (("kernfs_node", "id"),)}
_CONTEXT_MACROS = (
    ("uid", [([], {"ST_OFF_SK_UID": (("sock", "sk_uid"),)})]),
    # before 5.15 sock_cgroup_data is a union whose val is the cgroup
    # pointer when its bit 0 is clear
    ("cgroup", [([], _CGROUP),
                (["-DST_CGROUP_VAL"], dict(_CGROUP, ST_OFF_SK_CGROUP=(
                    ("sock", "sk_cgrp_data"), ("sock_cgroup_data", "val"))))]),
    ("health (bytes, segments, RTT, retransmits)", [([], {
        "ST_OFF_TP_BYTES_ACKED": (("tcp_sock", "bytes_acked"),),
        "ST_OFF_TP_BYTES_RECEIVED": (("tcp_sock", "bytes_received"),),
        "ST_OFF_TP_SEGS_OUT": (("tcp_sock", "segs_out"),),
        "ST_OFF_TP_SEGS_IN": (("tcp_sock", "segs_in"),),
        "ST_OFF_TP_TOTAL_RETRANS": (("tcp_sock", "total_retrans"),),
        "ST_OFF_TP_SRTT_US": (("tcp_sock", "srtt_us"),),
        "ST_OFF_TP_MDEV_US": (("tcp_sock", "mdev_us"),)})]),
    ("resets sent by an aborting close()", [([], {
        "ST_OFF_TP_RCV_NXT": (("tcp_sock", "rcv_nxt"),),
        "ST_OFF_TP_COPIED_SEQ": (("tcp_sock", "copied_seq"),),
        "ST_OFF_SK_LINGERTIME": (("sock", "sk_lingertime"),),
        "ST_OFF_SKC_FLAGS": (("sock_common", "skc_flags"),)})]),
    ("acceptors as owners", [([], {
        "ST_OFF_TASK_FILES": (("task_struct", "files"),),
        "ST_OFF_FILES_FDT": (("files_struct", "fdt"),),
        "ST_OFF_FDT_FD": (("fdtable", "fd"),),
        "ST_OFF_FDT_MAX": (("fdtable", "max_fds"),),
        "ST_OFF_FILE_PRIVATE": (("file", "private_data"),),
        "ST_OFF_SOCKET_SK": (("socket", "sk"),)})]),
)

_CGROUP_FILTERS = 8                   # ST_CGROUP_FILTERS in the program

_BACKUP = b"set_state_backup"          # the second inet_sock_set_state program

_PROG_INFO_SIZE = 232                 # struct bpf_prog_info up to verified_insns (5.16)
_OFF_NAME = 64                        # char name[16]
_OFF_RUN_TIME_NS = 192                # then run_cnt (both 5.1)
_OFF_RECURSION_MISSES = 208           # 5.12


def _record_ts(rec, _at=_HDR.size + 8):
    """ts_ns of a record laid out as in the ring buffer (both kinds start
    with kind, pid, ts_ns)."""
    return _U64.unpack_from(rec, _at)[0]


def prog_stats(fd):
    """A loaded program's name, run_time_ns and run_cnt (counted while
    kernel.bpf_stats_enabled is 1) and recursion_misses, from
    BPF_OBJ_GET_INFO_BY_FD; None for what the kernel is too old to fill,
    and None for all of it when it does not answer."""
    from bcc.libbcc import lib

    info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    size = ctypes.c_uint32(_PROG_INFO_SIZE)
    if lib.bpf_obj_get_info(fd, info, ctypes.byref(size)) != 0:
        return None
    raw, n = info.raw, size.value

    def u64(off):
        return _U64.unpack_from(raw, off)[0] if n >= off + 8 else None
    return {"name": raw[_OFF_NAME:_OFF_NAME + 16].split(b"\0")[0].decode(errors="replace"),
            "run_time_ns": u64(_OFF_RUN_TIME_NS), "run_cnt": u64(_OFF_RUN_TIME_NS + 8),
            "recursion_misses": u64(_OFF_RECURSION_MISSES)}


def _prog_misses(fd):
    """recursion_misses of one loaded program; 0 before 5.12 (not counted)."""
    st = prog_stats(fd)
    return (st and st["recursion_misses"]) or 0


# a namespace no file holds any more, or whose process ended while it was
# being entered (tracer/netns.py): not a refusal, only "not now"
_NS_GONE = (errno.ENOENT, errno.ESRCH)
_NR_SLOTS = 3                          # ST_NR_SLOTS: per-CPU slots, one a program context
_OWNER_PROC = {v: k for k, v in wire.OWNER_FROM.items()}["proc"]
_OWNER_UNKNOWN = {v: k for k, v in wire.OWNER_FROM.items()}["unknown"]
_ROLES = {v: k for k, v in wire.ROLE.items()}
_F_LOWER = wire.FLAGS["lower"]
_F_ESTIMATE = wire.FLAGS["estimate"]
# states from which an older socket can enter or leave TIME_WAIT unseen
_REQUEST = {states.SYN_RECV, states.NEW_SYN_RECV}
_CLOSING = {states.NUMBERS[n] for n in ("FIN_WAIT1", "FIN_WAIT2", "CLOSING", "TIME_WAIT")}
TIME_WAIT_LEN_NS = 60 * 1_000_000_000      # TCP_TIMEWAIT_LEN, fixed in the kernel


def seed_since(row, now_ns):
    """(since when, flags) for a socket older than us, from a sock_diag row:
    TIME_WAIT from its timer (60 s minus what is left), CLOSE_WAIT from when
    data last came in (the peer's FIN), both estimates; otherwise we only
    know it was there at *now_ns*."""
    if row.state == states.TIME_WAIT and row.expires_ms:
        left = min(row.expires_ms * 1_000_000, TIME_WAIT_LEN_NS)
        return now_ns - (TIME_WAIT_LEN_NS - left), _F_LOWER | _F_ESTIMATE
    if row.state == states.CLOSE_WAIT and row.last_data_recv_ms is not None:
        return now_ns - row.last_data_recv_ms * 1_000_000, _F_LOWER | _F_ESTIMATE
    return now_ns, _F_LOWER


def _raw16(family, text):
    """Address text -> the 16 bytes the kernel records carry (IPv4 mapped)."""
    if family == 4:
        return b"\0" * 10 + b"\xff\xff" + socket.inet_pton(socket.AF_INET, text)
    return socket.inet_pton(socket.AF_INET6, text)


def _owners_of(rows):
    """inode -> (pid, comm bytes) for the rows' sockets, from /proc."""
    try:
        from . import owners
        found = owners.OwnerCache().resolve({r.inode for r in rows if r.inode})
    except (ImportError, OSError):
        return {}
    return {ino: (pid, (comm or "").encode("utf-8", "replace"))
            for ino, (pid, comm) in found.items()}


def _per_cpu_sums(table):
    """A per-CPU array's values summed over CPUs, as a list (in batches
    where the kernel can: one system call per few thousand entries)."""
    try:
        return [sum(v) for _, v in table.items_lookup_batch()]
    except Exception:
        return [sum(table[ctypes.c_int(i)]) for i in range(len(table))]


def _batch_read(table, chunk=4096):
    """All of a u64-keyed map: (keys, values back to back as bytes), read
    with BPF_MAP_LOOKUP_BATCH a chunk at a time.  bcc's own batch reader
    allocates room for the whole map (70 MB for 256k stories) and makes a
    ctypes object of every value: 0.26 s for 98k stories."""
    from bcc.libbcc import lib

    vsize = ctypes.sizeof(table.Leaf)
    keys = ctypes.create_string_buffer(8 * chunk)
    values = ctypes.create_string_buffer(vsize * chunk)
    token, count = ctypes.c_uint32(0), ctypes.c_uint32(0)
    out_keys, out_values = [], []
    first = True
    while True:
        count.value = chunk
        res = lib.bpf_lookup_batch(table.map_fd, None if first else ctypes.byref(token),
                                   ctypes.byref(token), keys, values, ctypes.byref(count))
        err = ctypes.get_errno()
        n = count.value
        if n:
            out_keys += struct.unpack_from("<%dQ" % n, keys)
            out_values.append(values.raw[:n * vsize])
        if res != 0:
            if err == errno.ENOENT:
                break
            raise Failure("reading a BPF map failed: %s" % os.strerror(err))
        first = False
    return out_keys, b"".join(out_values)


def _pow2_pages(mb):
    pages = max(1, int(mb * 1024 * 1024 // mmap.PAGESIZE))
    p = 1
    while p < pages:
        p <<= 1
    return p


def _one_line(e):
    text = " ".join(str(e).split())
    return text[:300]


class _quiet_stderr:
    """Silence fd 2 while bcc compiles (it prints clang output itself); the
    text is kept and returned in the error instead."""

    def __enter__(self):
        import tempfile

        self.tmp = tempfile.TemporaryFile()
        self.saved = os.dup(2)
        os.dup2(self.tmp.fileno(), 2)
        return self

    def __exit__(self, exc_type, exc, tb):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        if exc is not None:
            self.tmp.seek(0)
            text = self.tmp.read().decode(errors="replace")
            errs = [ln for ln in text.splitlines() if "error" in ln]
            if errs:
                exc.args = ("%s (%s)" % (exc.args[0] if exc.args else exc, errs[0].strip()),)
        self.tmp.close()
        return False
