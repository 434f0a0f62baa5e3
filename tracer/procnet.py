"""Parse /proc/net/tcp and /proc/net/tcp6.

This is the "snapshot" source: what exists right now, including sockets
that were opened before the tracer started and TIME_WAIT sockets, which
the ``sock:inet_sock_set_state`` tracepoint never reports.

The kernel prints one line per socket (net/ipv4/tcp_ipv4.c and
net/ipv6/tcp_ipv6.c).  A full socket (get_tcp4_sock) has 17 columns:

    sl  local rem st tx:rx tr:when retrnsmt uid timeout inode \\
        refcnt ptr rto ato quick|pingpong cwnd ssthresh

and a minisocket -- a TIME_WAIT socket (get_timewait4_sock) or a pending
connection request (get_openreq4) -- has only the first 12, with the
inode (and for TIME_WAIT the uid) printed as 0.

>>> import os, tempfile
>>> root = tempfile.mkdtemp()
>>> os.mkdir(os.path.join(root, "net"))
>>> with open(os.path.join(root, "net", "tcp"), "w") as f:
...     _ = f.write(
...         "  sl  local_address rem_address   st tx_queue rx_queue tr "
...         "tm->when retrnsmt   uid  timeout inode\\n"
...         "   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 "
...         "00:00000000 00000000  1000        0 4242 1 0000000000000000 "
...         "100 0 0 10 0\\n"
...         "   1: 0100007F:C6E8 0100007F:0016 06 00000000:00000000 "
...         "03:000006EB 00000000     0        0 0 3 0000000000000000\\n")
>>> listen, tw = read_tcp(root, families=(4, 6))   # no tcp6 file: fine
>>> listen.laddr, listen.lport, listen.state_name, listen.uid, listen.inode
('127.0.0.1', 22, 'LISTEN', 1000, 4242)
>>> tw.rport, tw.state_name, tw.timer, tw.when_ticks, tw.inode
(22, 'TIME_WAIT', 3, 1771, 0)
>>> tw.time_left_ns == 1771 * 10**9 // CLK_TCK
True
>>> format_addr6("0000000000000000FFFF00000100007F")
'::ffff:127.0.0.1'
>>> import shutil; shutil.rmtree(root)
"""

import collections
import gc
import ipaddress
import os
import socket
import sys

from .states import NAMES

__all__ = [
    "CLK_TCK",
    "ProcParseError",
    "ProcSocket",
    "format_addr4",
    "format_addr6",
    "parse_tcp",
    "read_tcp",
]

# tm->when is printed in clock_t units (USER_HZ, 100 on every mainstream
# architecture), not in jiffies: the kernel converts with
# jiffies_delta_to_clock_t() before printing.  HZ itself (250 here) never
# shows up in /proc.
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The "tr" column (timer_active in get_tcp4_sock).
TIMER_NONE = 0
TIMER_RETRANS = 1  # also: a request socket's SYN-ACK timer (get_openreq4)
TIMER_KEEPALIVE = 2  # sk_timer: keepalive, or an orphan's FIN_WAIT2 timer
TIMER_TIME_WAIT = 3  # only printed for timewait minisockets
TIMER_PROBE0 = 4  # zero window probe


class ProcSocket(
    collections.namedtuple(
        "ProcSocket",
        [
            "family",  # 4 or 6: which file the line came from
            "laddr",
            "lport",
            "raddr",
            "rport",
            "state",  # kernel number, see tracer.states.NAMES
            "inode",  # 0 for TIME_WAIT, request socks and orphans
            "uid",  # 0 for TIME_WAIT (the kernel does not keep it)
            "timer",  # the "tr" column, TIMER_* above
            "when_ticks",  # tm->when in USER_HZ ticks; 0 when no timer
            "time_left_ns",  # when_ticks in nanoseconds
        ],
    )
):
    """One line of /proc/net/tcp{,6}.

    For a TIME_WAIT socket (timer 3) time_left_ns is what is left of its
    60 s; for other timers it is the time to that timer's expiry.  A line
    with timer 3 and state FIN_WAIT2 (5) is an orphaned FIN_WAIT2 socket
    that the kernel already swapped for a timewait minisocket.
    """

    __slots__ = ()

    @property
    def state_name(self):
        return NAMES[self.state]


