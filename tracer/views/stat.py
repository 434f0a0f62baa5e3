"""``socktrace stat``: ``ss -s`` and the usual awk pipelines, on one screen.

One sock_diag dump and one walk of /proc/*/fd give: sockets per state and
family; the top remote addresses, local ports and processes; TIME_WAIT
per destination against the ephemeral port range (the exhaustion risk:
one source address can hold at most one socket per local port toward one
destination address and port); SYN_RECV and the accept queue per
listener; and the oldest CLOSE_WAIT with its owner (a leak: the
application never closed a connection its peer ended).  /proc/net/netstat
adds the kernel's counters since boot: listen overflows and drops, SYN
cookies, request-queue drops, TIME_WAIT overflow.  /proc/net/sockstat is
what ``ss -s`` prints.
"""

import heapq
from collections import Counter
from operator import itemgetter

from .. import states
from ..text import safe
from . import common

EPILOG = """\
examples:
  socktrace stat                    the whole host (this network namespace)
  socktrace stat --port 443         only sockets on port 443
  socktrace stat --top 10 --json | jq .time_wait

Counters from /proc/net/netstat count since boot (this network namespace).
The CLOSE_WAIT age is an estimate: time since the socket last received data.
"""

NAMES = states.NAMES
LISTEN = states.LISTEN
TIME_WAIT = states.TIME_WAIT
CLOSE_WAIT = states.CLOSE_WAIT
SYN_RECV = states.SYN_RECV
NEW_SYN_RECV = states.NEW_SYN_RECV
ORDER = ("ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
         "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING")
WILDCARD = {4: "0.0.0.0", 6: "::"}
# TcpExt counters shown (name in /proc/net/netstat, what it means)
COUNTERS = (
    ("ListenOverflows", "SYN or ACK dropped: accept queue full"),
    ("ListenDrops", "dropped at a listener, any reason (overflows included)"),
    ("TCPReqQFullDrop", "SYN dropped: SYN queue full, no cookies"),
    ("TCPReqQFullDoCookies", "SYN cookie sent: SYN queue full"),
    ("SyncookiesSent", "SYN cookies sent"),
    ("SyncookiesRecv", "SYN cookies accepted"),
    ("SyncookiesFailed", "SYN cookies invalid"),
    ("TCPTimeWaitOverflow", "no TIME_WAIT: tcp_max_tw_buckets reached"),
    ("TCPAbortOnMemory", "reset: out of socket memory"),
)
SNMP = ("ActiveOpens", "PassiveOpens", "AttemptFails", "EstabResets", "CurrEstab",
        "RetransSegs", "InErrs", "OutRsts")


def build_parser():
    p = common.parser("stat", "Counts per state and family, top peers, ports and "
                      "processes,\nTIME_WAIT against the ephemeral port range, "
                      "SYN_RECV per listener,\nlisten overflows, the oldest CLOSE_WAIT.",
                      EPILOG)
    p.add_argument("--top", type=common._positive_int, default=5, metavar="N",
                   help="entries per top list (default 5)")
    p.add_argument("--no-owners", action="store_true",
                   help="skip the walk of /proc/*/fd (no processes; faster)")
    return p


def main(argv):
    return common.run("stat", build_parser(), view, argv)


# --- /proc ---------------------------------------------------------------------


def read_pairs(path):
    """/proc/net/netstat or snmp: {"TcpExt": {"ListenOverflows": 3, ...}, ...}."""
    out = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for head, vals in zip(lines[0::2], lines[1::2]):
        hp, _, hnames = head.partition(":")
        vp, _, hvals = vals.partition(":")
        if hp != vp:
            continue
        try:
            out[hp] = dict(zip(hnames.split(), (int(v) for v in hvals.split())))
        except ValueError:
            continue
    return out


def read_sockstat(path="/proc/net/sockstat", prefix="TCP:"):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    parts = line.split()[1:]
                    for k, v in zip(parts[0::2], parts[1::2]):
                        out[k] = int(v)
    except (OSError, ValueError):
        pass
    return out


def ss_summary(sockstat, snmp):
    """The TCP line of ``ss -s``, from the same files ss reads it from
    (misc/ss.c: total = alloc + tw, estab = CurrEstab, closed = alloc -
    (inuse + inuse6 - tw))."""
    if not sockstat:
        return None
    inuse6 = read_sockstat("/proc/net/sockstat6", "TCP6:").get("inuse", 0)
    alloc, tw = sockstat.get("alloc", 0), sockstat.get("tw", 0)
    return {"total": alloc + tw, "estab": snmp.get("CurrEstab"),
            "closed": alloc - (sockstat.get("inuse", 0) + inuse6 - tw),
            "orphaned": sockstat.get("orphan", 0), "timewait": tw}


