"""Decoding of the records the BPF program writes (bpf/socktrace.h).

``STATE`` and ``CLOSED`` mirror ``struct st_state`` and ``struct st_closed``
field for field; tests/test_wire.py compiles the header with the C compiler
and checks sizes and every offset, so the two cannot drift apart silently.
The enums are not copied at all: they are read from the header, which stays
their only definition.

>>> STATE.size, CLOSED.size, STORY.size, SEED.size
(112, 296, 312, 88)
>>> OWNER_FROM[1], REASON[2], VIA[1], END[3], ROLE[1]
('connect', 'reused', 'timer', 'cancelled', 'client')
"""

import re
import struct
from collections import namedtuple
from pathlib import Path


def bpf_dir():
    """Where the BPF sources live: ``tracer/bpf`` once installed as a wheel
    (pyproject maps ``bpf/`` there), ``bpf/`` beside the package in a checkout
    or an editable install."""
    here = Path(__file__).resolve().parent
    for cand in (here / "bpf", here.parent / "bpf"):
        if (cand / "socktrace.h").is_file():
            return cand
    raise FileNotFoundError("socktrace.h not found beside %s" % here)


_HEADER = (bpf_dir() / "socktrace.h").read_text()


def _define(name):
    return int(re.search(r"#define %s\s+(\d+)" % name, _HEADER).group(1))


def _enum(prefix):
    """``ST_OWNER_CONNECT = 1,`` -> {1: 'connect'} for *prefix* ``ST_OWNER_``."""
    out = {}
    for name, value in re.findall(r"\b%s(\w+)\s*=\s*(\d+)" % prefix, _HEADER):
        out[int(value)] = name.lower()
    return out


COMM_LEN = _define("ST_COMM_LEN")
PATH_LEN = _define("ST_PATH_LEN")
NR_STATES = _define("ST_NR_STATES")
NONE_U32 = 0xFFFFFFFF   # ST_NONE_U32: a __u32 that is not known (null)
CONN_OWN = 1 << 63

KIND = _enum("ST_KIND_")
OWNER_FROM = _enum("ST_OWNER_")
ROLE = _enum("ST_ROLE_")
REASON = _enum("ST_REASON_")
VIA = _enum("ST_VIA_")
END = _enum("ST_END_")
FLAGS = {v: k for k, v in _enum("ST_F_").items()}
COUNTERS = _enum("ST_CNT_")
# counters that count records sent or facts, not losses (and "end_*":
# connections ended, by END)
SENT_COUNTERS = ("derived_sent", "state_sent", "closed_sent", "recovered", "self", "handoff",
                 "impossible", "lower") + tuple(n for n in COUNTERS.values()
                                                if n.startswith("end_"))
HIST_CONNECT_FAILED = _define("ST_HIST_CONNECT_FAILED")
# its name in the exit report, the summary's durations and --metrics
CONNECT_FAILED = "SYN_SENT->CLOSE"
# what becomes a ``lost`` record: the header's loss counters and the
# kernel's skipped program runs (recovered is taken off missed)
LOSS_COUNTERS = tuple(n for n in COUNTERS.values() if n not in SENT_COUNTERS) + (
    "missed", "timer_missed")

KIND_STATE = {v: k for k, v in KIND.items()}["state"]
KIND_CLOSED = {v: k for k, v in KIND.items()}["closed"]

# Order and types as in the structs; little-endian, x for padding.
STATE = struct.Struct("<IIQQQ16s16sHHBBBBBBBB%ds4xQII" % COMM_LEN)
STATE_FIELDS = (
    "kind", "pid", "ts_ns", "conn", "in_old_ns", "saddr", "daddr", "sport",
    "dport", "family", "oldstate", "newstate", "owner_from", "role", "flags",
    "reason", "via", "comm", "cgroup", "netns", "uid",
)
CLOSED = struct.Struct("<IIQQQ%dQ16s16sHHiBBBBBBBB%ds%dsQIIQQIIIIII"
                       % (NR_STATES, PATH_LEN, COMM_LEN))
