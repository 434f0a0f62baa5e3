"""What the user asked to see, applied in user space.

Family, port and pid filters also run in the kernel (bpf_backend), so events
they reject never reach Python; they are checked again here because the proc
backend has no kernel side, and because a socket older than the tracer only
gets its pid from /proc, after the kernel has let it through.

>>> f = Filter(ports={80}, states={"TIME_WAIT"})
>>> f({"type": "state", "family": 4, "lport": 80, "rport": 5000, "old": "FIN_WAIT2", "new": "TIME_WAIT"})
True
>>> f({"type": "state", "family": 4, "lport": 81, "rport": 5000, "old": "FIN_WAIT2", "new": "TIME_WAIT"})
False
>>> Filter(nets=[parse_cidr("127.0.0.0/8")])({"type": "state", "family": 4, "laddr": "127.0.0.1", "raddr": "127.0.0.9"})
True
>>> web = Filter(cgroups=["/system.slice/nginx.service"], uids=[33])
>>> [web({"type": "state", "uid": 33, "cgroup": c}) for c in (
...     "/system.slice/nginx.service", "/system.slice/nginx.service/worker",
...     "/system.slice/nginx.service2", None)]
[True, True, False, False]
>>> Filter(containers=["ab12"])({"type": "closed", "container": "ab12" + "0" * 60})
True
"""

import ipaddress


def parse_cidr(text):
    """``10.0.0.0/8``, ``::1``, ``127.0.0.1`` -> an ip_network; ValueError
    with a readable message otherwise."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError("not an address or CIDR network: %r" % text)


def context_filters(args):
    """--uid, --netns, --cgroup, --container as Filter's keywords."""
    return {"uids": getattr(args, "uid", ()), "netns": getattr(args, "netns", ()),
            "cgroups": [c[0] for c in getattr(args, "cgroup", ())],
            "containers": getattr(args, "container", ())}


class Filter:
    def __init__(self, family=None, ports=(), lports=(), rports=(), pids=(),
                 comms=(), states=(), nets=(), types=None, uids=(), netns=(), cgroups=(),
                 containers=()):
        self.family = family
        self.ports, self.lports, self.rports = set(ports), set(lports), set(rports)
        self.pids = set(pids)
        self.comms = set(comms)
        self.states = set(states)
        self.nets = list(nets)
        self.types = set(types) if types is not None else None
        self.uids, self.netns = set(uids), set(netns)
        # cgroup paths: that cgroup and below ("/" is everything)
        self.cgroups = tuple(c.rstrip("/") + "/" for c in cgroups)
        self.containers = tuple(containers)
        self._addr_cache = {}
        self.active = bool(family or ports or lports or rports or pids or comms
                           or states or nets or types is not None or uids or netns
                           or cgroups or containers)
        # what the kernel cannot decide for the eBPF backend's records: a
        # pid filter passes sockets whose owner the kernel does not know
        self.narrows_records = bool(pids or comms or states or nets)

    def __call__(self, rec):
        if self.types is not None and rec["type"] not in self.types:
            return False
        if rec["type"] in ("lost", "summary"):
            return True
        if self.family and rec["family"] != self.family:
            return False
        if self.ports or self.lports or self.rports:
            lp, rp = rec["lport"], rec["rport"]
            if not (lp in self.ports or rp in self.ports or lp in self.lports
                    or rp in self.rports):
                return False
        if self.pids and rec.get("pid") not in self.pids:
            return False
        if self.comms and rec.get("comm") not in self.comms:
            return False
        if self.states:
            if rec["type"] == "state":
                if rec["old"] not in self.states and rec["new"] not in self.states:
                    return False
            elif rec["type"] == "socket":
                if rec["state"] not in self.states:
                    return False
            elif rec["type"] == "closed":
                if not self.states.intersection(rec["path"]):
                    return False
        if self.nets and not (self._in_nets(rec["laddr"]) or self._in_nets(rec["raddr"])):
            return False
        if self.uids and rec.get("uid") not in self.uids:
            return False
        if self.netns and rec.get("netns") not in self.netns:
            return False
        if self.cgroups:
            path = rec.get("cgroup")
            if path is None or not (path.rstrip("/") + "/").startswith(self.cgroups):
                return False
        if self.containers:
            cid = rec.get("container")
            if cid is None or not cid.startswith(self.containers):
                return False
        return True

    def _in_nets(self, text):
        hit = self._addr_cache.get(text)
        if hit is None:
            addr = ipaddress.ip_address(text)
            mapped = getattr(addr, "ipv4_mapped", None)
            hit = any(addr in n or (mapped is not None and mapped in n) for n in self.nets)
            if len(self._addr_cache) > 65536:
                self._addr_cache.clear()
            self._addr_cache[text] = hit
        return hit
