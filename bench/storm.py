#!/usr/bin/env python3
"""Loopback TCP connection-storm generator (wrapper around bench/storm.c).

Compiles bench/storm.c with ``gcc -O2`` into ``bench/.build/storm`` on first use
(and again whenever storm.c is newer than the binary), then replaces itself
with the binary, so the pid of this command is the storm coordinator's pid.

Traffic goes only to loopback: 127.0.0.1 (clients bound to 127.0.0.2..) or ::1.
Every run is bounded by --count and --seconds (whichever comes first), with
hard caps of 5,000,000 connections and 600 s, plus a bounded drain.

Processes: the coordinator (prints the result) forks the server worker(s),
which own the listeners and accept, and the client worker(s), which connect.
The two ends of every connection therefore have different pids.

Output: ONE JSON line on stdout, for example

  {"connections": 100000, "completed": 100000, "failed": 0, "seconds": 2.4,
   "rate": 41000.0, "mode": "client", "family": 4,
   "expected_transitions": 1000000, "transitions_per_connection": 10,
   "listener_transitions": 32, "client_pid": 101, "server_pid": 100,
   "client_pids": [101, 102], "server_pids": [100], "connected": ...,
   "accepted": ..., "server_closed": ..., "errors": {...},
   "stopped_by": "count", "config": {...}, "netstat_delta": {...}}

expected_transitions counts sock:inet_sock_set_state events of the storm's
connections only (10 per connection for --close client and server, 6 for
reset, measured on this kernel); the listeners add listener_transitions
(CLOSE->LISTEN and LISTEN->CLOSE per port). netstat_delta is the change of
system-wide /proc/net/snmp and /proc/net/netstat counters during the run
(other traffic on the machine is included).
"""
import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "storm.c")
BUILD_DIR = os.path.join(HERE, ".build")
BINARY = os.path.join(BUILD_DIR, "storm")


def build(force=False, quiet=False):
    """Compile storm.c if the binary is missing or older than the source."""
    if not force and os.path.exists(BINARY) and os.path.getmtime(BINARY) >= os.path.getmtime(SRC):
        return BINARY
    os.makedirs(BUILD_DIR, exist_ok=True)
    tmp = BINARY + ".tmp.%d" % os.getpid()
    cmd = ["gcc", "-O2", "-Wall", "-o", tmp, SRC]
    if not quiet:
        print("storm.py: building: " + " ".join(cmd), file=sys.stderr)
    res = subprocess.run(cmd)
    if res.returncode != 0:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        sys.exit("storm.py: gcc failed (exit %d)" % res.returncode)
    os.replace(tmp, BINARY)   # atomic: concurrent users never see a half-written binary
    return BINARY


def in_range(kind, lo, hi):
    """An argparse type: *kind* (int or float) between lo and hi inclusive."""
    def conv(s):
        v = kind(s)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError("must be in [%s, %s]" % (lo, hi))
        return v
    return conv


