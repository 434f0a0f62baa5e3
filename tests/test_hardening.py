"""socktrace as root on a hostile or broken host (issue "Hardening"): names
that try to take over a terminal, planted links and files, full disks,
signals, malformed numbers, least privilege.  Every case runs the real
command; the eBPF ones trace real loopback connections."""

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from conftest import (READY_TIMEOUT, ROOT, SOCKTRACE, STOP_TIMEOUT, hangup_default,
                      listen_sentinel, start_socktrace, whole_lines)

from tracer import text


def _run(args, timeout=60, **kw):
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("capture_output", True)
    return subprocess.run([SOCKTRACE] + args, text=True, timeout=timeout, cwd=ROOT, **kw)


def one_line_error(r, status, *words):
    assert r.returncode == status, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    # the proc backend's standing note is not part of the error
    lines = [x for x in r.stderr.splitlines() if "socktrace: polling /proc" not in x]
    assert len(lines) == 1, "one line expected, got:\n" + r.stderr
    assert lines[0].startswith("socktrace: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def connections(n, family=4):
    """n loopback connections, client closes first; returns the listener port."""
    return client_ports(n, family)[0]


def client_ports(n, family=4):
    """connections(): (the listener port, the clients' ports).  The listener
    port alone does not pick a run's connections out: a port number comes
    back, and the sentinels' connections of the same process had it too."""
    fam, host = (socket.AF_INET, "127.0.0.1") if family == 4 else (socket.AF_INET6, "::1")
    ls = socket.socket(fam)
    ls.bind((host, 0))
    ls.listen(64)
    port = ls.getsockname()[1]
    clients = set()
    try:
        for _ in range(n):
            c = socket.create_connection((host, port), timeout=5)
            clients.add(c.getsockname()[1])
            a, _ = ls.accept()
            c.close()
            a.close()
    finally:
        ls.close()
    return port, clients


def received(stderr):
    m = re.search(r"records: (\d+) received", stderr)
    assert m, stderr
    return int(m.group(1))


# ---------------------------------------------------------------------------
# 1. Names from the kernel reach a terminal escaped
# ---------------------------------------------------------------------------

HOSTILE = [b"\r\x1b[16C1/sshd ", b"\nid>/tmp/rP;#", b"evil\xe2\x80\xaegnp", b"ok\xff\xfe",
           b"\x1b]0;pwned\x07", b"\xc2\x9b31m"]


def test_safe_escapes_everything_a_terminal_acts_on():
    for ch in list(range(0x20)) + [0x7f] + list(range(0x80, 0xa0)):
        out = text.safe("a" + chr(ch) + "b")
        assert out.startswith("a\\") and out.endswith("b") and out.isprintable(), repr(out)
    for ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c":
        assert text.safe(ch) == "\\u%04x" % ord(ch)
    assert text.safe("caf\u00e9 \u65e5\u672c") == "caf\u00e9 \u65e5\u672c"   # visible text stays
    assert text.safe(text.decode(b"a\xffb")) == "a\\xffb"


def test_text_sink_escapes_comm(tmp_path):
    from tracer.sink import TextSink
    out = tmp_path / "t"
    sink = TextSink(str(out))
    sink.start()
    base = {"type": "state", "ts": "2026-12-05T12:00:00.000000Z", "family": 4,
            "laddr": "127.0.0.1", "lport": 1, "raddr": "127.0.0.1", "rport": 2,
            "pid": 7, "old": "CLOSE", "new": "SYN_SENT", "in_old_ns": None,
            "lower_bound": False, "via": None, "reason": None}
    sink.write([dict(base, comm=text.decode(name)) for name in HOSTILE])
    sink.close()
    lines = out.read_bytes().decode().split("\n")
    # legend, column header, "# date", then one line each
    assert lines[-1] == "" and len(lines) == len(HOSTILE) + 4, lines
    for line in lines[:-1]:
        assert line.isprintable(), repr(line)
    recs = lines[3:-1]
    assert "7/\\nid>/tmp" in recs[1]       # cut to the owner column's width
    assert "7/ok\\xff\\xfe" in recs[3]


_NAMER = r"""
import ctypes, socket, sys
name = bytes.fromhex(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(15, ctypes.c_char_p(name), 0, 0, 0) != 0:      # PR_SET_NAME
    sys.exit("prctl failed")
s = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5)
s.close()
"""


@pytest.mark.bpf
def test_hostile_process_names_in_text_and_json(tmp_path):
    """Processes that name themselves to forge lines, move the cursor or
    reorder text connect; text output shows each name escaped, on its own
    line; NDJSON keeps the exact bytes (\\xNN for bytes that are not UTF-8)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    port = ls.getsockname()[1]
    txt = tmp_path / "out.txt"
    trace = start_socktrace(str(tmp_path / "out.ndjson"), ["--port", str(port)],
                            sentinel=lambda: _connect_pred(ls, port))
    tproc = subprocess.Popen([SOCKTRACE, "--backend", "bpf", "--format", "text",
                              "--port", str(port), "-o", str(txt)],
                             stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:       # the text run is ready when it shows one
            _connect_pred(ls, port)
            if txt.exists() and ":%d " % port in txt.read_text(errors="replace"):
                break
            time.sleep(0.3)
        else:
            pytest.fail("text socktrace not ready after 30 s")
        kids = []
        for name in HOSTILE:
            kids.append(subprocess.run([sys.executable, "-c", _NAMER, name.hex(), str(port)],
                                       timeout=20, capture_output=True))
            a, _ = ls.accept()
            a.close()
        assert all(k.returncode == 0 for k in kids), [k.stderr for k in kids]
        want = {text.decode(n[:15]) for n in HOSTILE}

        def seen(evs):
            return {e["comm"] for e in evs if e.get("type") == "state"
                    and e["new"] == "TIME_WAIT"} >= want
        trace.wait_for(seen, what="the hostile names' connections in TIME_WAIT")
        time.sleep(0.5)
    finally:
        ls.close()
        trace.stop()
        tproc.send_signal(signal.SIGINT)
        _, err = tproc.communicate(timeout=20)
    assert tproc.returncode == 0, err
    data = txt.read_bytes()
    assert data.endswith(b"\n")
    lines = data.decode("utf-8").split("\n")[:-1]
    assert lines[0].startswith("# socktrace") and lines[1].startswith("TIME")
    stamp = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} ")
    for line in lines[2:]:
        assert line.startswith("# 20") or stamp.match(line), "not a record: %r" % line
        assert line.isprintable(), "raw control or format character in %r" % line
        assert len(line) <= 80, "wider than 80 columns: %r" % line
    body = "\n".join(lines)
    for name in HOSTILE:
        # the owner column shows at least 7 characters after "pid/"
        shown = text.safe(text.decode(name[:15]))
        assert shown[:5] in body, shown
    assert "/\\r\\x1b" in body and "/\\nid>/" in body
    assert "/evil\\u" in body and "/ok\\xff" in body
    # the whole name, escaped, is in the wide layout
    wide = subprocess.run([sys.executable, "-c", "from tracer.columns import Columns; "
                           "import json,sys; c = Columns(width=200); "
                           "print(c.line(json.loads(sys.argv[1])), end='')",
                           json.dumps({"type": "state", "ts": "2026-12-05T12:00:00.000001Z",
                                       "family": 4, "laddr": "127.0.0.1", "lport": 1,
                                       "raddr": "127.0.0.1", "rport": 2, "old": "CLOSE",
                                       "new": "SYN_SENT", "in_old_ns": None, "via": None,
                                       "reason": None, "lower_bound": False, "pid": 7,
                                       "comm": "\r\x1b[16C1/sshd ", "conn": "1"})],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert "7/\\r\\x1b[16C1/sshd " in wide.stdout, wide


def _connect_pred(ls, port):
    """A sentinel on the test's own listener: one connection."""
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    a, _ = ls.accept()
    c.close()
    a.close()
    me = os.getpid()
    return lambda e: e.get("type") == "state" and e.get("rport") == port and e["pid"] == me


# ---------------------------------------------------------------------------
# 2. Output files: links and files planted by another user
# ---------------------------------------------------------------------------

@pytest.fixture
def sticky(tmp_path):
    """A shared sticky directory like /tmp, owned by root, mode 1777."""
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o1777)
    return d


