"""Read TCP sockets from the kernel's NETLINK_SOCK_DIAG interface.

This is what ``ss -tane`` reads: one ``inet_diag_msg`` per socket, in
binary, with the 64-bit socket cookie that /proc/net/tcp does not show.
Pure Python (socket, struct), no root needed for the fields read here.

The kernel structures (include/uapi/linux/inet_diag.h, sock_diag.h)::

    struct inet_diag_req_v2 {          /* the request, 56 bytes */
        __u8  sdiag_family;            /* AF_INET or AF_INET6 */
        __u8  sdiag_protocol;          /* IPPROTO_TCP */
        __u8  idiag_ext;               /* 1 << (INET_DIAG_INFO - 1): tcp_info */
        __u8  pad;
        __u32 idiag_states;            /* bitmask of 1 << state */
        struct inet_diag_sockid id;    /* zero: no filter */
    };
    struct inet_diag_sockid {          /* 48 bytes */
        __be16 idiag_sport, idiag_dport;
        __be32 idiag_src[4], idiag_dst[4];   /* IPv4: word 0 only */
        __u32  idiag_if;
        __u32  idiag_cookie[2];        /* cookie[0] | cookie[1] << 32 */
    };
    struct inet_diag_msg {             /* one per socket, 72 bytes */
        __u8  idiag_family, idiag_state, idiag_timer, idiag_retrans;
        struct inet_diag_sockid id;
        __u32 idiag_expires, idiag_rqueue, idiag_wqueue,
              idiag_uid, idiag_inode;
    };

Ports and addresses are in network byte order, everything else in host
order.  Netlink attributes (struct nlattr, 4-byte aligned) follow the
message; INET_DIAG_INFO (2) carries struct tcp_info, whose
``tcpi_last_data_recv`` is the __u32 at byte offset 52 (include/uapi/
linux/tcp.h: eight __u8, then rto, ato, snd_mss, rcv_mss, unacked, sacked,
lost, retrans, fackets, last_data_sent at 44, last_ack_sent at 48,
last_data_recv at 52).  Only full sockets carry it: timewait and request
minisockets never do.

What the kernel reports (net/ipv4/tcp_diag.c):

* a TIME_WAIT minisocket as ``tw_substate`` -- 6 (TIME_WAIT), or 5
  (FIN_WAIT2) for an orphan the kernel already swapped for a minisocket --
  with timer 3, ``expires_ms`` the time left of its 60 s, and uid, inode,
  queues 0;
* a pending connection request (``sk_state`` 12, NEW_SYN_RECV) as state 3
  (SYN_RECV) with timer 1; asking for SYN_RECV also returns them;
* a LISTEN socket with rqueue = accept queue length, wqueue = backlog.

The cookie is assigned lazily, the first time anybody asks for it (this
dump, ``ss``, SO_COOKIE, a BPF program): a socket nobody asked about has
none until the first dump, which gives it one.  A timewait minisocket
inherits its socket's cookie only if the socket had one when it closed.

A dump sees only the network namespace of the netlink socket, i.e. of
this process: compare :func:`own_netns_inode` with
``os.stat("/proc/<pid>/ns/net").st_ino`` to know whether another process
shares it.

A worked example, one message (nlmsghdr + inet_diag_msg) and NLMSG_DONE,
little-endian host:

>>> import sys
>>> msg = bytes.fromhex(
...     "58000000" "1400" "0200" "01000000" "00000000"  # nlmsghdr: len 88,
...                                                     # SOCK_DIAG_BY_FAMILY
...     "02" "01" "02" "00"             # AF_INET, ESTABLISHED, timer 2
...     "c6e8" "0016"                   # sport 50920, dport 22 (big-endian)
...     "7f000001" + "00" * 12 +        # src 127.0.0.1
...     "c0a80102" + "00" * 12 +        # dst 192.168.1.2
...     "00000000"                      # idiag_if
...     "2a000000" "01000000"           # cookie[0] = 42, cookie[1] = 1
...     "10270000" "00000000" "05000000"  # expires 10000 ms, rq 0, wq 5
...     "e8030000" "92100000")          # uid 1000, inode 4242
>>> done = bytes.fromhex("14000000" "0300" "0200" "01000000" "00000000"
...                      "00000000")      # NLMSG_DONE, error 0
>>> if sys.byteorder == "little":
...     [s] = parse(msg + done)
...     print(s.family, s.laddr, s.lport, s.raddr, s.rport, s.state_name)
...     print(hex(s.cookie), s.timer, s.expires_ms, s.rqueue, s.wqueue)
...     print(s.uid, s.inode, s.last_data_recv_ms)
4 127.0.0.1 50920 192.168.1.2 22 ESTABLISHED
0x10000002a 2 10000 0 5
1000 4242 None
>>> try:
...     parse(msg[:60])
... except SockDiagError as e:
...     print(e)
sock_diag: truncated message (88-byte netlink message, 60 bytes left)
"""

