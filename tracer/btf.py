"""Minimal BTF reader: real member offsets of kernel structs at run time.

bcc compiles our probes against kernel headers that may belong to another
kernel version, so ``offsetof()`` from those headers can be wrong.  The
running kernel describes its own types in BTF (``/sys/kernel/btf/vmlinux``);
this module reads just enough of it to answer "where is member M of struct S
and how big is it", without libbpf, bpftool or any cache on disk.

Format: include/uapi/linux/btf.h and Documentation/bpf/btf.rst.  A blob is a
``struct btf_header`` followed (at offsets relative to the end of the header)
by a type section and a string section.  The type section is a sequence of
12-byte ``struct btf_type`` records (name_off, info, size|type), each followed
by kind-specific data; type ids are assigned in order starting at 1 (0 is
void).  ``info``: bits 0-15 vlen, bits 24-28 kind, bit 31 kind_flag.

Speed matters (called at tool start-up): the type section is viewed as an
array of u32 words and walked once, recording only where each record starts,
and the walk stops as soon as every wanted struct has been seen (it resumes
lazily only if a member's type id lies further on).  On the 5.5 MB vmlinux
BTF of a 6.x kernel this takes a few tens of milliseconds.

>>> member_offsets({"timer_list": ["expires"]})          # doctest: +SKIP
{('timer_list', 'expires'): (16, 8)}
"""

import struct
import sys
from array import array

__all__ = ["BTFError", "member_offsets", "VMLINUX"]

VMLINUX = "/sys/kernel/btf/vmlinux"

BTF_MAGIC = 0xEB9F
_HDR = struct.Struct("<HBBIIIII")  # magic version flags hdr_len type_off type_len str_off str_len
_HDR_SIZE = _HDR.size  # 24

# BTF_KIND_*
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15
FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19

# Extra data after the 12-byte btf_type, in u32 words: (fixed, per vlen item).
_LAYOUT = {
    INT: (1, 0),          # u32 encoding/offset/bits
    PTR: (0, 0),
    ARRAY: (3, 0),        # struct btf_array
    STRUCT: (0, 3),       # struct btf_member
    UNION: (0, 3),
    ENUM: (0, 2),         # struct btf_enum
    FWD: (0, 0),
    TYPEDEF: (0, 0),
    VOLATILE: (0, 0),
    CONST: (0, 0),
    RESTRICT: (0, 0),
    FUNC: (0, 0),         # vlen holds the linkage, not a count
    FUNC_PROTO: (0, 2),   # struct btf_param
    VAR: (1, 0),          # struct btf_var
    DATASEC: (0, 3),      # struct btf_var_secinfo
    FLOAT: (0, 0),
    DECL_TAG: (1, 0),     # struct btf_decl_tag
    TYPE_TAG: (0, 0),
    ENUM64: (0, 3),       # struct btf_enum64
}
_KIND_MASK = 0x7F  # bits 24-28 today; 29-30 must be zero in valid BTF
_VLEN_MASK = 0xFFFF
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)
_MAX_DEPTH = 64  # typedef chains / nested anonymous members / arrays
PTR_SIZE = 8


class BTFError(Exception):
    """The BTF file is missing, unreadable or malformed, or lacks a wanted
    struct/member.  The message is one line and names the file."""


