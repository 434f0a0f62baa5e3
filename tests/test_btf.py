"""tracer.btf: synthetic BTF blobs, corrupt input, and the running kernel."""

import os
import platform
import random
import re
import shutil
import struct
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tracer import btf  # noqa: E402
from tracer.btf import BTFError, member_offsets  # noqa: E402

VMLINUX = "/sys/kernel/btf/vmlinux"

INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15
FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19


class BTFBuilder:
    """Encodes a BTF blob (include/uapi/linux/btf.h) from a few helpers."""

    def __init__(self):
        self.strs = bytearray(b"\0")
        self.types = []  # encoded records; type id = index + 1

    def s(self, name):
        if not name:
            return 0
        off = len(self.strs)
        self.strs += name.encode() + b"\0"
        return off

    def add(self, kind, name=None, vlen=0, kflag=0, size_or_type=0, extra=()):
        info = (kflag << 31) | (kind << 24) | vlen
        words = [self.s(name), info, size_or_type] + list(extra)
        self.types.append(words)
        return len(self.types)

    # kinds ---------------------------------------------------------------
    def int(self, name, size, bits=None, bit_offset=0, signed=False):
        enc = (int(signed) << 24) | (bit_offset << 16) | (bits if bits is not None else size * 8)
        return self.add(INT, name, size_or_type=size, extra=[enc])

    def ptr(self, t):
        return self.add(PTR, size_or_type=t)

    def typedef(self, name, t):
        return self.add(TYPEDEF, name, size_or_type=t)

    def modifier(self, kind, t):
        return self.add(kind, size_or_type=t)

    def array(self, elem, index, n):
        return self.add(ARRAY, extra=[elem, index, n])

    def fwd(self, name):
        return self.add(FWD, name)

    def struct(self, name, size, members, union=False, kflag=None):
        """members: (name, type_id, bit_offset[, bitfield_size])."""
        if kflag is None:
            kflag = any(len(m) > 3 and m[3] for m in members)
        extra = []
        for m in members:
            mname, mtype, bitoff = m[:3]
            bitsz = m[3] if len(m) > 3 else 0
            extra += [self.s(mname), mtype, (bitsz << 24 | bitoff) if kflag else bitoff]
        return self.add(UNION if union else STRUCT, name, vlen=len(members), kflag=int(kflag),
                        size_or_type=size, extra=extra)

    def enum(self, name, values):
        extra = []
        for n, v in values:
            extra += [self.s(n), v & 0xFFFFFFFF]
        return self.add(ENUM, name, vlen=len(values), size_or_type=4, extra=extra)

    def enum64(self, name, values):
        extra = []
        for n, v in values:
            extra += [self.s(n), v & 0xFFFFFFFF, v >> 32]
        return self.add(ENUM64, name, vlen=len(values), size_or_type=8, extra=extra)

    def func_proto(self, ret, params):
        extra = []
        for n, t in params:
            extra += [self.s(n), t]
        return self.add(FUNC_PROTO, vlen=len(params), size_or_type=ret, extra=extra)

    # output --------------------------------------------------------------
    def blob(self, order="<", hdr_len=24, hdr_extra=b"", tail=b"", version=1, magic=0xEB9F):
        u32 = struct.Struct(order + "I")
        types = b"".join(u32.pack(w) for rec in self.types for w in rec)
        strs = bytes(self.strs)
        hdr = struct.pack(order + "HBBIIIII", magic, version, 0, hdr_len,
                          0, len(types), len(types), len(strs))
        hdr = (hdr + hdr_extra).ljust(hdr_len, b"\0")
        return hdr + types + strs + tail