class ProcParseError(ValueError):
    """A line of /proc/net/tcp{,6} that does not look like the kernel's.

    >>> e = ProcParseError("/proc/net/tcp", 17, "bad address", b"XYZ",
    ...                    b"  15: XYZ:0016 00000000:0000 0A\\n")
    >>> str(e)
    "/proc/net/tcp line 17: bad address 'XYZ' (line: '15: XYZ:0016 00000000:0000 0A')"
    >>> e.path, e.lineno, e.reason
    ('/proc/net/tcp', 17, 'bad address')
    """

    def __init__(self, path, lineno, reason, token=None, line=None):
        self.path = path
        self.lineno = lineno
        self.reason = reason
        self.token = token
        self.line = line
        msg = "%s line %d: %s" % (path, lineno, reason)
        if token is not None:
            msg += " %r" % _show(token, 40)
        if line is not None:
            msg += " (line: %r)" % _show(line.strip(), 72)
        ValueError.__init__(self, msg)

    def __reduce__(self):
        return (
            self.__class__,
            (self.path, self.lineno, self.reason, self.token, self.line),
        )


def _show(data, limit):
    # The file is bytes; show them as text without ever failing on
    # non-ASCII junk, and keep messages short enough for a terminal.
    if isinstance(data, bytes):
        data = data.decode("ascii", "backslashreplace")
    if len(data) > limit:
        data = data[: limit - 3] + "..."
    return data


# --- caches ----------------------------------------------------------------
#
# A host has few distinct addresses, uids and small counter values, but a
# busy one has many sockets: the same tokens repeat on nearly every line.
# Each cache maps a raw token (bytes) to its checked value and only ever
# holds tokens that passed the strict validators below, so a hit is both
# the parse and the validation.  There is one cache per kind of
# column, so that a token valid in one column (a negative number, a colon
# pair) can never be accepted in another by a hit.
#
# Caches of tokens that can be unique per socket are emptied when they
# reach _CACHE_MAX entries: the next read refills them with what is
# actually in use, and memory stays bounded on a host with 1M sockets.
_CACHE_MAX = 65536

_ADDR4 = {}  # b"0100007F" -> "127.0.0.1"
_ADDR6 = {}  # 32 hex digits -> "::1"
_PORT = {}  # b"0016" -> 22; bounded by the 4-digit spellings, never emptied
_STATE = {b"%02X" % n: n for n in range(1, 13)}  # kernel prints %02X
_STATE.update({b"%02x" % n: n for n in range(1, 13)})
_QUEUES = {}  # b"00000000:00000000" -> 0 (tx_queue:rx_queue, unused)
_TIMER = {}  # b"03:000006EB" -> (3, 1771, 17710000000)
_HEX = {}  # b"00000000" -> 0 (retrnsmt, unused)
_DEC = {}  # b"1000" -> 1000 (unsigned: uid)
_SDEC = {}  # b"-1" -> -1 (signed: timeout, refcnt)
_REST = {}  # b"20 4 0 10 -1   " -> True (rto ato quick cwnd ssthresh)

_HEXCHARS = b"0123456789abcdefABCDEF"
_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"
_LONG_SIGN = 1 << 63
# The kernel prints host-order words; only little-endian hosts reverse them.
_LITTLE_ENDIAN = sys.byteorder == "little"


def _ishex(tok):
    # Not int(tok, 16) alone: that also takes "0x1F", "+1F", "-1F", "1_F"
    # and surrounding whitespace.  bytes.translate deletes every hex digit
    # in one C loop; anything left over is garbage.
    return bool(tok) and not tok.translate(None, _HEXCHARS)


def _put(cache, key, val):
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = val


def format_addr4(hexaddr):
    """Format the kernel's IPv4 address column.

    The kernel prints the __be32 address with %08X, i.e. as a host-order
    (little-endian on x86/arm64) integer, so the bytes come out reversed.

    >>> format_addr4("0100007F"), format_addr4(b"00000000")
    ('127.0.0.1', '0.0.0.0')
    """
    if isinstance(hexaddr, str):
        hexaddr = hexaddr.encode("ascii", "backslashreplace")
    addr = _ADDR4.get(hexaddr)
    if addr is None:
        if len(hexaddr) != 8 or not _ishex(hexaddr):
            raise ValueError("bad IPv4 address %r" % _show(hexaddr, 40))
        raw = bytes.fromhex(hexaddr.decode("ascii"))
        if _LITTLE_ENDIAN:
            raw = raw[::-1]
        addr = socket.inet_ntop(socket.AF_INET, raw)
        _put(_ADDR4, hexaddr, addr)
    return addr