def _loopback(addr):
    """Is this address (sock_diag's text: dotted IPv4, RFC 5952 IPv6,
    IPv4-mapped as ::ffff:a.b.c.d) in 127/8 or ::1?

    >>> [_loopback(a) for a in ("127.0.0.1", "127.9.9.9", "10.0.0.1", "::1",
    ...                         "::ffff:127.0.0.2", "::ffff:10.0.0.1", "fe80::1")]
    [True, True, False, True, True, False, False]
    """
    return addr.startswith(("127.", "::ffff:127.")) or addr == "::1"


def _top(counter, n):
    """The *n* largest counts, ties by key.  Only the entries that can make
    the cut are sorted in Python (a host's 10k client ports count 1 each)."""
    if len(counter) <= n:
        return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    floor = heapq.nlargest(n, counter.values())[-1]
    big = [kv for kv in counter.items() if kv[1] > floor]
    ties = sorted(k for k, v in counter.items() if v == floor)[:n - len(big)]
    return sorted(big, key=lambda kv: (-kv[1], kv[0])) + [(k, floor) for k in ties]


# --- the view --------------------------------------------------------------------


def view(args):
    m = common.Match(args)
    mask = common.state_mask(args.state)
    # listeners are needed for the per-listener figures even when --state
    # leaves them out: dump them too, count them only if asked
    want_owners = not args.no_owners or m.by_owner
    if m.ports or m.lports or m.rports:
        # only sockets on those ports leave the kernel (listeners all)
        snap = common.Snapshot(args.family, mask | (1 << LISTEN), sports=m.ports | m.lports,
                               dports=m.ports | m.rports)
    else:
        snap = common.Snapshot(args.family, mask | (1 << LISTEN))
    allsocks = snap.sockets
    socks = [s for s in allsocks if m.sock(s)] if m.narrows else allsocks
    owners = None
    if want_owners:
        owners = snap.walk_owners(socks)
        if m.by_owner:
            socks = [s for s in socks if m.owner(owners.get(s.inode))]
    top = args.top

    # listeners (all of them: a connection's local port is a service port
    # if anything listens on it, whatever the filters say)
    listen_ports = set()
    listeners = {}
    for s in allsocks:
        if s.state == LISTEN:
            listen_ports.add((s.family, s.lport))
            key = (s.family, s.laddr, s.lport)
            q = listeners.get(key)
            if q is None:
                listeners[key] = [s.rqueue, s.wqueue, 0, 1]
            else:   # a SO_REUSEPORT group: queues add up
                q[0] += s.rqueue
                q[1] += s.wqueue
                q[3] += 1

    # Counting: Counter over zip/map/itemgetter runs in C, a third of the
    # time of a Python loop at 10k sockets.  DiagSocket fields by index.
    FAM, LADDR, LPORT, RADDR, RPORT, STATE = (itemgetter(i) for i in range(6))
    per_state = Counter(zip(map(STATE, socks), map(FAM, socks)))
    if NEW_SYN_RECV in {st for st, _ in per_state}:
        for f in (4, 6):
            n = per_state.pop((NEW_SYN_RECV, f), 0)
            if n:
                per_state[(SYN_RECV, f)] += n
    conns = [s for s in socks if s[5] != LISTEN]
    remotes = Counter(zip(map(FAM, conns), map(RADDR, conns)))
    # local ports, split by whether something of the same family listens
    # there: counted by port in C (most are clients' ports, one socket
    # each), then only the listeners' ports are split in Python
    by_port = Counter(map(LPORT, conns))
    lnums = {p for _, p in listen_ports}
    served = [s for s in conns if s[2] in lnums]
    lports = Counter()
    for (fam, lp), n in Counter(zip(map(FAM, served), map(LPORT, served))).items():
        if (fam, lp) in listen_ports:
            lports[(lp, True)] += n
            by_port[lp] -= n
    for lp in lnums & by_port.keys():
        if not by_port[lp]:
            del by_port[lp]
    lports.update({(lp, False): n for lp, n in _top(by_port, top)})
    tws = [s for s in conns if s[5] == TIME_WAIT]
    tw_peers = Counter(zip(map(FAM, tws), map(RADDR, tws)))
    syn = Counter()
    for s in conns:
        if s[5] == SYN_RECV or s[5] == NEW_SYN_RECV:
            k = (s.family, s.laddr, s.lport)
            if k not in listeners:
                k = (s.family, WILDCARD[s.family], s.lport)
            syn[k] += 1
    cws = [s for s in conns if s[5] == CLOSE_WAIT]
    # client ends, toward a destination: a local port in the ephemeral
    # range that nothing listens on
    rng = common.port_range()
    lo, hi = rng if rng else (32768, 60999)
    clients = [s for s in conns if lo <= s[2] <= hi and (s[0], s[2]) not in listen_ports]
    dests = {}     # (family, raddr, rport) -> [tw, other, {laddr: n}]
    for (fam, raddr, rport, laddr, st), n in Counter(zip(
            map(FAM, clients), map(RADDR, clients), map(RPORT, clients), map(LADDR, clients),
            map(STATE, clients))).items():
        e = dests.get((fam, raddr, rport))
        if e is None:
            e = dests[(fam, raddr, rport)] = [0, 0, {}]
        e[0 if st == TIME_WAIT else 1] += n
        e[2][laddr] = e[2].get(laddr, 0) + n

    total = len(socks)
    state_rows = []
    for name in ORDER:
        num = states.NUMBERS[name]
        by = {f: per_state.get((num, f), 0) for f in (4, 6)}
        if any(by.values()):
            state_rows.append({"state": name, "ipv4": by[4], "ipv6": by[6],
                               "total": by[4] + by[6]})

    # processes: distinct sockets held, and how many of them per state
    procs = {}
    if owners is not None and owners.by_inode:
        state_of = {s[7]: s[5] for s in socks if s[7]}
        names = NAMES
        for ino, holders in owners.by_inode.items():
            st = state_of.get(ino)
            if st is None:
                continue   # left out by an owner filter
            n = names[st]
            seen = set()
            for pid, comm, _fd in holders:
                if pid in seen:
                    continue    # one process, the socket at two fds
                seen.add(pid)
                p = procs.get(pid)
                if p is None:
                    p = procs[pid] = [comm, 0, {}]
                p[1] += 1
                p[2][n] = p[2].get(n, 0) + 1
    top_procs = sorted(procs.items(), key=lambda kv: (-kv[1][1], kv[0]))[:top]

    # TIME_WAIT per destination
    span = hi - lo + 1
    tw_reuse = common.read_int("/proc/sys/net/ipv4/tcp_tw_reuse")
    tw_rows = []
    for (fam, raddr, rport), (tw, other, srcs) in dests.items():
        if not tw:
            continue
        worst_src, worst = max(srcs.items(), key=lambda kv: (kv[1], kv[0]))
        reusable = tw_reuse == 1 or (tw_reuse == 2 and _loopback(raddr))
        tw_rows.append({
            "family": fam, "raddr": raddr, "rport": rport, "time_wait": tw,
            "other": other, "sources": len(srcs), "worst_source": worst_src,
            "worst_source_ports": worst, "range_used_pct": round(100.0 * worst / span, 1),
            "tw_reuse_applies": reusable,
        })
    tw_rows.sort(key=lambda r: (-r["time_wait"], r["raddr"], r["rport"]))

    syn_rows = []
    for key, (q, mx, _n, group) in listeners.items():
        n = syn.get(key, 0)
        if n or q:
            fam, addr, port = key
            syn_rows.append({"family": fam, "addr": addr, "port": port, "syn_recv": n,
                             "accept_queue": q, "accept_max": mx, "reuseport_group": group})
    syn_rows.sort(key=lambda r: (-r["syn_recv"], -r["accept_queue"], r["port"]))

    cw = snap.close_wait_info() if cws else {}
    cw_rows = []
    for s in cws:
        a, est = common.age(s, cw)
        cw_rows.append((a if a is not None else -1.0, s))
    cw_rows.sort(key=lambda r: (-r[0], r[1].lport))
    cw_by_proc = {}
    if owners is not None:
        for s in cws:
            for pid, comm, _fd in owners.get(s.inode):
                cw_by_proc[(pid, comm)] = cw_by_proc.get((pid, comm), 0) + 1
    oldest = []
    for a, s in cw_rows[:top]:
        oldest.append({
            "family": s.family, "laddr": s.laddr, "lport": s.lport, "raddr": s.raddr,
            "rport": s.rport, "recv_q": s.rqueue, "age_s": None if a < 0 else round(a, 3),
            "age_estimate": a >= 0,
            "owners": common.owners_json(owners.get(s.inode)) if owners is not None else None,
        })

    netstat = read_pairs("/proc/net/netstat").get("TcpExt", {})
    snmp = read_pairs("/proc/net/snmp").get("Tcp", {})
    sockstat = read_sockstat()
    notes = []
    if owners is not None:
        n = common.note_owners(owners)
        if n:
            notes.append(n)
    doc = {
        "command": "stat", "ts": common.iso(snap.t), "total": total,
        "families": {"ipv4": sum(r["ipv4"] for r in state_rows),
                     "ipv6": sum(r["ipv6"] for r in state_rows)},
        "states": state_rows,
        "sockstat": sockstat,
        "ss_s": ss_summary(sockstat, snmp),
        "top_remote_addresses": [{"family": f, "addr": a, "sockets": n}
                                 for (f, a), n in _top(remotes, top)],
        "top_local_ports": [{"port": p, "listening": srv, "sockets": n}
                            for (p, srv), n in _top(lports, top)],
        "top_processes": None if owners is None else [
            {"pid": pid, "comm": c, "sockets": n,
             "states": {k: v for k, v in sorted(by.items(), key=lambda kv: -kv[1])}}
            for pid, (c, n, by) in top_procs],
        "time_wait": {
            "ephemeral_range": [lo, hi], "range_size": span, "tcp_tw_reuse": tw_reuse,
            "total": per_state.get((TIME_WAIT, 4), 0) + per_state.get((TIME_WAIT, 6), 0),
            "max_tw_buckets": common.read_int("/proc/sys/net/ipv4/tcp_max_tw_buckets"),
            "destinations": tw_rows[:top], "destinations_total": len(tw_rows),
            "by_remote_address": [{"family": f, "addr": a, "time_wait": n}
                                  for (f, a), n in _top(tw_peers, top)],
        },
        "listeners": syn_rows[:top], "listeners_busy": len(syn_rows),
        "counters": {k: netstat.get(k) for k, _ in COUNTERS},
        "tcp": {k: snmp.get(k) for k in SNMP},
        "close_wait": {
            "total": len(cws), "oldest": oldest,
            "by_process": None if owners is None else [
                {"pid": pid, "comm": c, "close_wait": n}
                for (pid, c), n in _top(cw_by_proc, top)],
        },
        "owners_complete": owners is not None and not owners.denied,
        "notes": notes,
    }
    if args.json:
        return common.emit(doc=doc)
    return common.emit(text_lines=render(doc))


