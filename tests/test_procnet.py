"""Tests for tracer.procnet: captured files, hand-written lines, and
property tests against lines formatted the way the kernel formats them."""

import doctest
import ipaddress
import os
import shutil
import sys
import time

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tracer import procnet
from tracer.procnet import (
    CLK_TCK,
    ProcParseError,
    ProcSocket,
    format_addr4,
    format_addr6,
    parse_tcp,
    read_tcp,
)
from tracer.states import NAMES, NUMBERS

DATA = os.path.join(os.path.dirname(__file__), "data", "proc_net")
SAMPLE1 = os.path.join(DATA, "sample1")
HANDMADE = os.path.join(DATA, "handmade")

NS = 10**9 // CLK_TCK  # nanoseconds per USER_HZ tick


def _clear_caches():
    for name, val in vars(procnet).items():
        if name.startswith("_") and not name.startswith("__") and isinstance(val, dict):
            if name != "_STATE":
                val.clear()


# --- the kernel's formats (net/ipv4/tcp_ipv4.c, net/ipv6/tcp_ipv6.c) -------
#
# get_tcp4_sock:
#   "%4d: %08X:%04X %08X:%04X %02X %08X:%08X %02X:%08lX %08X %5u %8d %lu %d
#    %pK %lu %lu %u %u %d"
# get_timewait4_sock / get_openreq4:
#   "%4d: %08X:%04X %08X:%04X %02X %08X:%08X %02X:%08lX %08X %5d %8d %d %d %pK"
# tcp4_seq_show pads every line, header included, to TMPSZ - 1 = 149
# characters (seq_setwidth + seq_pad); tcp6 lines are not padded and print
# the address as four host-order 32-bit words (s6_addr32[0..3]).


def kaddr4(packed):
    return "%08X" % int.from_bytes(packed, sys.byteorder)


def kaddr6(packed):
    return "".join(
        "%08X" % int.from_bytes(packed[i : i + 4], sys.byteorder) for i in range(0, 16, 4)
    )


HEADER4 = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when "
    "retrnsmt   uid  timeout inode"
).ljust(149)
HEADER6 = (
    "  sl  local_address                         remote_address                  "
    "      st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
)


def kline(family, kind, sl, laddr, lport, raddr, rport, state, **kw):
    """Format one line; *laddr*/*raddr* are packed (network order) bytes."""
    a = kaddr4 if family == 4 else kaddr6
    head = "%4d: %s:%04X %s:%04X %02X %08X:%08X %02X:%08X %08X" % (
        sl,
        a(laddr),
        lport,
        a(raddr),
        rport,
        state,
        kw.get("tx", 0),
        kw.get("rx", 0),
        kw.get("tr", 0),
        kw.get("when", 0),
        kw.get("retr", 0),
    )
    if kind == "full":
        text = head + " %5u %8d %d %d %016x %d %d %d %d %d" % (
            kw.get("uid", 0),
            kw.get("probes", 0),
            kw.get("inode", 0),
            kw.get("ref", 1),
            kw.get("ptr", 0),
            kw.get("rto", 20),
            kw.get("ato", 4),
            kw.get("quick", 0),
            kw.get("cwnd", 10),
            kw.get("ssthresh", -1),
        )
    else:  # "tw" or "req": 12 columns, no inode
        text = head + " %5d %8d %d %d %016x" % (
            kw.get("uid", 0),
            0,
            0,
            kw.get("ref", 3),
            kw.get("ptr", 0),
        )
    if family == 4:
        text = text.ljust(149)
    return text


def kfile(family, lines):
    return ("\n".join([HEADER4 if family == 4 else HEADER6] + lines) + "\n").encode()


def expected_addr(family, packed):
    if family == 4:
        return str(ipaddress.IPv4Address(packed))
    ip = ipaddress.IPv6Address(packed)
    if ip.ipv4_mapped is not None:
        return "::ffff:%s" % ip.ipv4_mapped
    return ip.compressed


# --- captured sample --------------------------------------------------------

