"""The eBPF backend: compile bpf/socktrace.bpf.c with bcc, attach it to the
tracepoints, and read its records in batches straight from the ring buffer.

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
import mmap
import os
import platform
import struct

from . import wire

TRACEFS = "/sys/kernel/tracing"
DEFAULT_MAX_SOCKS = 262144
DEFAULT_RINGBUF_MB = 16

_U64 = struct.Struct("<Q")
_HDR = struct.Struct("<II")
_BUSY = 1 << 31
_DISCARD = 1 << 30
_REC = wire.EVENT.size
_STRIDE = (_REC + 8 + 7) & ~7        # ring buffer header + record, 8-aligned
# One read takes at most this many records; run.py reads again at once
# when a read was this large.  Behind a storm, a read of the whole ring
# (131k records at 16 MB) was decoded and formatted in one go: the
# consumer's peak RSS reached 530 MB and the allocator faulted its pages
# in again for every read.
MAX_READ = 8192
STRIDE = _STRIDE                     # read_span()'s layout: a record every STRIDE
RECORD_OFFSET = 8                    # bytes, after the ring buffer's 8-byte header
_BODY = struct.Struct("<%dx" % 8 + wire.EVENT.format.lstrip("<") + "%dx" % (_STRIDE - 8 - _REC))
_PERF_HDR = _HDR.pack(_REC, 0)       # a perf buffer record laid out as the ring's
_PERF_PAD = bytes(_STRIDE - 8 - _REC)


class Unavailable(Exception):
    """eBPF cannot run here; the message is one line saying why."""


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
        raise Unavailable("tracefs is not mounted at %s and mounting it failed (%s)"
                          % (root, getattr(e, "stderr", b"").decode().strip() or e))
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
    if os.geteuid() != 0:
        return "not root (eBPF needs root or CAP_BPF+CAP_PERFMON)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return ("bcc is not installed for this Python (apt-get install python3-bpfcc, "
                "and a venv made with --system-site-packages)")
    if not os.path.exists("/lib/modules/%s/build" % platform.release()):
        return ("no kernel headers for %s at /lib/modules/%s/build "
                "(install linux-headers, see README)" % (platform.release(), platform.release()))
    return None


class BpfBackend:
    """Source of decoded kernel records.  ``open()`` loads and attaches,
    ``read()`` returns the records that arrived since the last call,
    ``lost()`` the new kernel-side losses, ``close()`` detaches."""

    source = "bpf"

    def __init__(self, max_socks=DEFAULT_MAX_SOCKS, ringbuf_mb=DEFAULT_RINGBUF_MB,
                 family=None, ports=(), lports=(), rports=(), pids=(),
                 timewait=True):
        self.max_socks = max_socks
        self.ringbuf_pages = _pow2_pages(ringbuf_mb)
        self.family = family
        self.ports, self.lports, self.rports = set(ports), set(lports), set(rports)
        self.pids = set(pids)
        self.timewait = timewait
        self.notes = []          # one-line caveats for stderr (degraded features)
        self._bpf = None
        self._rb = None
        self._backup_link = None
        self._counters_seen = {}
        # /proc/net/tcp{,6} as read once the programs were attached, when
        # open() needed it; run.py seeds its table from the same read
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
        handler = kallsyms_address("tw_timer_handler") if self.timewait else 0
        if self.timewait and not handler:
            self.notes.append("TIME_WAIT not traced: tw_timer_handler not in /proc/kallsyms")
        flags.append("-DST_TW_HANDLER=0x%xULL" % handler)
        if handler:
            flags += self._btf_flags()
        flags += self._raw_tp_flags()
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
        return flags

    @property
    def gated(self):
        """Do the timer programs wait for a followed socket (the BPF
        program's "gate")?  Only when filters keep sockets out of its maps:
        the --pid filter applies to records, every socket is followed."""
        return bool(self.family or self.ports or self.lports or self.rports)

    def _btf_flags(self):
        from . import btf

        try:
            offs = btf.member_offsets({"inet_timewait_sock": ["tw_substate", "tw_timer"],
                                       "timer_list": ["expires"]})
        except btf.BTFError as e:
            self.notes.append("FIN_WAIT2 timewait sockets reported as TIME_WAIT: %s" % e)
            return []
        return [
            "-DST_OFF_TW_TIMER=%d" % offs[("inet_timewait_sock", "tw_timer")][0],
            "-DST_OFF_TW_SUBSTATE=%d" % offs[("inet_timewait_sock", "tw_substate")][0],
            "-DST_OFF_TIMER_EXPIRES=%d" % offs[("timer_list", "expires")][0],
        ]

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
        self.use_perfbuf = kernel_version() < (5, 8)

        from bcc import BPF  # lazy: the proc backend must work without bcc

        src = wire.bpf_dir() / "socktrace.bpf.c"
        cflags = self.cflags()
        # bcc prints compiler errors to stderr itself; keep ours to one line.
        try:
            with _quiet_stderr():
                self._bpf = BPF(src_file=str(src).encode(),
                                cflags=["-I%s" % wire.bpf_dir(), "-w"] + cflags)
                if "-DST_RAW_TP" in cflags:
                    self._attach_backup()
        except Exception as e:  # bcc raises bare Exception on compile/load errors
            self.close()
            raise Unavailable("BPF program failed to load: %s" % _one_line(e))
        self._fill_filters()
        if self.gated:
            self._open_gate_for_older_sockets()
        if self.use_perfbuf:
            self._pending = []
            self._bpf["events"].open_perf_buffer(self._on_perf, page_cnt=256,
                                                 lost_cb=self._on_perf_lost)
            self._perf_lost = 0
        else:
            self._rb = _RingReader(self._bpf["events"].map_fd, self.ringbuf_pages * mmap.PAGESIZE)
        self._counters = self._bpf["counters"]
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
            table = self._bpf["port_filter"]
            bits = {}
            for group, bit in ((self.ports, 1), (self.lports, 2), (self.rports, 4)):
                for p in group:
                    bits[p] = bits.get(p, 0) | bit
            for p, b in bits.items():
                table[ctypes.c_int(p)] = ctypes.c_ubyte(b)
        if self.pids:
            table = self._bpf["pid_filter"]
            for pid in self.pids:
                table[ctypes.c_uint(pid)] = ctypes.c_ubyte(1)

    def _open_gate_for_older_sockets(self):
        """A matching socket already in FIN_WAIT2 or CLOSING when we start
        can enter TIME_WAIT with no transition of it seen before: the gate
        then stays open for good (followed[1] = 1).  Checked after the
        programs and filters are in place, so that a socket that gets there
        later is followed the usual way.  Sockets of other network
        namespaces do not show in our /proc and are not covered."""
        from . import procnet, states
        from .filters import Filter

        closing = {states.NUMBERS[n] for n in ("FIN_WAIT2", "CLOSING")}
        matches = Filter(family=self.family, ports=self.ports, lports=self.lports,
                         rports=self.rports)
        try:
            self.start_sockets = procnet.read_tcp()
        except (OSError, ValueError):
            older = True            # cannot tell: keep it open
        else:
            older = any(s.state in closing and matches(
                {"family": s.family, "lport": s.lport, "rport": s.rport})
                for s in self.start_sockets)
        if older:
            self._bpf["followed"][ctypes.c_int(1)] = ctypes.c_int64(1)

    # -- reading -------------------------------------------------------------

    def read_span(self):
        """What arrived since the last call, as bytes: one st_event every
        STRIDE bytes, after an 8-byte header (the ring buffer's layout)."""
        if self._rb is not None:
            return self._rb.read()
        self._bpf.perf_buffer_poll(timeout=0)
        out, self._pending = self._pending, []
        return b"".join(out)

    def read(self):
        """Raw records (tuples in wire.FIELDS order) that arrived since last call."""
        return list(_BODY.iter_unpack(self.read_span()))

    def _on_perf(self, cpu, data, size):
        self._pending.append(_PERF_HDR + ctypes.string_at(data, _REC) + _PERF_PAD)

    def _on_perf_lost(self, count):
        self._perf_lost += count

    def counters(self):
        """Kernel-side counters summed over CPUs, by name, plus the kernel's
        own count of runs it skipped (see _missed)."""
        # the kernel's skip counts first: see _missed for why the order matters
        missed = self._missed()
        out = {}
        for idx, name in wire.COUNTERS.items():
            out[name] = sum(self._counters[ctypes.c_int(idx)])
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
        out = {"missed": 0, "timer_missed": 0}
        for fn in self._bpf.funcs.values():
            name = fn.name if isinstance(fn.name, bytes) else fn.name.encode()
            if name == _BACKUP:
                continue
            out["timer_missed" if b"timer" in name else "missed"] += _prog_misses(fn.fd)
        return out

    def lost(self):
        """{counter name: increase since the last call} for the loss
        counters (all but derived_sent) with non-zero increases."""
        now = self.counters()
        new = {}
        for name in wire.LOSS_COUNTERS:
            d = now[name] - self._counters_seen.get(name, 0)
            if d > 0:
                new[name] = d
                self._counters_seen[name] = now[name]
        return new

    def derived(self):
        """How many derived records (ST_F_DERIVED) the kernel has submitted."""
        return self.counters()["derived_sent"]

    def close(self):
        """Detach every program and free the maps (idempotent)."""
        if self._rb is not None:
            self._rb.close()
            self._rb = None
        if self._backup_link is not None:
            os.close(self._backup_link)
            self._backup_link = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None


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
        self._cons_pos = memoryview(self.cons).cast("Q")
        self._prod_pos = memoryview(self.prod)[:8].cast("Q")

    def read(self):
        """The committed records since the last read, as bytes: one record
        every _STRIDE bytes, its 8-byte ring-buffer header first."""
        cons_pos = self._cons_pos[0]
        prod_pos = self._prod_pos[0]
        if prod_pos <= cons_pos:
            return b""
        # Every record is one st_event, so records sit at a fixed stride and
        # the data pages are mapped twice (no wrap-around): the span is one
        # copy.  The headers are read in bulk first, to stop at the first
        # record a producer has reserved but not yet committed (BUSY).
        n = min((prod_pos - cons_pos) // _STRIDE, MAX_READ)
        start = self.data_off + (cons_pos & self.mask)
        with memoryview(self.prod) as view, view[start:start + n * _STRIDE] as span:
            with span.cast("I") as words:
                lens = words[::_STRIDE // 4].tolist()
            ok = n if lens.count(_REC) == n else lens.index(next(x for x in lens if x != _REC))
            out = span[:ok * _STRIDE].tobytes()
        cons_pos += ok * _STRIDE
        if ok < n and not lens[ok] & _BUSY:
            more, cons_pos = self._read_slow(cons_pos, prod_pos)
            out += more
        # release the space to the producers
        self._cons_pos[0] = cons_pos
        return out

    def _read_slow(self, cons_pos, prod_pos):
        """Record by record, for anything that is not one committed
        st_event (a discarded record); not expected from our program.
        Returns (records in read()'s layout, new consumer position)."""
        out = bytearray()
        buf, mask, base = self.prod, self.mask, self.data_off
        while cons_pos < prod_pos:
            off = base + (cons_pos & mask)
            length, _ = _HDR.unpack_from(buf, off)
            if length & _BUSY:
                break            # a producer is still writing it
            if not length & _DISCARD and (length & 0x3FFFFFFF) == _REC:
                out += buf[off:off + _STRIDE]
            cons_pos += ((length & 0x3FFFFFFF) + 8 + 7) & ~7
        return bytes(out), cons_pos

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

_BACKUP = b"set_state_backup"          # the second inet_sock_set_state program

_PROG_INFO_SIZE = 232                 # struct bpf_prog_info up to verified_insns (5.16)
_OFF_RECURSION_MISSES = 208


def _prog_misses(fd):
    """recursion_misses of one loaded program (BPF_OBJ_GET_INFO_BY_FD)."""
    from bcc.libbcc import lib

    info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    size = ctypes.c_uint32(_PROG_INFO_SIZE)
    if lib.bpf_obj_get_info(fd, info, ctypes.byref(size)) != 0:
        return 0
    if size.value < _OFF_RECURSION_MISSES + 8:
        return 0                       # kernel older than 5.12: not counted
    return _U64.unpack_from(info.raw, _OFF_RECURSION_MISSES)[0]


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
