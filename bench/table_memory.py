"""Memory per socket in the connection table at 1,000,000 TIME_WAIT sockets.

    .venv/bin/python bench/table_memory.py [N]

Feeds N client-first connections (CLOSE->SYN_SENT ... FIN_WAIT2->TIME_WAIT,
the records the kernel side sends) through decode and the table, then
prints the growth of the process's resident set divided by N.
Target (issue 3): under 300 bytes per socket on top of the interpreter.
"""
import gc, os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tracer import records, states, wire
from tracer.table import ConnTable
S = states.NUMBERS
LO4 = bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1])
def raw(ts, sk, old, new, sport, in_old=None, twaddr=0, via=0, kind=0):
    return (ts, sk, twaddr, in_old or 0, LO4, LO4, 100, sport, 80, 4, S[old], S[new], 1,
            wire.F_IN_OLD if in_old is not None else 0, 0, via, kind, b"curl".ljust(16, b"\0"))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
fmt = records.Formatter(0)
table = ConnTable(0, cap=10**7)
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
gc.collect(); before = rss()
t0 = time.time()
for i in range(N):
    sk = 0xffff888100000000 + i * 64
    port = 1024 + i % 60000
    for r in (raw(1, sk, "CLOSE", "SYN_SENT", 0), raw(2, sk, "SYN_SENT", "ESTABLISHED", port, 1),
              raw(3, sk, "ESTABLISHED", "FIN_WAIT1", port, 1), raw(4, sk, "FIN_WAIT1", "FIN_WAIT2", port, 1),
              raw(5, sk, "FIN_WAIT2", "TIME_WAIT", port, 1, twaddr=sk + 1, via=1)):
        rec, ts, k, tw = records.decode(fmt, r)
        table.apply(rec, ts, k, tw)
gc.collect(); after = rss()
print("sockets %d  in table %d  RSS delta %.1f MB  = %.0f bytes/socket  (%.1fs, %.2f us/event)" % (
    N, len(table.tw), (after - before) / 1e6, (after - before) / N, time.time() - t0, (time.time()-t0)/N/5*1e6))
