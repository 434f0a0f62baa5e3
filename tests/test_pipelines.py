"""socktrace in a fleet's pipeline (docs/pipelines.md): the systemd unit as
systemd runs it, the logrotate snippet, and one real shipper, rsyslog,
reading the file through rotations.  Every case runs the real programs
against real loopback connections, and checks that every record socktrace
says it received ("records: N received" in its exit report) is in the
output exactly once, whole."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import ROOT, SOCKTRACE, require_bpf, scaled, start_socktrace, whole_lines

from tracer import privileges

UNIT = os.path.join(ROOT, "contrib", "systemd", "socktrace.service")
LOGROTATE = os.path.join(ROOT, "contrib", "logrotate", "socktrace")
OUTPUT = "/var/log/socktrace/socktrace.ndjson"
DYNAMIC_UIDS = range(61184, 65520)        # systemd's DynamicUser= range
CGROUP_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def parse_unit(path=UNIT):
    """{section: {key: [values in order]}} (no line continuations in ours)."""
    out, section = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = out.setdefault(line.strip("[]"), {})
                continue
            key, _, value = line.partition("=")
            section.setdefault(key.strip(), []).append(value.strip())
    return out


def service():
    return parse_unit()["Service"]


def cap_mask(names):
    return sum(1 << privileges.CAP[n] for n in names)


class Listener:
    """A loopback listener the test connects to: each connection closed by
    the client first (its side goes to TIME_WAIT), then by the server."""

    def __init__(self, host="127.0.0.1"):
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.made = 0

    def connect(self, n=1):
        for _ in range(n):
            c = socket.create_connection((self.host, self.port), timeout=5)
            a, _ = self.sock.accept()
            c.close()
            a.close()
            self.made += 1

    def close(self):
        self.sock.close()


class Churn(threading.Thread):
    """Connections to *listener* in the background, bounded in time."""

    def __init__(self, listener, seconds=30.0, pause=0.01):
        super().__init__(daemon=True)
        self.listener, self.seconds, self.pause = listener, seconds, pause
        self.stop = threading.Event()

    def run(self):
        end = time.monotonic() + self.seconds
        while not self.stop.is_set() and time.monotonic() < end:
            self.listener.connect(3)
            time.sleep(self.pause)

    def finish(self):
        self.stop.set()
        self.join(self.seconds + 10)


def received(stderr):
    m = re.search(r"records: (\d+) received", stderr)
    assert m, "no exit report:\n" + stderr[-3000:]
    return int(m.group(1))


def traced(recs):
    """The records the exit report counts as received."""
    return [r for r in recs if r["type"] in ("state", "closed")]


def wait_until(pred, timeout, what, step=0.1):
    deadline = time.monotonic() + scaled(timeout)
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() >= deadline:
            pytest.fail("timed out after %.0f s waiting for %s" % (scaled(timeout), what),
                        pytrace=False)
        time.sleep(step)


def port_sentinel(listener):
    """start_socktrace's readiness probe: one connection to *listener*."""
    def make():
        listener.connect(1)
        me = os.getpid()
        return lambda e: (e.get("type") == "state" and e.get("rport") == listener.port
                          and e.get("pid") == me)
    return make


# ---------------------------------------------------------------------------
# 1. The unit file
# ---------------------------------------------------------------------------

