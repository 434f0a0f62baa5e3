"""The command line's pieces that the trace and every subcommand share: a
parser whose errors are one line (UsageError, never SystemExit), the
converters of numbers, ports, states and networks, and the filter flags,
declared once so that ``socktrace --port 80`` and ``socktrace ports --port
80`` mean the same."""

import argparse
import math
import os
import re
import sys


class UsageError(Exception):
    pass


def terminal_columns(var="COLUMNS", attr="columns", default=80):
    """shutil.get_terminal_size().columns (COLUMNS, then the terminal,
    else 80) without importing shutil, which pulls in bz2 and lzma: ~2 ms
    of every one-shot command's start.  ("LINES", "lines", 24): the height."""
    try:
        n = int(os.environ.get(var, 0))
    except ValueError:
        n = 0
    if n <= 0:
        try:
            n = getattr(os.get_terminal_size(sys.__stdout__.fileno()), attr)
        except (AttributeError, ValueError, OSError):
            n = default
    return n


_NEGATIVE = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|-(inf|infinity|nan)", re.I)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)

    def parse_known_args(self, args=None, namespace=None):
        # With -4 and -6 declared, argparse takes "-1" for an option, and
        # "--duration -1" fails as "expected one argument".  A flag that
        # takes one value gets a negative number as that value, so its
        # converter can say what is wrong with it.
        args = list(sys.argv[1:] if args is None else args)
        out = []
        i = 0
        while i < len(args):
            a = args[i]
            action = self._option_string_actions.get(a)
            if (action is not None and action.nargs is None and i + 1 < len(args)
                    and _NEGATIVE.fullmatch(args[i + 1])
                    and args[i + 1] not in self._option_string_actions):
                out.append("%s=%s" % (a, args[i + 1]))
                i += 2
                continue
            if a == "--":
                out.extend(args[i:])
                break
            out.append(a)
            i += 1
        return super().parse_known_args(out, namespace)

    def _get_formatter(self):
        # argparse's own asks shutil for the width (HelpFormatter: the
        # columns less 2), and add_argument() makes one per flag
        return self.formatter_class(prog=self.prog, width=terminal_columns() - 2)


def ports(text):
    """'80,443' -> [80, 443]."""
    out = []
    for part in text.split(","):
        try:
            p = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError("not a port: %r" % part)
        if not 0 < p < 65536:
            raise argparse.ArgumentTypeError("port out of range 1-65535: %d" % p)
        out.append(p)
    return out


def positive(kind, low=None, high=None, unit=""):
    """A converter to a finite number > 0 (and within [low, high] when given)."""
    def conv(text):
        try:
            v = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError("not %s: %r" % (
                "an integer" if kind is int else "a number", text))
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError("must be a finite number: %r" % text)
        if v <= 0:
            raise argparse.ArgumentTypeError("must be > 0: %r" % text)
        if low is not None and v < low:
            raise argparse.ArgumentTypeError("must be at least %s%s: %r" % (low, unit, text))
        if high is not None and v > high:
            raise argparse.ArgumentTypeError("must be at most %s%s: %r" % (high, unit, text))
        return v
    return conv


PID_MAX = 1 << 22          # the kernel's PID_MAX_LIMIT
pid = positive(int, high=PID_MAX)


def state(text):
    from .states import parse_state
    try:
        return parse_state(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def cidr(text):
    from .filters import parse_cidr     # ipaddress: only when asked
    try:
        return parse_cidr(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


UID_MAX = (1 << 32) - 2    # (uid_t)-1 is "no uid"


def uid(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a uid: %r" % text)
    if not 0 <= v <= UID_MAX:
        raise argparse.ArgumentTypeError("uid out of range 0-%d: %d" % (UID_MAX, v))
    return v


def netns(text):
    """An inode, a path (/proc/PID/ns/net, /run/netns/NAME) or an ip-netns
    name -> the namespace's inode."""
    from .context import ContextError, netns_inode
    try:
        return netns_inode(text)
    except ContextError as e:
        raise argparse.ArgumentTypeError(str(e))


class Cgroup(tuple):
    """A --cgroup: (path below the cgroup2 root, id, level)."""
    __slots__ = ()
    path = property(lambda self: self[0])


def cgroup(text):
    from .context import Cgroups, ContextError
    cg = Cgroups()
    try:
        cid, level = cg.id_of(text)
    except ContextError as e:
        raise argparse.ArgumentTypeError(str(e))
    return Cgroup((cg.path(cid), cid, level))     # the path as id_of normalised it


def container(text):
    """A container id or the start of one (hex, at least 4 digits)."""
    t = text.strip().lower()
    if not (4 <= len(t) <= 64) or any(c not in "0123456789abcdef" for c in t):
        raise argparse.ArgumentTypeError(
            "not a container id: %r (4 to 64 hex digits, as docker ps shows them)" % text)
    return t


def add_filters(p, owner="owning", state_help="transitions into or out of this state"):
    """-4/-6, --port, --lport, --rport, --addr, --pid, --comm, --state,
    --uid, --netns, --cgroup, --container."""
    fam = p.add_mutually_exclusive_group()
    fam.add_argument("-4", dest="family", action="store_const", const=4, help="IPv4 only")
    fam.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 only")
    p.add_argument("--port", type=ports, action="append", default=[], metavar="PORT[,PORT]",
                   help="local or remote port (repeatable)")
    p.add_argument("--lport", type=ports, action="append", default=[], metavar="PORT",
                   help="local port")
    p.add_argument("--rport", type=ports, action="append", default=[], metavar="PORT",
                   help="remote port")
    p.add_argument("--addr", type=cidr, action="append", default=[], metavar="CIDR",
                   help="local or remote address in this network")
    p.add_argument("--pid", type=pid, action="append", default=[],
                   help="%s process id (repeatable)" % owner)
    p.add_argument("--comm", action="append", default=[], help="%s process name" % owner)
    p.add_argument("--state", type=state, action="append", default=[], metavar="NAME",
                   help="%s (ss spellings too: time-wait)" % state_help)
    p.add_argument("--uid", type=uid, action="append", default=[],
                   help="socket owner's uid (repeatable)")
    p.add_argument("--netns", type=netns, action="append", default=[],
                   metavar="INODE|PATH|NAME",
                   help="network namespace: inode, /proc/PID/ns/net, /run/netns/NAME or "
                        "an ip-netns name (repeatable)")
    p.add_argument("--cgroup", type=cgroup, action="append", default=[], metavar="PATH",
                   help="cgroup v2 path: sockets of that cgroup and the ones below it "
                        "(repeatable)")
    p.add_argument("--container", type=container, action="append", default=[],
                   metavar="ID", help="container id or its start (repeatable)")
