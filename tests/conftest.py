"""Shared fixtures: eBPF gating, a running socktrace to read events from, and
validation against the published JSON Schema.

``@pytest.mark.bpf`` tests need root and a working eBPF backend.  They skip
when that is missing, except with ``SOCKTRACE_REQUIRE_BPF=1`` (CI on the
project's machines), where a missing backend is a failure with the reason.
"""

import calendar
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SOCKTRACE = os.path.join(ROOT, ".venv", "bin", "socktrace")
SCHEMA_PATH = os.path.join(ROOT, "tracer", "schema", "events.schema.json")
# Other kernels run under software emulation (scripts/kernel-matrix.sh),
# several times slower: compiling the BPF program alone takes ~20 s there.
# SOCKTRACE_TEST_TIME_SCALE multiplies the suite's waits (never its checks).
TIME_SCALE = max(1.0, float(os.environ.get("SOCKTRACE_TEST_TIME_SCALE") or 1))


def scaled(seconds):
    """A wait of *seconds* on this project's machines, as long as it must be here."""
    return seconds * TIME_SCALE


READY_TIMEOUT = scaled(20.0)   # socktrace compile + attach + first event
STOP_TIMEOUT = scaled(15.0)    # SIGINT -> exit


# ---------------------------------------------------------------------------
# eBPF gating
# ---------------------------------------------------------------------------

_bpf_reason = []


def bcc_unavailable():
    """Why bcc cannot load a program here (not root, not importable), or None."""
    if os.geteuid() != 0:
        return "not root"
    try:
        import bcc  # noqa: F401
    except ImportError as e:
        return "bcc is not importable (%s)" % e
    return None


def bpf_unavailable():
    """Why the eBPF backend cannot run here, or None (cached)."""
    if not _bpf_reason:
        why = bcc_unavailable()
        if why is None:
            try:
                from tracer.bpf_backend import preflight
                why = preflight()
            except Exception as e:   # a broken import is a reason too
                why = "tracer.bpf_backend.preflight() failed: %s: %s" % (type(e).__name__, e)
        if why is None and not os.access(SOCKTRACE, os.X_OK):
            why = "%s is missing (scripts/install.sh)" % SOCKTRACE
        _bpf_reason.append(why)
    return _bpf_reason[0]


def require_bpf(cli=True):
    """Skip (or, with SOCKTRACE_REQUIRE_BPF=1, fail) when eBPF is unavailable;
    with cli=False, for a test that loads its own program with bcc and needs
    neither the backend's checks nor the installed socktrace."""
    why = bpf_unavailable() if cli else bcc_unavailable()
    if why:
        if os.environ.get("SOCKTRACE_REQUIRE_BPF") == "1":
            pytest.fail("eBPF backend required (SOCKTRACE_REQUIRE_BPF=1) but unavailable: %s"
                        % why, pytrace=False)
        pytest.skip("eBPF backend unavailable: %s" % why)


TW_MARGIN = 2000           # TIME_WAIT sockets the suite may create, generously
TW_DRAIN_TIMEOUT = 75.0    # TIME_WAIT lasts 60 s (up to ~64 with the timer wheel)


def time_wait_room(sockstat="/proc/net/sockstat",
                   limit="/proc/sys/net/ipv4/tcp_max_tw_buckets"):
    """(TIME_WAIT sockets now, the kernel's limit), or None if unreadable.

    Past ``tcp_max_tw_buckets`` the kernel closes sockets without a
    TIME_WAIT (TCPTimeWaitOverflow), so tests that wait for one time out:
    that happens right after a 100k-connection benchmark storm or two."""
    try:
        with open(sockstat) as f:
            for line in f:
                if line.startswith("TCP:"):
                    fields = line.split()
                    tw = int(fields[fields.index("tw") + 1])
                    break
            else:
                return None
        with open(limit) as f:
            return tw, int(f.read())
    except (OSError, ValueError):
        return None


def wait_for_time_wait_room(report=print):
    """Wait (bounded) until the suite's TIME_WAIT sockets fit under the
    limit; returns True if they do."""
    deadline = time.monotonic() + TW_DRAIN_TIMEOUT
    said = False
    while True:
        room = time_wait_room()
        if room is None or room[0] + TW_MARGIN < room[1]:
            return True
        if time.monotonic() >= deadline:
            return False
        if not said:
            report("\nwaiting up to %.0f s for TIME_WAIT to drain: %d of tcp_max_tw_buckets "
                   "%d in use (a recent storm?)" % (TW_DRAIN_TIMEOUT, room[0], room[1]))
            said = True
        time.sleep(1.0)


