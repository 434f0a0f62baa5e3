"""The pipeline, in the order data flows:

    backend (finished records) -> filter -> sink

and the loop that drives it: read what arrived, filter it, write it in one
go, sleep a little when the host is quiet, reconcile with the kernel every
few seconds, stop cleanly on a signal or when --duration runs out.
"""

import os
import signal
import sys
import threading
import time

from . import records, spec, wire
from .backend import Failure, open_backend
from .filters import Filter, context_filters
from .text import one_line

POLL_S = 0.05          # quiet-host latency: records reach the output within this
RECONCILE_S = float(os.environ.get("SOCKTRACE_RECONCILE_S", 5.0))
                       # how often stories are checked against the kernel's sockets
BUSY_BATCH = 2048      # a read this large means more is waiting: read again now


# Every catchable signal whose default would end the process ends the run
# instead, as SIGINT does: the loop stops, writes what is waiting and the
# exit report.  SIGHUP reopens -o FILE (a rotation) and only without -o
# ends the run; SIGUSR1 asks for a dump.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGPIPE", "SIGQUIT", "SIGUSR2", "SIGALRM",
                "SIGVTALRM", "SIGPROF", "SIGXCPU", "SIGXFSZ", "SIGPWR", "SIGSTKFLT")


class _Flags:
    def __init__(self, reopen_on_hup):
        self.stop = False
        self.dump = False
        self.reopen = False
        self.reopen_on_hup = reopen_on_hup

    def on_stop(self, signum, frame):
        if signum == signal.SIGHUP and self.reopen_on_hup:
            self.reopen = True
        else:
            self.stop = True

    def on_dump(self, signum, frame):
        self.dump = True

    def install(self):
        nums = []
        for name in STOP_SIGNALS:
            num = getattr(signal, name, None)
            if num is None:
                continue
            # one ignored by whoever started us (nohup: SIGHUP) stays so;
            # Python itself ignores SIGPIPE and SIGXFSZ, so those are ours
            if (signal.getsignal(num) is signal.SIG_IGN
                    and num not in (signal.SIGPIPE, signal.SIGXFSZ)):
                continue
            signal.signal(num, self.on_stop)
            nums.append(num)
        signal.signal(signal.SIGUSR1, self.on_dump)
        # and one blocked by whoever started us would never arrive (a
        # parent's mask is inherited: embedded ClickHouse blocks SIGPIPE)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, nums + [signal.SIGUSR1])


class Background(threading.Thread):
    """A backend job that reads the kernel's whole socket list (reconcile(),
    sockets()), in a thread of its own: on a host with 100k sockets one
    takes about half a second, which the reading loop must not wait for
    (the ring buffer would fill).  It runs every *every* seconds, or when
    asked (request()); at least twenty times as long as the last run took
    passes between two periodic ones, so it costs at most a twentieth of a
    core.  The loop picks its records up with take()."""

    def __init__(self, name, job, every=None):
        super().__init__(name="socktrace-" + name, daemon=True)
        self.what, self.job, self.every = name, job, every
        self.records = []
        self.error = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._asked = threading.Event()

    def run(self):
        wait = self.every
        while not self._done.is_set():
            self._asked.wait(wait)
            self._asked.clear()
            if self._done.is_set():
                return
            t0 = time.monotonic()
            try:
                got = self.job()
            except Exception as e:          # reported by the loop, as one line
                self.error = e
                return
            with self._lock:
                self.records += got
            if self.every is not None:
                wait = max(self.every, 20 * (time.monotonic() - t0))

    def request(self):
        self._asked.set()

    def take(self):
        if self.error is not None:
            raise Failure("%s failed: %s" % (self.what, self.error))
        with self._lock:
            out, self.records = self.records, []
        return out

    def stop(self):
        self._done.set()
        self._asked.set()
        if self.is_alive():
            self.join()


