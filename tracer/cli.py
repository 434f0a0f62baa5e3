"""socktrace command line: parse, choose a backend, run the pipeline, exit.

``main()`` returns the exit status: 0 after SIGINT/SIGTERM/--duration with
everything flushed and every probe detached, 2 for usage errors, 1 with a
one-line message for anything the host or the user got wrong at run time.
"""

import argparse
import os
import sys

from . import __version__
from . import args as cmdline
from .text import one_line

# What the subcommands are; their modules (tracer/views/) and the trace's
# (spec, states, run) are imported only by the command that runs, so that a
# one-shot answer does not pay for the others' imports.
SUBCOMMANDS = """\
subcommands (socktrace SUBCOMMAND -h for each):
  ports [PORT...]   listeners, who holds them, accept queues, connections per state
  stat              ss -s and the usual netstat | awk pipelines on one screen
  leaks             processes whose CLOSE_WAIT, connections or fds keep growing
  top               a live full-screen view
"""

EPILOG = """\
examples:
  socktrace                         every TCP state change, NDJSON on stdout
  socktrace --format text           the same as aligned columns
  socktrace --port 5432 -o pg.ndjson   connections to or from port 5432, to a file
  socktrace --state close-wait      only transitions into or out of CLOSE_WAIT
  socktrace --pid 1234 --duration 60   one process, for a minute
  socktrace -6 --addr 2001:db8::/32    IPv6 peers in a network
  socktrace --dump-every 10         also every socket, with ids and ages, every 10 s
  socktrace --pid-file /run/socktrace.pid -o /var/log/socktrace.ndjson
  kill -USR1 $(cat /run/socktrace.pid)   dump every socket now
  kill -HUP $(cat /run/socktrace.pid)    reopen -o FILE after logrotate moved it
  socktrace --records closed        one record per connection, as tcplife
  socktrace --format ecs -o /var/log/socktrace.ndjson   for Elastic/OpenSearch
  socktrace | jq -c 'select(.new=="TIME_WAIT")'
  socktrace --container 3f2a --records closed   one container's connections
  socktrace --netns web1 --uid 33   one namespace (ip netns name), one user

Family, port, pid, uid, netns, cgroup and container filters run in the
kernel: what they reject costs nothing in user space.  Output fields: see
README.md and tracer/schema/events.schema.json.
"""


_positive = cmdline.positive
UsageError = cmdline.UsageError