# Every line of tests/data/proc_net/sample1, in file order.
SAMPLE1_EXPECTED = [
    # family, laddr, lport, raddr, rport, state, inode, uid, timer, when, ns
    (4, "127.0.0.1", 47009, "0.0.0.0", 0, 10, 2330168, 65534, 0, 0, 0),
    (4, "127.0.0.1", 47010, "0.0.0.0", 0, 10, 2330164, 0, 0, 0, 0),
    (4, "127.0.0.1", 47001, "0.0.0.0", 0, 10, 2330146, 0, 0, 0, 0),
    (4, "127.0.0.1", 47101, "127.0.0.1", 47001, 1, 2330149, 0, 0, 0, 0),
    (4, "127.0.0.1", 47103, "127.0.0.1", 47001, 5, 2330155, 0, 0, 0, 0),
    (4, "127.0.0.1", 47104, "127.0.0.1", 47001, 6, 0, 0, 3, 0x173D, 0x173D * NS),
    (4, "127.0.0.1", 47105, "127.0.0.1", 47001, 5, 0, 0, 3, 0x1734, 0x1734 * NS),
    (4, "127.0.0.1", 47108, "127.0.0.1", 47001, 1, 2330163, 0, 0, 0, 0),
    (4, "127.0.0.1", 47109, "127.0.0.1", 47010, 2, 2330166, 0, 1, 0x45, 0x45 * NS),
    (4, "127.0.0.1", 47110, "127.0.0.1", 47010, 1, 2330165, 0, 0, 0, 0),
    (4, "127.0.0.1", 47010, "127.0.0.1", 47110, 1, 0, 0, 0, 0, 0),
    (4, "127.0.0.1", 47001, "127.0.0.1", 47108, 1, 0, 0, 0, 0, 0),
    (4, "127.0.0.1", 47106, "127.0.0.1", 47003, 1, 2330153, 0, 0, 0, 0),
    (4, "127.0.0.1", 47001, "127.0.0.1", 47101, 1, 2330150, 0, 0, 0, 0),
    (4, "127.0.0.1", 47001, "127.0.0.1", 47103, 8, 2330156, 0, 0, 0, 0),
    (4, "127.0.0.1", 47001, "127.0.0.1", 47105, 8, 2330158, 0, 0, 0, 0),
    (6, "::1", 47002, "::", 0, 10, 2330147, 0, 0, 0, 0),
    (6, "::", 47003, "::", 0, 10, 2330148, 0, 0, 0, 0),
    (6, "::1", 47002, "::1", 47102, 1, 2330152, 0, 0, 0, 0),
    (6, "::ffff:127.0.0.1", 47003, "::ffff:127.0.0.1", 47106, 1, 2330154, 0, 0, 0, 0),
    (6, "::1", 47102, "::1", 47002, 1, 2330151, 0, 0, 0, 0),
    (6, "::1", 47107, "::1", 47002, 6, 0, 0, 3, 0x1747, 0x1747 * NS),
]


@pytest.mark.parametrize("cold", [True, False])
def test_sample1_exact(cold):
    if cold:
        _clear_caches()
    socks = read_tcp(SAMPLE1)
    assert [tuple(s) for s in socks] == SAMPLE1_EXPECTED
    assert all(type(s) is ProcSocket for s in socks)
    assert all(type(v) is int for s in socks for v in s[2:3] + s[4:])


def test_sample1_named_fields():
    socks = read_tcp(SAMPLE1)
    by = {(s.family, s.lport, s.rport): s for s in socks}
    tw = by[(4, 47104, 47001)]
    assert (tw.state_name, tw.timer, tw.inode, tw.uid) == ("TIME_WAIT", 3, 0, 0)
    assert 59 * 10**9 < tw.time_left_ns <= 60 * 10**9
    mapped = by[(6, 47003, 47106)]
    assert mapped.laddr == mapped.raddr == "::ffff:127.0.0.1"
    assert mapped.state == NUMBERS["ESTABLISHED"]
    nobody = by[(4, 47009, 0)]
    assert (nobody.state_name, nobody.uid) == ("LISTEN", 65534)
    closewait = by[(4, 47001, 47103)]
    assert closewait.state_name == "CLOSE_WAIT"
    assert by[(4, 47103, 47001)].state_name == "FIN_WAIT2"
    synsent = by[(4, 47109, 47010)]
    assert (synsent.state_name, synsent.timer) == ("SYN_SENT", 1)


