"""Records as columns for people: ``--format text``.

Fits 80 columns: local time of day (the date and zone in the header, and
again when the date changes), owner, the connection as ``:lport>raddr:rport``
(the local address is the host's own, so only its port is shown), the
transition in ss's state names, and the time spent in the state left.
``>=`` marks a lower bound (the socket predates socktrace), ``~`` an
estimate; ``@t``/``@p`` say a transition was seen through the TIME_WAIT timer
or derived from the peer; ``exp``/``reuse``/``kill`` how a TIME_WAIT ended.
Snapshot rows (dumps) say ``snapshot``.  From 120 columns on, a wide
layout adds the date, full local addresses, the path of closed connections
and the id.

Every string from the kernel goes through tracer.text.safe().

>>> c = Columns(width=80, tz=0)
>>> print(c.header(), end="")
# socktrace, times UTC+00:00; >= lower bound, ~ estimate, @t timer, @p peer
TIME         PID/COMM      CONNECTION            TRANSITION              IN OLD
>>> r = {"type": "state", "ts": "2026-12-05T12:00:01.123456Z", "conn": "1f",
...      "family": 4, "laddr": "127.0.0.1", "lport": 54321, "raddr": "10.1.2.3",
...      "rport": 443, "old": "FIN_WAIT2", "new": "TIME_WAIT", "in_old_ns": 1500000,
...      "lower_bound": False, "pid": 1234, "comm": "nginx: worker", "owner_from":
...      "connect", "role": "client", "via": "peer", "reason": None}
>>> print(c.line(r), end="")
# 2026-12-05
12:00:01.123 1234/nginx: … :54321>10.1.2.3:443   FIN-WAIT-2>TIME-WAIT@p   1.5ms
>>> max(len(c.line(dict(r, lower_bound=True, in_old_ns=ns)).rstrip("\\n"))
...     for ns in (999, 9_999, 999_999, 9_999_999, 999_999_999, 99_999_999_999, 3599 * 10**9))
80

A closed connection shows how it ended, bytes sent/received and its RTT:

>>> cl = dict(r, type="closed", end="normal", lifetime_ns=61_250_000_000, bytes_sent=4096,
...           bytes_received=1_250_000, rtt_us=310, retrans=0, path=["SYN_SENT",
...           "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE"])
>>> print(c.line(cl), end="")
12:00:01.123 1234/nginx: … :54321>10.1.2.3:443   normal 4.1K/1.2M 310us   61.2s
>>> print(c.line(dict(cl, end="refused", bytes_sent=0, bytes_received=0, rtt_us=0)), end="")
12:00:01.123 1234/nginx: … :54321>10.1.2.3:443   closed refused           61.2s
"""

import calendar
import time

from .text import safe

SS_NAMES = {"ESTABLISHED": "ESTAB", "SYN_SENT": "SYN-SENT", "SYN_RECV": "SYN-RECV",
            "FIN_WAIT1": "FIN-WAIT-1", "FIN_WAIT2": "FIN-WAIT-2", "TIME_WAIT": "TIME-WAIT",
            "CLOSE_WAIT": "CLOSE-WAIT", "LAST_ACK": "LAST-ACK", "NEW_SYN_RECV": "SYN-RECV"}
VIA_MARK = {"timer": "@t", "peer": "@p"}
REASON_MARK = {"expired": " exp", "reused": " reuse", "killed": " kill"}
WIDE = 120


def ss(name):
    return SS_NAMES.get(name, name)