import collections
import errno as _errno
import gc
import os
import struct
import sys

# The C module behind socket.py, which would cost every one-shot command
# ~1.6 ms to import (its enums, selectors) for nothing used here.
import _socket as socket

from .states import NAMES

__all__ = [
    "ALL",
    "DiagSocket",
    "SockDiagError",
    "dump",
    "dump_bytes",
    "own_netns_inode",
    "parse",
    "request",
]

# --- constants (include/uapi/linux/netlink.h, sock_diag.h, inet_diag.h) ----

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x01
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
INET_DIAG_INFO = 2
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

# Bits 1..12 (1 << state): every state including TIME_WAIT and
# NEW_SYN_RECV.  Bit 13 (TCP_BOUND_INACTIVE, Linux 6.6+) is left out: it
# asks for bound but unconnected, non-listening sockets, which the kernel
# then reports with state 7 (CLOSE).
ALL = (1 << 13) - 1

_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}

TCPI_LAST_DATA_RECV = 52  # offset in struct tcp_info
_TCPI_MIN = TCPI_LAST_DATA_RECV + 4
# A socket's health from struct tcp_info (include/uapi/linux/tcp.h): rtt at
# 68, rttvar 72, total_retrans 100 (u32); bytes_acked 120, bytes_received
# 128 (u64); segs_out 136, segs_in 140 (u32): Linux 4.2 and later send them.
_HEALTH = struct.Struct("=68xII24xI16xQQII")
HEALTH = ("bytes_acked", "bytes_received", "segs_out", "segs_in", "total_retrans", "rtt_us",
          "rttvar_us")
assert _HEALTH.size == 144

RECV_BUFSIZE = 1 << 20  # the kernel sends at most ~32 KiB per recv anyway
TIMEOUT = 10.0  # seconds without an answer before giving up on a dump

# --- structs ------------------------------------------------------------------
#
# nlmsghdr (16 bytes) and inet_diag_msg (72) in one unpack: length, type,
# then family, state, timer, sport, dport, src, dst, cookie, expires,
# rqueue, wqueue, uid, inode.  Native byte order ("=": standard sizes, no
# padding); the ports are fixed up through _port_table(), the cookie on
# big-endian hosts below.  Skipped fields are "x" so no object is made
# for them: nlmsg_flags/seq/pid, idiag_retrans, idiag_if.
_MSG = struct.Struct("=IH10xBBBxHH16s16s4xQIIIII")
_HDR = struct.Struct("=IH")  # nlmsg_len, nlmsg_type
_NLA = struct.Struct("=HH")  # nla_len, nla_type
_I32 = struct.Struct("=i")
_U32 = struct.Struct("=I")
_REQ = struct.Struct("=IHHII" "BBBxI" "48x")
NLMSG_HDRLEN = 16
MSG_LEN = _MSG.size  # 88
assert MSG_LEN == NLMSG_HDRLEN + 72 and _REQ.size == NLMSG_HDRLEN + 56

_BIG_ENDIAN = sys.byteorder == "big"
_MASK32 = 0xFFFFFFFF

_port_swap = None


