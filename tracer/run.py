"""The pipeline, in the order data flows:

    kernel event -> decode -> connection table -> filter -> sink

and the loop that drives it: read what arrived, push it through, write it in
one go, sleep a little when the host is quiet, stop cleanly on a signal or
when --duration runs out.
"""

import gc
import os
import signal
import sys
import time

from . import records
from .filters import Filter

POLL_S = 0.05          # quiet-host latency: events reach the output within this
BUSY_BATCH = 2048      # a read this large means more is waiting: read again now
                       # (bpf_backend.MAX_READ caps a read well above this)


class Failure(Exception):
    """A runtime failure reported as one line and exit status 1."""


def _open_backend(args, ports, lports, rports):
    """The backend the user asked for; with ``auto``, eBPF or else /proc with
    a one-line note saying why."""
    from .bpf_backend import BpfBackend, Unavailable

    if args.backend in ("auto", "bpf"):
        try:
            return BpfBackend(max_socks=args.max_sockets, ringbuf_mb=args.ringbuf_mb,
                              family=args.family, ports=ports, lports=lports,
                              rports=rports, pids=args.pid).open()
        except Unavailable as e:
            if args.backend == "bpf":
                raise Failure("eBPF backend unavailable: %s" % e)
            sys.stderr.write("socktrace: eBPF unavailable (%s); polling /proc instead\n" % e)
    try:
        from .proc_backend import ProcBackend
    except ImportError as e:
        raise Failure("proc backend unavailable: %s" % e)
    return ProcBackend(interval=args.interval).open()


def _snapshot(table, socks=None):
    """Seed the table with the sockets that exist now, owners included
    (*socks*: the backend's own read of /proc/net/tcp{,6}, if it made one)."""
    try:
        from . import owners, procnet
    except ImportError as e:
        sys.stderr.write("socktrace: no start-up snapshot: %s\n" % e)
        return
    if socks is None:
        try:
            socks = procnet.read_tcp()
        except (OSError, ValueError) as e:
            sys.stderr.write("socktrace: no start-up snapshot: %s\n" % e)
            return
    resolved = owners.OwnerCache().resolve({s.inode for s in socks if s.inode})
    table.seed_from(socks, resolved)


class Pipeline:
    """decode -> connection table -> filter, for one batch of backend items;
    the rest of the loop only moves batches.  bench/hotpath.py times this
    same code on recorded-shape events."""

    def __init__(self, fmt, table, want, source):
        self.fmt, self.table, self.want, self.source = fmt, table, want, source
        self.raw = source == "bpf"     # the proc backend hands over decoded items

    def feed(self, batch):
        """The records to write for *batch*, in order."""
        out = []
        append = out.append
        decode, fmt, source = records.decode, self.fmt, self.source
        apply, want, raw = self.table.apply, self.want, self.raw
        for item in batch:
            rec, ts_ns, sk, twaddr = decode(fmt, item, source) if raw else item
            closed = apply(rec, ts_ns, sk, twaddr)
            if rec["type"] == "state" and (want is None or want(rec)):
                append(rec)
            if closed is not None and (want is None or want(closed)):
                append(closed)
        return out

    def native(self, encode):
        """The same pipeline in C (tracer/_native.c) for the eBPF backend's
        raw records, writing NDJSON itself: a ``feed(data, stride, offset)
        -> bytes`` callable, or None when the C module was not built or
        cannot serve (a user-space filter, another backend).  Records it
        does not handle come back here one at a time, as *encode* writes
        them.  SOCKTRACE_PURE_PYTHON=1 keeps to Python (to compare)."""
        if not self.raw or self.want is not None or os.environ.get("SOCKTRACE_PURE_PYTHON"):
            return None
        try:
            from . import _native
        except ImportError:
            return None
        import orjson

        from . import states, table, wire

        if _native.EVENT_SIZE != wire.EVENT.size:
            return None           # a stale build: the header changed since
        feed = self.feed

        def slow(item):
            return bytes(encode(feed((item,))))

        enum = lambda d: tuple(d.get(i) for i in range(max(d) + 1))  # noqa: E731
        return _native.Feeder(
            self.table, self.fmt, slow, wire.EVENT.unpack_from, orjson.dumps,
            table.Conn, table._Exits, table.Reservoir, table._META, states.NUMBERS,
            states.NAMES, enum(wire.OWNER_FROM), enum(records._VIA),
            enum(records._REASON), records._PORTS, self.source).feed


class _Flags:
    def __init__(self):
        self.stop = False
        self.dump = False

    def on_stop(self, signum, frame):
        self.stop = True

    def on_dump(self, signum, frame):
        self.dump = True