def format_addr6(hexaddr):
    """Format the kernel's IPv6 address column.

    The kernel prints s6_addr32[0..3] with %08X each: four 32-bit words,
    each in host byte order, so every group of 8 digits is reversed on a
    little-endian host.  The result is RFC 5952 text (ipaddress), except
    that IPv4-mapped addresses keep their dotted tail, as ss(8) shows them.

    >>> format_addr6("00000000000000000000000001000000")
    '::1'
    >>> format_addr6("B80D0120000000000000000001000000")
    '2001:db8::1'
    >>> format_addr6("0000000000000000FFFF00000201A8C0")
    '::ffff:192.168.1.2'
    """
    if isinstance(hexaddr, str):
        hexaddr = hexaddr.encode("ascii", "backslashreplace")
    addr = _ADDR6.get(hexaddr)
    if addr is None:
        if len(hexaddr) != 32 or not _ishex(hexaddr):
            raise ValueError("bad IPv6 address %r" % _show(hexaddr, 40))
        raw = bytes.fromhex(hexaddr.decode("ascii"))
        if _LITTLE_ENDIAN:
            raw = raw[3::-1] + raw[7:3:-1] + raw[11:7:-1] + raw[15:11:-1]
        if raw[:12] == _MAPPED_PREFIX:
            # ipaddress before Python 3.13 prints these as ::ffff:7f00:1.
            addr = "::ffff:" + socket.inet_ntop(socket.AF_INET, raw[12:])
        else:
            # Not inet_ntop: glibc also prints the deprecated
            # "IPv4-compatible" form (::1.2.3.4), and other libcs differ.
            addr = ipaddress.IPv6Address(raw).compressed
        _put(_ADDR6, hexaddr, addr)
    return addr


# --- validators for cache misses ------------------------------------------
#
# Each checks one token strictly, caches it if good and raises
# _Bad(reason, token) if not; parse_tcp turns that into a ProcParseError
# carrying the file name and line number.


class _Bad(Exception):
    pass


def _address(a, tok, width):
    # Cache miss on an address: one of few per host, formatted once.
    if len(a) != width:
        raise _Bad("bad address", tok)
    try:
        return (format_addr4 if width == 8 else format_addr6)(a)
    except ValueError:
        raise _Bad("bad address", tok) from None


def _port(p, tok):
    # Cache miss on a port.
    if len(p) != 4 or not _ishex(p):
        raise _Bad("bad port", tok)
    port = _PORT[p] = int(p, 16)
    return port


def _endpoint(tok, width):
    # "ADDR:PORT": address of a fixed width, port %04X.
    if len(tok) != width + 5 or tok[width] != 0x3A:  # ':'
        raise _Bad("bad address", tok)
    a = tok[:width]
    addr = _ADDR4.get(a) if width == 8 else _ADDR6.get(a)
    if addr is None:
        addr = _address(a, tok, width)
    p = tok[width + 1 :]
    port = _PORT.get(p)
    if port is None:
        port = _port(p, tok)
    return addr, port


def _queues(tok):
    tx, sep, rx = tok.partition(b":")
    if not sep or not _ishex(tx) or not _ishex(rx):
        raise _Bad("bad tx_queue:rx_queue", tok)
    _put(_QUEUES, tok, 0)


