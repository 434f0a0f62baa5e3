"""Random argument vectors into the command line: status 0, 1 or 2, and a
refusal is one line on stderr, never a traceback.

In-process, the trace itself is replaced by a stand-in that checks the
parsed arguments the way the backends use them (so hundreds of vectors cost
seconds); a sample of vectors then runs the real command end to end."""

import contextlib
import io
import math
import os
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ROOT, SOCKTRACE

from tracer import cli

OPTIONS = ["-o", "--output", "--format", "--duration", "-4", "-6", "--port", "--lport",
           "--rport", "--addr", "--pid", "--comm", "--state", "--backend", "--interval",
           "--dump-every", "--records", "--summary", "--no-report", "--max-sockets",
           "--ringbuf-mb", "-h", "--version", "--bogus", "-", "--"]
VALUES = ["0", "-1", "1", "3", "16", "65535", "65536", "nan", "NaN", "inf", "-inf", "1e400",
          "1e-9", "0.5", "4000000000", "99999999999999999999", "", " ", "\x00", "\n",
          "\x1b[2J", "json", "text", "xml", "auto", "bpf", "proc", "state,closed", "lost,",
          "state,,", "time-wait", "CLOSE_WAIT", "nonsense", "10.0.0.0/8", "::1/129",
          "300.1.2.3", "1,2,3", "80,http", "\udcff", "\u202e", "-5"]


def token():
    return st.one_of(st.sampled_from(OPTIONS), st.sampled_from(VALUES),
                     st.text(max_size=12), st.sampled_from(OPTIONS).map(lambda o: o + "="),
                     st.tuples(st.sampled_from(OPTIONS), st.sampled_from(VALUES)).map(
                         lambda t: "%s=%s" % t))


ARGV = st.lists(token(), max_size=8)


class _Ran(Exception):
    pass


def _stand_in(args, ports=(), lports=(), rports=()):
    # what run() and the backends rely on: finite, in range, of the right type
    for v in (args.duration, args.dump_every, args.interval):
        assert v is None or (math.isfinite(v) and v > 0)
    assert args.ringbuf_mb & (args.ringbuf_mb - 1) == 0
    assert 0 < args.max_sockets <= cli.HASH_MAX_ENTRIES
    assert all(0 < p < 65536 for p in list(ports) + list(lports) + list(rports))
    assert all(0 < p <= 1 << 22 for p in args.pid)
    raise _Ran()


def _main(argv, monkeypatch):
    import tracer.run
    monkeypatch.setattr(tracer.run, "run", _stand_in)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            status = cli.main(argv)
        except _Ran:
            status = "ran"
    return status, err.getvalue()


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=ARGV)
def test_random_argv_parses_or_refuses_in_one_line(argv, monkeypatch):
    if argv and argv[0] in ("ports", "stat", "top", "leaks"):
        argv = argv[1:]           # the views have their own fuzzing below
    status, err = _main(argv, monkeypatch)
    assert status in (0, 2, "ran"), (argv, status, err)
    assert "Traceback" not in err
    if status == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("socktrace: "), (argv, err)
        assert lines[0].isprintable(), repr(lines[0])


# a sample, for real: the whole process, the proc backend, bounded in time
SAMPLE = [["--duration", "nan"], ["--ringbuf-mb", "3"], ["--interval", "inf"],
          ["--format", "text", "--state", "time-wait"], ["--records", "lost,", "-6"],
          ["--addr", "::1/129"], ["--comm", "\x1b[2J"], ["--pid", "99999999999999999999"],
          ["--port", "80,http"], ["-o", ""], ["--dump-every", "1e-9"], ["--max-sockets", "-5"],
          ["--records", "summary", "--summary"], ["--format", "text", "-o", "/dev/null"]]


@pytest.mark.parametrize("argv", SAMPLE, ids=[" ".join(map(repr, a)) for a in SAMPLE])
def test_sample_argv_end_to_end(argv):
    r = subprocess.run([SOCKTRACE] + argv + ["--backend", "proc", "--duration", "0.5"]
                       if "--duration" not in argv else [SOCKTRACE, "--backend", "proc"] + argv,
                       capture_output=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
                       env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode in (0, 1, 2), (r.returncode, err)
    assert "Traceback" not in err, err
    if r.returncode:
        errors = [x for x in err.splitlines() if "polling /proc" not in x]
        assert len(errors) == 1, err


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(view=st.sampled_from(["ports", "stat"]), argv=ARGV)
def test_random_argv_into_views(view, argv, monkeypatch):
    status, err = _main([view] + [a for a in argv if a not in ("-o", "--output")], monkeypatch)
    assert status in (0, 1, 2), (argv, status, err)
    assert "Traceback" not in err
    if status:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("socktrace"), (argv, err)
        assert lines[0].isprintable(), repr(lines[0])
