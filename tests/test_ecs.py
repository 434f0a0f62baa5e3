"""--format ecs: every field name and value checked against ECS 8.17's own
field definitions (a vendored subset of elastic/ecs generated/ecs/
ecs_flat.yml, tests/data/ecs-8.17.0-fields.json), direction client ->
server on both sides of a real connection, and Community IDs computed by the
spec's algorithm by hand."""

import base64
import hashlib
import ipaddress
import json
import os
import re
import socket
import struct
import subprocess
import time

import pytest

from conftest import ROOT, SOCKTRACE

from tracer import spec
from tracer.ecs import Ecs

ECS = json.load(open(os.path.join(ROOT, "tests", "data", "ecs-8.17.0-fields.json")))
FIELDS = ECS["fields"]
CATEGORY_TYPES = FIELDS["event.category"]["expected_event_types"]


def flatten(doc, prefix=""):
    for k, v in doc.items():
        name = prefix + k
        if isinstance(v, dict):
            yield from flatten(v, name + ".")
        else:
            yield name, v


def check_ecs(doc):
    """Every field outside socktrace.* is an ECS 8.17 field with a value of
    its type (or null), and the categorization fields use allowed values."""
    for name, value in flatten(doc):
        if name.startswith("socktrace."):
            continue
        assert name in FIELDS, "%s is not an ECS field" % name
        if value is None:
            continue
        f = FIELDS[name]
        values = value if isinstance(value, list) else [value]
        for v in values:
            if f["type"] in ("keyword", "constant_keyword"):
                assert isinstance(v, str), (name, v)
            elif f["type"] == "long":
                assert isinstance(v, int) and not isinstance(v, bool), (name, v)
            elif f["type"] == "ip":
                ipaddress.ip_address(v)
            elif f["type"] == "date":
                assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", v), v
            else:
                raise AssertionError("unchecked ECS type %s of %s" % (f["type"], name))
            if "allowed_values" in f:
                assert v in f["allowed_values"], (name, v)
            if "expected_values" in f:
                assert v in f["expected_values"], (name, v)
    for cat in doc["event"]["category"]:
        assert set(doc["event"]["type"]) <= set(CATEGORY_TYPES[cat]), doc["event"]
    assert "type" not in doc, "a top-level type collides with Logstash's"


def community_id(saddr, sport, daddr, dport):
    """Community ID v1 by its spec (seed 0, TCP), independent of the library."""
    pack = lambda a: ipaddress.ip_address(a).packed  # noqa: E731
    a, b = (pack(saddr), sport), (pack(daddr), dport)
    if a > b:
        a, b = b, a
    data = struct.pack("!H", 0) + a[0] + b[0] + bytes([6, 0]) + struct.pack("!HH", a[1], b[1])
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()


def sample(t, **kw):
    """A record of type *t* with every field its spec declares."""
    r = {}
    for f in spec.RECORDS[t]:
        if f.name == "type":
            r["type"] = t
        elif f.name == "ts":
            r["ts"] = "2026-12-05T12:00:00.000001Z"
        elif f.enum:
            r[f.name] = f.enum[0]
        elif f.type in ("int", "port"):
            r[f.name] = 1
        elif f.type == "bool":
            r[f.name] = False
        elif f.type == "string":
            r[f.name] = "x"
        else:
            r[f.name] = None
    r.update(kw)
    return r


TUPLE = dict(family=4, laddr="127.0.0.1", lport=40000, raddr="127.0.0.2", rport=80)


@pytest.mark.parametrize("t", spec.RECORD_TYPES)
def test_every_record_type_is_ecs(t):
    kw = dict(TUPLE) if any(f.name == "family" for f in spec.RECORDS[t]) else {}
    for role in ("client", "server", "listener", None):
        if "role" in {f.name for f in spec.RECORDS[t]}:
            kw["role"] = role
        doc = Ecs(host="h").record(sample(t, **kw))
        check_ecs(doc)
        assert doc["socktrace"]["type"] == t
        assert doc["host"]["name"] == "h"