def test_sample1_matches_capture_inodes():
    import json

    with open(os.path.join(SAMPLE1, "capture.json")) as f:
        cap = json.load(f)
    inodes = {s.inode for s in read_tcp(SAMPLE1)}
    for key, ino in cap.items():
        if key in ("clk_tck", "uname"):
            continue
        assert ino in inodes, key


def test_families_argument_and_missing_files(tmp_path):
    assert {s.family for s in read_tcp(SAMPLE1, families=(4,))} == {4}
    assert {s.family for s in read_tcp(SAMPLE1, families=(6,))} == {6}
    # IPv6 disabled: no tcp6 file, no error.
    (tmp_path / "net").mkdir()
    shutil.copy(os.path.join(SAMPLE1, "net", "tcp"), tmp_path / "net" / "tcp")
    socks = read_tcp(str(tmp_path))
    assert [tuple(s) for s in socks] == SAMPLE1_EXPECTED[:16]
    os.unlink(tmp_path / "net" / "tcp")
    assert read_tcp(str(tmp_path)) == []
    with pytest.raises(ValueError):
        read_tcp(str(tmp_path), families=(5,))


def test_empty_and_header_only():
    assert parse_tcp(b"", 4) == []
    assert parse_tcp(HEADER4.encode() + b"\n", 4) == []
    assert parse_tcp(HEADER6.encode() + b"\n", 6) == []
    with pytest.raises(ProcParseError, match=r"^x line 1: not a /proc/net/tcp header"):
        parse_tcp(b"garbage\n", 4, "x")


# --- hand-written sample: all states -----------------------------------------

HANDMADE_EXPECTED = [
    (4, "192.168.1.10", 22, "10.0.0.5", 51234, 1, 31337, 1000, 2, 7199, 7199 * NS),
    (4, "10.0.0.1", 40000, "93.184.216.34", 443, 2, 31338, 0, 1, 69, 69 * NS),
    (4, "10.0.0.1", 80, "10.0.0.9", 50000, 3, 0, 33, 1, 98, 98 * NS),
    (4, "10.0.0.1", 80, "10.0.0.9", 50001, 4, 0, 0, 1, 0, 0),  # unclamped when
    (4, "10.0.0.1", 80, "10.0.0.9", 50002, 5, 0, 0, 2, 5999, 5999 * NS),
    (4, "127.0.0.1", 50003, "127.0.0.1", 80, 6, 0, 0, 3, 5949, 5949 * NS),
    (4, "0.0.0.0", 0, "0.0.0.0", 0, 7, 4242, 4294967294, 0, 0, 0),
    (4, "10.0.0.1", 80, "10.0.0.9", 50004, 8, 4294967296, 0, 0, 0, 0),
    (4, "10.0.0.1", 80, "10.0.0.9", 50005, 9, 0, 0, 1, 20, 20 * NS),
    (4, "0.0.0.0", 80, "0.0.0.0", 0, 10, 1000, 0, 0, 0, 0),
    (4, "255.255.255.255", 65535, "1.2.3.4", 1, 11, 77, 0, 1, 1, NS),
    (4, "10.0.0.1", 80, "10.0.0.9", 50006, 12, 78, 0, 0, 0, 0),
    (6, "2001:db8::1", 22, "2001:db8::2", 51234, 1, 51, 1000, 0, 0, 0),
    (6, "fe80::1", 40000, "fe80::2:3", 443, 2, 52, 0, 1, 100, 100 * NS),
    (6, "2001:db8::1:0:0:1", 80, "2001:db8::9", 50000, 3, 0, 33, 1, 98, 98 * NS),
    (6, "::1", 80, "::1", 50001, 4, 54, 0, 1, 30, 30 * NS),
    (6, "::1", 80, "::1", 50002, 5, 55, 0, 2, 5000, 5000 * NS),
    (6, "::ffff:10.0.0.1", 50003, "::ffff:10.0.0.2", 80, 6, 0, 0, 3, 100, 100 * NS),
    (6, "::", 0, "::", 0, 7, 57, 0, 0, 0, 0),
    (6, "::102:304", 80, "::ffff:1.2.3.4", 50004, 8, 58, 0, 0, 0, 0),
    (6, "2001:db8:1:2:3:4:5:6", 80, "2001:0:0:1::1", 50005, 9, 59, 0, 0, 0, 0),
    (6, "::", 443, "::", 0, 10, 60, 0, 0, 0, 0),
    (6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, "1::", 1, 11, 61, 0, 0, 0, 0),
    (6, "64:ff9b::c000:221", 80, "2001:db8::1", 50006, 12, 62, 0, 0, 0, 0),
]


