"""socktrace records in the Elastic Common Schema (ECS 8.x): ``--format ecs``.

Elastic, OpenSearch and any ECS-based pipeline read these without a rename
step.  What maps onto ECS does (time, direction, process, host, Community
ID); everything else is kept, with its socktrace name, under ``socktrace.``
(``socktrace.type`` among them: a top-level ``type`` would collide with the
field Logstash inputs set).  tests/test_ecs.py checks every field name used
here against ECS 8.17's field list (tests/data/ecs-8.17.0-fields.json).

Direction is client to server on every record, whichever side wrote it:
``source`` is the client and ``destination`` the server (role ``client``:
local -> remote; ``server``: remote -> local; ``listener``: destination
only, no ``source``).  A socket whose role is unknown (it predates socktrace) keeps local
as source, with ``network.direction: unknown``.

>>> e = Ecs(host="h")
>>> r = e.record({"type": "state", "ts": "2026-12-05T12:00:00.000001Z", "conn": "1f",
...     "family": 4, "laddr": "127.0.0.1", "lport": 40000, "raddr": "127.0.0.1",
...     "rport": 80, "old": "SYN_SENT", "new": "ESTABLISHED", "in_old_ns": 41000,
...     "lower_bound": False, "pid": 7, "comm": "curl", "owner_from": "connect",
...     "role": "client", "via": None, "reason": None, "source": "bpf", "approx": False})
>>> r["source"], r["destination"], r["network"]["direction"]
({'ip': '127.0.0.1', 'port': 40000}, {'ip': '127.0.0.1', 'port': 80}, 'egress')
>>> r["event"]["action"], r["event"]["duration"], r["process"]
('tcp-state-change', 41000, {'pid': 7, 'name': 'curl'})
>>> r["network"]["community_id"]        # the spec's SHA-1, checked by hand
'1:5rFr+y3i0wpQbEhThSaj08U8BaE='
"""

import socket

# ECS event.outcome of a connection by how it ended (tracer/spec.py END)
OUTCOME = {"normal": "success", "refused": "failure", "timeout": "failure",
           "reset": "failure", "error": "failure", "aborted": "failure",
           "cancelled": "unknown", "unknown": "unknown"}
# the connection's opening transitions (ECS event.type "start")
_STARTS = {("CLOSE", "SYN_SENT"), ("LISTEN", "SYN_RECV"), ("CLOSE", "LISTEN")}
# record fields that ECS fields carry; the rest go under socktrace.*
_MAPPED = frozenset(("ts", "pid", "comm", "family", "laddr", "lport", "raddr", "rport"))
_ACTION = {"state": "tcp-state-change", "closed": "tcp-connection-closed",
           "socket": "tcp-socket", "lost": "records-lost", "summary": "socktrace-summary"}
_KIND = {"state": "event", "closed": "event", "socket": "state", "lost": "event",
         "summary": "metric"}
_DIRECTION = {"client": "egress", "server": "ingress", "listener": "ingress"}
_CID_CACHE_MAX = 65536


class Ecs:
    """Turns records into ECS documents; holds the host name and a cache of
    Community IDs (a SHA-1 each, the same for every record of a flow)."""

    def __init__(self, host=None):
        self.host = {"name": host if host is not None else socket.gethostname()}
        self._cids = {}
        try:
            import communityid
        except ImportError:            # the id is then null; the rest is the same
            self._cid = None
        else:
            self._cid = communityid.CommunityID()
            self._flow = communityid.FlowTuple.make_tcp

    def community_id(self, src, sport, dst, dport):
        key = (src, sport, dst, dport)
        cid = self._cids.get(key)
        if cid is None and self._cid is not None:
            if len(self._cids) >= _CID_CACHE_MAX:
                self._cids.clear()
            try:
                cid = self._cid.calc(self._flow(src, dst, sport, dport))
            except Exception:           # an address the library does not take
                cid = None
            self._cids[key] = cid
        return cid

    def record(self, r):
        t = r["type"]
        doc = {"@timestamp": r["ts"],
               "event": {"kind": _KIND[t], "category": ["network"],
                         "type": self._types(r), "action": _ACTION[t],
                         "duration": _duration(r), "outcome": _outcome(r),
                         "dataset": "socktrace." + t, "module": "socktrace"},
               "host": self.host}
        if "family" in r:
            doc["network"], src, dst = self._ends(r)
            if src is not None:        # a listener has no client
                doc["source"] = src
            doc["destination"] = dst
        if "pid" in r:
            doc["process"] = {"pid": r["pid"], "name": r["comm"]}
        doc["socktrace"] = {k: v for k, v in r.items() if k not in _MAPPED}
        return doc

    @staticmethod
    def _types(r):
        t = r["type"]
        if t == "state":
            if (r["old"], r["new"]) in _STARTS:
                return ["connection", "start"]
            return ["connection", "end" if r["new"] == "CLOSE" else "info"]
        if t == "closed":
            return ["connection", "end"]
        if t == "socket":
            return ["connection", "info"]
        return ["info"]            # lost (its outcome: failure), summary

    def _ends(self, r):
        local = {"ip": r["laddr"], "port": r["lport"]}
        remote = {"ip": r["raddr"], "port": r["rport"]}
        role = r.get("role")
        if role == "server":
            src, dst = remote, local
        elif role == "listener":
            src, dst = None, local
        else:
            src, dst = local, remote
        net = {"transport": "tcp", "type": "ipv4" if r["family"] == 4 else "ipv6",
               "iana_number": "6", "direction": _DIRECTION.get(role, "unknown"),
               # none before both ports are known (CLOSE->SYN_SENT has port 0):
               # an id of port 0 would name no flow
               "community_id": (self.community_id(src["ip"], src["port"], dst["ip"],
                                                  dst["port"])
                                if src is not None and src["port"] and dst["port"]
                                else None)}
        return net, src, dst


def _duration(r):
    t = r["type"]
    if t == "state":
        return r["in_old_ns"]
    if t == "closed":
        return r["lifetime_ns"]
    if t == "socket":
        return r["in_state_ns"]
    return None


def _outcome(r):
    if r["type"] == "closed":
        return OUTCOME.get(r["end"], "unknown")
    if r["type"] == "lost":
        return "failure"
    return "unknown"