class _Reader:
    def __init__(self, data, path):
        self.path = path
        if len(data) < _HDR_SIZE:
            raise self.error("too short for a BTF header (%d bytes)" % len(data))
        magic = struct.unpack_from("<H", data, 0)[0]
        if magic == BTF_MAGIC:
            order = "<"
        elif magic == 0x9FEB:
            order = ">"
        else:
            raise self.error("not BTF (magic 0x%04x, want 0x%04x)" % (magic, BTF_MAGIC))
        (_, version, _flags, hdr_len, type_off, type_len, str_off, str_len) = struct.unpack_from(
            order + _HDR.format[1:], data, 0)
        if version != 1:
            raise self.error("unsupported BTF version %d" % version)
        if hdr_len < _HDR_SIZE or hdr_len > len(data):
            raise self.error("bad header length %d" % hdr_len)
        t0, s0 = hdr_len + type_off, hdr_len + str_off
        if t0 + type_len > len(data) or s0 + str_len > len(data):
            raise self.error("section extends past end of file (truncated?)")
        if type_len % 4 or t0 % 4:
            raise self.error("type section is not 4-byte aligned")
        if str_len == 0 or data[s0] != 0:
            raise self.error("string section must start with an empty string")

        self.strs = data[s0:s0 + str_len]
        w = array("I")
        if w.itemsize != 4:  # pragma: no cover - every CPython platform has 32-bit I
            w = array("L")
        w.frombytes(data[t0:t0 + type_len])
        if (order == "<") != (sys.byteorder == "little"):
            w.byteswap()
        self.w = w
        self.n = len(w)

        # Per-kind record sizes; a layout section (newer kernels, header
        # field layout_off/layout_len) describes kinds this code predates.
        fixed = [None] * (_KIND_MASK + 1)
        per = [None] * (_KIND_MASK + 1)
        for k, (f, p) in _LAYOUT.items():
            fixed[k], per[k] = f, p
        self.vlen_mask = _VLEN_MASK
        if hdr_len >= _HDR_SIZE + 8:
            layout_off, layout_len = struct.unpack_from(order + "II", data, _HDR_SIZE)
            l0 = hdr_len + layout_off
            if layout_len:
                if l0 + layout_len > len(data) or layout_len % 4:
                    raise self.error("bad layout section")
                self.vlen_mask = 0xFFFFFF
                for k in range(min(layout_len // 4, _KIND_MASK + 1)):
                    info_sz, elem_sz = data[l0 + 4 * k], data[l0 + 4 * k + 1]
                    if fixed[k] is None and k and not (info_sz % 4 or elem_sz % 4):
                        fixed[k], per[k] = info_sz // 4, elem_sz // 4
        self.fixed, self.per = fixed, per

        self.offs = [None]  # word index of each type id's record; id 0 = void
        self.pos = 0  # next word to scan

    def error(self, msg):
        return BTFError("%s: %s" % (self.path, msg))

    # -- strings ---------------------------------------------------------

    def name_offsets(self, name):
        """All string-section offsets holding exactly ``name``."""
        needle = b"\0" + name.encode() + b"\0"
        found, strs, start = set(), self.strs, 0
        while True:
            p = strs.find(needle, start)
            if p < 0:
                return found
            found.add(p + 1)
            start = p + 1

    # -- type walk -------------------------------------------------------

    def scan(self, want=None, found=None, need=0, until_id=None):
        """Walk records from where the last walk stopped.  ``want`` maps
        name_off -> struct name; the first STRUCT with members carrying such
        a name is recorded in ``found`` (struct name -> type id).  Stops once
        ``need`` structs are found (when ``until_id`` is None), or when type
        id ``until_id`` has been indexed, or at the end of the section.
        Returns how many wanted structs are still missing."""
        w, n, i = self.w, self.n, self.pos
        offs = self.offs
        fixed, per, km, vm = self.fixed, self.per, _KIND_MASK, self.vlen_mask
        append = offs.append
        while i < n:
            if until_id is not None and len(offs) > until_id:
                break
            if i + 3 > n:
                raise self.error("truncated type record (type id %d)" % len(offs))
            info = w[i + 1]
            kind = (info >> 24) & km
            f = fixed[kind]
            if f is None:
                raise self.error("unknown BTF kind %d (type id %d)" % (kind, len(offs)))
            vlen = info & vm
            if kind == STRUCT and vlen and need and w[i] in want:
                sname = want[w[i]]
                if sname not in found:
                    found[sname] = len(offs)
                    need -= 1
            append(i)
            i += 3 + f + vlen * per[kind]
            if not need and until_id is None:
                break
        self.pos = i
        if i > n:
            raise self.error("truncated type record (type id %d)" % (len(offs) - 1))
        return need

    def rec(self, tid):
        """Word index of type ``tid``'s record."""
        if tid >= len(self.offs):
            if tid > 0xFFFFFF:
                raise self.error("type id %d out of range" % tid)
            self.scan(until_id=tid)
            if tid >= len(self.offs):
                raise self.error("type id %d out of range (%d types)" % (tid, len(self.offs) - 1))
        if tid == 0:
            raise self.error("reference to type id 0 (void)")
        return self.offs[tid]

    def kind(self, tid):
        i = self.rec(tid)
        return (self.w[i + 1] >> 24) & _KIND_MASK, i

    def strip(self, tid):
        """Follow typedef/const/volatile/restrict/type_tag to the real type."""
        for _ in range(_MAX_DEPTH):
            k, i = self.kind(tid)
            if k not in _MODIFIERS:
                return tid, k, i
            tid = self.w[i + 2]
        raise self.error("type chain too long at type id %d" % tid)

    def sizeof(self, tid, depth=0):
        if depth > _MAX_DEPTH:
            raise self.error("type nesting too deep at type id %d" % tid)
        tid, k, i = self.strip(tid)
        w = self.w
        if k in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT):
            return w[i + 2]
        if k == PTR:
            return PTR_SIZE
        if k == ARRAY:
            return w[i + 5] * self.sizeof(w[i + 3], depth + 1)
        raise self.error("type id %d (kind %d) has no size" % (tid, k))

    def find_member(self, tid, name_offs, depth=0):
        """(bit_offset, bitfield_size, type_id, int_bits_hint) of the member
        named by one of ``name_offs`` in struct/union ``tid``: direct members
        first, then inside anonymous struct/union members.  None if absent."""
        if depth > _MAX_DEPTH:
            raise self.error("anonymous members nested too deep in type id %d" % tid)
        w = self.w
        i = self.rec(tid)
        info = w[i + 1]
        vlen, kflag = info & self.vlen_mask, info >> 31
        base = i + 3
        if base + 3 * vlen > self.n:
            raise self.error("truncated member list (type id %d)" % tid)
        anon = []
        for m in range(base, base + 3 * vlen, 3):
            mname, mtype, moff = w[m], w[m + 1], w[m + 2]
            bitsz, bitoff = (moff >> 24, moff & 0xFFFFFF) if kflag else (0, moff)
            if mname in name_offs:
                return bitoff, bitsz, mtype, kflag
            if mname == 0:
                anon.append((bitoff, mtype))
        for bitoff, mtype in anon:
            sub, k, _ = self.strip(mtype)
            if k in (STRUCT, UNION):
                r = self.find_member(sub, name_offs, depth + 1)
                if r is not None:
                    return (bitoff + r[0],) + r[1:]
        return None


def _lookup(data, wanted, path):
    r = _Reader(data, path)

    # Names -> string offsets.  A struct name absent from the string table
    # cannot exist, which is known without walking the types at all.
    want, found = {}, {}
    for sname in wanted:
        offs = r.name_offsets(sname)
        if not offs:
            raise r.error("struct %s not found" % sname)
        for o in offs:
            want[o] = sname
    r.scan(want, found, need=len(wanted))

    result = {}
    for sname, members in wanted.items():
        if sname not in found:
            raise r.error("struct %s not found (no definition with members)" % sname)
        sid = found[sname]
        for mname in members:
            moffs = r.name_offsets(mname)
            hit = r.find_member(sid, moffs) if moffs else None
            if hit is None:
                raise r.error("struct %s has no member %s" % (sname, mname))
            bitoff, bitsz, mtype, kflag = hit
            size = r.sizeof(mtype)
            if not kflag and not bitsz:
                # Old-style encoding (kind_flag 0): a bitfield is a member
                # whose INT type has fewer bits than its storage or a bit
                # offset of its own.
                _, k, i = r.strip(mtype)
                if k == INT:
                    enc = r.w[i + 3]
                    nbits, ioff = enc & 0xFF, (enc >> 16) & 0xFF
                    if ioff or nbits < 8 * size:
                        bitsz, bitoff = nbits, bitoff + ioff
            if bitsz or bitoff % 8:
                raise r.error(
                    "%s.%s is a bitfield (bit offset %d, %d bits); byte offset undefined"
                    % (sname, mname, bitoff, bitsz or 8 * size))
            result[(sname, mname)] = (bitoff // 8, size)
    return result


def member_offsets(wanted, path=VMLINUX):
    """Byte offset and byte size of struct members, from BTF.

    ``wanted`` maps struct name -> member names, e.g.
    ``{"inet_timewait_sock": ["tw_substate", "tw_timer"], "timer_list": ["expires"]}``;
    the result maps ``(struct, member)`` -> ``(byte_offset, byte_size)``.
    Members inside anonymous structs/unions are found too (offsets added up);
    the first STRUCT of that name that has members is used (forward
    declarations are skipped).  Raises BTFError if the file is missing,
    unreadable or malformed, or a struct or member is missing, or the member
    is a bitfield (the message gives its bit offset and width).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BTFError("%s: cannot read BTF: %s" % (path, e.strerror or e)) from None
    try:
        return _lookup(data, wanted, path)
    except BTFError:
        raise
    except (IndexError, ValueError, OverflowError, struct.error, RecursionError,
            MemoryError, TypeError, UnicodeError) as e:
        raise BTFError("%s: malformed BTF (%s: %s)" % (path, type(e).__name__, e)) from None


if __name__ == "__main__":  # pragma: no cover - manual check
    import time

    t = time.perf_counter()
    res = member_offsets({"inet_timewait_sock": ["tw_substate", "tw_timer"],
                          "timer_list": ["expires"]},
                         *(sys.argv[1:2] or [VMLINUX]))
    dt = time.perf_counter() - t
    for (s, m), (off, size) in sorted(res.items()):
        print("%s.%s offset %d size %d" % (s, m, off, size))
    print("%.1f ms" % (dt * 1000))
