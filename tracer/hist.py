"""Log-linear histograms of durations in nanoseconds (bpf/hist.h in Python).

The BPF side counts each duration in bucket ``st_hist_bucket(ns)``; this
module is the same function (``bucket``), the range each bucket stands for
(``bounds``, ``value``), and the percentiles of a whole histogram.  The
layout constants are read from bpf/socktrace.h, their only definition:
values below ``SUB`` have a bucket each, and every power of two above is cut
into ``SUB`` equal sub-buckets, so a bucket's middle is within 1/(2*SUB) of
anything in it (1/64 with ST_HIST_SUB_BITS 5).

>>> SUB_BITS, SUB, BUCKETS
(5, 32, 2048)
>>> bucket(0), bucket(31), bucket(63), bucket(64), bucket(65)
(0, 31, 63, 64, 64)
>>> bounds(64), value(64)
((64, 66), 65)
>>> b = bucket(1_000_000)               # 1 ms
>>> bounds(b), value(b)
((999424, 1015808), 1007616)
>>> bucket(2**64 - 1), bounds(bucket(2**64 - 1))[1] == 2**64
(1919, True)
>>> counts = [0] * BUCKETS
>>> for ns in (10, 20, 30, 1_000_000):
...     counts[bucket(ns)] += 1
>>> percentiles(counts)
{'p50_ns': 30, 'p90_ns': 1007616, 'p99_ns': 1007616}
>>> percentiles([0] * BUCKETS, ps=(50,))
{'p50_ns': None}
>>> count(merge([counts, counts]))      # per-CPU arrays: one list per CPU
8
"""

import ast
import operator
import re
from pathlib import Path


def _bpf_dir():
    """bpf/ (or tracer/bpf once installed), found as tracer.wire.bpf_dir()
    does.  Not imported from there: wire reads and checks the whole header
    when imported, and a histogram reader needs only three lines of it."""
    here = Path(__file__).resolve().parent
    for cand in (here / "bpf", here.parent / "bpf"):
        if (cand / "socktrace.h").is_file():
            return cand
    raise FileNotFoundError("socktrace.h not found beside %s" % here)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.LShift: operator.lshift, ast.RShift: operator.rshift}


def _defines(text, prefix):
    """The integer value of every ``#define PREFIX... expr`` in *text*, where
    expr is integer arithmetic (+ - * << >>, parentheses) over numbers and
    earlier such names: ``ST_HIST_SUB (1 << ST_HIST_SUB_BITS)`` -> 32."""
    out = {}

    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in out:
            return out[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError("cannot evaluate %s" % ast.dump(node))

    for name, expr in re.findall(r"^[ \t]*#[ \t]*define[ \t]+(%s\w*)[ \t]+([^\n]*?)[ \t]*(?:/\*.*)?$"
                                 % prefix, text, re.M):
        out[name] = ev(ast.parse(re.sub(r"(\d+)[uUlL]+\b", r"\1", expr), mode="eval").body)
    return out


_CONST = _defines((_bpf_dir() / "socktrace.h").read_text(), "ST_HIST_")
SUB_BITS = _CONST["ST_HIST_SUB_BITS"]
SUB = _CONST["ST_HIST_SUB"]
BUCKETS = _CONST["ST_HIST_BUCKETS"]
# bucket(2**64 - 1) + 1: buckets from here to BUCKETS are never used
USED = (64 - SUB_BITS + 1) * SUB
assert SUB == 1 << SUB_BITS and USED <= BUCKETS, _CONST


def bucket(ns):
    """The bucket of *ns* (0 <= ns < 2**64), as st_hist_bucket() computes it."""
    if ns < SUB:
        return ns
    e = ns.bit_length() - 1
    return (e - SUB_BITS + 1) * SUB + ((ns >> (e - SUB_BITS)) & (SUB - 1))


def bounds(b):
    """``(lo, hi)``: bucket *b* holds the values ``lo <= ns < hi``."""
    if not 0 <= b < USED:
        raise ValueError("bucket %r is outside 0..%d" % (b, USED - 1))
    if b < SUB:
        return b, b + 1
    e = b // SUB + SUB_BITS - 1          # the power of two: 2**e <= ns
    width = 1 << (e - SUB_BITS)
    lo = (SUB + b % SUB) * width
    return lo, lo + width


def value(b):
    """The value bucket *b* stands for: the middle of its range, ``(lo +
    hi) // 2`` (the value itself for the exact buckets, 1 wide)."""
    lo, hi = bounds(b)
    return (lo + hi) // 2


def count(counts):
    """The number of values in a histogram."""
    return sum(counts)


def merge(histograms):
    """Per-bucket sums of several histograms (a per-CPU array arrives as one
    count list per CPU)."""
    out = [0] * BUCKETS
    for counts in histograms:
        if len(counts) != BUCKETS:
            raise ValueError("a histogram has %d buckets, not %d" % (len(counts), BUCKETS))
        for i, c in enumerate(counts):
            if c:
                out[i] += c
    return out


def rank(total, p):
    """The 0-based rank in sorted order of percentile *p* of *total* values:
    ``min(total - 1, int(total * p / 100))``."""
    return min(total - 1, int(total * p / 100))


def percentiles(counts, ps=(50, 90, 99)):
    """``{"p50_ns": v, ...}``: for each *p*, value() of the bucket holding
    the value of rank() in sorted order; None when *counts* is empty."""
    if len(counts) != BUCKETS:
        raise ValueError("a histogram has %d buckets, not %d" % (len(counts), BUCKETS))
    total = count(counts)
    keys = ["p%s_ns" % p for p in ps]
    if not total:
        return dict.fromkeys(keys)
    out = {}
    want = sorted((rank(total, p), k) for p, k in zip(ps, keys))
    seen, i = 0, 0                       # values in buckets before i
    for r, k in want:
        while seen + counts[i] <= r:
            seen += counts[i]
            i += 1
        out[k] = value(i)
    return {k: out[k] for k in keys}
