"""What socktrace may do here: capabilities, not the user id.

eBPF needs CAP_BPF (load programs, create maps) and CAP_PERFMON (attach to
tracepoints, read kernel memory in a program); CAP_SYS_ADMIN grants both,
as it does on kernels before 5.8.  What else a run uses, each optional:

  CAP_DAC_READ_SEARCH  read tracefs (/sys/kernel/tracing is 0700 root) for
                       the tracepoint ids, and other users' /proc/PID/fd
  CAP_SYS_PTRACE       read the fd tables of other users' processes: owners
  CAP_SYSLOG           read kernel addresses in /proc/kallsyms: TIME_WAIT
  CAP_SYS_ADMIN        mount tracefs when it is not mounted; enter other
                       network namespaces (setns) for their start-up
                       lists and reconciliation (without it: a note, own
                       ids for their older sockets)
  CAP_NET_ADMIN        sock_diag for every socket, as ss does as root

>>> names(1 << 39 | 1 << 38)
['CAP_PERFMON', 'CAP_BPF']
"""

import os

CAP = {"CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_NET_ADMIN": 12,
       "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21, "CAP_SYSLOG": 34, "CAP_PERFMON": 38,
       "CAP_BPF": 39}

# what the eBPF backend cannot run without, and what it is better with
REQUIRED = ("CAP_BPF", "CAP_PERFMON")
TRACEFS = ("CAP_DAC_READ_SEARCH",)        # or CAP_DAC_OVERRIDE
RECOMMENDED = ("CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE", "CAP_SYSLOG")


def effective(status="/proc/self/status"):
    """The effective capability set as a bit mask."""
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return (1 << 64) - 1 if os.geteuid() == 0 else 0


def has(name, eff=None):
    eff = effective() if eff is None else eff
    if eff >> CAP[name] & 1:
        return True
    # CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (and they did not
    # exist before 5.8)
    return name in ("CAP_BPF", "CAP_PERFMON") and bool(eff >> CAP["CAP_SYS_ADMIN"] & 1)


def names(mask):
    return [n for n, bit in sorted(CAP.items(), key=lambda kv: kv[1]) if mask >> bit & 1]


def missing_for_bpf(eff=None):
    """The capabilities eBPF needs that this process lacks ([] when none)."""
    eff = effective() if eff is None else eff
    out = [n for n in REQUIRED if not has(n, eff)]
    if not (has("CAP_DAC_READ_SEARCH", eff) or has("CAP_DAC_OVERRIDE", eff)):
        out.append("CAP_DAC_READ_SEARCH")
    return out