def test_unit_grants_exactly_the_capabilities_socktrace_uses():
    s = service()
    want = set(privileges.REQUIRED) | set(privileges.RECOMMENDED)
    amb = set(" ".join(s["AmbientCapabilities"]).split())
    bnd = set(" ".join(s["CapabilityBoundingSet"]).split())
    assert amb == want and bnd == want, (amb, bnd, want)
    assert s["DynamicUser"] == ["yes"] and "User" not in s
    assert s["NoNewPrivileges"] == ["yes"]
    exec_start = s["ExecStart"][0].split()
    assert exec_start[exec_start.index("-o") + 1] == OUTPUT
    assert s["LogsDirectory"] == [os.path.basename(os.path.dirname(OUTPUT))]
    assert "-HUP" in s["ExecReload"][0] and "$MAINPID" in s["ExecReload"][0]
    # settings that would break the trace (the unit says why): absent or off
    for key in ("ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                "PrivateNetwork", "PrivateUsers"):
        assert s.get(key, ["no"]) == ["no"], key
    assert s.get("ProtectProc", ["default"]) == ["default"]


def test_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart exists: point it at this checkout's
    # (quoted, as systemd takes a path with spaces)
    text = open(UNIT).read().replace("/opt/socktrace/bin/socktrace", '"%s"' % SOCKTRACE)
    unit = tmp_path / "socktrace.service"
    unit.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


# ---------------------------------------------------------------------------
# 2. The unit under systemd, and the logrotate snippet against it
# ---------------------------------------------------------------------------

class Container:
    """systemd booted by systemd-nspawn on the host's own /usr (--volatile:
    an empty tmpfs root, nothing of the host's /etc), sharing the host's
    kernel and network namespace, with the unit and the logrotate snippet
    bound in verbatim.  The checkout's venv is bound at /opt/socktrace, as
    the unit expects."""

    def __init__(self, tmp, name):
        self.tmp, self.name = tmp, name
        self.varlog = tmp / "var-log"
        (self.varlog / "journal").mkdir(parents=True)   # a persistent journal, for reading
        caps = ",".join(sorted(set(privileges.REQUIRED) | set(privileges.RECOMMENDED)))
        cmd = ["systemd-nspawn", "--directory=/", "--volatile=yes", "--register=no",
               "--keep-unit", "--boot", "--console=passive", "--machine=" + name,
               # the container's own bounding set must hold what the unit grants
               "--capability=" + caps, "--system-call-filter=bpf perf_event_open",
               "--bind-ro=" + ROOT, "--bind-ro=%s:/opt/socktrace" % os.path.join(ROOT, ".venv"),
               "--bind-ro=/sys/kernel/tracing",
               "--bind=%s:/var/log" % self.varlog,
               "--bind-ro=%s:/etc/systemd/system/socktrace.service" % UNIT,
               "--bind-ro=%s:/etc/logrotate.d/socktrace" % LOGROTATE,
               "systemd.firstboot=off", "systemd.wants=socktrace.service"]
        # without a host systemd, nspawn makes its cgroups beside its own
        # (payload/, supervisor/): removed again at the end if it made them
        here = [line.split(":", 2)[2] for line in open("/proc/self/cgroup").read().split("\n")
                if line.startswith(("0::", "1:name=systemd:"))] or ["/"]
        self.cgroups = [os.path.join(root, h.lstrip("/"), d) for root in CGROUP_ROOTS
                        for h in set(here) for d in ("payload", "supervisor")]
        self.cgroups = [d for d in self.cgroups if not os.path.exists(d)]
        self.log = open(tmp / "nspawn.log", "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid1 = None

    def console(self):
        try:
            return (self.tmp / "nspawn.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def find_init(self):
        """The container's PID 1, as the host sees it."""
        if self.proc.poll() is not None:
            pytest.fail("systemd-nspawn exited with %s:\n%s"
                        % (self.proc.returncode, self.console()), pytrace=False)
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                status = open("/proc/%s/status" % d).read()
            except OSError:
                continue
            ns = re.search(r"^NSpid:\s+(.*)$", status, re.M)
            if not ns or ns.group(1).split()[-1] != "1" or len(ns.group(1).split()) < 2:
                continue
            if self._descends(int(d)):
                self.pid1 = int(d)
                return True
        return False

    def _descends(self, pid):
        for _ in range(10):
            try:
                status = open("/proc/%d/status" % pid).read()
            except OSError:
                return False
            pid = int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))
            if pid == self.proc.pid:
                return True
            if pid <= 1:
                return False
        return False

    def run(self, *cmd, timeout=30, check=True):
        """A command inside the container (its mounts, pids, systemd)."""
        r = subprocess.run(["nsenter", "-t", str(self.pid1), "-m", "-u", "-i", "-n", "-p",
                            "-r", "-w", "--"] + list(cmd), capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if check:
            assert r.returncode == 0, (cmd, r.returncode, r.stdout, r.stderr)
        return r

    def output_dir(self):
        return self.varlog / "private" / "socktrace"    # LogsDirectory with DynamicUser

    def stop(self):
        """Bounded: SIGKILL to the container's init ends every process in
        its PID namespace at once (the test has read what it needs; a clean
        halt can take longer than a test may wait), and nspawn with it."""
        if self.proc.poll() is None:
            if self.pid1 is not None and self._descends(self.pid1):
                os.kill(self.pid1, signal.SIGKILL)
            else:
                self.proc.send_signal(signal.SIGTERM)   # nspawn halts the container
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                if self.pid1 is not None and self._descends(self.pid1):
                    os.kill(self.pid1, signal.SIGKILL)
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()
        for top in self.cgroups:
            for d, _, _ in sorted(os.walk(top), reverse=True):     # deepest first
                try:
                    os.rmdir(d)        # only an empty cgroup goes
                except OSError:
                    pass


@pytest.mark.bpf
def test_unit_runs_under_systemd_and_rotates_with_logrotate(tmp_path):
    """The unit, verbatim, started by systemd (PID 1 of a systemd-nspawn
    container on the host's kernel and network): it runs as a dynamic user
    with exactly the unit's capabilities, no new privileges and a seccomp
    filter, traces the host's connections, rotates twice with the logrotate
    snippet run verbatim (its postrotate: systemctl reload), and on
    systemctl stop writes its exit report to the journal; every record it
    received is in the three files, whole."""
    for tool in ("systemd-nspawn", "nsenter", "logrotate"):
        if shutil.which(tool) is None:
            pytest.skip("%s is not installed (scripts/install.sh test installs it)" % tool)
    for hidden in ("/home/", "/root/", "/tmp/", "/var/tmp/", "/run/user/"):
        if (ROOT + "/").startswith(hidden):
            pytest.skip("the checkout is under %s, which the unit's ProtectHome=/PrivateTmp= "
                        "hide from the service" % hidden)
    if not os.path.isdir("/sys/kernel/tracing/events"):
        pytest.skip("tracefs is not mounted at /sys/kernel/tracing")
    box = Container(tmp_path, "socktrace-test-%d" % os.getpid())
    ls = Listener()
    try:
        wait_until(box.find_init, 30, "the container's systemd")
        wait_until(lambda: box.run("systemctl", "is-active", "socktrace.service",
                                   check=False).stdout.strip() in ("active", "failed"),
                   40, "socktrace.service to start")
        out = box.output_dir() / "socktrace.ndjson"

        def ours(path, since=0):
            """Our listener's records in *path* (read from offset *since*)."""
            try:
                with open(path, "rb") as f:
                    f.seek(since)
                    data = f.read()
            except FileNotFoundError:
                return []
            data = data[:data.rfind(b"\n") + 1]
            return [r for r in map(json.loads, data.splitlines())
                    if r.get("lport") == ls.port or r.get("rport") == ls.port]

        def traced_now():
            state = box.run("systemctl", "is-active", "socktrace.service", check=False)
            if state.stdout.strip() != "active":
                pytest.fail("socktrace.service is %s:\n%s" % (
                    state.stdout.strip(), box.run("journalctl", "-u", "socktrace", "-o",
                                                  "cat", check=False).stdout[-3000:]))
            ls.connect(1)
            return [r for r in ours(out) if r["type"] == "closed"]
        wait_until(traced_now, 40, "records of the test's connections", step=0.5)

        # the process systemd started: a dynamic user, exactly the unit's capabilities
        main = box.run("systemctl", "show", "-p", "MainPID", "--value",
                       "socktrace.service").stdout.strip()
        status = box.run("cat", "/proc/%s/status" % main).stdout
        field = dict(re.findall(r"^(\w+):\s+(.*)$", status, re.M))
        uid = int(field["Uid"].split()[0])
        assert uid in DYNAMIC_UIDS and len(set(field["Uid"].split())) == 1, field["Uid"]
        want = cap_mask(" ".join(service()["AmbientCapabilities"]).split())
        for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(field[key], 16) == want, (key, field[key], privileges.names(
                int(field[key], 16)))
        assert field["NoNewPrivs"] == "1" and field["Seccomp"] == "2", field
        assert os.stat(out).st_uid == uid
        # owners (connect) and TIME_WAIT (timewait tracing reads /proc/kallsyms:
        # CAP_SYSLOG) come through the sandbox
        me = os.getpid()
        wait_until(lambda: [r for r in ours(out) if r["type"] == "state" and r["pid"] == me
                            and r["new"] == "TIME_WAIT" and r["rport"] == ls.port],
                   10, "a TIME_WAIT of the test's connections")

        # two rotations by the snippet itself, while connections go on
        churn = Churn(ls, seconds=30)
        churn.start()
        try:
            for i in (1, 2):
                time.sleep(0.5)
                box.run("logrotate", "-f", "-s", "/var/log/logrotate.state",
                        "/etc/logrotate.d/socktrace")
                made = ls.made
                # the new file is socktrace's own, and gets the connections that follow
                wait_until(lambda: out.exists() and any(
                    r["type"] == "closed" for r in ours(out)) and ls.made > made + 3, 15,
                    "records in the new file after rotation %d" % i)
                assert os.stat(out).st_uid == uid
        finally:
            churn.finish()
        box.run("systemctl", "stop", "socktrace.service", timeout=60)
        show = box.run("systemctl", "show", "-p", "Result", "-p", "ExecMainStatus",
                       "socktrace.service").stdout
        assert "Result=success" in show and "ExecMainStatus=0" in show, show
        journal = box.run("journalctl", "-u", "socktrace.service", "-o", "cat").stdout
    finally:
        ls.close()
        box.stop()
    assert "Traceback" not in journal and "polling /proc" not in journal, journal[-3000:]
    assert "TIME_WAIT not traced" not in journal, journal[-3000:]
    names = sorted(os.listdir(box.output_dir()))
    assert names == ["socktrace.ndjson", "socktrace.ndjson.1", "socktrace.ndjson.2.gz"], names
    total = 0
    for name in names:
        recs = whole_lines(str(box.output_dir() / name))
        assert [r for r in recs if r.get("rport") == ls.port or r.get("lport") == ls.port], name
        total += len(traced(recs))
    assert total == received(journal), (total, journal[-2000:])


@pytest.mark.bpf
def test_logrotate_snippet_rotates_without_losing_a_record(tmp_path):
    """The snippet's settings, with the test's file and a postrotate that
    signals the test's socktrace: three forced rotations under load, with
    logrotate's own state file; every record whole and counted."""
    if shutil.which("logrotate") is None:
        pytest.skip("logrotate is not installed (scripts/install.sh test installs it)")
    ls = Listener()
    out = tmp_path / "log" / "socktrace.ndjson"
    out.parent.mkdir()
    trace = start_socktrace(str(out), ["--port", str(ls.port)], sentinel=port_sentinel(ls),
                            env={"SOCKTRACE_RECONCILE_S": "3600"})
    trace.pump = lambda: None          # it follows one file, not a rotation
    text = open(LOGROTATE).read().replace(OUTPUT, str(out))
    text = re.sub(r"postrotate\n.*?endscript",
                  "postrotate\n        kill -HUP %d\n    endscript" % trace.proc.pid,
                  text, flags=re.S)
    assert "kill -HUP" in text and str(out) in text
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text)
    churn = Churn(ls, seconds=30)
    churn.start()
    try:
        for i in range(3):
            time.sleep(0.7)
            r = subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            wait_until(out.exists, 10, "socktrace's new file after rotation %d" % (i + 1),
                       step=0.01)
        time.sleep(0.5)
    finally:
        churn.finish()
        ls.close()
        rc = trace.stop()
    err = trace.stderr()
    assert rc == 0, err
    names = sorted(n for n in os.listdir(out.parent) if not n.endswith(".stderr"))
    assert names == ["socktrace.ndjson", "socktrace.ndjson.1", "socktrace.ndjson.2.gz",
                     "socktrace.ndjson.3.gz"], names
    counts = [len(traced(whole_lines(str(out.parent / n)))) for n in names]
    assert all(counts), counts
    assert sum(counts) == received(err), (counts, err)


# ---------------------------------------------------------------------------
# 3. A shipper end to end: rsyslog (imfile + mmjsonparse)
# ---------------------------------------------------------------------------

RSYSLOG = os.path.join(ROOT, "contrib", "rsyslog", "socktrace.conf")


def _rsyslog_conf(work, out, bad, src):
    """contrib/rsyslog/socktrace.conf with the test's paths, after a global()
    of the instance's own (the system's rsyslog.conf has one)."""
    text = open(RSYSLOG).read()
    for old, new in (("/var/log/socktrace-shipped.ndjson", out),
                     ("/var/log/socktrace-unparsed.log", bad), (OUTPUT, src)):
        assert text.count(old) == 1, old
        text = text.replace(old, str(new))
    return 'global(workDirectory="%s")\n' % work + text


@pytest.mark.bpf
def test_rsyslog_ships_every_record_whole_through_rotations(tmp_path):
    """rsyslogd (a private instance: contrib/rsyslog/socktrace.conf with the
    test's paths, its own pid file and work directory) follows socktrace's
    file with imfile, parses each line with mmjsonparse and writes the
    parsed JSON with omfile; the file is rotated
    (mv, SIGHUP) three times meanwhile.  Every record socktrace wrote arrives
    exactly once, equal to what socktrace wrote."""
    rsyslogd = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if not os.access(rsyslogd, os.X_OK):
        pytest.skip("rsyslog is not installed (scripts/install.sh test installs it)")
    ls = Listener()
    src = tmp_path / "socktrace.ndjson"
    work = tmp_path / "rsyslog"
    work.mkdir()
    shipped, bad = tmp_path / "shipped.ndjson", tmp_path / "unparsed.log"
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(_rsyslog_conf(work=work, out=shipped, bad=bad, src=src))
    check = subprocess.run([rsyslogd, "-N1", "-f", str(conf)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    trace = start_socktrace(str(src), ["--port", str(ls.port)], sentinel=port_sentinel(ls),
                            env={"SOCKTRACE_RECONCILE_S": "3600"})
    trace.pump = lambda: None
    before = ls.made - 1                # the probe that showed it ready is traced
    syslog = subprocess.Popen([rsyslogd, "-n", "-f", str(conf), "-i", str(work / "pid")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    churn = Churn(ls, seconds=30)
    try:
        time.sleep(1.0)                 # imfile's first look at the file
        churn.start()
        for i in range(3):
            time.sleep(1.0)
            os.rename(src, tmp_path / ("socktrace.ndjson.%d" % i))
            trace.proc.send_signal(signal.SIGHUP)
            wait_until(src.exists, 10, "socktrace's new file after rotation %d" % i, step=0.01)
        time.sleep(1.0)
        churn.finish()
        rc = trace.stop()
        err = trace.stderr()
        assert rc == 0, err
        files = [tmp_path / ("socktrace.ndjson.%d" % i) for i in range(3)] + [src]
        written = [r for f in files for r in whole_lines(str(f))]
        assert len(traced(written)) == received(err), err

        def arrived():
            return (shipped.exists() and shipped.read_bytes().count(b"\n") >= len(written)
                    and shipped.read_bytes().endswith(b"\n"))
        try:
            wait_until(arrived, 20, "rsyslog to ship %d records" % len(written), step=0.2)
        except BaseException:
            got = shipped.read_bytes().count(b"\n") if shipped.exists() else 0
            print("rsyslog shipped %d of %d; unparsed: %r" % (
                got, len(written), bad.read_bytes()[:500] if bad.exists() else b""))
            raise
        time.sleep(0.5)                 # anything more would be a duplicate
    finally:
        if churn.is_alive():
            churn.finish()
        ls.close()
        trace.stop()
        if syslog.poll() is None:
            syslog.send_signal(signal.SIGTERM)
        try:
            syslog.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(syslog.pid, signal.SIGKILL)
            syslog.wait(timeout=10)
    assert not bad.exists() or not bad.read_bytes(), bad.read_bytes()[:1000]
    got = whole_lines(str(shipped))

    def key(r):
        return json.dumps(r, sort_keys=True)
    assert len(got) == len(written), (len(got), len(written))
    assert sorted(map(key, got)) == sorted(map(key, written))
    assert sum(1 for r in got if r["type"] == "closed" and r["lport"] == ls.port) >= ls.made - before
