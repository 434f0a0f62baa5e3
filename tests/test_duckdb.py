"""Records that hold still: a DuckDB query written against one capture runs
on another, whatever happened in each (the failures this replaces:
``Could not find key "SYN_SENT" in struct``, ``Referenced column
"lower_bound" not found``, when a field or a key was there only sometimes)."""

import orjson
import pytest

from tracer import records
from test_records import closed_raw, ring, state_raw

duckdb = pytest.importorskip("duckdb")

QUERY = """
SELECT conn, "end", error, states.SYN_SENT AS connect_ns, states.TIME_WAIT AS tw_ns,
       lower_bound, closed_first, reason
FROM read_json_auto(?, format='newline_delimited')
WHERE type = 'closed'
ORDER BY conn
"""
STATES = """
SELECT old, new, count(*) AS n, max(in_old_ns) AS longest, bool_or(lower_bound) AS older
FROM read_json_auto(?, format='newline_delimited')
WHERE type = 'state' AND via IS NULL
GROUP BY old, new ORDER BY old, new
"""


def capture(path, *raws):
    recs, bad = records.decode(records.Formatter(0), ring(*raws))
    assert bad == 0
    path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in recs))
    return str(path)


def test_one_query_runs_on_captures_of_different_days(tmp_path):
    # a quiet day: one normal connection through TIME_WAIT
    normal = capture(
        tmp_path / "a.ndjson",
        state_raw(1, 0x10, "CLOSE", "SYN_SENT"),
        state_raw(2, 0x10, "SYN_SENT", "ESTABLISHED", in_old=1),
        state_raw(9, 0x10, "ESTABLISHED", "FIN_WAIT1", in_old=7),
        closed_raw(70, 0x10, 1, ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "TIME_WAIT"],
                   {"SYN_SENT": 1, "ESTABLISHED": 7, "FIN_WAIT1": 1, "TIME_WAIT": 60},
                   reason=1))
    # a bad day: a refused connect and an older socket reset, no TIME_WAIT at all
    bad = capture(
        tmp_path / "b.ndjson",
        state_raw(1, 0x20, "CLOSE", "SYN_SENT"),
        state_raw(3, 0x20, "SYN_SENT", "CLOSE", in_old=2),
        closed_raw(3, 0x20, 1, ["SYN_SENT"], {"SYN_SENT": 2}, error=111, end=1),
        state_raw(5, 0x30, "ESTABLISHED", "CLOSE", flags=2),
        closed_raw(5, 0x30, 5, ["ESTABLISHED"], error=104, end=4, flags=2))
    con = duckdb.connect()
    got_a = con.execute(QUERY, [normal]).fetchall()
    got_b = con.execute(QUERY, [bad]).fetchall()
    assert got_a == [("10", "normal", None, 1, 60, False, "local", "expired")]
    assert got_b == [("20", "refused", "ECONNREFUSED", 2, 0, False, None, None),
                     ("30", "reset", "ECONNRESET", 0, 0, True, None, None)]
    assert ("ESTABLISHED", "FIN_WAIT1", 1, 7, False) in con.execute(STATES, [normal]).fetchall()
    assert ("ESTABLISHED", "CLOSE", 1, None, True) in con.execute(STATES, [bad]).fetchall()
