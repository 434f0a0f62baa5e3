#!/usr/bin/env python3
"""What each of socktrace's BPF programs costs, per run and per connection.

    sudo .venv/bin/python bench/bpf_cost.py                         # every record
    sudo .venv/bin/python bench/bpf_cost.py --records closed,lost,summary
    sudo .venv/bin/python bench/bpf_cost.py --port 9                # a filter rejecting all

Starts socktrace with the given options (made ready as bench/compare.py
does), turns on kernel.bpf_stats_enabled, reads every program's run count
and run time from the kernel (tracer.bpf_backend.prog_stats on socktrace's
own program fds, taken with pidfd_getfd) before and after one storm of --count
connections, and prints each program's runs, ns a run and us a connection.
The kernel's time covers the program only, not the tracepoint's call into
it; bpf_stats itself adds two clock reads a run.  bpf_stats_enabled is put
back as it was.
"""
import argparse
import ctypes
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare  # noqa: E402

sys.path.insert(0, os.path.dirname(HERE))
from tracer.bpf_backend import prog_stats  # noqa: E402

libc = ctypes.CDLL(None, use_errno=True)
SYS_PIDFD_OPEN, SYS_PIDFD_GETFD = 434, 438              # x86_64
STATS = "/proc/sys/kernel/bpf_stats_enabled"


def prog_info(pidfd, fd):
    """prog_stats() of another process's program fd."""
    mine = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
    if mine < 0:
        raise OSError(ctypes.get_errno(), "pidfd_getfd")
    try:
        st = prog_stats(mine)
    finally:
        os.close(mine)
    if st is None or st["run_cnt"] is None:
        raise OSError(0, "no run statistics for program fd %d" % fd)
    return st


def snapshot(pid):
    """{program name: (run_time_ns, run_cnt)} of every program pid holds."""
    pidfd = libc.syscall(SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        raise OSError(ctypes.get_errno(), "pidfd_open")
    out = {}
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)) != "anon_inode:bpf-prog":
                    continue
            except OSError:
                continue                    # closed meanwhile
            st = prog_info(pidfd, int(fd))
            out[st["name"]] = (st["run_time_ns"], st["run_cnt"])
    finally:
        os.close(pidfd)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100_000, help="connections (default 100,000)")
    ap.add_argument("--rounds", type=int, default=1)
    args, extra = ap.parse_known_args()
    if os.geteuid() != 0:
        print("bpf_cost.py: needs root (BPF)", file=sys.stderr)
        return 1
    storm_args = argparse.Namespace(count=args.count, close="client", family=4)
    with open(STATS) as f:
        was = f.read().strip()
    work = tempfile.mkdtemp(prefix="socktrace-bpf-cost-")
    try:
        with open(STATS, "w") as f:
            f.write("1")
        for rnd in range(args.rounds):
            t = compare.Socktrace(work, extra)
            t.start()
            try:
                before = snapshot(t.proc.pid)
                st = compare.storm(storm_args)
                t.settle()
                after = snapshot(t.proc.pid)
            finally:
                t.stop()
            print("round %d: socktrace %s, %d connections at %.0f conn/s" % (
                rnd, " ".join(extra) or "(every record)", st["completed"], st["rate"]))
            total = 0
            for name, (ns, runs) in sorted(after.items()):
                ns -= before.get(name, (0, 0))[0]
                runs -= before.get(name, (0, 0))[1]
                if runs:
                    total += ns
                    print("  %-16s %9d runs %7.1f ns a run %6.2f us a connection" % (
                        name, runs, ns / runs, ns / st["completed"] / 1000))
            print("  all programs %.2f us a connection" % (total / st["completed"] / 1000))
    finally:
        with open(STATS, "w") as f:
            f.write(was)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
