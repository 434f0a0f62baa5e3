#!/usr/bin/env python3
"""Which storm transitions did the BPF programs not see, and in what context?

    sudo .venv/bin/python bench/ground_truth.py                 # 100k, max rate
    sudo .venv/bin/python bench/ground_truth.py --rate 4000 --count 24000

Runs socktrace's eBPF backend in this process (records read and kept, no
pipeline, so the consumer never falls behind) beside a private tracefs
instance recording sock:inet_sock_set_state on the storm's ports with the
CLOCK_MONOTONIC trace clock, then runs bench/storm.py (client-first close,
IPv4).  Each kernel transition is matched to a record by 4-tuple, old and
new state and the nearest timestamp (within 2 ms).  Prints one JSON line:
the kernel's count, the records', what the programs reported lost, the main
program's recursion misses and the backup's recoveries, and the transitions
with no record grouped by the task and context (ftrace's irq/softirq/preempt
flags) they ran in.

CLOSE->SYN_SENT is left out on both sides: before connect() picks a source
address the tracepoint and the record may disagree on it.  Loopback only,
bounded by --count; the instance is removed at the end.
"""
import argparse
import collections
import json
import os
import re
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tracer import records, states, wire  # noqa: E402
from tracer.bpf_backend import BpfBackend, _prog_misses, ensure_tracefs  # noqa: E402

BASE, NPORTS = 21000, 16
LINE = re.compile(r"^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+(\S+)\s+(\d+)\.(\d+): inet_sock_set_state:.*"
                  r"sport=(\d+) dport=(\d+) saddr=(\S+) daddr=(\S+) .*"
                  r"oldstate=TCP_(\S+) newstate=TCP_(\S+)")
NUM = states.NUMBERS
FIELD = {f: i for i, f in enumerate(wire.STATE_FIELDS)}


def state_tuples(span):
    """The raw st_state records of a ring-buffer span (closed records left out)."""
    items, _ = records.walk(span)
    return [wire.STATE.unpack_from(span, off) for kind, off in items if kind == wire.KIND_STATE]


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def key_of(rec):
    """(laddr, lport, raddr, rport, old, new) of a record, as the kernel
    reported the transition: X->TIME_WAIT from a set_state hit stands for
    X->CLOSE (a FIN_WAIT2 hand-off sends no record: the socket goes on in
    FIN_WAIT2, held by its timewait socket)."""
    old, new = rec[FIELD["oldstate"]], rec[FIELD["newstate"]]
    if new == NUM["TIME_WAIT"]:
        new = NUM["CLOSE"]
    return (socket.inet_ntoa(rec[FIELD["saddr"]][12:]), rec[FIELD["sport"]],
            socket.inet_ntoa(rec[FIELD["daddr"]][12:]), rec[FIELD["dport"]], old, new)


def ours(k):
    return (BASE <= k[1] < BASE + NPORTS or BASE <= k[3] < BASE + NPORTS) and \
        (k[4], k[5]) != (NUM["CLOSE"], NUM["SYN_SENT"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=0, help="connections/s (default: max)")
    args = ap.parse_args()
    if not 1 <= args.count <= 200_000:
        sys.exit("ground_truth.py: --count must be in [1, 200000]")
    inst = os.path.join(ensure_tracefs(), "instances", "ground_truth_%d" % os.getpid())
    os.mkdir(inst)
    backend = None
    try:
        write(os.path.join(inst, "buffer_size_kb"), str(max(8192, args.count * 12 * 160 // 1024)))
        write(os.path.join(inst, "trace_clock"), "mono")
        ev = os.path.join(inst, "events", "sock", "inet_sock_set_state")
        write(os.path.join(ev, "filter"), "protocol == 6 && ((sport >= %d && sport < %d) || "
              "(dport >= %d && dport < %d))" % (BASE, BASE + NPORTS, BASE, BASE + NPORTS))
        write(os.path.join(ev, "enable"), "1")
        backend = BpfBackend().open()
        raw = []
        cmd = [sys.executable, os.path.join(HERE, "storm.py"), "--count", str(args.count),
               "--close", "client", "--family", "4", "--ports", str(NPORTS),
               "--base-port", str(BASE)] + (["--rate", str(args.rate)] if args.rate else [])
        storm = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        done_at = None
        while done_at is None or time.monotonic() < done_at:
            got_now = state_tuples(backend.read_span())
            raw.extend(got_now)
            if done_at is None and storm.poll() is not None:
                done_at = time.monotonic() + 0.5     # the storm's last transitions
            if len(got_now) < 4096:
                time.sleep(0.005)
        write(os.path.join(inst, "tracing_on"), "0")
        result = json.loads(storm.stdout.read())
        counters = backend.counters()
        misses = {fn.name.decode(): _prog_misses(fn.fd) for fn in backend._bpf.funcs.values()}
        got = collections.defaultdict(list)
        for rec in raw:
            if rec[FIELD["flags"]] & wire.FLAGS["derived"]:
                continue
            k = key_of(rec)
            if ours(k):
                got[k].append(rec[FIELD["ts_ns"]])
        truth = collections.defaultdict(list)
        with open(os.path.join(inst, "trace")) as f:
            for line in f:
                m = LINE.match(line)
                if not m:
                    continue
                k = (m.group(9), int(m.group(7)), m.group(10), int(m.group(8)),
                     NUM[m.group(11)], NUM[m.group(12)])
                if ours(k):
                    ts = int(m.group(5)) * 10**9 + int(m.group(6).ljust(9, "0")[:9])
                    truth[k].append((ts, m.group(1), m.group(4)))
    finally:
        if backend is not None:
            backend.close()
        try:
            write(os.path.join(inst, "events", "sock", "inet_sock_set_state", "enable"), "0")
        finally:
            os.rmdir(inst)
    missing = []
    for k, seen in truth.items():
        left = sorted(got.get(k, []))
        for ts, comm, flags in sorted(seen):
            j = min(range(len(left)), key=lambda i: abs(left[i] - ts)) if left else None
            if j is not None and abs(left[j] - ts) < 2_000_000:
                left.pop(j)
            else:
                missing.append((k, comm, flags))
    by_task = collections.Counter(comm for tl in truth.values() for _, comm, _ in tl)
    out = {
        "storm": {k: result.get(k) for k in ("completed", "failed", "rate")},
        "kernel_transitions": sum(map(len, truth.values())),
        "records": sum(map(len, got.values())),
        "reported_lost": {k: v for k, v in counters.items()
                          if k in wire.LOSS_COUNTERS and v and k != "timer_missed"},
        "main_recursion_misses": misses.get("raw_tracepoint__inet_sock_set_state"),
        "backup_recovered": counters.get("recovered"),
        "backup_recursion_misses": misses.get("set_state_backup"),
        "missing": len(missing),
        "missing_by_transition": {"%s->%s" % (states.NAMES[old], states.NAMES[new]): n
                                  for (old, new), n in collections.Counter(
                                      (k[4], k[5]) for k, _, _ in missing).items()},
        "missing_by_task_and_context": {"%s %s" % tc: n for tc, n in collections.Counter(
            (comm, flags) for _, comm, flags in missing).most_common(10)},
        "kernel_transitions_by_task": dict(by_task.most_common(10)),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