# --- text --------------------------------------------------------------------------


def side_by_side(blocks, w):
    """Blocks of lines next to each other when they fit in *w*, else stacked."""
    widths = [max((len(x) for x in b), default=0) for b in blocks]
    if sum(widths) + 3 * (len(blocks) - 1) > w:
        out = []
        for b in blocks:
            out.extend(b)
            out.append("")
        return out[:-1]
    out = []
    for i in range(max(len(b) for b in blocks)):
        cells = [(b[i] if i < len(b) else "").ljust(wd) for b, wd in zip(blocks, widths)]
        out.append("   ".join(cells).rstrip())
    return out


def _addr(family, addr):
    return "[%s]" % addr if family == 6 and ":" in addr else addr


def render(doc):
    w = common.width()
    out = []
    out.append("TCP sockets: %d (IPv4 %d, IPv6 %d)   %s" % (
        doc["total"], doc["families"]["ipv4"], doc["families"]["ipv6"], doc["ts"]))
    k = doc["ss_s"]
    if k:
        out.append("ss -s: TCP: %d (estab %s, closed %d, orphaned %d, timewait %d)"
                   % (k["total"], k["estab"], k["closed"], k["orphaned"], k["timewait"]))
    rows = [["STATE", "IPv4", "IPv6", "TOTAL"]]
    for r in doc["states"]:
        rows.append([r["state"], str(r["ipv4"]), str(r["ipv6"]), str(r["total"])])
    out.append("")
    st_block = common.table(rows, "<>>>")
    # the counters beside the states when they fit
    c = doc["counters"]
    cnt = [["COUNTER (since boot)", "VALUE"]]
    for k, _ in COUNTERS:
        if c.get(k) is not None:
            cnt.append([k, str(c[k])])
    out.extend(side_by_side([st_block, common.table(cnt, "<>")], w))

    out.append("")
    ra = ["TOP REMOTE ADDR  SOCKETS".split("  ")]
    for r in doc["top_remote_addresses"]:
        ra.append([safe(_addr(r["family"], r["addr"])), str(r["sockets"])])
    lp = [["TOP LOCAL PORT", "SOCKETS"]]
    for r in doc["top_local_ports"]:
        lp.append(["%d%s" % (r["port"], " (listen)" if r["listening"] else ""),
                   str(r["sockets"])])
    blocks = [common.table(ra, "<>"), common.table(lp, "<>")]
    out.extend(side_by_side(blocks, w))
    if doc["top_processes"] is not None:
        out.append("")
        pr = [["TOP PROCESS", "SOCKETS", "STATES"]]
        for r in doc["top_processes"]:
            sts = ", ".join("%s %d" % (k.lower().replace("_", "-"), v)
                            for k, v in list(r["states"].items())[:3])
            pr.append(["%s/%d" % (safe(r["comm"]), r["pid"]), str(r["sockets"]), sts])
        if len(pr) > 1:
            out.extend(common.table(pr, "<><", maxw=w))
        else:
            out.append("no process holds a socket here (or none we may see)")

    t = doc["time_wait"]
    out.append("")
    reuse = {0: "off", 1: "on", 2: "loopback only"}.get(t["tcp_tw_reuse"], str(t["tcp_tw_reuse"]))
    out.append("TIME_WAIT %d of max %s; ephemeral ports %d-%d (%d)" % (
        t["total"], t["max_tw_buckets"], t["ephemeral_range"][0], t["ephemeral_range"][1],
        t["range_size"]))
    out.append("tcp_tw_reuse %s (%s); PORTS USED: by the busiest source address"
               % (t["tcp_tw_reuse"], reuse))
    if t["destinations"]:
        rows = [["TO", "TIME_WAIT", "OTHER", "SRCS", "PORTS USED", "REUSE"]]
        for r in t["destinations"]:
            rows.append([safe(common.fmt_ep(r["family"], r["raddr"], r["rport"])),
                         str(r["time_wait"]), str(r["other"]), str(r["sources"]),
                         "%d (%.1f%%)" % (r["worst_source_ports"], r["range_used_pct"]),
                         "yes" if r["tw_reuse_applies"] else "no"])
        out.extend(common.table(rows, "<>>>><"))
        if t["destinations_total"] > len(t["destinations"]):
            out.append("  ... %d destinations in all" % t["destinations_total"])
    if t["by_remote_address"]:
        line = "TIME_WAIT by remote address:"
        for i, r in enumerate(t["by_remote_address"]):
            part = "%s %s %d" % ("," if i else "", safe(_addr(r["family"], r["addr"])),
                                 r["time_wait"])
            if i and len(line) + len(part) > w:
                break
            line += part
        out.append(line)

    out.append("")
    if doc["listeners"]:
        rows = [["LISTENER", "SYN_RECV", "ACCEPT-Q", "MAX"]]
        for r in doc["listeners"]:
            addr = common.fmt_ep(r["family"], r["addr"], r["port"])
            if r["reuseport_group"] > 1:
                addr += " (x%d)" % r["reuseport_group"]
            rows.append([safe(addr), str(r["syn_recv"]), str(r["accept_queue"]),
                         str(r["accept_max"])])
        out.extend(common.table(rows, "<>>>"))
    else:
        out.append("no listener with SYN_RECV or a waiting accept queue")

    cw = doc["close_wait"]
    out.append("")
    if cw["total"]:
        out.append("CLOSE_WAIT %d; oldest (age ~ since data last arrived):" % cw["total"])
        rows = [["LOCAL", "REMOTE", "AGE", "RECV-Q", "PROCESS"]]
        for r in cw["oldest"]:
            holders = [(o["pid"], o["comm"], o["fd"]) for o in (r["owners"] or ())]
            rows.append([safe(common.fmt_ep(r["family"], r["laddr"], r["lport"])),
                         safe(common.fmt_ep(r["family"], r["raddr"], r["rport"])),
                         common.fmt_age(r["age_s"], r["age_estimate"]), str(r["recv_q"]),
                         common.fmt_owners(holders, limit=30) if r["owners"] is not None
                         else "?"])
        out.extend(common.table(rows, "<<>><", maxw=w))
        if cw["by_process"]:
            out.append("  per process: " + ", ".join(
                "%s/%d %d" % (safe(r["comm"]), r["pid"], r["close_wait"])
                for r in cw["by_process"]))
    else:
        out.append("no CLOSE_WAIT")
    for n in doc["notes"]:
        out.append("note: " + safe(n))
    return out