def run(args, ports=(), lports=(), rports=()):
    from .sink import JsonSink, SinkClosed, TextSink
    from .table import ConnTable, trim_meta

    try:
        sink = (TextSink if args.format == "text" else JsonSink)(args.output)
    except OSError as e:
        raise Failure(str(e))

    flags = _Flags()
    signal.signal(signal.SIGINT, flags.on_stop)
    signal.signal(signal.SIGTERM, flags.on_stop)
    signal.signal(signal.SIGUSR1, flags.on_dump)

    backend = _open_backend(args, ports, lports, rports)
    for note in getattr(backend, "notes", ()):
        sys.stderr.write("socktrace: %s\n" % note)
    source = backend.source
    fmt = records.Formatter()
    table = ConnTable(time.monotonic_ns(), cap=args.table_cap, source=source)
    if source == "bpf":
        _snapshot(table, backend.start_sockets)
    keep = Filter(family=args.family, ports=ports, lports=lports, rports=rports,
                  pids=args.pid, comms=args.comm, states=args.state, nets=args.addr)
    want = keep if keep.active else None
    lost_total = {}
    deadline = time.monotonic() + args.duration if args.duration else None
    next_dump = time.monotonic() + args.dump_every if args.dump_every else None
    pipeline = Pipeline(fmt, table, want, source)
    feed = pipeline.feed
    native = (pipeline.native(sink.encode) if isinstance(sink, JsonSink) else None)
    if native is not None:
        from .bpf_backend import RECORD_OFFSET, STRIDE
    evicted_seen = [0]
    received = [0]

    def pump():
        """One read: everything that arrived, through the pipeline, written."""
        if native is not None:
            span = backend.read_span()
            n = len(span) // STRIDE
            sink.write_bytes(native(span, STRIDE, RECORD_OFFSET))
            out = []
        else:
            batch = backend.read()
            n = len(batch)
            out = feed(batch)
        received[0] += n
        trim_meta()
        lost = backend.lost()
        if table.evicted != evicted_seen[0]:
            lost["table_evicted"] = table.evicted - evicted_seen[0]
            evicted_seen[0] = table.evicted
        if lost:
            ts = fmt.ts(time.monotonic_ns())
            for what, n_lost in lost.items():
                lost_total[what] = lost_total.get(what, 0) + n_lost
                out.append(records.lost(ts, n_lost, what, source))
        sink.write(out)
        sink.check()
        return n

    def summarize():
        s = table.summary(fmt.ts(time.monotonic_ns()))
        derived = getattr(backend, "derived", None)
        src = s.pop("source")       # stays last, as in the schema
        s["records"] = {"received": received[0],
                        "derived": derived() if derived else 0,
                        "lost": dict(lost_total)}
        s["source"] = src
        return s

    # Garbage collection while streaming.  Nothing on the hot path makes a
    # reference cycle: records, sockets and their blobs all go by reference
    # counts.  Left automatic, the collector walks every young object each
    # 700 allocations (each read's raw tuples: ~0.2 us a record in
    # bench/hotpath.py) and, once the table is big, every socket in each
    # full collection (240 ms at 2M sockets, every ~12 s of a TIME_WAIT
    # storm).  So: what start-up built (modules, BPF objects, the snapshot)
    # is frozen out of its reach, automatic collection is off, and after
    # each read, when its batch is gone, one young-generation collection
    # catches any cycle library code made since (a few us).  A cycle that
    # outlives its read would never be collected; none is known here.
    gc.freeze()
    gc.disable()
    final = None
    try:
        try:
            while not flags.stop:
                n = pump()
                gc.collect(0)
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if flags.dump or (next_dump is not None and now >= next_dump):
                    flags.dump = False
                    if next_dump is not None:
                        next_dump = now + args.dump_every
                    dump = [r for r in table.sockets(time.monotonic_ns(), fmt.ts)
                            if want is None or want(r)]
                    sink.write(dump)
                if n < BUSY_BATCH:
                    time.sleep(POLL_S if deadline is None else
                               max(0.0, min(POLL_S, deadline - now)))
            pump()    # what arrived while we were stopping
            final = summarize()
            if args.summary:
                sink.write([final])
        except SinkClosed:
            # the reader is gone (socktrace | head): nothing more to say
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except OSError:
                pass
            args.no_report = True
        if final is None:
            final = summarize()
    finally:
        gc.enable()
        gc.unfreeze()
        backend.close()
        sink.close()
    if not args.no_report:
        from .report import render
        sys.stderr.write(render(final, lost_total))
    elif lost_total:
        sys.stderr.write("socktrace: lost %s\n" % lost_total)
    return 0