NOBODY = 65534


def test_output_symlink_is_refused(sticky, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    link = sticky / "out"
    os.symlink(victim, link)
    os.lchown(link, NOBODY, NOBODY)
    for fmt in ("json", "text"):
        r = _run(["--format", fmt, "-o", str(link), "--duration", "1", "--backend", "proc"])
        one_line_error(r, 1, str(link), "symbolic link")
    assert victim.read_text() == "root's file\n"
    dangling = sticky / "dangling"
    os.symlink(tmp_path / "created-through-link", dangling)
    one_line_error(_run(["-o", str(dangling), "--duration", "1", "--backend", "proc"]), 1,
                   "symbolic link")
    assert not (tmp_path / "created-through-link").exists()


def test_planted_file_in_sticky_dir_is_refused(sticky):
    planted = sticky / "out"
    planted.write_text("")
    os.chown(planted, NOBODY, NOBODY)
    one_line_error(_run(["-o", str(planted), "--duration", "1", "--backend", "proc"]), 1,
                   str(planted), "uid %d" % NOBODY)
    assert planted.read_text() == ""
    fifo = sticky / "fifo"
    os.mkfifo(fifo)
    os.chown(fifo, NOBODY, NOBODY)
    # refused at once, without waiting for a reader
    one_line_error(_run(["-o", str(fifo), "--duration", "1", "--backend", "proc"], timeout=20),
                   1, "uid %d" % NOBODY)


def test_hard_link_in_sticky_dir_is_refused(sticky, tmp_path):
    target = tmp_path / "precious"
    target.write_text("")
    os.link(target, sticky / "out")
    one_line_error(_run(["-o", str(sticky / "out"), "--duration", "1", "--backend", "proc"]),
                   1, "hard links")


def test_own_files_still_work(sticky):
    mine = sticky / "mine"
    r = _run(["-o", str(mine), "--duration", "1", "--backend", "proc", "--no-report"])
    assert r.returncode == 0, r.stderr
    r = _run(["-o", str(mine), "--duration", "1", "--backend", "proc", "--no-report"])
    assert r.returncode == 0, r.stderr          # appends to our own file
    assert stat.S_IMODE(os.stat(mine).st_mode) == 0o644


# ---------------------------------------------------------------------------
# 3. Write failures: whole lines, an exact count, one line, status 1
# ---------------------------------------------------------------------------

@pytest.fixture
def tiny_fs(tmp_path):
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip("cannot mount a tmpfs: %s" % r.stderr.strip())
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


@pytest.mark.bpf
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_full_disk_keeps_whole_lines_and_counts_the_rest(tiny_fs, fmt):
    out = tiny_fs / "out"
    proc = subprocess.Popen([SOCKTRACE, "--backend", "bpf", "--format", fmt, "-o", str(out)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, SOCKTRACE_RECONCILE_S="3600"))
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            connections(20)          # about 240 records of some 400 bytes: > 64 KiB
            time.sleep(0.05)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = err.splitlines()[-1]
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert line.startswith("socktrace: cannot write %s: No space left on device; " % out), line
    unwritten = int(re.search(r"; (\d+) records not written$", line).group(1))
    data = out.read_bytes()
    assert data.endswith(b"\n"), "the last line was left half written"
    lines = data.splitlines()
    if fmt == "json":
        recs = [json.loads(x) for x in lines]
    else:
        assert lines[1].startswith(b"TIME")
        recs = [x for x in lines[2:] if not x.startswith(b"# ")]
    assert len(recs) + unwritten == received(err), (len(recs), unwritten, err)
    assert "transitions" in err          # the exit report is still there


@pytest.mark.parametrize("path", ["/dev/full", "/proc/version"])
def test_unwritable_device_is_one_line(path):
    # no traffic needed: a header (text) or the dump (json) hits it at once
    r = _run(["-o", path, "--format", "text", "--duration", "2", "--backend", "proc",
              "--no-report"])
    one_line_error(r, 1, "cannot write %s" % path, "0 records not written")


def test_reader_gone_is_quiet_in_every_format():
    for fmt in ("json", "text"):
        r = subprocess.run("'%s' --backend proc --format %s --dump-every 0.1 --duration 5 | true"
                           % (SOCKTRACE, fmt), shell=True, executable="/bin/bash",
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        for bad in ("Traceback", "BrokenPipe", "Exception ignored"):
            assert bad not in r.stderr, r.stderr


def test_closed_stdout_is_one_line():
    r = subprocess.run("exec >&-; '%s' --backend proc --duration 1" % SOCKTRACE, shell=True,
                       executable="/bin/bash", capture_output=False, stderr=subprocess.PIPE,
                       text=True, timeout=30, cwd=ROOT)
    one_line_error(r, 1, "standard output is closed")


# ---------------------------------------------------------------------------
# 4. Numbers
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("args,words", [
    (["--duration", "nan"], ["finite"]), (["--duration", "inf"], ["finite"]),
    (["--dump-every", "nan"], ["finite"]), (["--interval", "inf"], ["finite"]),
    (["--interval", "0.0001"], ["at least"]), (["--ringbuf-mb", "nan"], ["not an integer"]),
    (["--ringbuf-mb", "3"], ["power of two"]), (["--ringbuf-mb", "100000"], ["at most"]),
    (["--ringbuf-mb", "0.5"], ["not an integer"]),
    (["--max-sockets", "4000000000"], ["at most"]), (["--max-sockets", "0"], ["> 0"]),
    (["--pid", "99999999999"], ["at most"]), (["--duration", "1e400"], ["finite"]),
    (["--port", "99999"], ["out of range"]),
    # a negative number is the flag's value, not an unknown option ("-4" and
    # "-6" made argparse say "expected one argument")
    (["--duration", "-1"], ["> 0"]), (["--interval", "-inf"], ["finite"]),
    (["--max-sockets", "-5"], ["> 0"]), (["--port", "-1"], ["out of range"]),
    (["--uid", "-3"], ["out of range"])])
def test_malformed_numbers(args, words):
    one_line_error(_run(args + ["--backend", "proc"]), 2, *words)


# ---------------------------------------------------------------------------
# 5. Least privilege
# ---------------------------------------------------------------------------

CAPS = ["bpf", "perfmon", "dac_read_search", "sys_ptrace", "syslog"]


def _as_nobody(caps, args, **kw):
    setpriv = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"]
    if caps:
        spec = ",".join("+" + c for c in caps)
        setpriv += ["--inh-caps=" + spec, "--ambient-caps=" + spec]
    return subprocess.run(setpriv + ["--", SOCKTRACE] + args, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, cwd="/", **kw)


@pytest.mark.bpf
def test_runs_with_capabilities_instead_of_root(readable_checkout):
    """As nobody with CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH (tracefs),
    CAP_SYS_PTRACE (owners) and CAP_SYSLOG (TIME_WAIT): the whole trace."""
    result = {}

    def run():
        result["r"] = _as_nobody(CAPS, ["--backend", "bpf", "--duration", "12"], timeout=60)
    t = threading.Thread(target=run)
    t.start()
    ports = []
    deadline = time.monotonic() + 11
    while t.is_alive() and time.monotonic() < deadline:
        ports.append(connections(1))
        time.sleep(0.5)
    t.join(60)
    r = result["r"]
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "polling /proc" not in r.stderr, r.stderr
    assert "TIME_WAIT not traced" not in r.stderr, r.stderr
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    me = os.getpid()
    # the server side ends at once; the client's story goes on in TIME_WAIT
    served = [e for e in recs if e["type"] == "closed" and e["lport"] in ports
              and e["role"] == "server" and e["pid"] == me and e["end"] == "normal"]
    assert served, "no closed record of the test's connections:\n" + r.stderr
    assert all(e["source"] == "bpf" for e in served)
    waits = [e for e in recs if e["type"] == "state" and e["rport"] in ports
             and e["new"] == "TIME_WAIT" and e["pid"] == me]
    assert len(waits) >= len(served) - 1, (len(waits), len(served))


@pytest.mark.bpf
def test_missing_capabilities_are_named(readable_checkout):
    r = _as_nobody(["bpf"], ["--backend", "bpf", "--duration", "1"], timeout=60)
    line = one_line_error(r, 1, "CAP_PERFMON", "CAP_DAC_READ_SEARCH")
    assert "CAP_BPF and" not in line


# ---------------------------------------------------------------------------
# 6. Signals: every one that ends a run flushes and reports
# ---------------------------------------------------------------------------

@pytest.mark.bpf
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP", "SIGPIPE", "SIGQUIT", "SIGUSR2",
                                 "SIGALRM", "SIGXCPU"])
