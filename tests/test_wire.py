"""The Python decoder against the C header: same size, same offsets."""

import shutil
import subprocess

import pytest

from tracer import wire

# struct.Struct format code -> the width it occupies, to walk the offsets
_WIDTH = {"Q": 8, "I": 4, "H": 2, "B": 1}


def python_layout():
    """[(field, offset, size)] from wire.EVENT's format."""
    out, off = [], 0
    codes = []
    fmt = wire.EVENT.format.lstrip("<")
    i = 0
    while i < len(fmt):
        num = ""
        while fmt[i].isdigit():
            num += fmt[i]
            i += 1
        codes.append((fmt[i], int(num) if num else 1))
        i += 1
    names = iter(wire.FIELDS)
    for code, n in codes:
        if code == "s":
            out.append((next(names), off, n))
            off += n
        else:
            for _ in range(n):
                out.append((next(names), off, _WIDTH[code]))
                off += _WIDTH[code]
    return out


def c_layout(tmp_path):
    """[(field, offset, size)] and sizeof, as the C compiler lays it out."""
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include <linux/types.h>',
             '#include "socktrace.h"', "int main(void) {",
             'printf("size %zu\\n", sizeof(struct st_event));']
    for name in wire.FIELDS:
        lines.append('printf("%s %%zu %%zu\\n", offsetof(struct st_event, %s), '
                     'sizeof(((struct st_event *)0)->%s));' % (name, name, name))
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-I", str(wire.bpf_dir()), "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    size = None
    fields = []
    for line in out.splitlines():
        parts = line.split()
        if parts[0] == "size":
            size = int(parts[1])
        else:
            fields.append((parts[0], int(parts[1]), int(parts[2])))
    return size, fields


@pytest.mark.skipif(not shutil.which("cc"), reason="no C compiler")
def test_decoder_matches_header(tmp_path):
    size, fields = c_layout(tmp_path)
    assert wire.EVENT.size == size
    assert python_layout() == fields


def test_every_header_field_is_decoded():
    text = (wire.bpf_dir() / "socktrace.h").read_text()
    body = text.split("struct st_event {", 1)[1].split("};", 1)[0]
    import re

    names = re.findall(r"^\s*(?:__u\d+|char)\s+(\w+)", body, re.M)
    assert tuple(names) == wire.FIELDS


def test_enums_come_from_the_header():
    assert wire.OWNER_FROM == {0: "unknown", 1: "connect", 2: "listen", 3: "listener"}
    assert wire.REASON == {0: "none", 1: "expired", 2: "reused", 3: "killed"}
    assert wire.VIA == {0: "kernel", 1: "timer", 2: "peer"}
    assert wire.COUNTERS == {0: "ringbuf_lost", 1: "socks_full", 2: "tw_full",
                             3: "derived_lost", 4: "derived_sent", 5: "recovered"}
    assert "derived_sent" not in wire.LOSS_COUNTERS and "missed" in wire.LOSS_COUNTERS
    assert "recovered" not in wire.LOSS_COUNTERS
    assert wire.COMM_LEN == 16
