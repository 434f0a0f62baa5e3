"""``socktrace ports [PORT...]``: listeners as ``ss -tlnp`` shows them, and more.

Per listening socket: address and port, every process that holds it (all
pre-forked workers; one row per socket of a SO_REUSEPORT group, as ss),
its accept queue now and its maximum (sock_diag's rqueue and wqueue for a
LISTEN socket), and the connections on its address and port per state
(pending requests count as SYN_RECV).  With PORT (or any filter flag), also
every connection on it, with its owners and its age where the kernel tells
it, as ``lsof -i :PORT`` would list them.
"""

from .. import sockdiag, states
from ..text import safe
from . import common

EPILOG = """\
examples:
  socktrace ports                   listeners: queues, connections, processes
  socktrace ports 8080              the listener on 8080, every connection on it
  socktrace ports 5432 --state close-wait   who leaks CLOSE_WAIT on 5432
  socktrace ports --comm nginx --json | jq .listeners

States in the connection table as ss spells them (ESTAB, TIME-WAIT); JSON
keeps the kernel's names.
ACCEPT-Q: a listener's accept queue now / its maximum (the backlog).  RQ, SQ:
a connection's bytes not yet read / not yet acknowledged (ss's Recv-Q,
Send-Q).  AGE: TIME_WAIT from its timer (exact), CLOSE_WAIT ~ time since
data last arrived (an estimate, marked ~), others unknown (-).
Filters select the sockets listed; --state applies to connections, not to
listeners.
"""

LISTEN = states.LISTEN
WILDCARD = {4: "0.0.0.0", 6: "::"}
# the order connections are listed and counted in
ORDER = ("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "FIN_WAIT1",
         "FIN_WAIT2", "CLOSING", "TIME_WAIT", "SYN_SENT", "CLOSE", "NEW_SYN_RECV")
_RANK = {n: i for i, n in enumerate(ORDER)}
SHORT = {"ESTABLISHED": "estab", "SYN_RECV": "syn-recv", "SYN_SENT": "syn-sent",
         "FIN_WAIT1": "fin-wait-1", "FIN_WAIT2": "fin-wait-2", "TIME_WAIT": "time-wait",
         "CLOSE_WAIT": "close-wait", "LAST_ACK": "last-ack", "CLOSING": "closing",
         "CLOSE": "close", "NEW_SYN_RECV": "syn-recv"}


# ss's spellings in the connection table: narrower, and what on-call eyes
# compare with (JSON keeps the kernel's names)
SS_NAME = {"ESTABLISHED": "ESTAB", "SYN_SENT": "SYN-SENT", "SYN_RECV": "SYN-RECV",
           "FIN_WAIT1": "FIN-WAIT-1", "FIN_WAIT2": "FIN-WAIT-2", "TIME_WAIT": "TIME-WAIT",
           "CLOSE": "UNCONN", "CLOSE_WAIT": "CLOSE-WAIT", "LAST_ACK": "LAST-ACK",
           "LISTEN": "LISTEN", "CLOSING": "CLOSING", "NEW_SYN_RECV": "SYN-RECV"}


def build_parser():
    p = common.parser("ports", "Listeners with their queues, connections and every "
                      "process holding them;\nwith PORT, every connection on it.",
                      EPILOG)
    p.add_argument("PORT", nargs="*", type=_one_port,
                   help="show this port's listeners and every connection on it")
    return p


def _one_port(text):
    ports = common._ports(text)
    if len(ports) != 1:
        raise common.argparse.ArgumentTypeError("one port per argument: %r" % text)
    return ports[0]


def main(argv):
    return common.run("ports", build_parser(), view, argv)


def _state_counts(socks):
    """(family, laddr, lport) of a listener -> {state: n}, for every socket
    not LISTEN whose local end is that listener's (a wildcard listener
    takes what no specific one on the port does)."""
    specific = {}   # (family, port) -> set of specific addresses
    for s in socks:
        if s.state == LISTEN:
            specific.setdefault((s.family, s.lport), set()).add(s.laddr)
    counts = {}
    names = states.NAMES
    for s in socks:
        if s.state == LISTEN:
            continue
        addrs = specific.get((s.family, s.lport))
        if addrs is None:
            continue
        if s.laddr in addrs:
            key = (s.family, s.laddr, s.lport)
        elif WILDCARD[s.family] in addrs:
            key = (s.family, WILDCARD[s.family], s.lport)
        else:
            continue
        c = counts.get(key)
        if c is None:
            c = counts[key] = {}
        n = names[s.state]
        if n == "NEW_SYN_RECV":
            n = "SYN_RECV"
        c[n] = c.get(n, 0) + 1
    return counts