def build_demo():
    """A blob with every kind, forward declarations and these structs:

    struct timer_list {            /* size 40 */
        struct list_head entry;    /*  0, 16 */
        unsigned long expires;     /* 16,  8 */
        void (*function)(struct timer_list *);  /* 24, 8 */
        u32 flags;                 /* 32,  4 */
    };
    struct demo {                  /* size 96 */
        int a;                     /*  0 */
        union {                    /*  8: anonymous */
            u64 b;                 /*  8 */
            struct {               /*  8: anonymous */
                u32 c;             /*  8 */
                u16 d;             /* 12 */
            };
        };
        unsigned int flag:1;       /* bit 128 */
        unsigned int mode:3;       /* bit 129 */
        const volatile u8 e[6];    /* 17 */
        struct timer_list *tp;     /* 24 */
        struct timer_list t;       /* 32 */
        enum color col;            /* 72 */
        atomic_long_t big;         /* 80: typedef'd anonymous struct */
    };
    struct oldbits {               /* kind_flag 0, bitfield via INT bits */
        unsigned int x:4;          /* bit 0 */
        unsigned int y;            /* 4 */
    };
    """
    b = BTFBuilder()
    u8 = b.int("unsigned char", 1)
    u16 = b.int("unsigned short", 2)
    u32 = b.int("unsigned int", 4)
    i32 = b.int("int", 4, signed=True)
    ul = b.int("long unsigned int", 8)
    u8_t = b.typedef("u8", u8)
    u32_t = b.typedef("u32", u32)
    u64_t = b.typedef("u64", ul)
    b.fwd("timer_list")  # forward declarations must be skipped ...
    b.struct("timer_list", 0, [])  # ... including an empty STRUCT record
    color = b.enum("color", [("RED", 0), ("GREEN", 1)])
    b.enum64("big", [("HUGE", 1 << 40)])
    b.add(FLOAT, "double", size_or_type=8)
    b.add(VAR, "jiffies", size_or_type=ul, extra=[1])
    b.add(DATASEC, ".data", vlen=1, size_or_type=8, extra=[14, 0, 8])
    b.add(DECL_TAG, "tag", size_or_type=i32, extra=[0xFFFFFFFF])
    b.modifier(RESTRICT, u8)
    tt = b.add(TYPE_TAG, "user", size_or_type=u8)

    list_head = len(b.types) + 1  # self-referencing via the PTR that follows
    b.struct("list_head", 16, [("next", list_head + 1, 0), ("prev", list_head + 1, 64)])
    b.ptr(list_head)

    fn_proto = len(b.types) + 1  # void (*)(struct timer_list *), forward refs
    timer, timer_ptr = fn_proto + 4, fn_proto + 5
    b.func_proto(0, [("timer", timer_ptr)])
    fn_ptr = b.ptr(fn_proto)
    b.add(FUNC, "timer_fn", vlen=1, size_or_type=fn_proto)
    b.add(CONST, size_or_type=fn_ptr)  # an unrelated record in between
    assert timer == b.struct("timer_list", 40, [
        ("entry", list_head, 0),
        ("expires", ul, 128),
        ("function", fn_ptr, 192),
        ("flags", u32_t, 256),
    ])
    assert timer_ptr == b.ptr(timer)

    cv_u8 = b.modifier(CONST, b.modifier(VOLATILE, u8_t))
    arr6 = b.array(cv_u8, u32, 6)
    inner = b.struct(None, 8, [("c", u32_t, 0), ("d", u16, 32)])
    anon_union = b.struct(None, 8, [("b", u64_t, 0), (None, inner, 0)], union=True)
    atomic = b.typedef("atomic_long_t", b.struct(None, 8, [("counter", ul, 0)]))
    b.struct("demo", 96, [
        ("a", i32, 0),
        (None, anon_union, 64),
        ("flag", u32, 128, 1),
        ("mode", u32, 129, 3),
        ("e", arr6, 136),
        ("tp", timer_ptr, 192),
        ("t", timer, 256),
        ("col", color, 576),
        ("big", atomic, 640),
        ("tagged", tt, 704),
    ])
    u32_4bits = b.int("unsigned int", 4, bits=4)
    b.struct("oldbits", 8, [("x", u32_4bits, 0), ("y", u32, 32)], kflag=False)
    # Direct members win over members of anonymous ones.
    shadow_inner = b.struct(None, 4, [("z", u32, 0)])
    b.struct("shadow", 8, [(None, shadow_inner, 0), ("z", u32, 32)])
    return b


@pytest.fixture
def demo_path(tmp_path):
    p = tmp_path / "demo.btf"
    p.write_bytes(build_demo().blob())
    return str(p)


# (a) synthetic blobs ------------------------------------------------------

DEMO_WANTED = {
    "timer_list": ["expires", "flags", "entry", "function"],
    "demo": ["a", "b", "c", "d", "e", "tp", "t", "col", "big", "tagged"],
    "oldbits": ["y"],
    "shadow": ["z"],
}
DEMO_EXPECTED = {
    ("timer_list", "expires"): (16, 8),
    ("timer_list", "flags"): (32, 4),
    ("timer_list", "entry"): (0, 16),
    ("timer_list", "function"): (24, 8),
    ("demo", "a"): (0, 4),
    ("demo", "b"): (8, 8),
    ("demo", "c"): (8, 4),
    ("demo", "d"): (12, 2),
    ("demo", "e"): (17, 6),
    ("demo", "tp"): (24, 8),
    ("demo", "t"): (32, 40),
    ("demo", "col"): (72, 4),
    ("demo", "big"): (80, 8),
    ("demo", "tagged"): (88, 1),
    ("oldbits", "y"): (4, 4),
    ("shadow", "z"): (4, 4),
}


