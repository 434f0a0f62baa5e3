"""Decoding of the records the BPF program writes (bpf/socktrace.h).

``EVENT`` mirrors ``struct st_event`` field for field; tests/test_wire.py
compiles the header with the C compiler and checks size and every offset,
so the two cannot drift apart silently.  The enums are not copied at all:
they are read from the header, which stays their only definition.

>>> EVENT.size
96
>>> OWNER_FROM[1], REASON[2], VIA[1]
('connect', 'reused', 'timer')
"""

import re
import struct
from pathlib import Path

# Order and types as in struct st_event; little-endian, no padding.
EVENT = struct.Struct("<QQQQ16s16sIHHBBBBBBBB16s")
FIELDS = (
    "ts_ns", "skaddr", "twaddr", "in_old_ns", "saddr", "daddr", "pid",
    "sport", "dport", "family", "oldstate", "newstate", "owner_from",
    "flags", "reason", "via", "kind", "comm",
)


def bpf_dir():
    """Where the BPF sources live: ``tracer/bpf`` once installed as a wheel
    (pyproject maps ``bpf/`` there), ``bpf/`` beside the package in a checkout
    or an editable install."""
    here = Path(__file__).resolve().parent
    for cand in (here / "bpf", here.parent / "bpf"):
        if (cand / "socktrace.h").is_file():
            return cand
    raise FileNotFoundError("socktrace.h not found beside %s" % here)


def _enum(text, prefix):
    """``ST_OWNER_CONNECT = 1,`` -> {1: 'connect'} for *prefix* ``ST_OWNER_``."""
    out = {}
    for name, value in re.findall(r"\b%s(\w+)\s*=\s*(\d+)" % prefix, text):
        out[int(value)] = name.lower()
    return out


_HEADER = (bpf_dir() / "socktrace.h").read_text()
KIND = _enum(_HEADER, "ST_KIND_")
OWNER_FROM = _enum(_HEADER, "ST_OWNER_")
REASON = _enum(_HEADER, "ST_REASON_")
VIA = _enum(_HEADER, "ST_VIA_")
FLAGS = {v: k for k, v in _enum(_HEADER, "ST_F_").items()}
COUNTERS = _enum(_HEADER, "ST_CNT_")
# what becomes a ``lost`` record: the header's loss counters (derived_sent
# only splits what was received, recovered is taken off missed) and the
# kernel's skipped program runs
LOSS_COUNTERS = tuple(n for n in COUNTERS.values()
                      if n not in ("derived_sent", "recovered")) + (
    "missed", "timer_missed")
COMM_LEN = int(re.search(r"#define ST_COMM_LEN (\d+)", _HEADER).group(1))

KIND_STATE = {v: k for k, v in KIND.items()}["state"]
KIND_HANDOFF = {v: k for k, v in KIND.items()}["handoff"]
F_IN_OLD = FLAGS["in_old"]
F_DERIVED = FLAGS["derived"]