def view(args):
    want = set(args.PORT)
    m = common.Match(args)
    by_port = bool(want or m.ports or m.lports or m.rports)
    narrowed = by_port or bool(m.by_owner or m.states or m.nets)
    # Listeners first (the kernel walks only its listening table for them),
    # then only the sockets on the ports that matter, filtered in the
    # kernel: at 100k sockets most never cross into Python.
    snap = common.Snapshot(args.family, dump=False)
    lsn = snap.listeners()
    lcands = [s for s in lsn if (not want or s.lport in want) and m.sock(s, states_too=False)]
    if narrowed and not by_port:
        rest = sockdiag.dump(snap.families, sockdiag.ALL & ~common.LISTEN_BIT)
    else:
        sports = {s.lport for s in lcands} | want | m.ports | m.lports
        dports = (want | m.ports | m.rports) if narrowed else set()
        rest = snap.rest(sockdiag.ALL, sports, dports)
    socks = snap.sockets = lsn + rest

    ccands = []
    if narrowed:
        for s in socks:
            if s.state == LISTEN:
                continue
            if want and not (s.lport in want or s.rport in want):
                continue
            if m.sock(s):
                ccands.append(s)
    owners = snap.walk_owners(lcands + ccands)
    get = owners.get
    lsocks = [s for s in lcands if m.owner(get(s.inode))]
    csocks = [s for s in ccands if m.owner(get(s.inode))]

    counts = _state_counts(socks)
    groups = {}
    for s in lsocks:
        key = (s.family, s.laddr, s.lport)
        groups[key] = groups.get(key, 0) + 1
    lsocks.sort(key=lambda s: (s.lport, s.family, s.laddr, s.inode))

    listeners = []
    for s in lsocks:
        key = (s.family, s.laddr, s.lport)
        c = counts.get(key, {})
        listeners.append({
            "family": s.family, "addr": s.laddr, "port": s.lport,
            "accept_queue": s.rqueue, "accept_max": s.wqueue,
            "owners": common.owners_json(get(s.inode)),
            "connections": {n: c[n] for n in ORDER if n in c},
            "total": sum(c.values()),
            "reuseport_group": groups[key],
            "inode": s.inode, "cookie": "%x" % s.cookie, "uid": s.uid,
            "age_s": None,
        })

    connections = None
    if narrowed:
        cw = snap.close_wait_info() if any(s.state == states.CLOSE_WAIT for s in csocks) else {}
        fin = common.fin_timeout()
        csocks.sort(key=lambda s: (_RANK.get(states.NAMES[s.state], 99), s.family,
                                   s.lport, s.laddr, s.raddr, s.rport))
        connections = []
        for s in csocks:
            a, est = common.age(s, cw, fin)
            name = states.NAMES[s.state]
            connections.append({
                "family": s.family, "state": "SYN_RECV" if name == "NEW_SYN_RECV" else name,
                "laddr": s.laddr, "lport": s.lport, "raddr": s.raddr, "rport": s.rport,
                "recv_q": s.rqueue, "send_q": s.wqueue,
                "owners": common.owners_json(get(s.inode)),
                "age_s": None if a is None else round(a, 3), "age_estimate": est,
                "inode": s.inode, "cookie": "%x" % s.cookie, "uid": s.uid,
            })

    notes = []
    n = common.note_owners(owners)
    if n:
        notes.append(n)
    for p in sorted(want):
        if not any(x["port"] == p for x in listeners):
            notes.append("no listener on port %d%s" % (p, " that passes the filters"
                                                        if (m.by_owner or m.nets or m.family)
                                                        else ""))
    doc = {
        "command": "ports", "ts": common.iso(snap.t), "ports": sorted(want),
        "listeners": listeners, "connections": connections,
        "owners_complete": not owners.denied, "notes": notes,
    }
    if args.json:
        return common.emit(doc=doc, rows=len(connections or ()))
    return common.emit(text_lines=render(doc))


def render(doc):
    w = common.width()
    out = []
    ls = doc["listeners"]
    out.append("LISTENERS (%d)" % len(ls))
    if ls:
        rows = [["ADDRESS", "ACCEPT-Q", "CONNS", "PROCESSES"]]
        detail = []
        for x in ls:
            addr = common.fmt_ep(x["family"], x["addr"], x["port"])
            if x["reuseport_group"] > 1:
                addr += " (x%d)" % x["reuseport_group"]
            holders = [(o["pid"], o["comm"], o["fd"]) for o in x["owners"]]
            rows.append([addr, "%d/%d" % (x["accept_queue"], x["accept_max"]),
                         str(x["total"]), ""])
            detail.append((holders, x["connections"]))
        lines = common.table(rows, "<>><")
        out.append(lines[0])
        for line, (holders, conns) in zip(lines[1:], detail):
            # the processes after the row when they fit, else below it
            text = common.fmt_owners(holders)
            if len(line) + 2 + len(text) <= w:
                out.append(line + "  " + text)
            else:
                out.append(line)
                out.extend(common.wrap(text, w, "    "))
            if conns:
                out.extend(common.wrap(", ".join("%s %d" % (SHORT[k], v)
                                                 for k, v in conns.items()), w, "  "))
    conns = doc["connections"]
    if conns is not None:
        out.append("")
        out.append("CONNECTIONS (%d)" % len(conns))
        if conns:
            rows = [["STATE", "LOCAL", "REMOTE", "RQ", "SQ", "AGE"]]
            procs = ["PROCESS"]
            for c in conns:
                holders = [(o["pid"], o["comm"], o["fd"]) for o in c["owners"]]
                rows.append([SS_NAME[c["state"]], common.fmt_ep(c["family"], c["laddr"], c["lport"]),
                             common.fmt_ep(c["family"], c["raddr"], c["rport"]),
                             str(c["recv_q"]), str(c["send_q"]),
                             common.fmt_age(c["age_s"], c["age_estimate"])])
                procs.append(common.fmt_owners(holders))
            for line, proc in zip(common.table(rows, "<<<>>>", sep=" "), procs):
                if len(line) + 2 + len(proc) <= w:
                    out.append(line + "  " + proc)
                else:   # long addresses or many holders: below the row
                    out.append(line)
                    if len(proc) + 4 <= w:
                        out.append("    " + proc)
                    else:
                        out.extend(common.wrap(proc, w, "    "))
    for n in doc["notes"]:
        out.append("note: " + safe(n))
    return out