CLOSED_FIELDS = (
    "kind", "pid", "ts_ns", "conn", "start_ns", "spent", "saddr", "daddr",
    "sport", "dport", "error", "family", "owner_from", "role", "flags", "end",
    "reason", "path_len", "pad", "path", "comm", "cgroup", "netns", "uid",
    "bytes_acked", "bytes_received", "segs_out", "segs_in", "retrans", "srtt_us",
    "rttvar_us", "syn_retrans",
)
# st_story as (name, struct code) pairs, in order: its format, its field
# names and the projections reconciliation reads (_projection) all come
# from this one list; "4x" is padding, with no name in STORY_FIELDS
_STORY_ITEMS = (
    [("conn", "Q"), ("start_ns", "Q"), ("ts", "Q"), ("spent", "%dQ" % NR_STATES),
     ("deadline", "Q"), ("len_j", "Q"), ("saddr", "16s"), ("daddr", "16s"),
     ("sport", "H"), ("dport", "H"), ("pid", "I"), ("uid", "I")]
    + [(n, "B") for n in ("family", "owner_from", "role", "flags", "state", "cur_lower",
                          "path_len", "held")]
    + [("path", "%ds" % PATH_LEN), ("comm", "%ds" % COMM_LEN), (None, "4x"),
       ("cgroup", "Q"), ("netns", "I"), ("syn_retrans", "I"), ("bytes_acked", "Q"),
       ("bytes_received", "Q")]
    + [(n, "I") for n in ("segs_out", "segs_in", "retrans", "srtt_us", "rttvar_us", "pad2")])
STORY = struct.Struct("<" + "".join(code for _, code in _STORY_ITEMS))
STORY_FIELDS = tuple(name for name, _ in _STORY_ITEMS if name)
Story = namedtuple("Story", STORY_FIELDS)
SEED = struct.Struct("<Q16s16sHHIBBBBB3s%dsQII" % COMM_LEN)
SEED_FIELDS = ("since_ns", "saddr", "daddr", "sport", "dport", "pid", "family",
               "owner_from", "role", "flags", "state", "pad", "comm", "cgroup", "uid",
               "netns")
SIZES = {KIND_STATE: STATE.size, KIND_CLOSED: CLOSED.size}
Seed = namedtuple("Seed", SEED_FIELDS)
# a seed's namespace alone, for reconciliation (its last field)
SEED_NETNS = struct.Struct("<%dxI" % (SEED.size - 4))


def _projection(items, wanted):
    """A struct.Struct as long as the struct *items* describes ((name, code)
    pairs, in order) that unpacks only the *wanted* fields, named in struct
    order; the rest are pad bytes.  Reading four fields of 100k stories
    this way takes a tenth of decoding them whole."""
    fmt, at, left = "<", 0, list(wanted)
    for name, code in items:
        size = struct.calcsize("<" + code)
        if left and name == left[0]:
            fmt += "%dx%s" % (at, code) if at else code
            at, left = 0, left[1:]
        else:
            at += size
    assert not left, "name the wanted fields in struct order: %r" % (left,)
    return struct.Struct(fmt + ("%dx" % at if at else ""))


# what reconciliation compares with sock_diag: (sport, dport, family, netns)
STORY_WHERE = _projection(_STORY_ITEMS, ("sport", "dport", "family", "netns"))


def _story(t):
    """A Story from STORY's flat tuple: ``spent`` folded into one tuple."""
    n = NR_STATES
    return Story._make(t[:3] + (t[3:3 + n],) + t[3 + n:])


def story_at(data, i):
    """The i-th st_story of a map's batch read."""
    return _story(STORY.unpack_from(data, i * STORY.size))


def seed_at(data, i):
    """The i-th st_seed of a map's batch read."""
    return Seed._make(SEED.unpack_from(data, i * SEED.size))


def stories(data):
    """st_story values back to back (a map's batch read) -> [Story]."""
    return list(map(_story, STORY.iter_unpack(data)))


def unpack_closed(buf, off=0):
    """A closed record as a flat tuple with ``spent`` folded into one tuple,
    in CLOSED_FIELDS order."""
    t = CLOSED.unpack_from(buf, off)
    return t[:5] + (t[5:5 + NR_STATES],) + t[5 + NR_STATES:]