def test_handmade_all_states():
    _clear_caches()
    socks = read_tcp(HANDMADE)
    assert [tuple(s) for s in socks] == HANDMADE_EXPECTED
    for fam in (4, 6):
        states = [s.state for s in socks if s.family == fam]
        assert states == list(range(1, 13))
        assert [s.state_name for s in socks if s.family == fam] == list(NAMES[1:])
    assert any(s.lport == 0 and s.rport == 0 for s in socks)


# --- addresses ---------------------------------------------------------------


def test_format_addr():
    assert format_addr4("0100007F") == "127.0.0.1"
    assert format_addr4(b"0101A8C0") == "192.168.1.1"
    assert format_addr6("00000000000000000000000001000000") == "::1"
    assert format_addr6("0000000000000000FFFF00000100007F") == "::ffff:127.0.0.1"
    assert format_addr6("B80D0120000000000000000001000000") == "2001:db8::1"
    for bad in ("0100007", "0100007G", "+100007F", "0x00007F", "01 0007F", "é1234567"):
        with pytest.raises(ValueError):
            format_addr4(bad)
    with pytest.raises(ValueError):
        format_addr6("0" * 31 + "g")


@settings(database=None)
@given(st.binary(min_size=4, max_size=4))
def test_format_addr4_roundtrip(packed):
    assert format_addr4(kaddr4(packed)) == str(ipaddress.IPv4Address(packed))


ipv6_packed = st.one_of(
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=4, max_size=4).map(lambda b: b"\0" * 10 + b"\xff\xff" + b),
    st.binary(min_size=4, max_size=4).map(lambda b: b"\0" * 12 + b),
    st.sampled_from([b"\0" * 16, b"\0" * 15 + b"\1", b"\xfe\x80" + b"\0" * 13 + b"\1"]),
    # runs of zero groups in various places, to exercise "::" placement
    st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF]), min_size=8, max_size=8).map(
        lambda g: b"".join(x.to_bytes(2, "big") for x in g)
    ),
)


@settings(database=None)
@given(ipv6_packed)
def test_format_addr6_roundtrip(packed):
    text = format_addr6(kaddr6(packed))
    assert text == expected_addr(6, packed)
    assert ipaddress.IPv6Address(text).packed == packed
    if packed[:12] == b"\0" * 10 + b"\xff\xff":
        assert text == "::ffff:" + str(ipaddress.IPv4Address(packed[12:]))


# --- property tests: valid lines round-trip -------------------------------------

U32 = st.integers(0, 2**32 - 1)


@st.composite
def socket_lines(draw, family=None):
    """A (family, kind, kernel-formatted line, expected ProcSocket) tuple."""
    family = family or draw(st.sampled_from([4, 6]))
    kind = draw(st.sampled_from(["full", "full", "tw", "req"]))
    packed = st.binary(min_size=4, max_size=4) if family == 4 else ipv6_packed
    la, ra = draw(packed), draw(packed)
    lp, rp = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    if kind == "full":
        state = draw(st.integers(1, 12))
        tr = draw(st.integers(0, 4))
        kw = dict(
            tx=draw(U32),
            rx=draw(U32),
            tr=tr,
            when=draw(st.integers(0, 2**40)) if tr else 0,
            retr=draw(st.integers(0, 255)),
            uid=draw(U32),
            probes=draw(st.integers(0, 255)),
            inode=draw(st.integers(0, 2**64 - 1)),
            ref=draw(st.integers(0, 2**31 - 1)),
            ptr=draw(st.integers(0, 2**64 - 1)),
            rto=draw(U32),
            ato=draw(U32),
            quick=draw(st.integers(0, 3)),
            cwnd=draw(U32),
            ssthresh=draw(st.one_of(st.just(-1), st.integers(0, 2**31 - 1))),
        )
        uid, inode = kw["uid"], kw["inode"]
    elif kind == "tw":
        # tw_substate: TIME_WAIT, or FIN_WAIT2 for an orphan's timewait sock
        state = draw(st.sampled_from([5, 6]))
        tr = 3
        kw = dict(tr=3, when=draw(st.integers(0, 6000)), ptr=draw(st.integers(0, 2**64 - 1)))
        uid, inode = 0, 0
    else:  # request socket: printed as SYN_RECV
        state = 3
        tr = 1
        kw = dict(
            tr=1,
            when=draw(st.integers(0, 6000)),
            retr=draw(st.integers(0, 10)),
            uid=draw(U32),
            ptr=draw(st.integers(0, 2**64 - 1)),
        )
        uid, inode = kw["uid"], 0
    sl = draw(st.integers(0, 10**6))
    line = kline(family, kind, sl, la, lp, ra, rp, state, **kw)
    when = kw.get("when", 0)
    expected = ProcSocket(
        family,
        expected_addr(family, la),
        lp,
        expected_addr(family, ra),
        rp,
        state,
        inode,
        uid,
        tr,
        when,
        when * 10**9 // CLK_TCK,
    )
    return family, kind, line, expected