_DURATION_ORDER = {name: i for i, name in enumerate(
    ("SYN_SENT", wire.CONNECT_FAILED) + tuple(n for n in spec.TIMED_STATES if n != "SYN_SENT"))}


def summary(backend, args, ts, start_ts, seconds, received, lost_total, tally=None):
    """The exit report as a ``summary`` record (fields: tracer/spec.py),
    honouring the filters (see tracer/report.py)."""
    from . import report

    rep = backend.report()
    where = report.scope(args)
    if tally is None:
        st = backend.stats()
    elif "state" in args.records:
        st = tally.stats()
    else:
        # without state records the filter has nothing to count transitions
        # and times from: those are the kernel's, and the report says so
        st = dict(backend.stats(), ends=tally.ended)
        where += " (transitions and times host-wide: no state records to filter)"
    durs = report.durations(st["durations"])
    durs = dict(sorted(durs.items(), key=lambda kv: _DURATION_ORDER.get(kv[0], 99)))
    try:
        current, top = report.exit_snapshot(args)
    except Exception:            # no snapshot (another netns, no /proc): the backend's view
        current, top = rep["current"], {"processes": [], "remotes": [],
                                        "oldest_close_wait": None}
    counts = dict(rep.get("records", {}))
    counts["received"] = received
    counts["lost"] = dict(lost_total)
    return {"type": "summary", "ts": ts, "start_ts": start_ts, "seconds": round(seconds, 3),
            "scope": where,
            "transitions": {"%s->%s" % k: n for k, n in sorted(st["transitions"].items())},
            "durations": durs, "lower_bounds": st.get("lower_bounds", 0),
            "ended": dict(sorted(st.get("ends", {}).items())), "current": current,
            "top": top, "records": counts, "source": backend.source}


def run(args, ports=(), lports=(), rports=()):
    from .sink import EcsSink, JsonSink, OutputError, PidFile, SinkClosed, TextSink

    types = set(args.records)
    try:
        sink = {"text": TextSink, "ecs": EcsSink}.get(args.format, JsonSink)(args.output)
    except OutputError as e:
        raise Failure(str(e))
    # handlers first: a signal sent as soon as the pid file exists must
    # find them (SIGUSR1's default would end the process)
    flags = _Flags(reopen_on_hup=sink.out.path is not None)
    flags.install()
    pidfile = None
    if getattr(args, "pid_file", None):
        try:
            pidfile = PidFile(args.pid_file)
        except OutputError as e:
            sink.close()
            raise Failure(str(e))
    try:
        return _run(args, sink, flags, ports, lports, rports, types)
    finally:
        if pidfile is not None:
            pidfile.remove()


