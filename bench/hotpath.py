#!/usr/bin/env python3
"""The consumer's hot path, timed without a kernel: run this before and after
changing decode, the table, the filters or the sink.  Under a minute, no root.

    .venv/bin/python bench/hotpath.py            # medians of 5 runs
    .venv/bin/python bench/hotpath.py --profile  # plus the top of a cProfile

It builds the ring-buffer bytes a client-first loopback storm produces (11
records per connection: 5 client transitions, the FIN_WAIT2 hand-off, 5
server transitions; each conn owned, with in_old_ns), decodes them with the
backend's bulk reader and pushes them through the same ``Pipeline`` and
``JsonSink`` socktrace runs, writing NDJSON to /dev/null, with the garbage
collector set up as ``run.run()`` sets it (see there): frozen start-up, no
automatic collection, one young-generation collection after each read.  It
prints microseconds per record for each stage and in total.  Figures on the
project VM are in bench/README.md ("hotpath"); a change that makes ``total``
worse by more than the run-to-run spread needs a reason.
"""
import argparse
import gc
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tracer import bpf_backend, records, states, wire  # noqa: E402
from tracer.run import Pipeline  # noqa: E402
from tracer.sink import JsonSink  # noqa: E402
from tracer.table import ConnTable  # noqa: E402

S = states.NUMBERS
LO = bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1])
CLIENT = [bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 2 + i]) for i in range(32)]
HDR_OK = wire.EVENT.size               # committed record: length, no flags


def storm_bytes(conns):
    """The ring-buffer span of *conns* client-first connections."""
    out = bytearray()
    t = 10 ** 12
    ev = wire.EVENT.pack
    for i in range(conns):
        c = 0xFFFF888100000000 + i * 4096
        s = c + 2048
        tw = c + 1024
        src = CLIENT[i % 32]
        p = 1024 + i % 60000
        t += 1000

        def rec(dt, sk, old, new, sport, dport, saddr, daddr, pid, comm, owner,
                in_old=0, twaddr=0, via=0, kind=0, flags=wire.F_IN_OLD):
            return ev(t + dt, sk, twaddr, in_old, saddr, daddr, pid, sport, dport, 4,
                      S[old], S[new], owner, flags if in_old else 0, 0, via, kind,
                      comm.ljust(16, b"\0"))

        cl = dict(saddr=src, daddr=LO, pid=4242, comm=b"client", owner=1)
        sv = dict(saddr=LO, daddr=src, pid=4243, comm=b"server", owner=3)
        for r in (rec(0, c, "CLOSE", "SYN_SENT", 0, 21000, **cl),
                  rec(1, s, "LISTEN", "SYN_RECV", 21000, p, **sv),
                  rec(2, c, "SYN_SENT", "ESTABLISHED", p, 21000, in_old=2000, **cl),
                  rec(3, s, "SYN_RECV", "ESTABLISHED", 21000, p, in_old=1500, **sv),
                  rec(4, c, "ESTABLISHED", "FIN_WAIT1", p, 21000, in_old=9000, **cl),
                  rec(5, s, "ESTABLISHED", "CLOSE_WAIT", 21000, p, in_old=9100, **sv),
                  rec(6, c, "FIN_WAIT1", "FIN_WAIT2", p, 21000, in_old=800, **cl),
                  rec(7, c, "FIN_WAIT2", "CLOSE", p, 21000, in_old=900, twaddr=tw,
                      via=1, kind=wire.KIND_HANDOFF, **cl),
                  rec(8, s, "CLOSE_WAIT", "LAST_ACK", 21000, p, in_old=3000, **sv),
                  rec(9, s, "LAST_ACK", "CLOSE", 21000, p, in_old=700, **sv),
                  rec(9, c, "FIN_WAIT2", "TIME_WAIT", p, 21000, in_old=1700, twaddr=tw,
                      via=2, flags=wire.F_IN_OLD | wire.F_DERIVED, **cl)):
            out += (HDR_OK).to_bytes(4, "little") + bytes(4) + r
    return bytes(out)