@settings(database=None, max_examples=400)
@given(socket_lines())
def test_valid_line_roundtrip(item):
    family, kind, line, expected = item
    data = kfile(family, [line])
    for cold in (True, False):  # first via the validators, then via caches
        if cold:
            _clear_caches()
        (got,) = parse_tcp(data, family, "/proc/net/tcp")
        assert got == expected
        assert type(got.inode) is int and type(got.time_left_ns) is int
    # The strict reference parser agrees with the fast loop.
    width = 8 if family == 4 else 32
    assert procnet._parse_line(line.encode(), width) == tuple(expected)[1:]


@settings(database=None, max_examples=100)
@given(st.integers(4, 6).filter(lambda f: f != 5).flatmap(
    lambda fam: st.lists(socket_lines(fam), min_size=1, max_size=30)))
def test_valid_files_roundtrip(items):
    family = items[0][0]
    data = kfile(family, [line for _, _, line, _ in items])
    assert parse_tcp(data, family) == [exp for _, _, _, exp in items]


# --- property tests: corrupted lines always raise ProcParseError ----------------

PATH = "/proc/net/tcp"


def _check_raises(family, lines, bad_index):
    """Parse a file whose line *bad_index* (0-based among sockets) is bad."""
    data = kfile(family, lines)
    for cold in (True, False):
        if cold:
            _clear_caches()
        else:
            # warm the caches with the good lines
            parse_tcp(kfile(family, lines[:bad_index] + lines[bad_index + 1 :]), family)
        with pytest.raises(ProcParseError) as ei:
            parse_tcp(data, family, PATH)
        err = ei.value
        lineno = bad_index + 2  # 1-based, after the header
        assert err.lineno == lineno
        assert err.path == PATH
        assert str(err).startswith("%s line %d: " % (PATH, lineno))
        assert isinstance(err, ValueError)
    return err


def _tokens_spans(line):
    spans, i = [], 0
    for tok in line.split():
        i = line.index(tok, i)
        spans.append((i, i + len(tok)))
        i += len(tok)
    return spans


lines_and_index = st.integers(4, 6).filter(lambda f: f != 5).flatmap(
    lambda fam: st.tuples(
        st.just(fam), st.lists(socket_lines(fam), min_size=1, max_size=5), st.data()
    )
)


@settings(database=None, max_examples=300, suppress_health_check=[HealthCheck.filter_too_much])
@given(lines_and_index)
def test_truncated_line_raises(args):
    family, items, data = args
    idx = data.draw(st.integers(0, len(items) - 1))
    line = items[idx][2].rstrip()
    cut = data.draw(st.integers(0, len(line) - 1))
    short = line[:cut]
    toks = short.split()
    # A cut that leaves 12 whole, valid columns of a 17-column line with
    # no inode is itself a valid minisocket line: not a corruption one can
    # detect.  Every other cut must be refused.
    assume(len(toks) not in (12, 17) or (len(toks) == 12 and int(toks[9]) != 0))
    lines = [it[2] for it in items]
    lines[idx] = short
    _check_raises(family, lines, idx)