def _run(args, sink, flags, ports, lports, rports, types):
    from .sink import JsonSink, SinkClosed

    out = sink.out

    backend = open_backend(args, ports, lports, rports,
                           record_types=tuple(t for t in ("state", "closed") if t in types))
    tell(backend)
    source = backend.source
    fmt = records.Formatter()
    keep = Filter(family=args.family, ports=ports, lports=lports, rports=rports,
                  pids=args.pid, comms=args.comm, states=args.state, nets=args.addr,
                  types=types,
                  # the eBPF program decides these itself, from the socket
                  **(context_filters(args) if source == "proc" else {}))
    want = keep if keep.active else None
    # the kernel emits only the types asked for; the proc backend all
    fast = getattr(backend, "read_ndjson", None) if (
        type(sink) is JsonSink and not keep.narrows_records) else None
    lost_total = {}
    received = [0]
    # the kernel's tallies know the family and port filters, not these
    from .report import Tally
    tally = Tally() if keep.narrows_records else None
    start_mono = time.monotonic_ns()
    start_ts = fmt.ts(start_mono)
    now = time.monotonic()
    deadline = now + args.duration if args.duration else None
    next_dump = now + args.dump_every if args.dump_every else None
    reconciler = Background("reconciling with the kernel's sockets", backend.reconcile,
                            every=RECONCILE_S)
    # the eBPF backend's dump reads only the kernel; the proc backend's reads
    # the memory its polls update, so it stays in this thread
    dumper = (Background("listing sockets", backend.sockets)
              if backend.threadsafe_dumps else None)

    def write(recs):
        if want is not None:
            recs = [r for r in recs if want(r)]
            if tally is not None:
                tally.add(recs)
        sink.write(recs)

    def pump():
        """One read: everything that arrived, filtered and written."""
        if fast is not None:
            data, n = fast()
            sink.write_bytes(data)
        else:
            recs = backend.read()
            n = len(recs)
            write(recs)
        received[0] += n
        lost = backend.lost()
        if lost and "lost" in types:
            ts = fmt.ts(time.monotonic_ns())
            sink.write([records.lost(ts, count, what, source) for what, count in lost.items()])
        for what, count in lost.items():
            lost_total[what] = lost_total.get(what, 0) + count
        sink.check()
        return n

    metrics = None
    if getattr(args, "metrics", None):
        from .metrics import Metrics
        try:
            metrics = Metrics(args.metrics, backend, lambda: {
                "records": received[0], "unwritten": out.unwritten, "lost": dict(lost_total)})
        except OSError as e:
            backend.close()
            sink.close()
            raise Failure("cannot serve metrics on %s:%d: %s"
                          % (args.metrics[0], args.metrics[1], e.strerror or e))

    final = None
    reconciler.start()
    if dumper is not None:
        dumper.start()
    try:
        try:
            sink.start()
            while not flags.stop and out.failed is None:
                if flags.reopen:
                    flags.reopen = False
                    out.reopen()       # between two writes: no record is split
                n = pump()
                if metrics is not None:
                    metrics.serve()
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                ended = reconciler.take()
                if ended and "closed" in types:
                    write(ended)
                tell(backend)
                if flags.dump or (next_dump is not None and now >= next_dump):
                    flags.dump = False
                    if next_dump is not None:
                        next_dump = now + args.dump_every
                    if "socket" not in types:
                        pass
                    elif dumper is not None:
                        dumper.request()
                    else:
                        write(backend.sockets())
                if dumper is not None:
                    write(dumper.take())
                if n < BUSY_BATCH:
                    backend.wait(POLL_S if deadline is None else
                                 max(0.0, min(POLL_S, deadline - now)))
            for job in (reconciler, dumper):
                if job is not None:
                    job.stop()            # and what it made since the last look:
                    got = job.take()
                    if got and (job is dumper or "closed" in types):
                        write(got)
            # what arrived while we were stopping, and all of it: no program
            # runs from here, and one read takes at most a batch
            backend.quiesce()
            while pump():
                pass
            end = time.monotonic_ns()
            final = summary(backend, args, fmt.ts(end), start_ts, (end - start_mono) / 1e9,
                            received[0], lost_total, tally)
            if args.summary or "summary" in types:
                sink.write([final])
        except SinkClosed:
            # the reader is gone (socktrace | head): nothing more to say
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except OSError:
                pass
            args.no_report = True
        if final is None and not args.no_report:
            end = time.monotonic_ns()
            final = summary(backend, args, fmt.ts(end), start_ts, (end - start_mono) / 1e9,
                            received[0], lost_total, tally)
    finally:
        for job in (reconciler, dumper):
            if job is not None:
                job.stop()
        if metrics is not None:
            metrics.close()
        backend.close()
        sink.close()
    if not args.no_report:
        from .report import render
        say(render(final, lost_total))
    elif lost_total:
        say("socktrace: lost %s\n" % lost_total)
    if out.failed is not None:
        say("socktrace: %s; %d records not written\n" % (out.failed, out.unwritten))
        return 1
    return 0


def tell(backend):
    """The backend's notes so far, each once (the reconciler's come later)."""
    while backend.notes:
        say("socktrace: %s\n" % one_line(backend.notes.pop(0)))


def say(text):
    """To stderr, if anybody still reads it."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