def duration(ns, lower=False, estimate=False, compact=False):
    """'812ns', '35.2us', '4.10ms', '1.50s', '2m05s', '3h07m', with '>=' or
    '~' in front; *compact*: at most 6 characters after it ('35us', '130ms',
    '61.2s')."""
    if ns is None:
        return "-"
    if ns < 1_000:
        text = "%dns" % ns
    elif ns < 1_000_000:
        text = ("%.1fus" if not compact or ns < 10_000 else "%.0fus") % (ns / 1e3)
    elif ns < 1_000_000_000:
        text = ("%.2fms" if not compact else "%.1fms" if ns < 10_000_000 else
                "%.0fms") % (ns / 1e6)
    elif ns < 100_000_000_000:
        text = ("%.2fs" if not compact or ns < 10_000_000_000 else "%.1fs") % (ns / 1e9)
    elif ns < 3600_000_000_000:
        text = "%dm%02ds" % divmod(ns // 1_000_000_000, 60)
    else:
        text = "%dh%02dm" % divmod(ns // 60_000_000_000, 60)
    return (">=" if lower else "~" if estimate else "") + text


def size(n):
    """Bytes in at most 4 characters: '999', '4.1K', '12K', '1.2M', '340M', '5.0G'."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            v = n / div
            return ("%.1f%s" if v < 9.95 else "%d%s") % (v if v < 9.95 else int(v), unit)
    return "%d" % n


def health(r):
    """A closed record's traffic, 'sent/received rtt' ('4.1K/12K 310us'),
    or '' when it moved no data and measured no RTT (a refused connect)."""
    sent, received, rtt = r.get("bytes_sent"), r.get("bytes_received"), r.get("rtt_us")
    if sent is None or not (sent or received or rtt):
        return ""
    out = "%s/%s" % (size(sent), size(received))
    if rtt:
        out += " " + duration(rtt * 1000, compact=True)
    return out


def _ep(addr, port, family):
    return ("[%s]:%d" if family == 6 else "%s:%d") % (addr, port)


def _fit(text, width):
    return text if len(text) <= width else text[:width - 1] + "\u2026"


class Columns:
    """One layout, chosen once for the output's width."""

    def __init__(self, width=80, tz=None):
        self.wide = width >= WIDE
        # seconds east of UTC for the local time of day (None: this host's)
        self._tz = tz
        self._day = None
        self._sec = (None, None)

    def _offset(self, epoch):
        if self._tz is not None:
            return self._tz
        return time.localtime(epoch).tm_gmtoff

    def _zone(self):
        off = self._offset(time.time())
        name = "" if self._tz is not None else " (%s)" % time.strftime("%Z")
        return "UTC%s%02d:%02d%s" % ("-" if off < 0 else "+", abs(off) // 3600,
                                     abs(off) % 3600 // 60, name)

    def header(self):
        legend = "# socktrace, times %s; >= lower bound, ~ estimate, @t timer, @p peer\n" % (
            self._zone())
        if self.wide:
            cols = "%-26s %-22s %-28s %-30s %-22s %8s %s\n" % (
                "DATE TIME", "PID/COMM", "LOCAL", "REMOTE", "TRANSITION", "IN OLD",
                "VIA/REASON/PATH")
        else:
            cols = "%-12s %-13s %-21s %-22s %7s\n" % (
                "TIME", "PID/COMM", "CONNECTION", "TRANSITION", "IN OLD")
        return legend + cols

    def _when(self, ts):
        """(date line or '', time column) for an RFC 3339 UTC timestamp."""
        sec = ts[:19]
        if sec != self._sec[0]:
            epoch = calendar.timegm(time.strptime(sec, "%Y-%m-%dT%H:%M:%S"))
            local = time.gmtime(epoch + self._offset(epoch))
            self._sec = (sec, local)
        local = self._sec[1]
        day = time.strftime("%Y-%m-%d", local)
        new_day = ""
        if day != self._day:
            self._day = day
            if not self.wide:
                new_day = "# %s\n" % day
        clock = time.strftime("%H:%M:%S", local)
        if self.wide:
            return "", "%s %s.%s" % (day, clock, ts[20:26])
        return new_day, "%s.%s" % (clock, ts[20:23])

    def line(self, r):
        t = r["type"]
        day, when = self._when(r["ts"])
        if t == "lost":
            return "%s%s LOST %d %s\n" % (day, when, r["count"], r["what"])
        if t == "summary":
            return ""
        pid = r.get("pid")
        owner = "%d/%s" % (pid, safe(r["comm"] or "?")) if pid else "?"
        lower = r.get("lower_bound")
        if t == "state":
            trans = "%s>%s%s%s" % (ss(r["old"]), ss(r["new"]), VIA_MARK.get(r["via"], ""),
                                   REASON_MARK.get(r["reason"], ""))
            dur = duration(r["in_old_ns"], lower)
            args = (r["in_old_ns"], lower)
            extra = " ".join(x for x in (r["via"], r["reason"]) if x)
        elif t == "closed":
            # bytes sent/received and the RTT where they fit (80 columns:
            # instead of the word "closed")
            traffic = health(r)
            trans = "%s %s" % (r["end"], traffic) if traffic else "closed %s" % r["end"]
            dur = duration(r["lifetime_ns"], lower)
            args = (r["lifetime_ns"], lower)
            extra = ">".join(ss(p) for p in r["path"])
            if traffic:
                trans = "closed %s" % r["end"] if self.wide else _fit(trans, 22)
                extra += " bytes %s/%s rtt %s retrans %d" % (
                    r["bytes_sent"], r["bytes_received"],
                    duration(r["rtt_us"] * 1000) if r["rtt_us"] else "-", r["retrans"] or 0)
        else:                                   # socket: a snapshot row
            trans = "snapshot %s" % ss(r["state"])
            dur = duration(r["in_state_ns"], lower, r.get("estimate"))
            args = (r["in_state_ns"], lower, r.get("estimate"))
            extra = "conn %s" % r["conn"]
        fam = r["family"]
        if not self.wide:
            dur = duration(*args, compact=True)
        if self.wide:
            return "%s%-26s %-22s %-28s %-30s %-22s %8s %s\n" % (
                day, when, _fit(owner, 22), _ep(r["laddr"], r["lport"], fam),
                _ep(r["raddr"], r["rport"], fam), trans, dur, extra)
        conn = ":%d>%s" % (r["lport"], _ep(r["raddr"], r["rport"], fam))
        return "%s%-12s %-13s %-21s %-22s %7s\n" % (day, when, _fit(owner, 13), conn, trans,
                                                   dur)