def _port_table():
    # Native-order u16 -> port number, one tuple index per port in the hot
    # loop (faster than shifting in Python).  A range is the identity and
    # costs no memory on big-endian hosts.
    global _port_swap
    if _port_swap is None:
        if _BIG_ENDIAN:
            _port_swap = range(65536)
        else:
            # packed native, read back big-endian: a third of the time of
            # a generator (~4 ms, paid by every one-shot command)
            _port_swap = struct.unpack(">65536H", struct.pack("=65536H", *range(65536)))
    return _port_swap


# --- errors -------------------------------------------------------------------


class SockDiagError(Exception):
    """A dump failed; the message is one line saying what failed.

    ``errno`` is the errno the kernel or a system call gave, else None.

    >>> str(SockDiagError("sock_diag: truncated message"))
    'sock_diag: truncated message'
    """

    def __init__(self, message, errno=None):
        Exception.__init__(self, message)
        self.errno = errno

    def __reduce__(self):
        return (self.__class__, (self.args[0], self.errno))


def _oserror(what, e):
    return SockDiagError(
        "sock_diag: %s: %s" % (what, e.strerror or e.__class__.__name__), e.errno
    )


def _errname(num):
    # "EINVAL (Invalid argument)"; any int from a corrupt message is fine.
    name = _errno.errorcode.get(num)
    if name is None:
        return "errno %d" % num
    return "%s (%s)" % (name, os.strerror(num))


# --- the record -------------------------------------------------------------

_FIELDS = (
    "family",  # 4 or 6
    "laddr",  # text, as tracer.procnet gives it
    "lport",
    "raddr",
    "rport",
    "state",  # kernel number, see tracer.states.NAMES
    "cookie",  # 64-bit idiag_cookie, what ss -e prints after sk: (hex)
    "inode",  # 0 for timewait and request minisockets, and orphans
    "uid",  # 0 for timewait and request minisockets
    "timer",  # idiag_timer: 0 none, 1 retrans/SYN-ACK, 2 keepalive,
    #           3 TIME_WAIT, 4 zero window probe
    "expires_ms",  # idiag_expires: ms to that timer's expiry
    "rqueue",  # bytes unread; accept queue length for LISTEN
    "wqueue",  # bytes unacked; backlog for LISTEN
    "last_data_recv_ms",  # tcp_info.tcpi_last_data_recv, or None
    "health",  # (bytes_acked, bytes_received, segs_out, segs_in, total_retrans,
    #            rtt_us, rttvar_us) from tcp_info, or None (see HEALTH)
)


class DiagSocket(collections.namedtuple("DiagSocket", _FIELDS)):
    """One socket of a dump (fields: see _FIELDS above).

    The parser builds them with tuple.__new__: no per-socket dict, no
    __new__/__init__ call in Python.
    """

    __slots__ = ()

    @property
    def state_name(self):
        s = self.state
        return NAMES[s] if 0 < s < len(NAMES) else "UNKNOWN(%d)" % s


# --- addresses ----------------------------------------------------------------
#
# Few distinct addresses per host, many sockets: the raw 16 bytes of
# idiag_src / idiag_dst map to their text through one cache per family.
# Emptied when full so memory stays bounded.
_CACHE_MAX = 65536
_ADDR4 = {}
_ADDR6 = {}
_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"


def _addr4(raw):
    # An IPv4 socket's address is in idiag_src[0]; the other 12 bytes are 0.
    text = socket.inet_ntop(socket.AF_INET, raw[:4])
    if len(_ADDR4) >= _CACHE_MAX:
        _ADDR4.clear()
    _ADDR4[raw] = text
    return text


def _addr6(raw):
    # Same text as tracer.procnet.format_addr6: IPv4-mapped keeps its dotted
    # tail (as ss shows it), everything else RFC 5952 via ipaddress, since
    # libc inet_ntop also prints the deprecated IPv4-compatible ::1.2.3.4.
    if raw[:12] == _MAPPED_PREFIX:
        text = "::ffff:" + socket.inet_ntop(socket.AF_INET, raw[12:])
    else:
        import ipaddress   # here: a one-shot command on a v4-only host never pays for it
        text = ipaddress.IPv6Address(raw).compressed
    if len(_ADDR6) >= _CACHE_MAX:
        _ADDR6.clear()
    _ADDR6[raw] = text
    return text


