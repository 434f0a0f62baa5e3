"""socktrace stopping while connections still churn.

Until the programs are detached, the kernel goes on sending records and
counting them.  socktrace used to read the ring once more, then build the
summary from the kernel's counters while the programs still ran: the
summary counted records nobody read, and whatever the ring held beyond one
read was neither written nor reported lost: this test, against that order,
found 394,184 records sent and 346,345 read.  Now it detaches every program
first, reads the ring to its end, and only then counts.
"""

import json
import subprocess
import sys
import time

import pytest

from conftest import start_socktrace

pytestmark = pytest.mark.bpf

# loopback connections, closed by the client, as fast as one process makes
# them: bounded by count and time
CHURN = r"""
import socket, sys, time
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0)); ls.listen(128)
port = ls.getsockname()[1]
print(port, flush=True)
deadline = time.monotonic() + float(sys.argv[1])
for n in range(int(sys.argv[2])):
    if time.monotonic() > deadline:
        break
    c = socket.create_connection(("127.0.0.1", port)); a, _ = ls.accept()
    c.close(); a.close()
"""


def test_the_summary_counts_what_was_written_while_connections_churn(tmp_path):
    out = str(tmp_path / "out.ndjson")
    trace = start_socktrace(out, ["--summary", "--no-report"])
    trace.keep = trace.watch_keep       # not the churn's records: counted below
    churn = subprocess.Popen([sys.executable, "-c", CHURN, "30", "300000"],
                             stdout=subprocess.PIPE, text=True)
    try:
        port = int(churn.stdout.readline())
        time.sleep(2.0)                 # well into the churn
        assert churn.poll() is None, "the churn ended before socktrace was stopped"
        trace.assert_clean_exit()       # stopped mid-churn
    finally:
        churn.kill()
        churn.wait(timeout=10)

    written = {"state": 0, "closed": 0, "churn": 0}
    with open(out, "rb") as f:
        for line in f:
            e = json.loads(line)
            t = e["type"]
            if t in ("state", "closed"):
                written[t] += 1
                if port in (e.get("lport"), e.get("rport")):
                    written["churn"] += 1
    summary = [e for e in trace.events() if e["type"] == "summary"]
    assert len(summary) == 1, summary
    counts = summary[0]["records"]
    assert written["churn"] > 10000, "too little churn to tell: %s" % written
    assert counts["lost"] == {}, counts
    # what the kernel sent is what was read, and what was read was written
    sent = counts["state"] + counts["derived"] + counts["closed"]
    assert counts["received"] == sent, (counts, written)
    assert written["state"] == counts["state"] + counts["derived"], (counts, written)
    assert written["closed"] >= counts["closed"], (counts, written)
