"""What a backend is: the one interface the eBPF and the /proc backends
implement, and how run.py picks one.

A backend is the top of the data path (kernel record -> decode -> enrich ->
filter -> sink): it hands on *finished* records, dicts with exactly the
fields tracer/spec.py declares for their type, in the order things happened.
It owns everything it needs to build them (the eBPF backend: the kernel's
maps; the proc backend: its memory from one poll to the next).  Nothing
below it keeps a second copy of a connection's story.
tests/test_backends.py is the conformance test both pass.

    open()            load/attach or take the first snapshot; returns self.
                      Raises Unavailable (eBPF cannot run here: one line)
                      or Failure (a run-time error: one line).
    read()            [state and closed records] that arrived since the last
                      call (may be empty; never blocks for long).
    wait(seconds)     sleep until records may be waiting, at most *seconds*.
    lost()            {what: count} of new losses since the last call
                      (the ``what`` values of a lost record).
    sockets()         [socket records]: every TCP socket now, with its id,
                      owner and age where known.
    reconcile()       [closed records] for connections the backend still
                      held but the kernel no longer has, ended unseen; each
                      one is also dropped from the backend's memory.
    stats()           running tallies for --metrics: {"transitions":
                      {(old, new): n}, "durations": {STATE: hist bucket
                      counts (tracer/hist.py)}, "ends": {end: n}}.
    report()          the exit report's figures: {"transitions":
                      {"OLD->NEW": n}, "durations": {STATE: {"count",
                      "p50_ns", "p90_ns", "p99_ns", "max_ns"}}, "current":
                      {STATE: n}, "records": {...}}.
    quiesce()         stop producing records, keep what report() needs:
                      read() then returns what is left, then nothing, and
                      the counters hold still for the summary; idempotent.
    close()           detach / forget; idempotent.

    source            "bpf" or "proc", as in every record.
    threadsafe_dumps  sockets() may run in another thread while read() runs.
    notes             one-line caveats for stderr (degraded features).
"""

import time


class Failure(Exception):
    """A run-time failure, reported as one line and exit status 1."""


class Unavailable(Exception):
    """eBPF cannot run here; the message is one line saying why."""


class Backend:
    """The interface (see the module docstring); both backends subclass it."""

    source = None
    threadsafe_dumps = False

    def __init__(self):
        self.notes = []

    def open(self):
        raise NotImplementedError

    def read(self):
        raise NotImplementedError

    def lost(self):
        return {}

    def wait(self, seconds):
        time.sleep(seconds)

    def sockets(self):
        raise NotImplementedError

    def reconcile(self):
        return []

    def report(self):
        raise NotImplementedError

    def quiesce(self):
        pass

    def close(self):
        pass


def kernel_cgroups(args):
    """--cgroup and --container as the (cgroup id, level) pairs the eBPF
    program compares: a container is the cgroup(s) its runtime made for it,
    found now (one that starts later is not seen)."""
    out = [(c[1], c[2]) for c in getattr(args, "cgroup", ())]
    if getattr(args, "container", None):
        from .context import Cgroups, ContextError
        cg = Cgroups()
        for prefix in args.container:
            try:
                out += [(cid, level) for _path, cid, level in cg.of_container(prefix)]
            except ContextError as e:
                raise Failure(str(e))
    return out


def open_backend(args, ports=(), lports=(), rports=(), record_types=("state", "closed")):
    """The backend the user asked for; with ``auto``, eBPF or else /proc
    with a one-line note (in its ``notes``) saying why."""
    if args.backend in ("auto", "bpf"):
        try:
            from .bpf_backend import BpfBackend
        except ImportError as e:
            why = "cannot import the eBPF backend (%s)" % e
        else:
            try:
                return BpfBackend(max_socks=args.max_sockets, ringbuf_mb=args.ringbuf_mb,
                                  family=args.family, ports=ports, lports=lports,
                                  rports=rports, pids=args.pid,
                                  record_types=record_types,
                                  uids=getattr(args, "uid", ()),
                                  netns=getattr(args, "netns", ()),
                                  cgroups=kernel_cgroups(args)).open()
            except Unavailable as e:
                why = str(e)
                sized = [opt for opt, v, default in (
                    ("--max-sockets %s" % args.max_sockets, args.max_sockets, 262144),
                    ("--ringbuf-mb %s" % args.ringbuf_mb, args.ringbuf_mb, 16))
                    if v != default]
                if sized and "failed to load" in why:
                    # the sizes asked for are part of what failed: polling
                    # /proc instead would quietly drop what the user set
                    raise Failure("%s: %s" % (" ".join(sized), why))
        if args.backend == "bpf":
            raise Failure("eBPF backend unavailable: %s" % why)
    from .proc_backend import ProcBackend

    backend = ProcBackend(interval=args.interval).open()
    if args.backend == "auto":
        # one line says both why and what instead: the last note is the
        # proc backend's "polling ..."
        poll = backend.notes.pop() if backend.notes else "polling /proc instead"
        backend.notes.insert(0, "eBPF unavailable (%s); %s" % (why, poll))
    return backend