def test_synthetic_offsets(demo_path):
    assert member_offsets(DEMO_WANTED, demo_path) == DEMO_EXPECTED


def test_synthetic_big_endian(tmp_path):
    p = tmp_path / "be.btf"
    p.write_bytes(build_demo().blob(order=">"))
    assert member_offsets(DEMO_WANTED, str(p)) == DEMO_EXPECTED


def test_longer_header_and_layout_section(tmp_path):
    """hdr_len > 24 is honoured; a layout section (newer kernels) lets the
    walk skip a kind this module does not know (here kind 20: 4 + vlen*4)."""
    b = build_demo()
    b.add(20, "future", vlen=2, extra=[7, 1, 2])  # info_sz 4, elem_sz 4
    b.struct("after", 4, [("v", 1, 0)])
    layout = b"".join(bytes([i, e, 0, 0]) for i, e in
                      [(0, 0), (4, 0), (0, 0), (12, 0), (0, 12), (0, 12), (0, 8), (0, 0),
                       (0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (0, 8), (4, 0), (0, 12),
                       (0, 0), (4, 0), (0, 0), (0, 12), (4, 4)])
    types_len = sum(len(r) for r in b.types) * 4
    strs_len = len(b.strs)
    extra = struct.pack("<II", types_len + strs_len, len(layout))
    p = tmp_path / "layout.btf"
    p.write_bytes(b.blob(hdr_len=32, hdr_extra=extra, tail=layout))
    got = member_offsets({"after": ["v"], "timer_list": ["expires"]}, str(p))
    assert got == {("after", "v"): (0, 1), ("timer_list", "expires"): (16, 8)}
    # Without a layout section the unknown kind is a clear error.
    p.write_bytes(b.blob(hdr_len=32))
    with pytest.raises(BTFError, match="unknown BTF kind 20"):
        member_offsets({"after": ["v"]}, str(p))


def test_walk_stops_once_wanted_structs_are_found():
    blob = build_demo().blob()
    r = btf._Reader(blob, "demo")
    found = {}
    want = {o: "timer_list" for o in r.name_offsets("timer_list")}
    assert r.scan(want, found, need=1) == 0
    assert r.pos < r.n and found["timer_list"] == len(r.offs) - 1
    # Later type ids are indexed on demand.
    assert r.sizeof(len(build_demo().types)) == 8  # struct shadow


def test_bitfield_is_a_clear_error(demo_path):
    with pytest.raises(BTFError, match=r"demo\.mode is a bitfield \(bit offset 129, 3 bits\)"):
        member_offsets({"demo": ["mode"]}, demo_path)
    with pytest.raises(BTFError, match=r"oldbits\.x is a bitfield \(bit offset 0, 4 bits\)"):
        member_offsets({"oldbits": ["x"]}, demo_path)


def test_missing_struct_and_member(demo_path):
    with pytest.raises(BTFError, match=r"demo\.btf: struct nosuch not found"):
        member_offsets({"nosuch": ["a"]}, demo_path)
    # Name exists in the string table, but not as a struct with members.
    with pytest.raises(BTFError, match="struct color not found"):
        member_offsets({"color": ["RED"]}, demo_path)
    with pytest.raises(BTFError, match="struct demo has no member nosuch"):
        member_offsets({"demo": ["a", "nosuch"]}, demo_path)
    # A name used elsewhere but not a member of this struct.
    with pytest.raises(BTFError, match="struct timer_list has no member counter"):
        member_offsets({"timer_list": ["counter"]}, demo_path)
    # Members of *named* struct members are not flattened.
    with pytest.raises(BTFError, match="struct demo has no member next"):
        member_offsets({"demo": ["next"]}, demo_path)


def test_empty_request(demo_path):
    assert member_offsets({}, demo_path) == {}
    assert member_offsets({"demo": []}, demo_path) == {}


def test_error_message_is_one_line_and_names_file(tmp_path):
    p = tmp_path / "nope.btf"
    with pytest.raises(BTFError) as ei:
        member_offsets({"x": ["y"]}, str(p))
    msg = str(ei.value)
    assert str(p) in msg and "\n" not in msg


# (b) corrupt / truncated blobs ----------------------------------------------

def _expect_btferror(path, wanted=None):
    with pytest.raises(BTFError) as ei:
        member_offsets(wanted or DEMO_WANTED, str(path))
    assert str(path) in str(ei.value) and "\n" not in str(ei.value)
    return str(ei.value)


def test_missing_unreadable_and_not_btf(tmp_path):
    _expect_btferror(tmp_path / "missing")
    _expect_btferror(tmp_path)  # a directory
    for content in (b"", b"\x9f\xeb", b"x" * 100, b"\x7fELF" + b"\0" * 60):
        p = tmp_path / "bad.btf"
        p.write_bytes(content)
        _expect_btferror(p)


def test_bad_header_fields(tmp_path):
    b = build_demo()
    good = b.blob()
    p = tmp_path / "h.btf"
    cases = {
        "version": b.blob(version=2),
        "magic": b.blob(magic=0x1234),
        "hdr_len small": good[:4] + struct.pack("<I", 8) + good[8:],
        "hdr_len huge": good[:4] + struct.pack("<I", 1 << 30) + good[8:],
        "type_len odd": good[:12] + struct.pack("<I", struct.unpack_from("<I", good, 12)[0] - 2)
        + good[16:],
        "str_len huge": good[:20] + struct.pack("<I", 1 << 31) + good[24:],
        "type_off past end": good[:8] + struct.pack("<I", 1 << 31) + good[12:],
        "no empty string": good[:-len(b.strs)] + b"x" + bytes(b.strs)[1:],
    }
    for what, blob in cases.items():
        p.write_bytes(blob)
        _expect_btferror(p)


def test_every_truncation(tmp_path):
    good = build_demo().blob()
    p = tmp_path / "t.btf"
    for n in range(len(good)):
        p.write_bytes(good[:n])
        _expect_btferror(p)


def test_truncated_type_section_with_consistent_header(tmp_path):
    """Header shrunk to match a cut type section: records run off its end."""
    b = build_demo()
    types = b"".join(struct.pack("<I", w) for rec in b.types for w in rec)
    strs = bytes(b.strs)
    p = tmp_path / "c.btf"
    for cut in range(4, len(types), 4):
        t = types[:cut]
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(t), len(t), len(strs))
        p.write_bytes(hdr + t + strs)
        try:
            member_offsets(DEMO_WANTED, str(p))
        except BTFError:
            pass
        else:
            pytest.fail("cut at %d parsed" % cut)