def parser():
    p = argparse.ArgumentParser(
        prog="storm.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  python3 bench/storm.py --close client --family 4 --count 100000 --clients 2
  python3 bench/storm.py --close reset --family 6 --rate 10000 --seconds 30
  python3 bench/storm.py --close server --count 200000 --clients 2 --concurrency 1024

notes:
  * max rate on this 2-core VM needs >= 2 client workers: the kernel runs the
    whole loopback handshake in the sending (client) process, so 1 client +
    1 server uses only about one CPU. Default is --clients 2 --servers 1.
  * TIME_WAIT: client-first close leaves the client end in TIME_WAIT, server-
    first close the server end, reset none. They last 60 s and are capped by
    net.ipv4.tcp_max_tw_buckets (131072); past the cap the kernel skips
    TIME_WAIT (netstat_delta.TCPTimeWaitOverflow). Back-to-back runs inherit
    the previous run's TIME_WAIT sockets.
  * ephemeral ports: ports x (IPv4: sources) x 28,232 local ports gives the
    4-tuples; the defaults (16 ports, 32 sources) give 14 million for IPv4,
    450,000 for IPv6, enough for 200k connections with TIME_WAIT held.
""")
    p.add_argument("--close", choices=["client", "server", "reset"], default="client",
                   help="client: client close()s right after connect, server reads EOF then "
                        "close()s; server: server close()s right after accept, client reads EOF "
                        "then close()s; reset: client sets SO_LINGER {1,0} and close()s -> RST, "
                        "server reads ECONNRESET then close()s (default: client)")
    p.add_argument("--family", type=int, choices=[4, 6], default=4,
                   help="4: 127.0.0.2..N -> 127.0.0.1; 6: ::1 -> ::1 (default: 4)")
    p.add_argument("--count", type=in_range(int, 1, 5_000_000), default=100_000,
                   help="connections to start (default 100000, cap 5000000)")
    p.add_argument("--seconds", type=in_range(float, 0.001, 600), default=60.0,
                   help="stop starting connections after S seconds (default 60, cap 600); "
                        "the run ends at --count or --seconds, whichever comes first")
    p.add_argument("--rate", type=in_range(float, 0, 2_000_000), default=0.0,
                   help="fixed rate in connections/s (split evenly over client workers); "
                        "omitted or 0 = as fast as possible")
    p.add_argument("--concurrency", type=in_range(int, 1, 16000), default=2048,
                   help="connections in flight, counted from socket() until BOTH ends have "
                        "closed (default 2048, cap 16000; split over client workers)")
    p.add_argument("--ports", type=in_range(int, 1, 256), default=16,
                   help="listener ports base..base+P-1, SO_REUSEADDR (default 16)")
    p.add_argument("--base-port", type=in_range(int, 1024, 65535), default=21000,
                   help="first listener port (default 21000, outside the ephemeral range)")
    p.add_argument("--sources", type=in_range(int, 0, 250), default=32,
                   help="IPv4 only: bind client sockets to 127.0.0.2..127.0.0.(N+1) "
                        "(IP_BIND_ADDRESS_NO_PORT) to multiply 4-tuples; 0 = let the kernel "
                        "pick 127.0.0.1 (default 32)")
    p.add_argument("--clients", type=in_range(int, 1, 8), default=2,
                   help="client worker processes (default 2)")
    p.add_argument("--servers", type=in_range(int, 1, 8), default=1,
                   help="server worker processes (default 1)")
    p.add_argument("--drain", type=in_range(float, 0, 60), default=5.0,
                   help="seconds to wait for connections in flight after the stop (default 5)")
    p.add_argument("--timeout", type=in_range(float, 0.1, 60), default=10.0,
                   help="per-connection timeout; a connection older than this is closed and "
                        "counted failed (default 10)")
    p.add_argument("--settle", type=in_range(float, 0, 60), default=3.0,
                   help="at the end, wait up to S s until the kernel has finished every "
                        "connection of the storm (no full socket on the storm's ports left in "
                        "any state but TIME_WAIT/CLOSE; checked with sock_diag), so that all "
                        "expected_transitions have happened when storm exits; 'unsettled' in "
                        "the result counts the sockets still left (default 3)")
    p.add_argument("--verbose", action="store_true", help="progress on stderr once a second")
    p.add_argument("--build-only", action="store_true",
                   help="compile (if needed), print the binary path and exit")
    p.add_argument("--rebuild", action="store_true", help="force recompilation")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    binary = build(force=args.rebuild)
    if args.build_only:
        print(binary)
        return 0
    cmd = [binary,
           "--close", args.close,
           "--family", str(args.family),
           "--count", str(args.count),
           "--seconds", repr(args.seconds),
           "--rate", repr(args.rate),
           "--concurrency", str(args.concurrency),
           "--ports", str(args.ports),
           "--base-port", str(args.base_port),
           "--sources", str(args.sources),
           "--clients", str(args.clients),
           "--servers", str(args.servers),
           "--drain", repr(args.drain),
           "--timeout", repr(args.timeout),
           "--settle", repr(args.settle)]
    if args.verbose:
        cmd.append("--verbose")
    sys.stdout.flush()
    os.execv(binary, cmd)   # same pid; the binary prints the JSON line


if __name__ == "__main__":
    sys.exit(main())