# --- the parser ---------------------------------------------------------------


try:
    from . import _diag   # the same loop in C (tracer/_diag.c); optional
except ImportError:
    _diag = None


def _parse_chunk(buf, end, out, info, what):
    """Parse buf[0:end], netlink messages; append a DiagSocket per socket.

    tracer/_diag.c does it when it was built, for the well-formed case
    only: on anything else it leaves *out* untouched and this Python loop
    reads the chunk again and says what is wrong (one wording per error).
    """
    if _diag is not None:
        done = _diag.parse_chunk(buf, end, out, info, DiagSocket, _ADDR4, _ADDR6,
                                 _addr4, _addr6)
        if done is not None:
            return done
    return _parse_chunk_py(buf, end, out, info, what)


def _parse_chunk_py(buf, end, out, info, what):
    """Parse buf[0:end], netlink messages; append a DiagSocket per socket.

    Returns True when NLMSG_DONE was seen (it must be the last message).
    Raises SockDiagError on an NLMSG_ERROR from the kernel and on anything
    malformed.  Every loop advances by at least 4 bytes: bounded by *end*.
    """
    unpack = _MSG.unpack_from
    unpack_hdr = _HDR.unpack_from
    unpack_nla = _NLA.unpack_from
    unpack_u32 = _U32.unpack_from
    append = out.append
    new = tuple.__new__
    cls = DiagSocket
    a4_get = _ADDR4.get
    a6_get = _ADDR6.get
    ports = _port_table()
    swap_cookie = _BIG_ENDIAN
    AF_INET = socket.AF_INET
    AF_INET6 = socket.AF_INET6
    ldr = health = None
    unpack_health = _HEALTH.unpack_from
    off = 0
    while off < end:
        left = end - off
        if left >= MSG_LEN:
            (
                mlen, mtype, fam, state, timer, sport, dport, src, dst,
                cookie, expires, rq, wq, uid, inode,
            ) = unpack(buf, off)
        elif left >= NLMSG_HDRLEN:
            mlen, mtype = unpack_hdr(buf, off)
        else:
            raise SockDiagError(
                "sock_diag: truncated message (%d bytes left, less than a "
                "netlink header)" % left
            )
        if mlen > left:
            raise SockDiagError(
                "sock_diag: truncated message (%d-byte netlink message, "
                "%d bytes left)" % (mlen, left)
            )
        if mtype == SOCK_DIAG_BY_FAMILY:
            if mlen < MSG_LEN:
                raise SockDiagError(
                    "sock_diag: truncated message (%d-byte inet_diag "
                    "message, need %d)" % (mlen, MSG_LEN)
                )
            if fam == AF_INET:
                family = 4
                laddr = a4_get(src)
                if laddr is None:
                    laddr = _addr4(src)
                raddr = a4_get(dst)
                if raddr is None:
                    raddr = _addr4(dst)
            elif fam == AF_INET6:
                family = 6
                laddr = a6_get(src)
                if laddr is None:
                    laddr = _addr6(src)
                raddr = a6_get(dst)
                if raddr is None:
                    raddr = _addr6(dst)
            else:
                raise SockDiagError(
                    "sock_diag: unexpected address family %d in an "
                    "inet_diag message" % fam
                )
            if swap_cookie:
                cookie = ((cookie & _MASK32) << 32) | (cookie >> 32)
            if info:
                # Attributes: walk them for INET_DIAG_INFO (tcp_info).
                ldr = health = None
                a = off + MSG_LEN
                mend = off + mlen
                while a < mend:
                    if mend - a < 4:
                        raise SockDiagError(
                            "sock_diag: truncated attribute (%d bytes left)"
                            % (mend - a)
                        )
                    alen, atype = unpack_nla(buf, a)
                    if alen < 4 or alen > mend - a:
                        raise SockDiagError(
                            "sock_diag: truncated attribute (nla_len %d, "
                            "%d bytes left)" % (alen, mend - a)
                        )
                    # tcp_info grows at its end; older kernels send less.
                    if atype & NLA_TYPE_MASK == INET_DIAG_INFO and alen >= 4 + _TCPI_MIN:
                        ldr = unpack_u32(buf, a + 4 + TCPI_LAST_DATA_RECV)[0]
                        if alen >= 4 + _HEALTH.size:
                            rtt, rttvar, retrans, acked, received, sout, sin = \
                                unpack_health(buf, a + 4)
                            health = (acked, received, sout, sin, retrans, rtt, rttvar)
                    a += (alen + 3) & ~3
            append(new(cls, (
                family, laddr, ports[sport], raddr, ports[dport], state,
                cookie, inode, uid, timer, expires, rq, wq, ldr, health,
            )))
        elif mtype == NLMSG_DONE:
            # struct nlmsgerr-less int: 0, or the dump's error (negative).
            if mlen >= NLMSG_HDRLEN + 4:
                err = _I32.unpack_from(buf, off + NLMSG_HDRLEN)[0]
                if err < 0:
                    raise SockDiagError(
                        "sock_diag: kernel ended the %s with error %s"
                        % (what, _errname(-err)), -err
                    )
            elif mlen < NLMSG_HDRLEN:
                raise SockDiagError("sock_diag: bad nlmsg_len %d" % mlen)
            if off + ((mlen + 3) & ~3) < end:
                raise SockDiagError(
                    "sock_diag: %d bytes after NLMSG_DONE"
                    % (end - off - ((mlen + 3) & ~3))
                )
            return True
        elif mtype == NLMSG_ERROR:
            # struct nlmsgerr { int error; struct nlmsghdr msg; ... }
            if mlen < NLMSG_HDRLEN + 4:
                raise SockDiagError(
                    "sock_diag: truncated message (%d-byte NLMSG_ERROR)" % mlen
                )
            err = _I32.unpack_from(buf, off + NLMSG_HDRLEN)[0]
            if err:
                num = -err if err < 0 else err
                raise SockDiagError(
                    "sock_diag: kernel answered error %s for the %s"
                    % (_errname(num), what), num
                )
            # error 0 is an ACK: nothing to do (a dump does not ask for one)
        elif mtype == NLMSG_OVERRUN:
            raise SockDiagError("sock_diag: kernel reported NLMSG_OVERRUN (data lost)")
        elif mtype != NLMSG_NOOP:
            raise SockDiagError(
                "sock_diag: unexpected netlink message type %d" % mtype
            )
        if mlen < NLMSG_HDRLEN:
            # Checked last: a zero length would never advance.
            raise SockDiagError("sock_diag: bad nlmsg_len %d" % mlen)
        off += (mlen + 3) & ~3
    return False