def test_cycles_and_bad_ids(tmp_path):
    p = tmp_path / "cyc.btf"

    b = BTFBuilder()  # typedef pointing at itself
    b.typedef("loop", 1)
    b.struct("s", 4, [("m", 1, 0)])
    p.write_bytes(b.blob())
    assert "too long" in _expect_btferror(p, {"s": ["m"]})

    b = BTFBuilder()  # array of itself
    b.array(1, 1, 2)
    b.struct("s", 4, [("m", 1, 0)])
    p.write_bytes(b.blob())
    assert "too deep" in _expect_btferror(p, {"s": ["m"]})

    b = BTFBuilder()  # struct with an anonymous member of its own type
    b.struct("s", 4, [(None, 1, 0)])
    p.write_bytes(b.blob())
    assert "too deep" in _expect_btferror(p, {"s": ["s"]})

    b = BTFBuilder()  # member type id out of range / void / unsized
    b.struct("s", 4, [("m", 999, 0), ("v", 0, 0), ("f", 2, 0)])
    b.func_proto(0, [])
    p.write_bytes(b.blob())
    assert "out of range" in _expect_btferror(p, {"s": ["m"]})
    assert "void" in _expect_btferror(p, {"s": ["v"]})
    assert "has no size" in _expect_btferror(p, {"s": ["f"]})

    b = BTFBuilder()  # kind 0 and kinds above the known range
    b.add(0)
    b.struct("s", 4, [("m", 1, 0)])
    p.write_bytes(b.blob())
    assert "unknown BTF kind 0" in _expect_btferror(p, {"s": ["m"]})


