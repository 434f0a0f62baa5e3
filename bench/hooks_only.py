#!/usr/bin/env python3
"""The floor: empty BPF programs on every hook socktrace's raw front end uses.

    sudo .venv/bin/python bench/hooks_only.py      # prints "ready", runs until SIGINT

What a storm loses to this is what *any* tracer with socktrace's coverage
pays before it does any work: the kernel entering a program on each hit of
inet_sock_set_state (twice: socktrace's main program and its backup, see
bpf/socktrace.bpf.c "The kernel skips a program ..."), timer_start,
timer_cancel, timer_expire_entry (TIME_WAIT's timer), tcp_receive_reset and
tcp_send_reset (how a connection ended), and sys_exit_accept/accept4 (the
owner of an accepted socket; a syscall tracepoint also sends every syscall
of every task through the kernel's slower traced path while it is enabled).
bench/compare.py runs it beside socktrace in the same rounds.

Every program is detached when bcc's BPF object is cleaned up at exit.
"""
import ctypes
import os
import signal
import sys

from bcc import BPF
from bcc.libbcc import lib

TEXT = r"""
RAW_TRACEPOINT_PROBE(inet_sock_set_state) { return 0; }
int set_state_backup(struct bpf_raw_tracepoint_args *ctx) { return 0; }
RAW_TRACEPOINT_PROBE(timer_start) { return 0; }
RAW_TRACEPOINT_PROBE(timer_cancel) { return 0; }
RAW_TRACEPOINT_PROBE(timer_expire_entry) { return 0; }
RAW_TRACEPOINT_PROBE(tcp_receive_reset) { return 0; }
RAW_TRACEPOINT_PROBE(tcp_send_reset) { return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return 0; }
"""


def main():
    if os.geteuid() != 0:
        print("hooks_only.py: needs root (BPF)", file=sys.stderr)
        return 1
    b = BPF(text=TEXT)
    fn = b.load_func(b"set_state_backup", BPF.RAW_TRACEPOINT)
    link = lib.bpf_attach_raw_tracepoint(fn.fd, b"inet_sock_set_state")
    if link < 0:
        print("hooks_only.py: attaching the second program failed: %s"
              % os.strerror(ctypes.get_errno()), file=sys.stderr)
        return 1
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    print("ready", flush=True)
    while not stop:
        signal.pause()
    os.close(link)
    b.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
