"""The exit report honours the filters, keeps lower bounds out of the
percentiles, splits SYN_SENT by outcome, counts connections by how they
ended, names the top processes and remotes, says how long the run lasted."""

import json
import os
import socket
import subprocess
import time
from types import SimpleNamespace

import pytest

from conftest import ROOT, SOCKTRACE

from tracer import report, wire


def state(old, new, ns, lower=False):
    return {"type": "state", "old": old, "new": new, "in_old_ns": ns, "lower_bound": lower}


def test_tally_splits_and_leaves_lower_bounds_out():
    t = report.Tally()
    t.add([state("SYN_SENT", "ESTABLISHED", 1000), state("SYN_SENT", "CLOSE", 3_000_000),
           state("ESTABLISHED", "FIN_WAIT1", 5000, lower=True),
           state("ESTABLISHED", "FIN_WAIT1", 7000), state("CLOSE", "SYN_SENT", None),
           {"type": "closed", "end": "refused"}, {"type": "closed", "end": "normal"},
           {"type": "closed", "end": "normal"}])
    st = t.stats()
    d = report.durations(st["durations"])
    assert d["SYN_SENT"]["count"] == 1 and d[wire.CONNECT_FAILED]["count"] == 1
    assert d["ESTABLISHED"]["count"] == 1
    assert abs(d["ESTABLISHED"]["max_ns"] - 7000) <= 7000 / 64     # a bucket's middle
    assert st["lower_bounds"] == 1
    assert st["ends"] == {"refused": 1, "normal": 2}
    assert st["transitions"][("ESTABLISHED", "FIN_WAIT1")] == 2


def test_scope_says_host_wide_or_the_filters():
    none = SimpleNamespace(family=None, port=[], lport=[], rport=[], addr=[], pid=[],
                           comm=[], state=[])
    assert report.scope(none) == "host-wide"
    some = SimpleNamespace(**dict(vars(none), family=6, port=[[80, 443]], comm=["nginx"]))
    assert report.scope(some) == "filtered: -6 --port 80,443 --comm nginx"


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.bpf
@pytest.mark.parametrize("how", ["kernel", "user"])
def test_report_of_a_filtered_run(tmp_path, how):
    """Three connections, one refused connect, one connection older than
    socktrace; with a port filter (the kernel's tallies) or a pid filter
    (the records that passed it): the same exact figures."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    port = ls.getsockname()[1]
    refused = _closed_port()
    old_c = socket.create_connection(("127.0.0.1", port))      # predates socktrace
    old_a, _ = ls.accept()
    out = tmp_path / "out"
    filt = (["--port", str(port), "--port", str(refused)] if how == "kernel"
            else ["--pid", str(os.getpid())])
    proc = subprocess.Popen([SOCKTRACE, "--backend", "bpf", "--records", "state,closed,summary",
                             "-o", str(out)] + filt, stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 40
        probe = None
        while time.monotonic() < deadline:          # ready: a connection of ours shows
            c = socket.create_connection(("127.0.0.1", port))
            a, _ = ls.accept()
            c.close()
            a.close()
            if out.exists() and b'"SYN_SENT"' in out.read_bytes():
                probe = True
                break
            time.sleep(0.3)
        assert probe, "socktrace not ready"
        time.sleep(0.5)
        mark = len(out.read_bytes().splitlines())
        for _ in range(3):
            c = socket.create_connection(("127.0.0.1", port))
            a, _ = ls.accept()
            c.close()
            a.close()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", refused), timeout=5)
        old_c.close()
        old_a.close()
        time.sleep(1.0)
    finally:
        proc.send_signal(2)
        _, err = proc.communicate(timeout=30)
        ls.close()
    assert proc.returncode == 0, err
    recs = [json.loads(x) for x in out.read_bytes().splitlines()]
    summ = recs[-1]
    assert summ["type"] == "summary"
    body = [r for r in recs[:-1] if r["type"] in ("state", "closed")]
    # every figure equals what the records that passed the filter say
    pairs = {}
    for r in body:
        if r["type"] == "state":
            k = "%s->%s" % (r["old"], r["new"])
            pairs[k] = pairs.get(k, 0) + 1
    assert summ["transitions"] == pairs
    ends = {}
    for r in body:
        if r["type"] == "closed":
            ends[r["end"]] = ends.get(r["end"], 0) + 1
    assert summ["ended"] == ends and ends.get("refused") == 1
    connects = sum(1 for r in body if r["type"] == "state" and r["old"] == "SYN_SENT"
                   and r["new"] == "ESTABLISHED")
    assert summ["durations"]["SYN_SENT"]["count"] == connects
    assert summ["durations"][wire.CONNECT_FAILED]["count"] == 1
    lower = sum(1 for r in body if r["type"] == "state" and r["lower_bound"]
                and r["in_old_ns"] is not None and r["old"] not in ("CLOSE", "LISTEN"))
    assert lower >= 1 and summ["lower_bounds"] == lower
    est = [r for r in body if r["type"] == "state" and r["old"] == "ESTABLISHED"
           and not r["lower_bound"]]
    assert summ["durations"]["ESTABLISHED"]["count"] == len(est)
    assert summ["scope"] == "filtered: " + " ".join(
        ["--port %d" % port, "--port %d" % refused] if how == "kernel"
        else ["--pid %d" % os.getpid()])
    assert 1 < summ["seconds"] < 60
    # the clients' TIME_WAITs are the sockets now, held by no process
    assert summ["current"].get("TIME_WAIT", 0) >= 3 if how == "kernel" else True
    assert mark > 0
    # and the same for people, on stderr
    assert "s, %s" % summ["start_ts"][:10] in err and summ["scope"] in err
    assert "connects that failed" in err and "refused 1" in err
    assert "left out" in err