def once(span, n, batch):
    """(decode s, pipeline s, sink s, free + gc s) for one pass over *span*."""
    fmt = records.Formatter(0)
    table = ConnTable(0)
    feed = Pipeline(fmt, table, None, "bpf").feed
    sink = JsonSink(os.devnull)
    stride = bpf_backend._STRIDE
    body = bpf_backend._BODY
    t_dec = t_pipe = t_sink = t_gc = 0.0
    for start in range(0, n, batch):
        chunk = span[start * stride:min(n, start + batch) * stride]
        t0 = time.perf_counter()
        items = list(body.iter_unpack(chunk))
        t1 = time.perf_counter()
        out = feed(items)
        t2 = time.perf_counter()
        sink.write(out)
        t3 = time.perf_counter()
        del items, out         # the batch goes, then a young collection,
        gc.collect(0)          # as in run.run() after each read
        t4 = time.perf_counter()
        t_dec += t1 - t0
        t_pipe += t2 - t1
        t_sink += t3 - t2
        t_gc += t4 - t3
    sink.close()
    return t_dec, t_pipe, t_sink, t_gc


def once_native(span, n, batch):
    """The same for the C hot path (tracer/_native.c): it decodes, updates
    the table and encodes in one call, so there is no separate decode."""
    fmt = records.Formatter(0)
    table = ConnTable(0)
    sink = JsonSink(os.devnull)
    feed = Pipeline(fmt, table, None, "bpf").native(sink.encode)
    stride = bpf_backend.STRIDE
    t_pipe = t_sink = t_gc = 0.0
    for start in range(0, n, batch):
        chunk = span[start * stride:min(n, start + batch) * stride]
        t1 = time.perf_counter()
        out = feed(chunk, stride, bpf_backend.RECORD_OFFSET)
        t2 = time.perf_counter()
        sink.write_bytes(out)
        t3 = time.perf_counter()
        del out
        gc.collect(0)
        t4 = time.perf_counter()
        t_pipe += t2 - t1
        t_sink += t3 - t2
        t_gc += t4 - t3
    sink.close()
    return 0.0, t_pipe, t_sink, t_gc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=40_000, help="connections (x11 records)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2048, help="records per read (run.BUSY_BATCH)")
    ap.add_argument("--profile", action="store_true", help="print the top of a cProfile")
    args = ap.parse_args()
    span = storm_bytes(args.conns)
    n = len(span) // bpf_backend._STRIDE
    gc.freeze()                # as run.run() does when its loop starts
    gc.disable()
    us = lambda xs: statistics.median(xs) / n * 1e6  # noqa: E731
    print("hotpath: %d records (%d connections), %d runs, medians" % (n, args.conns, args.runs))
    paths = [("python", once)]
    try:
        from tracer import _native  # noqa: F401
    except ImportError:
        print("  (tracer._native not built: the C hot path is not measured)")
    else:
        paths.append(("native", once_native))
    totals = {}
    for name, fn in paths:
        rows = [fn(span, n, args.batch) for _ in range(args.runs)]
        dec, pipe, sink, young = (us([r[i] for r in rows]) for i in range(4))
        total = totals[name] = us([sum(r) for r in rows])
        print("%s:" % name)
        if name == "python":
            print("  bulk decode   %6.3f us/record" % dec)
            print("  pipeline      %6.3f us/record  (decode to dict, table, filter)" % pipe)
            print("  sink          %6.3f us/record  (NDJSON, one write per batch)" % sink)
        else:
            print("  pipeline      %6.3f us/record  (decode, table, NDJSON in C)" % pipe)
            print("  sink          %6.3f us/record  (one write per batch)" % sink)
        print("  free + gc     %6.3f us/record  (the batch freed, one young collection)" % young)
        print("  total         %6.3f us/record  = %.0f records/s on one core" % (total, 1e6 / total))
    if "native" in totals:
        print("python / native: %.2fx" % (totals["python"] / totals["native"]))
    if args.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.runcall(once, span, n, args.batch)
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