def parse(buf, info=True, what="dump"):
    """Parse a complete dump answer (bytes up to and with NLMSG_DONE).

    A pure function over bytes (bytes, bytearray or memoryview): the
    netlink messages of one or more recv() calls, concatenated.  Returns
    a list of DiagSocket.  Raises SockDiagError (one line) on an
    NLMSG_ERROR message, on a dump without NLMSG_DONE and on anything
    malformed.  *info* False skips the attributes (last_data_recv_ms None);
    *what* names the dump in error messages.

    >>> parse(struct.pack("=IHHIIi", 20, NLMSG_DONE, 2, 1, 0, 0))
    []
    >>> try:
    ...     parse(b"")
    ... except SockDiagError as e:
    ...     print(e)
    sock_diag: truncated dump (no NLMSG_DONE)
    """
    mv = memoryview(buf).cast("B")
    out = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # nothing here forms cycles; see tracer.procnet
    try:
        done = _parse_chunk(mv, len(mv), out, info, what)
    finally:
        if gc_was_enabled:
            gc.enable()
    if not done:
        raise SockDiagError("sock_diag: truncated %s (no NLMSG_DONE)" % what)
    return out


# --- talking to the kernel ----------------------------------------------------


def request(family, states=ALL, info=False, seq=1, protocol=socket.IPPROTO_TCP,
            bytecode=None):
    """The bytes of one dump request: nlmsghdr + inet_diag_req_v2, and
    *bytecode* (from :func:`port_filter`) as INET_DIAG_REQ_BYTECODE.

    >>> r = request(4, info=True)
    >>> len(r), r[4:6] == struct.pack("=H", 20), r[16:19]
    (72, True, b'\\x02\\x06\\x02')
    >>> len(request(4, bytecode=port_filter(sports=[80])))
    84
    """
    try:
        af = _FAMILIES[family]
    except (KeyError, TypeError):
        raise ValueError("family must be 4 or 6, not %r" % (family,)) from None
    if not 0 <= states <= _MASK32:
        raise ValueError("states must be a 32-bit mask, not %r" % (states,))
    ext = 1 << (INET_DIAG_INFO - 1) if info else 0
    attr = b""
    if bytecode:
        attr = _NLA.pack(4 + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
        attr += b"\0" * (-len(attr) % 4)
    return _REQ.pack(
        _REQ.size + len(attr), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0,
        af, protocol, ext, states,
    ) + attr


# inet_diag bytecode (include/uapi/linux/inet_diag.h; net/ipv4/inet_diag.c
# inet_diag_bc_run): a list of struct inet_diag_bc_op {u8 code, yes; u16
# no}, run from the start; each op jumps forward *yes* or *no* bytes; a
# socket is sent when the program ends exactly at its end.  A port test
# takes two ops, the port in the second one's ``no`` (host order).
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_JMP = 1
INET_DIAG_BC_S_EQ = 11
INET_DIAG_BC_D_EQ = 12
_BC_OP = struct.Struct("=BBH")
MAX_FILTER_PORTS = 1000   # the program must fit a netlink message


def port_filter(sports=(), dports=()):
    """Bytecode that passes a socket whose local port is in *sports* or
    whose remote port is in *dports* (an OR of equality tests, as ss
    builds for ``sport = :80 or dport = :80``).  None when there is nothing to
    test (no filter).

    >>> port_filter(sports=[80]).hex()    # S_EQ yes 8 no 12 (reject); port 80
    '0b080c0000005000'
    >>> port_filter() is None
    True
    """
    tests = [(INET_DIAG_BC_S_EQ, p) for p in sorted(set(sports))]
    tests += [(INET_DIAG_BC_D_EQ, p) for p in sorted(set(dports))]
    if not tests:
        return None
    if len(tests) > MAX_FILTER_PORTS:
        raise ValueError("too many ports for one filter: %d" % len(tests))
    # ss's layout (misc/ss.c, ssfilter_bytecompile): test, JMP, test, ...
    # A test jumps 8 (on) when it matches and 12 when not: past the JMP to
    # the next test, or, for the last one, 4 bytes beyond the end (reject).
    # A JMP always takes its ``no``: to the end (accept).  The kernel's
    # audit wants every ``no`` target on the chain of ``yes`` jumps, which
    # this layout gives.
    out = []
    n = len(tests)
    for i, (code, port) in enumerate(tests):
        out.append(_BC_OP.pack(code, 8, 12))
        out.append(_BC_OP.pack(0, 0, port))
        if i + 1 < n:
            rest = (n - 1 - i) * 8 + (n - 2 - i) * 4   # bytes after this JMP
            out.append(_BC_OP.pack(INET_DIAG_BC_JMP, 4, rest + 4))
    return b"".join(out)


class _Netlink:
    """A NETLINK_SOCK_DIAG socket, closed when the with-block ends."""

    def __init__(self, sock):
        self.sock = sock

    def __enter__(self):
        return self.sock

    def __exit__(self, *exc):
        self.sock.close()


def _open(netns=None):
    try:
        if netns is None:
            sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
            )
        else:
            from . import netns as _netns

            with _netns.inside(netns):
                sock = socket.socket(
                    socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
                )
    except OSError as e:
        if netns is not None:
            raise _oserror("network namespace %d" % netns, e) from None
        raise _oserror("netlink socket", e) from None
    try:
        sock.settimeout(TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return _Netlink(sock)


def _send(sock, req):
    try:
        sock.sendto(req, (0, 0))  # portid 0: the kernel
    except OSError as e:
        raise _oserror("send", e) from None


def _recv(sock, buf, what):
    try:
        return sock.recv_into(buf)
    except socket.timeout:
        raise SockDiagError(
            "sock_diag: no answer from the kernel within %g s for the %s"
            % (TIMEOUT, what)
        ) from None
    except OSError as e:
        raise _oserror("recv", e) from None


def _what(family):
    return "IPv%d dump" % family


def dump(families=(4, 6), states=ALL, info=False, bytecode=None, netns=None):
    """Dump the TCP sockets of this network namespace, or of the one whose
    inode is *netns* (tracer/netns.py: the netlink socket is made there).

    *families*: any of 4 and 6, dumped one after the other on one netlink
    socket (a socket that moves between the two dumps can be missed or
    seen twice, as with ss).  *states*: bitmask of 1 << state (ALL: every
    state).  *info*: also ask for struct tcp_info, for last_data_recv_ms.
    *bytecode*: a kernel-side filter (:func:`port_filter`): the kernel
    still walks every socket but sends only those that pass.
    Returns a list of DiagSocket; raises SockDiagError.

    Each call opens its own netlink socket (closed on every path), so
    nothing but the answers to its own requests can arrive on it; the
    sequence numbers are therefore not checked.  The kernel's first
    answer is ~3.7 KiB, the later ones ~32 KiB (it sizes them after the
    largest recv so far, capped at 32 KiB), so the IPv6 dump, on the
    same socket, starts with large ones.  Both dumps walk the kernel's
    whole TCP hash tables: an IPv6 dump of a host with only IPv4 sockets
    costs nearly as much kernel time as the IPv4 one.
    """
    reqs = [(f, request(f, states, info, seq, bytecode=bytecode))
            for seq, f in enumerate(families, 1)]
    out = []
    buf = bytearray(RECV_BUFSIZE)
    mv = memoryview(buf)
    # The cyclic GC would run every 700 new tuples and walk them all;
    # nothing made here can form a cycle (see tracer.procnet).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with _open(netns) as sock:
            for family, req in reqs:
                what = _what(family)
                _send(sock, req)
                done = False
                while not done:  # ends with NLMSG_DONE, an error or timeout
                    n = _recv(sock, buf, what)
                    if n == 0:
                        raise SockDiagError(
                            "sock_diag: empty read before NLMSG_DONE in the %s" % what
                        )
                    done = _parse_chunk(mv, n, out, info, what)
    finally:
        if gc_was_enabled:
            gc.enable()
        mv.release()
    return out


def _last_type(buf, n):
    # Header-only walk: does this chunk end the dump (DONE or ERROR)?
    off = 0
    while n - off >= NLMSG_HDRLEN:
        mlen, mtype = _HDR.unpack_from(buf, off)
        if mtype in (NLMSG_DONE, NLMSG_ERROR):
            return True
        if mlen < NLMSG_HDRLEN:
            return True  # garbage: stop reading, let parse() say why
        off += (mlen + 3) & ~3
    return False


def dump_bytes(family=4, states=ALL, info=False, req=None):
    """The raw answer to one dump request, all recv()s concatenated.

    For tests and debugging: feed it to :func:`parse`.  *req* replaces
    the request built from the other arguments.  Reads until a chunk holds
    NLMSG_DONE or NLMSG_ERROR; does not interpret anything else.
    """
    if req is None:
        req = request(family, states, info)
    what = "IPv%s dump" % family
    chunks = []
    buf = bytearray(RECV_BUFSIZE)
    with _open() as sock:
        _send(sock, req)
        while True:  # ends with DONE/ERROR, an error or timeout
            n = _recv(sock, buf, what)
            if n == 0:
                break
            chunks.append(bytes(buf[:n]))
            if _last_type(buf, n):
                break
    return b"".join(chunks)


def own_netns_inode():
    """Inode of this process's network namespace (/proc/self/ns/net).

    A dump only sees this namespace; sockets of a process in another one
    (a container) are not in it.
    """
    return os.stat("/proc/self/ns/net").st_ino
