"""The backend contract (tracer/backend.py), one conformance test that both
backends pass: the same real loopback connection, held long enough in each
state that a poll sees it, must come out of each as records of exactly the
spec's shapes telling the same story."""

import os
import socket
import time

import pytest

from tracer import spec
from tracer.backend import Backend

HOLD_S = 0.4           # each state lasts this long: the proc backend polls every 0.05 s


def open_backend(kind):
    if kind == "bpf":
        from conftest import require_bpf
        require_bpf()
        from tracer.bpf_backend import BpfBackend
        return BpfBackend(pids=[os.getpid()]).open()
    from tracer.proc_backend import ProcBackend
    return ProcBackend(interval=0.05).open()


def drain(backend, seconds):
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out += backend.read()
        time.sleep(0.02)
    return out


@pytest.fixture(scope="module")
def validator():
    import jsonschema
    return jsonschema.Draft202012Validator(spec.json_schema())


@pytest.mark.parametrize("kind", ["bpf", "proc"])
def test_backend_conformance(kind, validator):
    backend = open_backend(kind)
    try:
        assert isinstance(backend, Backend) and backend.source == kind
        recs = []
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(4)
        port = ls.getsockname()[1]
        recs += drain(backend, HOLD_S)
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = ls.accept()
        cport = c.getsockname()[1]
        recs += drain(backend, HOLD_S)          # ESTABLISHED
        c.close()                               # client first: FIN_WAIT2 / CLOSE_WAIT
        recs += drain(backend, HOLD_S)
        a.close()                               # the client's TIME_WAIT begins
        recs += drain(backend, HOLD_S)
        dump = backend.sockets()
        ls.close()
        recs += drain(backend, HOLD_S)
        report = backend.report()
        lost = backend.lost()
    finally:
        backend.close()
        backend.close()                 # idempotent

    for r in recs + dump:
        assert list(r) == list(spec.names(r["type"])), r
        assert r["source"] == kind and r["approx"] is (kind == "proc"), r
        validator.validate(r)
    assert not {w: n for w, n in lost.items() if w != "timer_missed"}, lost

    def side(lp, rp):
        return [r for r in recs if r["lport"] == lp and r["rport"] == rp]

    server = side(port, cport)
    conns = {r["conn"] for r in server}
    assert len(conns) == 1, server
    states = [(r["old"], r["new"]) for r in server if r["type"] == "state"]
    # what a poll every 0.05 s is sure to see of states held 0.4 s
    for t in [("ESTABLISHED", "CLOSE_WAIT"), ("CLOSE_WAIT", "LAST_ACK")]:
        if kind == "proc" and t == ("CLOSE_WAIT", "LAST_ACK"):
            t = ("CLOSE_WAIT", states[-1][1])           # LAST_ACK is over in microseconds
        assert t in states, states
    assert states[-1][1] == "CLOSE", states
    (closed,) = [r for r in server if r["type"] == "closed"]
    assert closed["role"] == "server" and closed["end"] in ("normal", "unknown"), closed
    assert closed["closed_first"] == "remote", closed
    assert HOLD_S * 0.8e9 <= closed["states"]["CLOSE_WAIT"] <= HOLD_S * 1.6e9, closed
    assert closed["lifetime_ns"] == sum(closed["states"].values()), closed
    assert all(r["pid"] == os.getpid() for r in server), server

    client = side(cport, port)
    assert {r["conn"] for r in client} - conns == {r["conn"] for r in client}, "ids shared"
    assert [r for r in client if r["type"] == "state" and r["new"] == "TIME_WAIT"], client
    assert not [r for r in client if r["type"] == "closed"], "TIME_WAIT ends after 60 s"

    # the dump: the client's TIME_WAIT under the same id, the listener
    (tw,) = [r for r in dump if (r["lport"], r["rport"]) == (cport, port)]
    assert tw["state"] == "TIME_WAIT" and tw["conn"] in {r["conn"] for r in client}, tw
    assert tw["role"] == "client" and tw["in_state_ns"] is not None, tw
    (lsn,) = [r for r in dump if (r["lport"], r["rport"]) == (port, 0)]
    assert lsn["state"] == "LISTEN" and lsn["role"] == "listener", lsn
    assert lsn["pid"] == os.getpid(), lsn

    assert set(report) >= {"transitions", "durations", "current", "records"}, report
    assert report["transitions"].get("ESTABLISHED->CLOSE_WAIT", 0) >= 1, report
    assert report["durations"]["CLOSE_WAIT"]["count"] >= 1, report