NEVER_VALID = "GHIJKLMNOPQRSTUVWXYZghijklmnopqrstuvwxyz_+.,;!#$%&*()[]{}<>/\\|'\"=?@^`~\x00\x7f\xe9"


@settings(database=None, max_examples=300)
@given(lines_and_index, st.sampled_from(NEVER_VALID))
def test_non_hex_char_raises(args, char):
    family, items, data = args
    idx = data.draw(st.integers(0, len(items) - 1))
    line = items[idx][2]
    positions = [i for i, c in enumerate(line) if not c.isspace()]
    pos = data.draw(st.sampled_from(positions))
    lines = [it[2] for it in items]
    lines[idx] = line[:pos] + char + line[pos + 1 :]
    _check_raises(family, lines, idx)


@settings(database=None, max_examples=200)
@given(
    lines_and_index,
    st.one_of(
        st.sampled_from(["00", "0D", "0E", "FF", "1", "001", "-1", "+1", "0x1", "A"]),
        st.text("0123456789ABCDEF", min_size=1, max_size=4).filter(
            lambda s: s.upper() not in {"%02X" % n for n in range(1, 13)}
        ),
    ),
)
def test_bad_state_raises(args, state):
    family, items, data = args
    idx = data.draw(st.integers(0, len(items) - 1))
    toks = items[idx][2].split(" ")
    i = [j for j, t in enumerate(toks) if t][3]  # the st column
    toks[i] = state
    lines = [it[2] for it in items]
    lines[idx] = " ".join(toks)
    err = _check_raises(family, lines, idx)
    assert "state" in err.reason


@settings(database=None, max_examples=300)
@given(
    lines_and_index,
    st.text("0123456789abcdefABCDEF:-xyz", min_size=1, max_size=20),
    st.booleans(),
)
def test_extra_or_missing_column_raises(args, garbage, drop):
    family, items, data = args
    idx = data.draw(st.integers(0, len(items) - 1))
    toks = items[idx][2].split()
    pos = data.draw(st.integers(1, len(toks) - (1 if drop else 0)))
    if drop:
        del toks[pos]
    else:
        toks.insert(pos, garbage)
    lines = [it[2] for it in items]
    lines[idx] = "   " + " ".join(toks)
    _check_raises(family, lines, idx)


@settings(database=None, max_examples=300)
@given(
    lines_and_index,
    st.sampled_from(["-", ":", "0x", "+", "_"]),
)
def test_sign_colon_prefix_in_unsigned_columns_raises(args, junk):
    # Things int(x, 16) or int(x) would silently accept, put where the
    # kernel never prints them: the hex and unsigned decimal columns.
    family, items, data = args
    idx = data.draw(st.integers(0, len(items) - 1))
    toks = items[idx][2].split()
    col = data.draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 9, 11]))
    tok = toks[col]
    if junk == ":" and col in (1, 2, 4, 5):
        tok = tok + ":"  # these already contain one colon
    else:
        tok = junk + tok
    toks[col] = tok
    lines = [it[2] for it in items]
    lines[idx] = "   " + " ".join(toks)
    _check_raises(family, lines, idx)


@pytest.mark.parametrize("tw", ["05:00000000", "FF:00000000", "0:", ":0", "00:", "00:x",
                                "00:00000000000000000", "00-00000000", "0000000000"])
def test_bad_timer_raises(tw):
    line = kline(4, "full", 0, b"\x7f\0\0\1", 1, b"\x7f\0\0\1", 2, 1, inode=5)
    toks = line.split()
    toks[5] = tw
    err = _check_raises(4, ["   " + " ".join(toks)], 0)
    assert "tr:tm->when" in err.reason


def test_blank_line_in_the_middle_raises():
    lines = [kline(4, "full", 0, b"\x7f\0\0\1", 1, b"\x7f\0\0\1", 2, 1, inode=5)] * 2
    for blank in ("", "   "):
        _check_raises(4, [lines[0], blank, lines[1]], 1)