def test_signal_ends_the_run_with_everything_written(tmp_path, sig):
    path = tmp_path / "out"
    # -o - : records to stdout (a file here), so SIGHUP has nothing to reopen
    with open(path, "wb") as out:
        proc = subprocess.Popen([SOCKTRACE, "--backend", "bpf"], stdout=out,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                cwd=ROOT, env=dict(os.environ, SOCKTRACE_RECONCILE_S="3600"),
                                preexec_fn=hangup_default)
    try:
        deadline = time.monotonic() + READY_TIMEOUT * 2
        while time.monotonic() < deadline:
            pred = listen_sentinel()
            data = path.read_bytes()
            # whole lines only: socktrace may be writing the last one right now
            if any(pred(json.loads(x)) for x in data[:data.rfind(b"\n") + 1].splitlines()):
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        else:
            pytest.fail("socktrace not ready after %.0f s" % (READY_TIMEOUT * 2))
        port, clients = client_ports(30)
        time.sleep(0.3)             # the last LAST_ACK -> CLOSE comes with the peer's ACK
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=STOP_TIMEOUT * 2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (sig, proc.returncode, err)
    assert "Traceback" not in err and "transitions" in err, err
    recs = whole_lines(path)
    assert len([e for e in recs if e["type"] in ("state", "closed")]) == received(err)
    # the accepted sides, by their whole 4-tuple: in CI an earlier
    # connection with this listener's port number ended during the run
    # (a client's TIME_WAIT; a readiness sentinel's accepted socket)
    assert len([e for e in recs if e["type"] == "closed" and e["lport"] == port
                and e["rport"] in clients and e["role"] == "server"]) == 30


