#!/usr/bin/env python3
"""Ring-buffer bytes -> NDJSON bytes, C (tracer/_fmt.c) against the Python
reference (records.decode + orjson.dumps per record, as the sink writes it).
Under a minute, no root, no kernel:

    .venv/bin/python bench/fmt_speed.py [--records 200000] [--rounds 7]

The span is what a client-first loopback storm hands over: per connection
five state records (CLOSE->SYN_SENT ... FIN_WAIT2->TIME_WAIT, owned, with
in_old_ns) and one closed record, i.e. one closed per five states, over a
few thousand ports, 10% IPv6.  Both formatters get the same span in the
same process, one untimed warm-up round each (the Python Formatter keeps its
caches across rounds, as socktrace's does), the garbage collector off while
timed.  Prints the median, min and max of ns per record for each, and checks
first that the two outputs are the same bytes.
"""
import argparse
import gc
import os
import statistics
import struct
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, ".."))
sys.path.insert(0, os.path.join(here, "..", "tests"))

import orjson  # noqa: E402

from tracer import records, states, wire  # noqa: E402

try:
    from tracer import _fmt  # noqa: E402
except ImportError:
    sys.exit("tracer._fmt is not built: .venv/bin/python setup.py build_ext --inplace")


S = states.NUMBERS
HDR = struct.Struct("<II")
V4 = bytes(10) + b"\xff\xff"
LO = V4 + bytes([127, 0, 0, 1])
LO6 = bytes(15) + b"\x01"
CLIENT_PATH = [(S["CLOSE"], S["SYN_SENT"]), (S["SYN_SENT"], S["ESTABLISHED"]),
               (S["ESTABLISHED"], S["FIN_WAIT1"]), (S["FIN_WAIT1"], S["FIN_WAIT2"]),
               (S["FIN_WAIT2"], S["TIME_WAIT"])]
PATH = bytes([S["SYN_SENT"], S["ESTABLISHED"], S["FIN_WAIT1"], S["FIN_WAIT2"],
              S["TIME_WAIT"]]).ljust(wire.PATH_LEN, b"\0")
IN_OLD = wire.FLAGS["in_old"]


def frame(body):
    return HDR.pack(len(body), 0) + body + bytes(-len(body) % 8)


def storm_span(n):
    """About *n* records: 5 state records and 1 closed per connection."""
    out = []
    ts = 3_600_000_000_000           # an hour after boot
    conn = 0x1000
    while len(out) < n:
        conn += 1
        six = conn % 10 == 0
        fam = 6 if six else 4
        addr = LO6 if six else LO
        sport, dport = 32768 + conn % 28000, 8080
        comm = (b"curl" if conn % 3 else b"storm-client").ljust(wire.COMM_LEN, b"\0")
        start = ts
        for old, new in CLIENT_PATH:
            ts += 1700 + conn % 500
            out.append(frame(wire.STATE.pack(
                wire.KIND_STATE, 4000 + conn % 7, ts, conn, 1700, addr, addr, sport, dport,
                fam, old, new, 1, 1, IN_OLD if old != S["CLOSE"] else 0, 0, 0, comm,
                0, 4026531840, 1000)))
        if len(out) < n:
            ts += 2000
            spent = [0] * wire.NR_STATES
            for st, ns in (("SYN_SENT", 1700), ("ESTABLISHED", 5000), ("FIN_WAIT1", 900),
                           ("FIN_WAIT2", 1200), ("TIME_WAIT", 60_000_000_000)):
                spent[S[st]] = ns
            out.append(frame(wire.CLOSED.pack(
                wire.KIND_CLOSED, 4000 + conn % 7, ts, conn, start, *spent, addr, addr,
                sport, dport, 0, fam, 1, 1, HEALTH, 0, 1, 5, 0, PATH, comm,
                0, 4026531840, 1000, 517, 4096, 9, 8, 0, 31, 15, 0)))
    return b"".join(out[:n])


HEALTH = wire.FLAGS["health"]


def python_format(fmt, span):
    recs, bad = records.decode(fmt, span)
    return b"".join([orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE) for d in recs]), bad


def timed(fn, rounds):
    fn()                              # warm-up
    times = []
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
        gc.enable()
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    span = storm_span(args.records)
    offset = records.monotonic_to_wall_ns()
    fmt = records.Formatter(offset)
    _fmt.configure(*records.native_config(records.Formatter(offset)))
    c_out = _fmt.format(span)[:2]      # (bytes, bad); no cgroup ids in this span
    py_out = python_format(fmt, span)
    if c_out != py_out:
        sys.exit("C and Python outputs differ: run tests/test_fmt.py")
    n = args.records
    print("%d records (%d closed), %.1f MB in, %.1f MB out, %d rounds"
          % (n, c_out[0].count(b'"type":"closed"'), len(span) / 1e6, len(c_out[0]) / 1e6,
             args.rounds))
    results = {}
    for name, fn in (("C", lambda: _fmt.format(span)),
                     ("Python", lambda: python_format(fmt, span))):
        per = [t / n for t in timed(fn, args.rounds)]
        results[name] = statistics.median(per)
        print("%-7s %8.1f ns/record  (min %.1f, max %.1f)"
              % (name, results[name], min(per), max(per)))
    print("speed-up %.1fx" % (results["Python"] / results["C"]))


if __name__ == "__main__":
    main()
