#!/usr/bin/env python3
"""One-shot answers: ``socktrace ports`` and ``socktrace stat`` against
``ss -tanp``, ``ss -tlnp`` and ``ss -s``, at 10k and 100k TCP sockets, in the
same run.  Target (issue 18): a one-shot answer takes at most twice the time
of ``ss -tanp``.

Everything happens in a network namespace this script creates (and deletes,
on every path): sock_diag sees only its own namespace, so the driver re-runs
itself inside it with ``ip netns exec`` and times every tool from there.

Sockets: ESTABLISHED pairs held by child processes (RLIMIT_NOFILE is 20,000
per process here: at most 8,000 pairs each, SO_LINGER 0 so that they leave
no TIME_WAIT), plus TIME_WAIT sockets (they need no fd) made by the driver:
connect from 127.0.0.x, accept, close both.  A size is measured only when
/proc/net/sockstat shows the sockets; the TIME_WAITs of a size are made
right before its rounds, which end well within their 60 s.

Each round runs every tool once, in an order rotated from round to round,
stdout to /dev/null; wall time from fork to exit.  Reported: median, min,
max per tool and size, and the ratio of each socktrace answer to
``ss -tanp``'s median.

    sudo .venv/bin/python bench/oneshot.py [--rounds 5] [--sizes 10000,100000]
        [--out bench/results/oneshot-DATE.json]
"""

import argparse
import ctypes
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, ".venv", "bin", "python")
CMD = os.path.join(ROOT, ".venv", "bin", "socktrace")
LINGER0 = b"\x01\x00\x00\x00\x00\x00\x00\x00"   # struct linger {1, 0}
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
PAIRS_PER_PROC = 8000
BATCH = 256
BUDGET_S = 600          # the whole run, inside the namespace
TOOL_TIMEOUT = 60


def log(msg):
    sys.stderr.write("[oneshot %6.1fs] %s\n" % (time.monotonic() - T0, msg))
    sys.stderr.flush()


T0 = time.monotonic()


# --- child: holds ESTABLISHED pairs until stdin closes ------------------------