def test_error_message_example():
    line = kline(4, "full", 15, b"\x7f\0\0\1", 22, b"\0\0\0\0", 0, 10, inode=5)
    line = line.replace("0100007F:0016", "XYZ:0016")
    lines = [kline(4, "full", i, b"\x7f\0\0\1", 1000 + i, b"\0" * 4, 0, 10, inode=9) for i in range(15)]
    err = _check_raises(4, lines + [line], 15)
    assert str(err).startswith("/proc/net/tcp line 17: bad address 'XYZ:0016' (line: '15: XYZ:0016 ")


def test_error_names_the_real_file(tmp_path):
    (tmp_path / "net").mkdir()
    good = kline(6, "full", 0, b"\0" * 15 + b"\1", 1, b"\0" * 16, 0, 10, inode=3)
    (tmp_path / "net" / "tcp6").write_text(HEADER6 + "\n" + good + "\n" + good[:40] + "\n")
    with pytest.raises(ProcParseError) as ei:
        read_tcp(str(tmp_path))
    assert str(ei.value).startswith(str(tmp_path / "net" / "tcp6") + " line 3: ")


@settings(database=None, max_examples=500)
@given(st.integers(4, 6).filter(lambda f: f != 5), st.binary(max_size=200))
@example(4, b"   0: 0100007F:0016 0100007F:0016 01 0:0 0:0 0 0 0 0 0 0 0 0 0 0 0 0")
@example(4, "   0: 0100007F:0016 0100007F:0016 01 0:0 0:0 0 ٣ 0 0 0 0".encode())
def test_random_bytes_never_crash(family, junk):
    data = (HEADER4 if family == 4 else HEADER6).encode() + b"\n" + junk.replace(b"\n", b" ") + b"\n"
    try:
        socks = parse_tcp(data, family, PATH)
    except ProcParseError as e:
        assert e.lineno == 2
        return
    # If it parsed, it is one sane socket.
    (s,) = socks
    assert 1 <= s.state <= 12 and 0 <= s.lport <= 65535 and 0 <= s.rport <= 65535
    assert s.inode >= 0 and s.uid >= 0 and 0 <= s.timer <= 4


def test_pickle_error():
    import pickle

    e = ProcParseError("/p", 3, "bad state (not 01..0C)", b"0D", b"line")
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) and e2.lineno == 3


def test_doctests():
    _clear_caches()
    failures, tests = doctest.testmod(procnet)
    assert tests > 0 and failures == 0


# --- speed ------------------------------------------------------------------


def make_big_file(n, distinct_peers=False):
    """n lines: a loopback load test, 1 in 5 client sides in TIME_WAIT."""
    lo = b"\x7f\0\0\1"
    lines, i = [], 0
    while len(lines) < n:
        port = 10000 + i % 50000
        peer = bytes([10, 1 + (i >> 16) % 200, (i >> 8) & 255, i & 255]) if distinct_peers else lo
        if i % 5 == 0:
            lines.append(kline(4, "tw", len(lines), lo, port, lo, 8080, 6, tr=3, when=i % 6000,
                               ptr=(i * 2654435761) % 2**32))
        else:
            lines.append(kline(4, "full", len(lines), peer, port, lo, 8080, 1, uid=1000,
                               inode=200000 + 2 * i, ptr=(i * 2654435761) % 2**32))
            lines.append(kline(4, "full", len(lines), lo, 8080, peer, port, 1, uid=1000,
                               inode=200001 + 2 * i, ptr=(i * 40503) % 2**32))
        i += 1
    return kfile(4, lines[:n])


@pytest.mark.skipif(not os.environ.get("SOCKTRACE_BENCH"), reason="set SOCKTRACE_BENCH=1")
@pytest.mark.parametrize("distinct_peers", [False, True])
def test_speed_100k(distinct_peers, capsys):
    data = make_big_file(100000, distinct_peers)
    _clear_caches()
    t = time.perf_counter()
    socks = parse_tcp(data, 4)
    cold = time.perf_counter() - t
    warm = []
    for _ in range(5):
        t = time.perf_counter()
        parse_tcp(data, 4)
        warm.append(time.perf_counter() - t)
    assert len(socks) == 100000
    with capsys.disabled():
        print("\n100k lines (distinct_peers=%s): first %.3f s, then best %.3f s"
              % (distinct_peers, cold, min(warm)))
    assert min(warm) < 0.3