@pytest.mark.bpf
def test_sighup_reopens_the_output_under_load(tmp_path):
    """logrotate's create mode: mv the file, SIGHUP; 20 rotations while
    connections churn, and every record is in exactly one file, whole."""
    path = tmp_path / "out"
    trace = start_socktrace(str(path), env={"SOCKTRACE_RECONCILE_S": "3600"})
    trace.pump = lambda: None       # its reader follows one file, not a rotation
    stop = threading.Event()

    def churn():
        end = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < end:
            connections(5)
    t = threading.Thread(target=churn)
    t.start()
    try:
        for i in range(20):
            time.sleep(0.15)
            os.rename(path, tmp_path / ("out.%02d" % i))
            trace.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert path.exists(), "no new file after SIGHUP %d" % i
    finally:
        stop.set()
        t.join(40)
        rc = trace.stop()
    err = trace.stderr()
    assert rc == 0, err
    files = sorted(tmp_path.glob("out.[0-9]*")) + [path]
    counts = [len(whole_lines(f)) for f in files]
    assert all(counts[1:]), counts       # each rotation's file got records
    total = sum(len([e for e in whole_lines(f) if e["type"] in ("state", "closed")])
                for f in files)
    assert total == received(err), (counts, err)


# ---------------------------------------------------------------------------
# 7. Environments that are not as expected
# ---------------------------------------------------------------------------

