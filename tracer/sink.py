"""Where records go: NDJSON (one orjson object per line) or aligned text.

Writes are batched: the main loop hands over everything one ring-buffer read
produced and the sink writes it with one system call, so output costs little
per event and still reaches the reader within a poll interval.
"""

import os
import select
import stat
import sys

import orjson

_NL = orjson.OPT_APPEND_NEWLINE


class SinkClosed(Exception):
    """The reader went away (``socktrace | head``): stop quietly."""


class _Writer:
    def __init__(self, path):
        if path in (None, "-"):
            self.fd = sys.stdout.fileno()
            self.own = False
        else:
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as e:
                raise OSError("cannot write %s: %s" % (path, e.strerror))
            self.own = True
        # A pipe or socket whose reader left reports POLLERR at once; check it
        # every loop so `socktrace | head -1` ends even when the host is quiet.
        self._poll = None
        if stat.S_ISFIFO(os.fstat(self.fd).st_mode) or stat.S_ISSOCK(os.fstat(self.fd).st_mode):
            self._poll = select.poll()
            self._poll.register(self.fd, select.POLLERR | select.POLLHUP)

    def check(self):
        """Raise SinkClosed when the reader has gone away."""
        if self._poll is not None and self._poll.poll(0):
            raise SinkClosed()

    def write(self, data):
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except BrokenPipeError:
            raise SinkClosed()

    def close(self):
        if self.own:
            os.close(self.fd)


class JsonSink:
    def __init__(self, path=None):
        self.out = _Writer(path)

    @staticmethod
    def encode(records):
        """NDJSON for *records*, one line each."""
        # One growing buffer, each line appended and dropped at once:
        # keeping a few thousand small bytes objects alive for a join
        # costs ~5 us a line in allocator work (measured), appending ~0.3.
        buf = bytearray()
        add = buf.extend
        dumps = orjson.dumps
        for r in records:
            add(dumps(r, option=_NL))
        return buf

    def write(self, records):
        if records:
            self.out.write(self.encode(records))

    def write_bytes(self, data):
        """Lines already encoded (tracer/_fmt.c writes them itself)."""
        if data:
            self.out.write(data)

    def check(self):
        self.out.check()

    def close(self):
        self.out.close()


def _ns(ns):
    """Human duration: 812ns, 35.2us, 4.10ms, 1.50s, 61.2s."""
    if ns is None:
        return "-"
    if ns < 1_000:
        return "%dns" % ns
    if ns < 1_000_000:
        return "%.1fus" % (ns / 1e3)
    if ns < 1_000_000_000:
        return "%.2fms" % (ns / 1e6)
    return "%.2fs" % (ns / 1e9)


def _ep(addr, port, family):
    return ("[%s]:%d" if family == 6 else "%s:%d") % (addr, port)


class TextSink:
    """Columns for people: time, owner, local, remote, old -> new, time in old."""

    HEADER = "%-15s %-22s %-28s %-28s %-27s %s\n" % (
        "TIME", "PID/COMM", "LOCAL", "REMOTE", "TRANSITION", "IN_OLD")

    def __init__(self, path=None):
        self.out = _Writer(path)
        self.out.write(self.HEADER.encode())

    def write(self, records):
        lines = []
        for r in records:
            t = r["type"]
            clock = r["ts"][11:26]
            if t == "state":
                owner = "%s/%s" % (r["pid"], r["comm"]) if r["pid"] else "?"
                trans = "%s -> %s" % (r["old"], r["new"])
                extra = ""
                if r.get("reason"):
                    extra = " (%s)" % r["reason"]
                elif r.get("lower_bound"):
                    extra = " (at least)"
                lines.append("%-15s %-22.22s %-28s %-28s %-27s %s%s\n" % (
                    clock, owner, _ep(r["laddr"], r["lport"], r["family"]),
                    _ep(r["raddr"], r["rport"], r["family"]), trans,
                    _ns(r["in_old_ns"]), extra))
            elif t == "lost":
                lines.append("%-15s LOST %d (%s)\n" % (clock, r["count"], r["what"]))
            elif t == "closed":
                owner = "%s/%s" % (r["pid"], r["comm"]) if r["pid"] else "?"
                lines.append("%-15s %-22.22s %-28s %-28s closed %-6s %s %s\n" % (
                    clock, owner, _ep(r["laddr"], r["lport"], r["family"]),
                    _ep(r["raddr"], r["rport"], r["family"]), r["end"],
                    _ns(r["lifetime_ns"]), " ".join(r["path"])))
            elif t == "socket":
                owner = "%s/%s" % (r["pid"], r["comm"]) if r["pid"] else "?"
                lines.append("%-15s %-22.22s %-28s %-28s %-27s %s\n" % (
                    clock, owner, _ep(r["laddr"], r["lport"], r["family"]),
                    _ep(r["raddr"], r["rport"], r["family"]), r["state"],
                    _ns(r["in_state_ns"])))
        if lines:
            self.out.write("".join(lines).encode())

    def check(self):
        self.out.check()

    def close(self):
        self.out.close()