_tw_checked = []
LIVE_MODULES = {"test_kernel", "test_proc_backend"}   # real loopback connections


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # before any fixture of the test is set up, so that a module-scoped
    # socktrace is never started on a host that cannot run it
    live = (item.get_closest_marker("bpf") is not None
            or item.module.__name__ in LIVE_MODULES)
    if item.get_closest_marker("bpf") is not None:
        require_bpf()
    if live and not _tw_checked:
        _tw_checked.append(wait_for_time_wait_room())
        if not _tw_checked[0]:
            room = time_wait_room() or ("?", "?")
            pytest.fail("TIME_WAIT table still full after %.0f s (%s of %s): the kernel "
                        "skips TIME_WAIT; is a storm running?" % ((TW_DRAIN_TIMEOUT,) + room),
                        pytrace=False)


@pytest.fixture
def readable_checkout():
    """Tests that start a process as ``nobody`` need it to read the checkout
    and its venv; a clone in a ``mktemp -d`` folder (0700), or under /root,
    is not readable by other users.  For the test's duration every directory
    above the checkout that others cannot traverse gets o+x, and gets its
    mode back afterwards.  (The clone's own files are 0644 and 0755.)"""
    changed = []
    path = ROOT
    try:
        while True:
            mode = os.stat(path).st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(path, stat.S_IMODE(mode) | stat.S_IXOTH)
                changed.append((path, stat.S_IMODE(mode)))
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        yield
    finally:
        for path, mode in reversed(changed):
            os.chmod(path, mode)


@pytest.fixture(name="require_bpf")
def require_bpf_fixture():
    """For tests that cannot carry the marker (the marker is preferred)."""
    require_bpf()


# ---------------------------------------------------------------------------
# Reading socktrace's output
# ---------------------------------------------------------------------------


def ts_us(ts):
    """'2026-11-21T07:05:30.303698Z' -> microseconds since the epoch (int),
    exactly, from the string (no float rounding)."""
    sec, frac = ts.rstrip("Z").split(".")
    whole = calendar.timegm(time.strptime(sec, "%Y-%m-%dT%H:%M:%S"))
    return whole * 1_000_000 + int(frac.ljust(6, "0")[:6])


