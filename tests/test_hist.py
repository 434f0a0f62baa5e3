"""tracer/hist.py against bpf/hist.h: the same buckets in C (host compiler
and the BPF verifier) and Python, ranges that tile 0..2**64, and percentiles
within 5% of the exact ones."""

import math
import random
import shutil
import subprocess
import time

import pytest

from tracer import hist

BPF_DIR = hist._bpf_dir()
MAX_REL_ERR = 0.05


def log_uniform(rng, n, lo=1, hi=2**64 - 1):
    """*n* integers spread evenly over the powers of two in [lo, hi]."""
    a, b = math.log2(lo), math.log2(hi)
    return [min(hi, max(lo, int(2 ** rng.uniform(a, b)))) for _ in range(n)]


def exact_percentiles(values, ps=(50, 90, 99)):
    """The percentiles by hist.percentiles()'s rank rule, on the values."""
    s = sorted(values)
    return {"p%s_ns" % p: s[min(len(s) - 1, int(len(s) * p / 100))] for p in ps}


def histogram(values):
    counts = [0] * hist.BUCKETS
    for v in values:
        counts[hist.bucket(v)] += 1
    return counts


def test_docstring_examples():
    import doctest

    res = doctest.testmod(hist)
    assert res.attempted and not res.failed


# ---------------------------------------------------------------------------
# C and Python agree
# ---------------------------------------------------------------------------

HOST_C = r"""
#include <linux/types.h>
#include <stdio.h>
#include "socktrace.h"
#include "hist.h"

int main(void)
{
	unsigned long long ns;

	printf("%d %d %d\n", ST_HIST_SUB_BITS, ST_HIST_SUB, ST_HIST_BUCKETS);
	while (scanf("%llu", &ns) == 1)
		printf("%u\n", st_hist_bucket(ns));
	return 0;
}
"""


@pytest.fixture(scope="module")
def c_bucket(tmp_path_factory):
    """Runs st_hist_bucket() of the host-compiled header over a list of
    values; returns ((SUB_BITS, SUB, BUCKETS), [bucket, ...])."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("hist_c")
    (d / "hist_test.c").write_text(HOST_C)
    exe = d / "hist_test"
    subprocess.run([cc, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror",
                    "-I%s" % BPF_DIR, "-o", str(exe), str(d / "hist_test.c")],
                   check=True, capture_output=True, timeout=60)

    def run(values):
        out = subprocess.run([str(exe)], input="\n".join(map(str, values)) + "\n",
                             check=True, capture_output=True, text=True, timeout=60)
        lines = out.stdout.split("\n")
        consts = tuple(int(x) for x in lines[0].split())
        return consts, [int(x) for x in lines[1:] if x]
    return run


def test_c_constants_are_the_header_s(c_bucket):
    consts, _ = c_bucket([])
    assert consts == (hist.SUB_BITS, hist.SUB, hist.BUCKETS)


def test_c_and_python_agree(c_bucket):
    rng = random.Random(1)
    values = [0, 1, 2**64 - 1]
    for k in range(64):
        values += [2**k - 1, 2**k, 2**k + 1]
    values += log_uniform(rng, 20_000)
    values = [v for v in values if 0 <= v < 2**64]
    _, got = c_bucket(values)
    assert len(got) == len(values)
    bad = [(v, c, hist.bucket(v)) for v, c in zip(values, got) if c != hist.bucket(v)]
    assert not bad, "ns, C bucket, Python bucket: %s" % bad[:20]
    assert all(0 <= b < hist.BUCKETS for b in got)


def test_hist_h_is_self_contained(tmp_path):
    """A file that includes only hist.h compiles (it brings its own types
    and socktrace.h), and <sys/cdefs.h>'s __always_inline does not clash."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "only.c"
    src.write_text('#include <stdio.h>\n#include "hist.h"\n'
                   "int main(void) { return (int)st_hist_bucket(3) - 3; }\n")
    subprocess.run([cc, "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-I%s" % BPF_DIR,
                    "-o", str(tmp_path / "only"), str(src)], check=True, capture_output=True,
                   timeout=60)
    assert subprocess.run([str(tmp_path / "only")], timeout=10).returncode == 0


# ---------------------------------------------------------------------------
# bounds and value
# ---------------------------------------------------------------------------

def test_top_octave_in_range():
    top = hist.bucket(2**64 - 1)
    assert top == hist.USED - 1 < hist.BUCKETS
    assert hist.bounds(top)[1] == 2**64


def test_exact_buckets():
    # below 2 * SUB every bucket is one value wide (the first octave's
    # sub-buckets are 1 wide too)
    for v in range(2 * hist.SUB):
        assert hist.bucket(v) == v
        assert hist.bounds(v) == (v, v + 1)
        assert hist.value(v) == v


def test_values_lie_in_their_bounds():
    rng = random.Random(2)
    values = log_uniform(rng, 50_000) + list(range(300)) + [2**64 - 1]
    values += [2**k + d for k in range(64) for d in (-1, 0, 1) if 0 <= 2**k + d < 2**64]
    for v in values:
        b = hist.bucket(v)
        lo, hi = hist.bounds(b)
        assert lo <= v < hi, (v, b, lo, hi)
        assert lo <= hist.value(b) < hi