def test_broken_libbcc_falls_back_to_proc(tmp_path):
    fake = tmp_path / "bcc"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        'raise OSError("libbcc.so.0: cannot open shared object file: No such file")\n')
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = _run(["--duration", "1", "--no-report"], env=env)
    assert r.returncode == 0, r.stderr
    line, = r.stderr.splitlines()
    assert line.startswith("socktrace: eBPF unavailable (bcc cannot be loaded: libbcc.so.0")
    assert "); polling /proc/net/tcp{,6} every 1s" in line, line
    one_line_error(_run(["--backend", "bpf", "--duration", "1"], env=env), 1,
                   "bcc cannot be loaded", "libbcc.so.0")


def test_python_without_site_is_one_line():
    r = subprocess.run([os.path.join(ROOT, ".venv", "bin", "python"), "-S", "-m", "tracer",
                        "--duration", "1"], capture_output=True, text=True, timeout=30,
                       cwd=ROOT, stdin=subprocess.DEVNULL)
    one_line_error(r, 1, "cannot import")


def test_failing_tracefs_mount_is_one_line(tmp_path):
    from tracer.backend import Unavailable
    from tracer.bpf_backend import ensure_tracefs
    with pytest.raises(Unavailable) as e:
        ensure_tracefs(str(tmp_path / "no" / "such" / "dir"))
    assert "\n" not in str(e.value) and "mounting it failed" in str(e.value)


# ---------------------------------------------------------------------------
# 8. --pid-file: signals reach socktrace and nothing else
# ---------------------------------------------------------------------------

@pytest.mark.bpf
def test_pid_file_signals_and_cleanup(tmp_path, sticky):
    pidf = tmp_path / "socktrace.pid"
    path = tmp_path / "out"
    proc = subprocess.Popen([SOCKTRACE, "--backend", "bpf", "--pid-file", str(pidf),
                             "--records", "socket,lost", "-o", str(path)],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 10
        while not pidf.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(pidf.read_text())
        assert pid == proc.pid
        # at once, before the programs are even loaded: the handler is there
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not (path.exists() and b'"socket"' in
                                                   path.read_bytes()):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        assert b'"socket"' in path.read_bytes(), "no dump after SIGUSR1"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert not pidf.exists(), "the pid file outlived the run"
    link = sticky / "pid"
    os.symlink(tmp_path / "elsewhere", link)
    one_line_error(_run(["--pid-file", str(link), "--duration", "1", "--backend", "proc"]), 1,
                   "symbolic link")
    assert not (tmp_path / "elsewhere").exists()