def whole_lines(path):
    """The records of an NDJSON file (gzip too, by its name): every line must
    be whole JSON and the file must end with a whole line."""
    import gzip
    path = str(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    assert not data or data.endswith(b"\n"), "a half line at the end of %s" % path
    out = []
    for n, line in enumerate(data.splitlines(), 1):
        try:
            out.append(json.loads(line))
        except ValueError as e:
            pytest.fail("%s line %d is not whole JSON (%s): %r" % (path, n, e, line[:300]))
    return out


def read_events(path):
    """Every line of an NDJSON file, parsed (a bad line fails the test)."""
    out = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                out.append(json.loads(line))
            except ValueError as e:
                pytest.fail("%s line %d is not JSON (%s): %r" % (path, n, e, line[:200]))
    return out


def _brief(e):
    if e.get("type") == "state":
        return "%s %s conn=%s %s:%s->%s:%s %s->%s in_old=%s pid=%s/%s %s%s%s%s" % (
            e["ts"][11:], e["type"], e["conn"][-6:], e["laddr"], e["lport"], e["raddr"],
            e["rport"], e["old"], e["new"], e["in_old_ns"], e["pid"], e["comm"],
            e["owner_from"], " via=%s" % e["via"] if e["via"] else "",
            " reason=%s" % e["reason"] if e["reason"] else "",
            " lower_bound" if e["lower_bound"] else "")
    return json.dumps(e)[:300]


def describe(events, limit=60):
    """The last *limit* events, one short line each, for failure messages."""
    lines = [_brief(e) for e in events[-limit:]]
    if len(events) > limit:
        lines.insert(0, "... %d earlier events" % (len(events) - limit))
    return "\n".join(lines)


class Trace:
    """One running socktrace writing NDJSON to a file.

    Events are read incrementally (only complete lines); ``keep`` (event ->
    bool) decides which are remembered, so that a busy host's unrelated
    traffic does not fill memory.  Indexes into the kept list are the marks.
    """

    def __init__(self, path, proc, stderr_path, args, keep=None):
        self.path = path
        self.proc = proc
        self.stderr_path = stderr_path
        self.args = args
        self.keep = keep
        self.watched = {os.getpid()}   # used by watch_keep
        self.lines = 0                 # lines read, kept or not
        self.sentinel_ports = set()
        self._events = []
        self._off = 0
        self._partial = b""
        self.rc = None

    # reading ---------------------------------------------------------------

    def pump(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self._off)
                data = f.read()
        except FileNotFoundError:
            return
        if not data:
            return
        self._off += len(data)
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        keep = self.keep
        for line in data[:cut].splitlines():
            if not line:
                continue
            self.lines += 1
            e = json.loads(line)
            if keep is None or keep(e):
                self._events.append(e)

    def mark(self):
        """A position: events(since=mark) are those read after this call."""
        self.pump()
        return len(self._events)

    def events(self, since=0):
        self.pump()
        return self._events[since:]

    def wait_for(self, pred, since=0, timeout=10.0, what="the expected events"):
        """Poll until ``pred(events since mark)`` is truthy and return its
        value; fail with the recent events after *timeout* seconds."""
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while True:
            evs = self.events(since)
            got = pred(evs)
            if got:
                return got
            if self.proc.poll() is not None:
                pytest.fail("socktrace exited (status %s) while waiting for %s\nstderr: %s"
                            % (self.proc.returncode, what, self.stderr()[-2000:]))
            if time.monotonic() >= deadline:
                lost = [e for e in evs if e.get("type") == "lost"]
                pytest.fail("timed out after %.0f s waiting for %s%s\nrecent events:\n%s"
                            % (timeout, what, "\nLOST: %s" % lost if lost else "",
                               describe(evs)))
            time.sleep(0.05)

    def watch_keep(self, e):
        """A ``keep`` for a busy host: events of watched pids, events with no
        owner, and every non-socket record (lost, summary)."""
        if e.get("type") not in ("state", "closed", "socket"):
            return True
        pid = e.get("pid")
        return pid is None or pid in self.watched

    # control ---------------------------------------------------------------

    def stderr(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGINT, wait (bounded), read what was flushed; returns the exit
        status (idempotent)."""
        if self.rc is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
                    self.rc = "killed: no exit within %.0f s of SIGINT" % timeout
            if self.rc is None:
                self.rc = self.proc.returncode
            self.pump()
        return self.rc

    def assert_clean_exit(self):
        rc = self.stop()
        err = self.stderr()
        assert rc == 0, "socktrace %s exited with %s; stderr:\n%s" % (self.args, rc, err[-3000:])
        assert "Traceback" not in err, err[-3000:]


def listen_sentinel(family=4, port=0, connect=True):
    """A sentinel made by the test process itself: a listener on a throwaway
    port (and one connection to it).  Returns a predicate for its
    CLOSE->LISTEN line, and remembers nothing else."""
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    addr = "127.0.0.1" if family == 4 else "::1"
    ls = socket.socket(fam, socket.SOCK_STREAM)
    try:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((addr, port))
        ls.listen(4)
        port = ls.getsockname()[1]
        if connect:
            c = socket.create_connection((addr, port), timeout=5)
            a, _ = ls.accept()
            c.close()
            a.close()
    finally:
        ls.close()
    me = os.getpid()

    def pred(e):
        return (e.get("type") == "state" and e["old"] == "CLOSE" and e["new"] == "LISTEN"
                and e["lport"] == port and e["pid"] == me)
    pred.port = port
    return pred


_STARTED = []          # every Trace start_socktrace made, for the guard below


@pytest.fixture(autouse=True)
def _no_stray_socktrace():
    """A test that fails between start_socktrace() and its stop() must not
    leave socktrace running (attached, and tracing every later test): what
    the test itself started is stopped after it, whatever happened.
    Module-scoped runs start before this fixture and are their own
    fixture's to stop."""
    mark = len(_STARTED)
    yield
    for trace in _STARTED[mark:]:
        if trace.proc.poll() is None:
            trace.stop()
    del _STARTED[mark:]


def hangup_default():
    """preexec_fn for a socktrace whose SIGHUP a test sends: socktrace keeps a
    signal ignored by whoever started it (nohup), and a suite run under
    nohup would hand that on."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def start_socktrace(path, args=(), sentinel=listen_sentinel, keep=None,
                    timeout=READY_TIMEOUT, env=None):
    """Start ``socktrace --backend bpf -o path ARGS`` and return its Trace
    once it is provably tracing: *sentinel* (called repeatedly, returns a
    predicate over events) generated an event that showed up in the file.
    Bounded by *timeout* seconds; the sentinel's own events stay in the
    output (their ports are in ``trace.sentinel_ports``).  *env*: extra
    environment variables."""
    args = list(args)
    err_path = path + ".stderr"
    cmd = [SOCKTRACE, "--backend", "bpf", "-o", path] + args
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, cwd=ROOT, env=dict(os.environ, **(env or {})),
                                preexec_fn=hangup_default)
    trace = Trace(path, proc, err_path, args, keep=keep)
    _STARTED.append(trace)
    preds = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail("socktrace %s exited with %s before it was ready; stderr:\n%s"
                            % (args, proc.returncode, trace.stderr()[-3000:]), pytrace=False)
            pred = sentinel()
            preds.append(pred)
            if getattr(pred, "port", None):
                trace.sentinel_ports.add(pred.port)
            step = time.monotonic() + 0.5
            while time.monotonic() < min(step, deadline):
                if any(p(e) for e in trace.events() for p in preds):
                    return trace
                time.sleep(0.05)
            if time.monotonic() >= deadline:
                pytest.fail("socktrace %s not ready after %.0f s (no sentinel event after %d "
                            "tries); stderr:\n%s" % (args, timeout, len(preds),
                                                     trace.stderr()[-3000:]), pytrace=False)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        raise


@pytest.fixture(scope="module")
def workers():
    """The workload processes: a server ("st-server") and a client
    ("st-client"), see tests/workload.py."""
    from workload import Worker

    made = []
    try:
        made.append(Worker("server"))
        made.append(Worker("client"))
        yield made[0], made[1]
    finally:
        for w in made:
            w.close()


@pytest.fixture(scope="module")
def tracer_run(request, tmp_path_factory, workers):
    """ONE socktrace for the whole module (compiled once), started before
    the workload processes do anything, and stopped with SIGINT at the end
    (its exit status must be 0).

    It traces the workers and this test process (``--pid``, a filter that
    runs in the kernel): on a host busy with other traffic (benchmarks on
    the same machine) an unfiltered trace fills its ring buffer and loses
    records.  SOCKTRACE_TEST_UNFILTERED=1 traces everything instead (a quiet
    host); either way only the events of those processes and of unknown
    owners are remembered."""
    require_bpf()
    path = str(tmp_path_factory.mktemp("socktrace") / "main.ndjson")
    args = []
    if os.environ.get("SOCKTRACE_TEST_UNFILTERED") != "1":
        for pid in [os.getpid()] + [w.pid for w in workers]:
            args += ["--pid", str(pid)]
    trace = start_socktrace(path, args, keep=None)
    trace.keep = trace.watch_keep
    trace.watched.update(w.pid for w in workers)
    # rebuild what was kept before the filter was set (the sentinel only)
    trace._events = [e for e in trace._events if trace.keep(e)]
    trace.workers = workers
    trace.extra_outputs = []      # other socktraces' files, schema-checked at the end
    yield trace
    trace.assert_clean_exit()


# ---------------------------------------------------------------------------
# JSON Schema
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def event_schema():
    """The published schema, loaded when first needed; a missing or broken
    schema fails the tests that need it, clearly."""
    if not os.path.exists(SCHEMA_PATH):
        pytest.fail("JSON Schema %s is missing: every output line must validate against it"
                    % os.path.relpath(SCHEMA_PATH, ROOT), pytrace=False)
    try:
        import jsonschema
    except ImportError:
        pytest.fail("jsonschema is not installed (pip install -e .[test])", pytrace=False)
    try:
        with open(SCHEMA_PATH) as f:
            schema = json.load(f)
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
    except (ValueError, jsonschema.exceptions.SchemaError) as e:
        pytest.fail("%s is not a valid JSON Schema: %s" % (SCHEMA_PATH, e), pytrace=False)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.fixture
def validate_lines(event_schema):
    """validate_lines(path_or_records) -> number checked; fails on the first
    errors (up to 10 shown) with line numbers and the offending records."""

    def check(source):
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                records = ((n, json.loads(line)) for n, line in enumerate(f, 1))
                return _validate(event_schema, records, str(source))
        return _validate(event_schema, enumerate(source, 1), "records")
    return check


def _validate(validator, numbered, where):
    bad = []
    count = 0
    for n, rec in numbered:
        count += 1
        errs = list(validator.iter_errors(rec))
        if errs:
            bad.append("%s line %d: %s\n    %s" % (
                where, n, "; ".join("%s at /%s" % (e.message, "/".join(map(str, e.path)))
                                    for e in errs[:3]), json.dumps(rec)[:400]))
            if len(bad) >= 10:
                break
    if bad:
        pytest.fail("output does not match %s:\n%s" % (os.path.relpath(SCHEMA_PATH, ROOT),
                                                        "\n".join(bad)), pytrace=False)
    return count