def test_direction_and_community_id():
    e = Ecs(host="h")
    cli = e.record(sample("state", role="client", **TUPLE))
    srv = e.record(sample("state", role="server", family=4, laddr="127.0.0.2", lport=80,
                          raddr="127.0.0.1", rport=40000))
    for doc in (cli, srv):
        assert doc["source"] == {"ip": "127.0.0.1", "port": 40000}
        assert doc["destination"] == {"ip": "127.0.0.2", "port": 80}
        assert doc["network"]["community_id"] == community_id("127.0.0.1", 40000,
                                                              "127.0.0.2", 80)
    assert (cli["network"]["direction"], srv["network"]["direction"]) == ("egress", "ingress")
    v6 = e.record(sample("closed", role="client", family=6, laddr="::1", lport=5,
                         raddr="2001:db8::1", rport=443, end="refused"))
    assert v6["network"]["community_id"] == community_id("::1", 5, "2001:db8::1", 443)
    assert v6["network"]["type"] == "ipv6" and v6["event"]["outcome"] == "failure"
    lis = e.record(sample("state", role="listener", old="CLOSE", new="LISTEN", **TUPLE))
    assert "source" not in lis and lis["network"]["community_id"] is None
    assert lis["event"]["type"] == ["connection", "start"]


def _connect(family, port):
    fam, host = (socket.AF_INET, "127.0.0.1") if family == 4 else (socket.AF_INET6, "::1")
    c = socket.create_connection((host, port), timeout=5)
    return c


@pytest.mark.bpf
def test_ecs_stream_from_the_kernel(tmp_path):
    """A real capture: each side of IPv4 and IPv6 connections says client ->
    server, both sides share one Community ID, every document is ECS."""
    out = tmp_path / "ecs.ndjson"
    listeners = {}
    for fam, host in ((4, "127.0.0.1"), (6, "::1")):
        ls = socket.socket(socket.AF_INET if fam == 4 else socket.AF_INET6)
        ls.bind((host, 0))
        ls.listen(8)
        listeners[fam] = ls
    ports = [ls.getsockname()[1] for ls in listeners.values()]
    args = [SOCKTRACE, "--backend", "bpf", "--format", "ecs", "-o", str(out)]
    for p in ports:
        args += ["--port", str(p)]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    clients = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:          # ready once a connection shows
            c = _connect(4, ports[0])
            a, _ = listeners[4].accept()
            c.close()
            a.close()
            if out.exists() and out.stat().st_size:
                break
            time.sleep(0.3)
        start = out.stat().st_size
        for fam, ls in listeners.items():
            c = _connect(fam, ls.getsockname()[1])
            a, _ = ls.accept()
            clients.append((fam, c.getsockname()[1], ls.getsockname()[1]))
            c.close()
            time.sleep(0.05)
            a.close()
        time.sleep(1.0)
    finally:
        proc.send_signal(2)
        _, err = proc.communicate(timeout=20)
        for ls in listeners.values():
            ls.close()
    assert proc.returncode == 0, err
    docs = [json.loads(x) for x in out.read_bytes()[start:].splitlines()]
    for d in docs:
        check_ecs(d)
    for fam, cport, sport in clients:
        mine = [d for d in docs if d["socktrace"]["type"] in ("state", "closed")
                and d["network"]["type"] == ("ipv4" if fam == 4 else "ipv6")
                and d.get("source", {}).get("port") == cport]
        sides = {d["socktrace"]["role"] for d in mine}
        assert sides == {"client", "server"}, [d["socktrace"] for d in mine]
        host = "127.0.0.1" if fam == 4 else "::1"
        want = community_id(host, cport, host, sport)
        for d in mine:
            assert d["destination"]["port"] == sport
            assert d["network"]["community_id"] == want
        client = [d for d in mine if d["socktrace"]["role"] == "client"]
        assert client[0]["process"]["pid"] == os.getpid()
        ended = [d for d in mine if d["socktrace"]["type"] == "closed"]
        assert [d["event"]["outcome"] for d in ended] == ["success"]      # the server side
        assert ended[0]["event"]["duration"] == ended[0]["socktrace"]["lifetime_ns"]
