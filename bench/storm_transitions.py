#!/usr/bin/env python3
"""Count the kernel's own sock:inet_sock_set_state events for a small storm.

Ground truth for bench/storm.py's "expected_transitions": runs storm.py with
the given options while a private tracefs instance
(/sys/kernel/tracing/instances/storm_transitions_<pid>) records
sock:inet_sock_set_state filtered to the storm's listener ports, plus
tcp:tcp_send_reset / tcp:tcp_receive_reset / tcp:tcp_destroy_sock. Prints one
JSON line: counts per (oldstate, newstate), per connection, and the storm's
own result. The instance is removed afterwards. Needs root; does not touch
the global trace buffer or other tracers (bcc/perf attach separately).

  sudo python3 bench/storm_transitions.py --close reset --family 6 --count 5000

All options after the known ones are passed to storm.py (--count is capped at
20000 here so that the trace buffer holds every event).
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TRACEFS = "/sys/kernel/tracing"


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def count_transitions(path):
    n = 0
    with open(path) as f:
        for line in f:
            if "inet_sock_set_state:" in line and not line.startswith("#"):
                n += 1
    return n


def ensure_tracefs():
    if not os.path.isdir(os.path.join(TRACEFS, "events")):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--ports", type=int, default=16)
    p.add_argument("--base-port", type=int, default=21000)
    p.add_argument("--settle", type=float, default=1.0,
                   help="keep tracing this many seconds after storm.py exits, to catch "
                        "transitions the kernel completes later (default 1)")
    args, rest = p.parse_known_args()
    if not 1 <= args.count <= 20000:
        sys.exit("storm_transitions.py: --count must be in [1, 20000]")
    lo, hi = args.base_port, args.base_port + args.ports   # [lo, hi)

    ensure_tracefs()
    inst = os.path.join(TRACEFS, "instances", "storm_transitions_%d" % os.getpid())
    os.mkdir(inst)
    try:
        ncpu = os.cpu_count() or 1
        # ~100 bytes per event in the ring, 10 events per connection, x4 margin
        kb = max(4096, args.count * 10 * 100 * 4 // 1024 // ncpu)
        write(os.path.join(inst, "buffer_size_kb"), str(kb))
        ev = os.path.join(inst, "events")
        portf = "((sport >= %d && sport < %d) || (dport >= %d && dport < %d))" % (lo, hi, lo, hi)
        write(os.path.join(ev, "sock/inet_sock_set_state/filter"), "protocol == 6 && " + portf)
        write(os.path.join(ev, "tcp/tcp_receive_reset/filter"), portf)
        write(os.path.join(ev, "tcp/tcp_destroy_sock/filter"), portf)
        for e in ("sock/inet_sock_set_state", "tcp/tcp_send_reset", "tcp/tcp_receive_reset",
                  "tcp/tcp_destroy_sock"):
            write(os.path.join(ev, e, "enable"), "1")
        write(os.path.join(inst, "trace"), "")
        res = subprocess.run([sys.executable, os.path.join(HERE, "storm.py"), "--count", str(args.count),
                              "--ports", str(args.ports), "--base-port", str(args.base_port)] + rest,
                             stdout=subprocess.PIPE, text=True)
        at_exit = count_transitions(os.path.join(inst, "trace"))
        time.sleep(max(0.0, min(args.settle, 60.0)))
        write(os.path.join(inst, "tracing_on"), "0")
        storm = json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else {}
        trans = collections.Counter()
        send_rst = collections.Counter()
        other = collections.Counter()
        port_re = re.compile(r":(\d+)\b")
        lost = 0
        with open(os.path.join(inst, "trace")) as f:
            for line in f:
                if line.startswith("#"):
                    m = re.search(r"entries-in-buffer/entries-written: (\d+)/(\d+)", line)
                    if m:
                        lost = int(m.group(2)) - int(m.group(1))
                    continue
                if "inet_sock_set_state:" in line:
                    m = re.search(r"oldstate=(\S+) newstate=(\S+)", line)
                    if m:
                        trans["%s->%s" % (m.group(1).replace("TCP_", ""), m.group(2).replace("TCP_", ""))] += 1
                elif "tcp_send_reset:" in line:
                    ports = [int(x) for x in port_re.findall(line.split("tcp_send_reset:", 1)[1])]
                    if any(lo <= x < hi for x in ports):
                        m = re.search(r"state=(\S+) reason=(\S+)", line)
                        send_rst["%s/%s" % (m.group(1), m.group(2)) if m else "?"] += 1
                elif "tcp_receive_reset:" in line:
                    other["tcp_receive_reset"] += 1
                elif "tcp_destroy_sock:" in line:
                    other["tcp_destroy_sock"] += 1
        listener = trans.get("CLOSE->LISTEN", 0) + trans.get("LISTEN->CLOSE", 0)
        conn_events = sum(trans.values()) - listener
        completed = storm.get("completed", 0)
        out = {
            "storm": {k: storm.get(k) for k in ("mode", "family", "connections", "completed", "failed",
                                                "rate", "expected_transitions", "client_pids", "server_pids")},
            "inet_sock_set_state": sum(trans.values()),
            "listener_transitions": listener,
            "connection_transitions": conn_events,
            "per_connection": round(conn_events / completed, 4) if completed else None,
            "connection_transitions_at_storm_exit": at_exit - listener,
            "settle_seconds": args.settle,
            "matches_expected": conn_events == storm.get("expected_transitions"),
            "transitions": dict(sorted(trans.items(), key=lambda kv: -kv[1])),
            "tcp_send_reset": dict(send_rst),
            "other_events": dict(other),
            "trace_events_lost": lost,
        }
        print(json.dumps(out))
        return 0 if res.returncode == 0 else res.returncode
    finally:
        for e in ("sock/inet_sock_set_state", "tcp/tcp_send_reset", "tcp/tcp_receive_reset",
                  "tcp/tcp_destroy_sock"):
            try:
                write(os.path.join(inst, "events", e, "enable"), "0")
            except OSError:
                pass
        try:
            os.rmdir(inst)
        except OSError as exc:
            print("storm_transitions.py: could not remove %s: %s" % (inst, exc), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