def test_bounds_are_contiguous():
    assert hist.bounds(0)[0] == 0
    for b in range(hist.USED - 1):
        assert hist.bounds(b)[1] == hist.bounds(b + 1)[0], b
    assert hist.bounds(hist.USED - 1)[1] == 2**64
    # and each bucket's own edges fall in it
    for b in range(hist.USED):
        lo, hi = hist.bounds(b)
        assert hist.bucket(lo) == b and hist.bucket(hi - 1) == b
    with pytest.raises(ValueError):
        hist.bounds(hist.USED)


# ---------------------------------------------------------------------------
# relative error
# ---------------------------------------------------------------------------

def worst_bucket_error():
    worst = 0.0
    for b in range(2 * hist.SUB, hist.USED):   # above the exact range
        lo, hi = hist.bounds(b)
        v = hist.value(b)
        worst = max(worst, (hi - 1 - v) / v, (v - lo) / lo)
    return worst


def test_worst_bucket_error():
    worst = worst_bucket_error()
    print("worst relative error of a bucket's value: %.4f%%" % (100 * worst))
    assert worst < MAX_REL_ERR
    # the header's promise: within 1/(2*SUB) of anything in the bucket
    assert worst <= 1 / (2 * hist.SUB)


def samples():
    rng = random.Random(3)
    for n in (1, 2, 3, 10, 99, 100, 1000, 10_000, 100_000):
        yield "log-uniform", log_uniform(rng, n)
        yield "log-uniform 1us-10s", log_uniform(rng, n, 1000, 10 * 10**9)
        mu = rng.uniform(math.log(1e3), math.log(1e9))
        sigma = rng.uniform(0.1, 3.0)
        yield "lognormal", [max(0, min(2**64 - 1, int(rng.lognormvariate(mu, sigma))))
                            for _ in range(n)]
    yield "small", [rng.randrange(200) for _ in range(1000)]


def test_percentiles_relative_error():
    ps = (0, 1, 50, 90, 99, 99.9, 100)
    worst = 0.0
    for kind, values in samples():
        got = hist.percentiles(histogram(values), ps)
        want = exact_percentiles(values, ps)
        assert got.keys() == want.keys()
        for k, w in want.items():
            g = got[k]
            if w == 0:
                assert g == 0, (kind, len(values), k)
                continue
            err = abs(g - w) / w
            worst = max(worst, err)
            assert err <= MAX_REL_ERR, (kind, len(values), k, g, w)
    print("worst relative error of a percentile: %.4f%%" % (100 * worst))
    assert worst <= 1 / (2 * hist.SUB)


def test_percentiles_empty_and_default_keys():
    assert hist.percentiles([0] * hist.BUCKETS) == {
        "p50_ns": None, "p90_ns": None, "p99_ns": None}
    counts = histogram([5_000_000])
    v = hist.value(hist.bucket(5_000_000))
    assert hist.percentiles(counts) == {"p50_ns": v, "p90_ns": v, "p99_ns": v}
    with pytest.raises(ValueError):
        hist.percentiles([1, 2, 3])


def test_merge_and_count():
    rng = random.Random(4)
    per_cpu = [log_uniform(rng, rng.randrange(50)) for _ in range(8)]
    merged = hist.merge([histogram(v) for v in per_cpu])
    assert merged == histogram([v for cpu in per_cpu for v in cpu])
    assert hist.count(merged) == sum(map(len, per_cpu))
    assert hist.merge([]) == [0] * hist.BUCKETS


# ---------------------------------------------------------------------------
# the BPF verifier accepts it
# ---------------------------------------------------------------------------

BPF_PROG = r"""
#include "socktrace.h"
#include "hist.h"

BPF_PERCPU_ARRAY(hist, u64, ST_HIST_BUCKETS);

RAW_TRACEPOINT_PROBE(sys_enter)
{
	u32 b = st_hist_bucket(bpf_ktime_get_ns());
	u64 *c = hist.lookup(&b);

	if (c)
		__sync_fetch_and_add(c, 1);
	return 0;
}
"""


def test_bpf_verifier_accepts_it():
    from conftest import require_bpf
    require_bpf(cli=False)         # loads its own program: no socktrace needed
    from bcc import BPF

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    b = BPF(text=BPF_PROG.encode(), cflags=["-I%s" % BPF_DIR])
    try:
        time.sleep(0.2)                 # attached by RAW_TRACEPOINT_PROBE at load
        b.detach_raw_tracepoint(b"sys_enter")
        table = b[b"hist"]
        counts = [0] * hist.BUCKETS
        for k, per_cpu in table.items():
            counts[k.value] = sum(per_cpu)
    finally:
        b.cleanup()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert len(counts) == hist.BUCKETS
    assert hist.count(counts) > 0
    used = [i for i, c in enumerate(counts) if c]
    assert all(i < hist.USED for i in used), used
    # bpf_ktime_get_ns() is CLOCK_MONOTONIC: every count is in a bucket
    # between the ones of the times just before loading and after reading
    lo, hi = hist.bucket(before), hist.bucket(after)
    assert all(lo <= i <= hi for i in used), (used, lo, hi)