def test_random_corruption_never_escapes(tmp_path):
    """Random byte flips in the type section: a result or BTFError, nothing else."""
    good = bytearray(build_demo().blob())
    type_len = struct.unpack_from("<I", good, 12)[0]
    rng = random.Random(1234)
    p = tmp_path / "fuzz.btf"
    for _ in range(400):
        blob = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            pos = 24 + rng.randrange(type_len)
            blob[pos] = rng.randrange(256)
        p.write_bytes(bytes(blob))
        try:
            res = member_offsets(DEMO_WANTED, str(p))
        except BTFError as e:
            assert "\n" not in str(e)
        else:
            assert isinstance(res, dict)


# (c) the running kernel --------------------------------------------------

needs_vmlinux = pytest.mark.skipif(not os.path.exists(VMLINUX), reason="no %s" % VMLINUX)
TW_WANTED = {"inet_timewait_sock": ["tw_substate", "tw_timer"], "timer_list": ["expires"]}


def _struct_size(name):
    """sizeof(struct name) from the running kernel's BTF (white-box)."""
    with open(VMLINUX, "rb") as f:
        r = btf._Reader(f.read(), VMLINUX)
    found = {}
    r.scan({o: name for o in r.name_offsets(name)}, found, need=1)
    return r.sizeof(found[name])


@needs_vmlinux
def test_real_kernel_plausible():
    t = time.perf_counter()
    got = member_offsets(TW_WANTED)
    elapsed = time.perf_counter() - t
    print("member_offsets: %.1f ms %r" % (elapsed * 1000, got))
    assert elapsed < 1.0  # typically ~25 ms; generous bound against regressions
    assert set(got) == {("inet_timewait_sock", "tw_substate"),
                        ("inet_timewait_sock", "tw_timer"), ("timer_list", "expires")}
    if platform.machine() == "x86_64":
        assert got[("timer_list", "expires")] == (16, 8)
    sub_off, sub_size = got[("inet_timewait_sock", "tw_substate")]
    timer_off, timer_size = got[("inet_timewait_sock", "tw_timer")]
    assert sub_size == 1
    assert timer_size == _struct_size("timer_list")
    # Both live after the embedded struct sock_common.
    common_size = _struct_size("sock_common")
    assert common_size <= sub_off < timer_off < _struct_size("inet_timewait_sock")


@needs_vmlinux
def test_real_kernel_anonymous_and_bitfield():
    # skc_daddr/skc_dport sit in anonymous unions/structs of struct sock_common.
    got = member_offsets({"sock_common": ["skc_daddr", "skc_rcv_saddr", "skc_dport"]})
    assert got[("sock_common", "skc_daddr")] == (0, 4)
    assert got[("sock_common", "skc_rcv_saddr")] == (4, 4)
    assert got[("sock_common", "skc_dport")] == (12, 2)
    with pytest.raises(BTFError, match="tw_transparent is a bitfield"):
        member_offsets({"inet_timewait_sock": ["tw_transparent"]})


def _bpftool_raw():
    out = subprocess.run(["bpftool", "btf", "dump", "file", VMLINUX, "format", "raw"],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    types, members, cur = {}, {}, None
    for line in out.splitlines():
        m = re.match(r"\[(\d+)\] (\w+) '([^']*)'(.*)", line)
        if m:
            cur = int(m.group(1))
            types[cur] = (m.group(2), m.group(3), m.group(4))
            members[cur] = []
            continue
        m = re.match(r"\s+'([^']*)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?", line)
        if m and cur is not None:
            members[cur].append((m.group(1), int(m.group(2)), int(m.group(3))))
    return types, members


def _bpftool_sizeof(types, tid):
    for _ in range(64):
        kind, _, rest = types[tid]
        if kind in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            tid = int(re.search(r"type_id=(\d+)", rest).group(1))
            continue
        if kind == "PTR":
            return 8
        if kind == "ARRAY":
            elem = int(re.search(r" type_id=(\d+)", rest).group(1))
            return int(re.search(r"nr_elems=(\d+)", rest).group(1)) * _bpftool_sizeof(types, elem)
        return int(re.search(r"size=(\d+)", rest).group(1))
    raise AssertionError("type chain too long")


@needs_vmlinux
@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed")
def test_real_kernel_matches_bpftool():
    types, members = _bpftool_raw()
    expected = {}
    for sname, wanted in TW_WANTED.items():
        sid = min(t for t, (kind, name, _) in types.items()
                  if kind == "STRUCT" and name == sname and members[t])
        for mname, mtype, bitoff in members[sid]:
            if mname in wanted:
                expected[(sname, mname)] = (bitoff // 8, _bpftool_sizeof(types, mtype))
    assert member_offsets(TW_WANTED) == expected