def _timer(tok):
    tr, sep, when = tok.partition(b":")
    if not sep or not _ishex(tr) or not _ishex(when) or len(when) > 16:
        raise _Bad("bad tr:tm->when", tok)
    timer = int(tr, 16)
    if timer > 4:
        raise _Bad("bad timer kind in tr:tm->when", tok)
    ticks = int(when, 16)
    # Older kernels printed jiffies_to_clock_t(expires - jiffies) with
    # %08lX unclamped, so a timer already due showed up as a huge unsigned
    # number; newer ones clamp the delta to 0 themselves.
    if ticks >= _LONG_SIGN:
        ticks = 0
    val = (timer, ticks, ticks * 1000000000 // CLK_TCK)
    _put(_TIMER, tok, val)
    return val


def _retrnsmt(tok):
    if not _ishex(tok):
        raise _Bad("bad retrnsmt", tok)
    _put(_HEX, tok, 0)


def _dec(tok, reason, cache, signed):
    digits = tok[1:] if signed and tok[:1] == b"-" else tok
    if not digits.isdigit():  # bytes.isdigit(): ASCII 0-9 only, no sign
        raise _Bad(reason, tok)
    val = int(tok)
    if cache is not None:
        _put(cache, tok, val)
    return val


def _rest(rest):
    # rto ato quick|pingpong cwnd ssthresh (+ the padding of tcp4 lines)
    f = rest.split()
    if len(f) != 5:
        raise _Bad("expected 12 or 17 columns, got %d" % (12 + len(f)), None)
    for tok in f[:4]:
        _dec(tok, "bad column", None, False)
    _dec(f[4], "bad ssthresh", None, True)  # -1 in initial slow start
    _put(_REST, rest, True)


def _pointer(tok):
    # %pK: a hashed (or, without CAP_SYSLOG, zeroed) kernel pointer.
    if len(tok) > 16 or not _ishex(tok):
        raise _Bad("bad kernel pointer", tok)


def _parse_line(line, width):
    """Parse one line strictly, column by column, through the validators.

    Returns the ProcSocket fields after family.  This is the reference the
    fast loop in parse_tcp must agree with, and what names the first bad
    column when the fast loop finds a line malformed.
    """
    f = line.split()
    n = len(f)
    if n != 17 and n != 12:
        raise _Bad("expected 12 or 17 columns, got %d" % n, None)
    sl = f[0]
    if sl[-1] != 0x3A or not sl[:-1].isdigit():  # "%4d:"
        raise _Bad("bad slot number", sl)
    laddr, lport = _endpoint(f[1], width)
    raddr, rport = _endpoint(f[2], width)
    state = _STATE.get(f[3])
    if state is None:
        raise _Bad("bad state (not 01..0C)", f[3])
    _queues(f[4])
    timer, ticks, ns = _timer(f[5])
    _retrnsmt(f[6])
    uid = _dec(f[7], "bad uid", None, False)
    _dec(f[8], "bad timeout", None, True)
    inode = _dec(f[9], "bad inode", None, False)
    # Columns past the inode are not returned but still checked, so that a
    # line with shifted or damaged columns is refused, not half-read.
    _dec(f[10], "bad refcount", None, True)
    _pointer(f[11])
    if n == 17:
        _rest(line.split(None, 12)[12])
    elif inode:
        # Only minisockets print 12 columns, and they have no inode: this
        # is a full-socket line that lost its last five columns.
        raise _Bad("12 columns but an inode", f[9])
    return (laddr, lport, raddr, rport, state, inode, uid, timer, ticks, ns)


# --- the parser ------------------------------------------------------------


def parse_tcp(data, family, path="<data>"):
    """Parse the bytes of a /proc/net/tcp (family 4) or tcp6 (6) file.

    *path* is only used in error messages.  Returns a list of ProcSocket.

    >>> parse_tcp(b"  sl  local_address rem_address ...\\n", 4)
    []
    >>> try:
    ...     parse_tcp(b"  sl ...\\n   0: 0100007F:0016 00000000:0000 0A\\n",
    ...               4, "tcp")
    ... except ProcParseError as e:
    ...     print(e)
    tcp line 2: expected 12 or 17 columns, got 4 (line: '0: 0100007F:0016 00000000:0000 0A')
    """
    if family == 4:
        width, addr_cache = 8, _ADDR4
    elif family == 6:
        width, addr_cache = 32, _ADDR6
    else:
        raise ValueError("family must be 4 or 6, not %r" % (family,))
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()  # the final newline, not an empty line
    if not lines:
        return []
    if lines[0].split()[:1] != [b"sl"]:
        raise ProcParseError(path, 1, "not a /proc/net/tcp header", None, lines[0])

    # Locals, not globals or attributes, in the hot loop: at 100k lines
    # every lookup is visible in the total.
    out = []
    append = out.append
    new = tuple.__new__
    cls = ProcSocket
    addr_get = addr_cache.get
    port_get = _PORT.get
    state_get = _STATE.get
    queues_get = _QUEUES.get
    timer_get = _TIMER.get
    hex_get = _HEX.get
    dec_get = _DEC.get
    sdec_get = _SDEC.get
    rest_get = _REST.get
    hexchars = _HEXCHARS
    address = _address
    port = _port
    dec = _dec

    # The cyclic GC would run every 700 new tuples and re-walk the growing
    # result list each time: a third of the parse time at 100k lines.
    # Nothing created here can form a cycle, so pause it.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    lineno = 1
    line = lines[0]
    try:
        for lineno, line in enumerate(lines[1:], 2):
            # Split off the first ten columns and look each token up in the
            # cache of known-good tokens for its column; a miss runs that
            # column's validator, which raises _Bad on garbage.  A line
            # with fewer than 11 columns fails the unpacking (ValueError),
            # and so does an endpoint without exactly one colon.
            sl, lep, rep, st, qs, tw, rt, uid, to, ino, tail = line.split(None, 10)
            a, p = lep.split(b":")
            la = addr_get(a)
            if la is None:
                la = address(a, lep, width)
            lp = port_get(p)
            if lp is None:
                lp = port(p, lep)
            a, p = rep.split(b":")
            ra = addr_get(a)
            if ra is None:
                ra = address(a, rep, width)
            rp = port_get(p)
            if rp is None:
                rp = port(p, rep)
            state = state_get(st)
            if state is None:
                raise _Bad("bad state (not 01..0C)", st)
            if queues_get(qs) is None:
                _queues(qs)
            t = timer_get(tw)
            if t is None:
                t = _timer(tw)
            if hex_get(rt) is None:
                _retrnsmt(rt)
            u = dec_get(uid)
            if u is None:
                u = dec(uid, "bad uid", _DEC, False)
            if sdec_get(to) is None:
                dec(to, "bad timeout", _SDEC, True)
            if sl[-1] != 0x3A or not sl[:-1].isdigit():
                raise _Bad("bad slot number", sl)
            if not ino.isdigit():
                raise _Bad("bad inode", ino)
            inode = int(ino)
            # The rest is not returned but still checked, so that a line
            # with shifted or damaged columns is refused, not half-read.
            tl = tail.split(None, 2)  # refcnt, pointer[, the other five]
            n = len(tl)
            if n == 3:
                if rest_get(tl[2]) is None:
                    _rest(tl[2])
            elif n != 2:
                raise _Bad("expected 12 or 17 columns, got %d" % (10 + n), None)
            elif inode:
                raise _Bad("12 columns but an inode", ino)
            if sdec_get(tl[0]) is None:
                dec(tl[0], "bad refcount", _SDEC, True)
            if len(tl[1]) > 16 or tl[1].translate(None, hexchars):
                raise _Bad("bad kernel pointer", tl[1])
            timer, ticks, ns = t
            append(new(cls, (family, la, lp, ra, rp, state, inode, u, timer, ticks, ns)))
    except (_Bad, ValueError) as e:
        # Let the strict parser name the first bad column, so that the
        # message does not depend on which caches happened to be warm.
        try:
            _parse_line(line, width)
            # Cannot happen: the fast path only takes what it takes.
            err = e if isinstance(e, _Bad) else _Bad("unparsable line", None)
        except _Bad as e2:
            err = e2
        reason, token = err.args
        raise ProcParseError(path, lineno, reason, token, line) from None
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


def read_tcp(proc_root="/proc", families=(4, 6)):
    """Read <proc_root>/net/tcp and tcp6 and return a list of ProcSocket.

    A missing file (IPv6 disabled, or IPv4 compiled out) contributes no
    sockets.  Any other OSError propagates.  A line that does not parse
    raises ProcParseError naming the file and line.

    The two files are read one after the other, not atomically: a socket
    that changes state in between can be missed or seen twice, exactly as
    with netstat.  The kernel also resumes its hash walk between read()
    calls, so even one file is not an atomic snapshot.
    """
    out = []
    for family in families:
        if family == 4:
            path = os.path.join(proc_root, "net", "tcp")
        elif family == 6:
            path = os.path.join(proc_root, "net", "tcp6")
        else:
            raise ValueError("family must be 4 or 6, not %r" % (family,))
        try:
            data = read_file(path)
        except FileNotFoundError:
            continue
        out.extend(parse_tcp(data, family, path))
    return out


def read_file(path):
    """The whole of a /proc file as bytes.

    Unbuffered, large reads: seq_file fills as much of each read() as it
    can, so Python's 8 KiB buffering would only add copies.
    """
    with open(path, "rb", buffering=0) as f:
        chunks = []
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)
