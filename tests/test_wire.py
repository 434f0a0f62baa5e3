"""The Python decoder against the C header: same sizes, same offsets, the
same field names, and enums that are the ones the spec publishes."""

import re
import shutil
import subprocess

import pytest

from tracer import spec, states, wire

# struct.Struct format code -> the width it occupies, to walk the offsets
_WIDTH = {"Q": 8, "I": 4, "i": 4, "H": 2, "B": 1}

STRUCTS = {
    "st_state": (wire.STATE, wire.STATE_FIELDS),
    "st_closed": (wire.CLOSED, wire.CLOSED_FIELDS),
    "st_seed": (wire.SEED, wire.SEED_FIELDS),
    "st_story": (wire.STORY, wire.STORY_FIELDS),
}
HEADER = (wire.bpf_dir() / "socktrace.h").read_text()


def python_layout(st, names):
    """[(field, offset, size)] from a struct.Struct's format; a run of one
    code with a count (``16Q``) is one array field."""
    out, off = [], 0
    names = iter(names)
    for num, code in re.findall(r"(\d*)([a-zA-Z])", st.format.lstrip("<")):
        n = int(num) if num else 1
        if code == "x":
            off += n
        elif code == "s":
            out.append((next(names), off, n))
            off += n
        elif n > 1:
            out.append((next(names), off, n * _WIDTH[code]))
            off += n * _WIDTH[code]
        else:
            out.append((next(names), off, _WIDTH[code]))
            off += _WIDTH[code]
    return out


def c_layout(tmp_path, struct_name, names):
    """[(field, offset, size)] and sizeof, as the C compiler lays it out."""
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include <linux/types.h>',
             '#include "socktrace.h"', "int main(void) {",
             'printf("size %%zu\\n", sizeof(struct %s));' % struct_name]
    for name in names:
        lines.append('printf("%s %%zu %%zu\\n", offsetof(struct %s, %s), '
                     'sizeof(((struct %s *)0)->%s));' % (name, struct_name, name, struct_name, name))
    lines.append("return 0; }")
    src = tmp_path / ("%s.c" % struct_name)
    src.write_text("\n".join(lines))
    exe = tmp_path / struct_name
    subprocess.run(["cc", "-I", str(wire.bpf_dir()), "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    size, fields = None, []
    for line in out.splitlines():
        parts = line.split()
        if parts[0] == "size":
            size = int(parts[1])
        else:
            fields.append((parts[0], int(parts[1]), int(parts[2])))
    return size, fields


@pytest.mark.skipif(not shutil.which("cc"), reason="no C compiler")
@pytest.mark.parametrize("struct_name", sorted(STRUCTS))
def test_decoder_matches_header(tmp_path, struct_name):
    st, names = STRUCTS[struct_name]
    size, fields = c_layout(tmp_path, struct_name, names)
    assert st.size == size
    assert python_layout(st, names) == fields


@pytest.mark.parametrize("struct_name", sorted(STRUCTS))
def test_every_header_field_is_decoded(struct_name):
    body = HEADER.split("struct %s {" % struct_name, 1)[1].split("};", 1)[0]
    names = re.findall(r"^\s*(?:__[us]\d+|char)\s+(\w+)", body, re.M)
    assert tuple(names) == STRUCTS[struct_name][1]


def test_enums_come_from_the_header():
    assert wire.OWNER_FROM == {0: "unknown", 1: "connect", 2: "listen", 3: "listener", 4: "proc",
                               5: "accept"}
    assert wire.REASON == {0: "none", 1: "expired", 2: "reused", 3: "killed"}
    assert wire.VIA == {0: "kernel", 1: "timer", 2: "peer"}
    assert wire.ROLE == {0: "unknown", 1: "client", 2: "server", 3: "listener"}
    assert wire.END == {0: "normal", 1: "refused", 2: "timeout", 3: "cancelled", 4: "reset",
                        5: "error", 6: "aborted", 7: "unknown"}
    assert wire.KIND == {1: "state", 2: "closed"}
    assert "derived_sent" not in wire.LOSS_COUNTERS and "missed" in wire.LOSS_COUNTERS
    assert "recovered" not in wire.LOSS_COUNTERS and "self" not in wire.LOSS_COUNTERS
    assert wire.COMM_LEN == 16


def test_the_spec_publishes_the_headers_enums():
    """What the schema allows is what the kernel can send: no enum copied."""
    assert set(spec.OWNER_FROM) == set(wire.OWNER_FROM.values())
    assert set(spec.ROLE) == set(wire.ROLE.values()) - {"unknown"}
    assert set(spec.REASON) == set(wire.REASON.values()) - {"none"}
    assert set(spec.VIA) == set(wire.VIA.values()) - {"kernel"}
    assert set(spec.END) == set(wire.END.values()) | {"unknown"}
    assert set(spec.LOST_WHAT) == set(wire.LOSS_COUNTERS) | {"undecodable"}
    assert spec.STATE_NAMES == tuple(n for n in states.NAMES if n)


def test_the_bpf_programs_state_numbers_are_states_py():
    src = (wire.bpf_dir() / "socktrace.bpf.c").read_text()
    found = dict(re.findall(r"#define TCP_(\w+)\s+(\d+)", src))
    assert found, "no TCP_* defines in the BPF program"
    for name, num in found.items():
        assert states.NUMBERS[name] == int(num), name
    # spent[] and the histograms are indexed by state number
    assert max(states.NUMBERS.values()) < wire.NR_STATES


def test_end_counters_follow_the_end_enum():
    """ST_CNT_END_NORMAL + end counts a connection that ended so: the
    counters must list every end, in the enum's order."""
    base = {v: k for k, v in wire.COUNTERS.items()}["end_normal"]
    for num, name in wire.END.items():
        assert wire.COUNTERS[base + num] == "end_" + name
    assert max(wire.COUNTERS) == len(wire.COUNTERS) - 1      # contiguous: one slot's width
    assert not any(n.startswith("end_") or n == "lower" for n in wire.LOSS_COUNTERS)


def test_reconciliations_projection_reads_the_same_fields_as_the_whole_story():
    """wire.STORY_WHERE unpacks four fields of each story and skips the rest;
    on random bytes it must give what the whole decode gives, and
    story_at/seed_at the i-th of a batch."""
    import random
    rng = random.Random(7)
    data = bytes(rng.getrandbits(8) for _ in range(wire.STORY.size * 5))
    whole = wire.stories(data)
    assert wire.STORY_WHERE.size == wire.STORY.size
    assert list(wire.STORY_WHERE.iter_unpack(data)) == [
        (s.sport, s.dport, s.family, s.netns) for s in whole]
    assert [wire.story_at(data, i) for i in range(5)] == whole
    seeds = bytes(rng.getrandbits(8) for _ in range(wire.SEED.size * 3))
    assert [wire.seed_at(seeds, i) for i in range(3)] == [
        wire.Seed._make(t) for t in wire.SEED.iter_unpack(seeds)]
