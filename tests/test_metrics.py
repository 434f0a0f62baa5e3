"""--metrics: a real Prometheus scrape over loopback, compared with the record
stream written in the same run."""

import calendar
import json
import random
import socket
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, SOCKTRACE, start_socktrace

from tracer import hist
from tracer.metrics import LE_POW2, buckets, parse_addr


def test_buckets_are_exact_at_powers_of_two():
    rng = random.Random(5)
    values = [int(2 ** rng.uniform(0, 37)) for _ in range(20000)] + [1 << e for e in LE_POW2]
    counts = [0] * hist.BUCKETS
    for v in values:
        counts[hist.bucket(v)] += 1
    b, n, total = buckets(counts)
    assert n == len(values)
    for (le, cum), e in zip(b, LE_POW2):
        assert le == (1 << e) / 1e9
        # Prometheus buckets are "<= le"; ours hold lo <= ns < hi, and 2**e
        # starts a bucket: the values below 2**e exactly
        assert cum == sum(1 for v in values if v < (1 << e)), e
    assert abs(total - sum(values) / 1e9) <= sum(values) / 1e9 / 64


@pytest.mark.parametrize("text,want", [("127.0.0.1:9464", ("127.0.0.1", 9464)),
                                       ("[::1]:80", ("::1", 80)), (":9", ("0.0.0.0", 9))])
def test_parse_addr(text, want):
    assert parse_addr(text) == want


@pytest.mark.parametrize("text", ["9464", "host:", "h:0", "h:70000", "h:x"])
def test_parse_addr_refuses(text):
    with pytest.raises(ValueError):
        parse_addr(text)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=20) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def wall(ts):
    """A record's ts as seconds since the epoch."""
    main, frac = ts[:-1].split(".")
    return calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S")) + int(frac) / 1e6


def churn(n):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    port = ls.getsockname()[1]
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        a, _ = ls.accept()
        c.close()
        a.close()
    ls.close()
    return port


@pytest.mark.bpf
def test_scrape_matches_the_stream(tmp_path):
    mport = free_port()
    path = str(tmp_path / "out")
    trace = start_socktrace(path, ["--metrics", "127.0.0.1:%d" % mport],
                            env={"SOCKTRACE_RECONCILE_S": "3600"})
    try:
        churn(20)
        time.sleep(0.3)
        t0 = time.time()
        got = scrape(mport)
        t1 = time.time()
        time.sleep(0.5)             # what happened before the scrape is written by now
        recs = [e for e in trace.events() if e["type"] in ("state", "closed")]
    finally:
        rc = trace.stop()
    assert rc == 0, trace.stderr()
    before = [e for e in recs if wall(e["ts"]) < t0]
    upto = [e for e in recs if wall(e["ts"]) <= t1]
    pairs = {(e["old"], e["new"]) for e in upto if e["type"] == "state"}
    assert len(pairs) >= 10
    for old, new in pairs:
        lo = sum(1 for e in before if e["type"] == "state" and (e["old"], e["new"]) == (old, new))
        hi = sum(1 for e in upto if e["type"] == "state" and (e["old"], e["new"]) == (old, new))
        key = ("socktrace_transitions_total", (("new", new), ("old", old), ("source", "bpf")))
        assert lo <= got.get(key, 0) <= hi, (old, new, lo, got.get(key), hi)
    # the kernel counts a duration when the state is left: SYN_SENT's count is
    # the connects that got through, one per SYN_SENT -> X record but CLOSE
    def connected(e):
        return e["type"] == "state" and e["old"] == "SYN_SENT" and e["new"] != "CLOSE"
    lo = sum(1 for e in before if connected(e))
    hi = sum(1 for e in upto if connected(e))
    count = got[("socktrace_connect_latency_seconds_count", (("source", "bpf"),))]
    assert lo <= count <= hi and count >= 20
    inf = got[("socktrace_connect_latency_seconds_bucket", (("le", "+Inf"), ("source", "bpf")))]
    assert inf == count
    lo = len(before)
    assert lo <= got[("socktrace_records_total", ())] <= len(upto) + 1000
    assert got[("socktrace_records_unwritten_total", ())] == 0
    assert got[("process_cpu_seconds_total", ())] > 0
    assert got.get(("socktrace_sockets", (("family", "ipv4"), ("state", "LISTEN"))), 0) >= 1
    # the server sides of the 20 connections ended normally (the clients'
    # end with their TIME_WAIT)
    lo = sum(1 for e in before if e["type"] == "closed" and e["end"] == "normal")
    hi = sum(1 for e in upto if e["type"] == "closed" and e["end"] == "normal")
    ended = got[("socktrace_connections_closed_total", (("end", "normal"), ("source", "bpf")))]
    assert lo <= ended <= hi and ended >= 20, (lo, ended, hi)


def test_proc_backend_scrape(tmp_path):
    """The proc backend's tallies are read through its loop: same names."""
    mport = free_port()
    proc = subprocess.Popen([SOCKTRACE, "--backend", "proc", "--interval", "0.1", "--metrics",
                             "127.0.0.1:%d" % mport, "-o", str(tmp_path / "o")],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        got = None
        while time.monotonic() < deadline:
            try:
                got = scrape(mport)
                break
            except OSError:
                time.sleep(0.2)
        assert got is not None, "no metrics endpoint after 20 s"
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(4)
        time.sleep(0.5)
        got = scrape(mport)
        ls.close()
    finally:
        proc.send_signal(2)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert got[("socktrace_transitions_total",
                (("new", "LISTEN"), ("old", "CLOSE"), ("source", "proc")))] >= 1


def test_port_in_use_is_one_line():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    try:
        r = subprocess.run([SOCKTRACE, "--backend", "proc", "--duration", "1", "--metrics",
                            "127.0.0.1:%d" % ls.getsockname()[1]], capture_output=True,
                           text=True, timeout=30, cwd=ROOT, stdin=subprocess.DEVNULL)
    finally:
        ls.close()
    lines = [x for x in r.stderr.splitlines() if "polling /proc" not in x]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "cannot serve metrics" in lines[0] and "in use" in lines[0], lines