def hold_main(src, pairs):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)      # PR_SET_PDEATHSIG
    libc.prctl(15, b"sockhold", 0, 0, 0)        # PR_SET_NAME
    signal.alarm(BUDGET_S)                      # last resort
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1024)
    dest = ls.getsockname()
    held = []
    while len(held) < 2 * pairs:
        n = min(BATCH, pairs - len(held) // 2)
        for _ in range(n):
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            c.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            c.bind((src, 0))
            c.connect(dest)
            held.append(c)
        for _ in range(n):
            s, _ = ls.accept()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            held.append(s)
    sys.stdout.write("ok %d %d\n" % (dest[1], len(held) // 2))
    sys.stdout.flush()
    sys.stdin.read()                            # until the driver closes it
    os._exit(0)


# --- driver, inside the namespace ---------------------------------------------


def sockstat():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                w = line.split()
                return {w[i]: int(w[i + 1]) for i in range(1, len(w) - 1, 2)}
    return {}


def make_time_wait(n, deadline):
    """n client-side TIME_WAITs toward one listener, from 127.0.0.x sources."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1024)
    dest = ls.getsockname()
    made = 0
    src = 10
    per_src = 10000
    try:
        while made < n and time.monotonic() < deadline:
            k = min(BATCH, n - made)
            cs = []
            for _ in range(k):
                c = socket.socket()
                c.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                c.bind(("127.0.0.%d" % (src + made // per_src), 0))
                c.connect(dest)
                cs.append(c)
            ss = [ls.accept()[0] for _ in range(k)]
            for c in cs:
                c.close()           # the client closes first: its TIME_WAIT
            for s in ss:
                s.close()
            made += k
    finally:
        ls.close()
    return made


# The tools run as installed: Python's bytecode cache on (this VM's shell
# sets PYTHONDONTWRITEBYTECODE, which would compile every module on every
# run: ~70 ms).  The warm-up run writes the cache.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
NOSITE_ENV = None


def _nosite_env():
    """The venv's whole sys.path as PYTHONPATH, for ``python -S``: the same
    modules without running site's .pth hooks (on this VM one imports
    certifi for the sandbox's CA, one installs the editable-install finder:
    together ~30 ms of every Python start, which a packaged install of
    socktrace on an ordinary host does not pay)."""
    out = subprocess.run([PY, "-c", "import sys; print(repr(sys.path[1:]))"],
                         capture_output=True, text=True, check=True).stdout
    import ast
    env = dict(ENV)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in ast.literal_eval(out) if p])
    return env


def timed(argv):
    env = ENV
    if argv[:2] == [PY, "-S"]:
        env = NOSITE_ENV
    t = time.perf_counter()
    with open(os.devnull, "wb") as null:
        r = subprocess.run(argv, stdout=null, stderr=subprocess.PIPE, timeout=TOOL_TIMEOUT,
                           env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(argv), r.returncode,
                                                r.stderr.decode(errors="replace")[:300]))
    return dt


def inside(args):
    deadline = time.monotonic() + BUDGET_S
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # this namespace's own limits: room for the TIME_WAITs of the largest size
    with open("/proc/sys/net/ipv4/tcp_max_tw_buckets", "w") as f:
        f.write("262144")
    sizes = [int(x) for x in args.sizes.split(",")]
    tools = {
        "ss -tanp": ["ss", "-tanp"],
        "ss -tlnp": ["ss", "-tlnp"],
        "ss -s": ["ss", "-s"],
        # the command users run: the launcher scripts/install.sh writes
        # (python -S, site only for the trace: tracer/launch.py)
        "socktrace ports": [CMD, "ports"],
        "socktrace ports PORT": None,           # filled in: a held listener's port
        "socktrace stat": [CMD, "stat"],
        "socktrace stat --json": [CMD, "stat", "--json"],
        "python -m tracer stat": [PY, "-m", "tracer", "stat"],
        "python -c pass": [PY, "-c", "pass"],
        "ports, python -S": [PY, "-S", "-m", "tracer", "ports"],
        "stat, python -S": [PY, "-S", "-m", "tracer", "stat"],
        "python -S -c pass": [PY, "-S", "-c", "pass"],
    }
    global NOSITE_ENV
    NOSITE_ENV = _nosite_env()
    holders = []
    results = {"sizes": [], "rounds": args.rounds, "kernel": os.uname().release,
               "cpus": os.cpu_count(), "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "python": sys.version.split()[0],
               "ss": subprocess.run(["ss", "-V"], capture_output=True, text=True).stdout.strip()}
    try:
        held_pairs = 0
        for size in sizes:
            # a fifth of the sockets ESTABLISHED pairs (held), the rest TIME_WAIT
            pairs = max(1000, size // 10)
            while held_pairs < pairs:
                n = min(PAIRS_PER_PROC, pairs - held_pairs)
                p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--_hold",
                                      "127.0.1.%d" % (len(holders) + 1), str(n)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                holders.append(p)
                line = p.stdout.readline().split()   # bounded: the child's alarm
                if line[:1] != ["ok"]:
                    raise RuntimeError("holder %d failed: %r" % (p.pid, line))
                port = int(line[1])
                held_pairs += int(line[2])
                tools["socktrace ports PORT"] = [CMD, "ports", str(port)]
            now = sockstat()
            tw_want = size - now.get("inuse", 0) - now.get("tw", 0)
            t = time.monotonic()
            made = make_time_wait(max(0, tw_want), deadline)
            log("size %d: %d held pairs in %d processes, %d TIME_WAIT made in %.1f s"
                % (size, held_pairs, len(holders), made, time.monotonic() - t))
            before = sockstat()
            for name, argv in tools.items():      # warm-up, untimed
                timed(argv)
            times = {name: [] for name in tools}
            names = list(tools)
            t_first = time.monotonic()
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    times[name].append(timed(tools[name]))
            after = sockstat()
            with open("/proc/loadavg") as f:
                load = f.read().split()[:3]
            log("size %d: rounds took %.1f s; sockstat before %s after %s"
                % (size, time.monotonic() - t_first, before, after))
            row = {"size": size, "held_pairs": held_pairs, "holder_procs": len(holders),
                   "time_wait_made": made, "sockstat_before": before, "sockstat_after": after,
                   "loadavg_after": load,
                   "tools": {}}
            base = statistics.median(times["ss -tanp"])
            for name in names:
                v = times[name]
                row["tools"][name] = {"median_s": statistics.median(v), "min_s": min(v),
                                      "max_s": max(v), "all_s": v,
                                      "ratio_to_ss_tanp": statistics.median(v) / base}
            results["sizes"].append(row)
            print_table(row)
    finally:
        for p in holders:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in holders:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return results


def print_table(row):
    b = row["sockstat_before"]
    print("\n%d sockets (sockstat before: inuse %s, tw %s; load average after %s)"
          % (row["size"], b.get("inuse"), b.get("tw"), " ".join(row["loadavg_after"])))
    print("%-24s %9s %9s %9s %8s" % ("tool", "median s", "min s", "max s", "x ss-tanp"))
    for name, t in row["tools"].items():
        print("%-24s %9.4f %9.4f %9.4f %8.2f" % (name, t["median_s"], t["min_s"], t["max_s"],
                                                t["ratio_to_ss_tanp"]))
    sys.stdout.flush()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--_hold":
        return hold_main(sys.argv[2], int(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--out", help="results JSON (default bench/results/oneshot-DATE.json)")
    ap.add_argument("--_inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._inside:
        res = inside(args)
        sys.stdout.write("RESULTS " + json.dumps(res) + "\n")
        return 0
    if os.geteuid() != 0:
        sys.exit("oneshot.py: needs root (ip netns)")
    ns = "socktrace-oneshot-%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        argv = ["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__),
                "--_inside", "--rounds", str(args.rounds), "--sizes", args.sizes]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        res = None
        try:
            for line in p.stdout:
                if line.startswith("RESULTS "):
                    res = json.loads(line[8:])
                else:
                    sys.stdout.write(line)
                    sys.stdout.flush()
            p.wait(BUDGET_S)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        if res is None:
            sys.exit("oneshot.py: the run inside the namespace failed (exit %s)" % p.returncode)
        out = args.out or os.path.join(ROOT, "bench", "results", "oneshot-%s.json"
                                       % time.strftime("%Y-%m-%d"))
        with open(out, "w") as f:
            json.dump(res, f, indent=1)
        log("results in %s" % out)
    finally:
        subprocess.run(["ip", "netns", "del", ns])
    return 0


if __name__ == "__main__":
    sys.exit(main())