def _mem_available():
    """Bytes the kernel could still hand out (MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# What the eBPF backend's maps cost the kernel per --max-sockets slot: a
# story in `socks` and one in `tws` (256 bytes each, bpf/socktrace.h) with
# the hash table's own overhead; measured about 820 bytes, rounded up.
KERNEL_BYTES_PER_SOCKET = 1024
# The kernel's own limit for a hash map: its buckets (16 bytes each, a power
# of two) must be addressable with 32 bits (kernel/bpf/hashtab.c, E2BIG).
HASH_MAX_ENTRIES = 1 << 28


def _max_sockets(text):
    n = _positive(int)(text)
    avail = _mem_available()
    limit = HASH_MAX_ENTRIES
    why = "the kernel's limit for a BPF hash map"
    if avail is not None and avail // 2 // KERNEL_BYTES_PER_SOCKET < limit:
        limit = avail // 2 // KERNEL_BYTES_PER_SOCKET
        why = "about %d bytes of kernel memory each, at most half of the %.1f GiB " \
              "available now" % (KERNEL_BYTES_PER_SOCKET, avail / 2**30)
    if n > limit:
        raise argparse.ArgumentTypeError("%d is more than this host can hold: at most %d "
                                         "(%s)" % (n, limit, why))
    return n


def _ringbuf_mb(text):
    n = _positive(int)(text)
    avail = _mem_available()
    limit = 1 << 14               # 16 GiB: far past any use, and a power of two
    if avail is not None:
        while limit > 1 and limit << 20 > avail // 4:
            limit >>= 1
    if n > limit:
        raise argparse.ArgumentTypeError("%d MiB is more than this host can give: at most %d "
                                         "(a quarter of the memory available now)"
                                         % (n, limit))
    if n & (n - 1):
        raise argparse.ArgumentTypeError("must be a power of two (the kernel's ring buffer "
                                         "is): 1, 2, 4, ... %d; not %d" % (limit, n))
    return n


def _record_types():
    from .spec import RECORD_TYPES
    return RECORD_TYPES


def _metrics_addr(text):
    from .metrics import parse_addr
    try:
        return parse_addr(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _records(text):
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if part not in _record_types():
            raise argparse.ArgumentTypeError("unknown record type %r (one of: %s)"
                                             % (part, ", ".join(_record_types())))
        out.append(part)
    return out


def build_parser():
    p = cmdline.Parser(prog="socktrace", description="Trace every TCP state transition on "
                "this host, with owners and durations, as NDJSON.",
                epilog=SUBCOMMANDS + "\n" + EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout (appends)")
    p.add_argument("--format", choices=("json", "text", "ecs"), default="json",
                   help="json: one object per line (default); text: aligned columns; "
                        "ecs: NDJSON in the Elastic Common Schema 8.x")
    p.add_argument("--duration", type=_positive(float), metavar="SECONDS",
                   help="stop after this long")
    cmdline.add_filters(p)
    p.add_argument("--backend", choices=("auto", "bpf", "proc"), default="auto",
                   help="auto: eBPF when possible, else /proc polling (default)")
    p.add_argument("--interval", type=_positive(float, 0.01, 3600, " s"), default=1.0,
                   metavar="SECONDS",
                   help="proc backend poll interval (default 1)")
    p.add_argument("--dump-every", type=_positive(float, 0.01, unit=" s"), metavar="SECONDS",
                   help="write every socket every N seconds (also on SIGUSR1)")
    p.add_argument("--records", type=_records, metavar="TYPE[,TYPE]",
                   default=[t for t in _record_types() if t != "summary"],
                   help="record types to write: state, closed, socket, lost, summary "
                        "(default: all but summary); without state the kernel sends "
                        "one record per connection")
    p.add_argument("--metrics", type=_metrics_addr, metavar="ADDR:PORT",
                   help="serve Prometheus metrics here (e.g. 127.0.0.1:9464)")
    p.add_argument("--pid-file", metavar="FILE",
                   help="write socktrace's pid here (removed at exit): signal it with "
                        "kill -USR1 $(cat FILE), never with pgrep -f")
    p.add_argument("--summary", action="store_true",
                   help="also emit the exit report as a {\"type\":\"summary\"} record")
    p.add_argument("--no-report", action="store_true", help="no exit report on stderr")
    p.add_argument("--max-sockets", type=_max_sockets, default=262144, metavar="N",
                   help="kernel map size for tracked sockets (default 262144)")
    p.add_argument("--ringbuf-mb", type=_ringbuf_mb, default=16, metavar="MB",
                   help="kernel ring buffer size in MiB, a power of two (default 16)")
    p.add_argument("--version", action="version", version="socktrace " + __version__)
    return p


def _missing_modules():
    """(name, error) of the first module socktrace cannot run without."""
    for name in ("orjson", "psutil"):
        try:
            __import__(name)
        except ImportError as e:
            return name, e
    return None


def _check_std_fds(output):
    """Descriptors 0-2 must be open before socktrace opens anything: a closed
    stdout would otherwise be taken by the next file opened (a BPF map, the
    output file) and records would go there.  A closed one is put on
    /dev/null; a closed stdout is an error when records are to go there."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            if fd == 1 and output in (None, "-"):
                return "standard output is closed (give -o FILE, or redirect it)"
    return None


def _flat(lists):
    return [x for sub in lists for x in sub]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    from . import views
    if argv and argv[0] in views.COMMANDS:
        return views.run(argv[0], argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        sys.stderr.write("socktrace: %s (try socktrace -h)\n" % one_line(str(e)))
        return 2
    except SystemExit as e:   # -h / --version
        return e.code or 0

    missing = _missing_modules()
    if missing:
        sys.stderr.write("socktrace: cannot import %s for %s (%s); run socktrace from its "
                         "environment: ./socktrace.sh or .venv/bin/socktrace\n"
                         % (missing[0], sys.executable, missing[1]))
        return 1
    why = _check_std_fds(args.output)
    if why:
        sys.stderr.write("socktrace: %s\n" % why)
        return 1

    from .run import Failure, run

    try:
        return run(args, ports=_flat(args.port), lports=_flat(args.lport),
                   rports=_flat(args.rport))
    except Failure as e:
        sys.stderr.write("socktrace: %s\n" % one_line(str(e)))
        return 1
    except KeyboardInterrupt:
        return 0
