"""The leak lab (vagrant/): its demos, started and hunted with the
walkthrough's own commands.

vagrant/README.md is the script: every ``$ command`` in its console blocks
runs here, in order, in a working directory of the test's own, with
socktrace (.venv/bin/socktrace) and the demos (vagrant/demos/) first on
PATH, as provision.sh puts them in the VM.  Each command must exit 0, and
what it prints is checked against the demo it hunts (CHECKS below: every
command of the walkthrough has a check, so the README and this file
cannot drift apart).  A command ending in ``&`` starts in the background:
a demo must print its ready line, the trace must show a sentinel
connection; ``kill $(pgrep -x NAME)`` runs only if NAME names nothing but
the process this test started.  Everything started is stopped by pid, and
the demos' network namespace is gone, whatever happens.

    sudo .venv/bin/python tests/test_leaklab.py    prints the walkthrough's
                                                   real output (for the README)

The demos' own bounds (--duration, counts, cleanup) and ``vagrant
validate`` are tested without eBPF.  scripts/prove-vagrant-provision.sh
(provision.sh in a fresh debootstrapped Debian root) is not part of the
suite: it downloads ~300 MB and takes minutes.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from conftest import ROOT, SOCKTRACE, listen_sentinel, scaled  # noqa: E402

VAGRANT = os.path.join(ROOT, "vagrant")
README = os.path.join(VAGRANT, "README.md")
DEMOS = os.path.join(VAGRANT, "demos")
DEMO_NAMES = ("leaky-server", "leaky-pool", "tw-churn", "slow-acceptor")
HELPERS = ("hangup-client", "pool-backend", "slow-client")
PORTS = (7001, 7002, 7003, 7004)
NETNS = "socktrace-lab"
CMD_TIMEOUT = 60


# ---------------------------------------------------------------------------
# The walkthrough, read from the README
# ---------------------------------------------------------------------------


def walkthrough(path=README):
    """[(section number, title, [command, ...])] from the README's console
    blocks, in order (commands before the first numbered heading: -1)."""
    sections = [(-1, "", [])]
    in_block = False
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            m = re.match(r"## (\d+)\. (.*)", line)
            if m and not in_block:
                sections.append((int(m.group(1)), m.group(2), []))
            elif line.startswith("```"):
                in_block = (not in_block) and line.strip() == "```console"
            elif in_block and line.startswith("$ "):
                sections[-1][2].append(line[2:].strip())
    return [s for s in sections if s[2]]


class Lab:
    """Runs the walkthrough's commands; remembers what it started."""

    def __init__(self, workdir, echo=None):
        self.workdir = workdir
        self.bin = os.path.join(workdir, "bin")
        os.makedirs(self.bin, exist_ok=True)
        link = os.path.join(self.bin, "socktrace")
        if not os.path.lexists(link):
            os.symlink(SOCKTRACE, link)
        self.env = dict(os.environ, PATH=os.pathsep.join(
            [self.bin, DEMOS, os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")]))
        self.env.pop("PYTHONPATH", None)
        self.started = {}       # name -> Popen (the demo, or "socktrace")
        self.first_line = {}    # name -> its ready line
        self.echo = echo
        self.netns_before = NETNS in self._netns()

    @staticmethod
    def _netns():
        r = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
        return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]

    def run(self, cmd):
        """Run one command of the walkthrough; returns what it printed."""
        if cmd.endswith("&"):
            return self._background(cmd[:-1].strip())
        m = re.fullmatch(r"kill \$\(pgrep -x (\S+)\)", cmd)
        if m:
            self._only_ours(m.group(1))
        # as a user's shell runs it (no pipefail: `jq ... | head` is fine)
        r = subprocess.run(["bash", "-c", cmd], cwd=self.workdir, env=self.env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, errors="replace",
                           timeout=scaled(CMD_TIMEOUT))
        if r.returncode != 0:
            raise AssertionError("`%s` exited %d:\n%s" % (cmd, r.returncode, r.stdout[-3000:]))
        if m:
            self._wait_exit(m.group(1))
        if cmd == "kill $(cat lab.pid)":
            self._wait_exit("socktrace")
        return r.stdout

    def _background(self, cmd):
        name = cmd.split()[0]
        out_path = os.path.join(self.workdir, name + ".out")
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(["bash", "-c", "exec " + cmd], cwd=self.workdir,
                                    env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.started[name] = proc
        if name == "socktrace":
            return self._trace_ready(cmd, proc)
        deadline = time.monotonic() + scaled(15)
        while True:
            with open(out_path, errors="replace") as f:
                text = f.read()
            if "\n" in text:
                self.first_line[name] = text.split("\n", 1)[0]
                return self.first_line[name] + "\n"
            if proc.poll() is not None:
                raise AssertionError("`%s` exited %s before it was ready:\n%s"
                                     % (cmd, proc.returncode, text[-2000:]))
            if time.monotonic() > deadline:
                raise AssertionError("`%s` printed no ready line within 15 s" % cmd)
            time.sleep(0.05)

    def _trace_ready(self, cmd, proc):
        """The trace is ready once a connection this test makes on a
        traced port shows up in its output (bounded)."""
        out = re.search(r"-o (\S+)", cmd).group(1)
        path = os.path.join(self.workdir, out)
        port = int(re.search(r"--port (\d+)", cmd).group(1))
        deadline = time.monotonic() + scaled(30)
        me = os.getpid()
        while True:
            if proc.poll() is not None:
                raise AssertionError("`%s` exited %s:\n%s" % (cmd, proc.returncode,
                                                              self.read("lab.report")[-2000:]))
            listen_sentinel(port=port, connect=False)
            step = time.monotonic() + 0.5
            while time.monotonic() < step:
                for rec in self.records(path):
                    if (rec.get("type") == "state" and rec["new"] == "LISTEN"
                            and rec["lport"] == port and rec["pid"] == me):
                        return ""
                time.sleep(0.05)
            if time.monotonic() > deadline:
                raise AssertionError("`%s` not tracing after 30 s:\n%s"
                                     % (cmd, self.read("lab.report")[-2000:]))

    def read(self, name):
        try:
            with open(os.path.join(self.workdir, name), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    @staticmethod
    def records(path):
        out = []
        try:
            with open(path, "rb") as f:
                for line in f:
                    if line.endswith(b"\n"):
                        out.append(json.loads(line))
        except FileNotFoundError:
            pass
        return out

    def pid(self, name):
        return self.started[name].pid

    def _only_ours(self, name):
        r = subprocess.run(["pgrep", "-x", name], stdout=subprocess.PIPE, text=True)
        pids = {int(p) for p in r.stdout.split()}
        ours = {self.pid(name)} if name in self.started else set()
        if not pids or pids - ours:
            raise AssertionError("pgrep -x %s finds %s; this test started %s: not killing "
                                 "what it did not start" % (name, sorted(pids), sorted(ours)))

    def _wait_exit(self, name, timeout=15):
        proc = self.started.get(name)
        if proc is None:
            return
        try:
            proc.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            raise AssertionError("%s (pid %d) still running %d s after kill"
                                 % (name, proc.pid, timeout))

    def close(self):
        """Stop whatever is still running, by pid (SIGTERM: the demos clean
        up; then SIGKILL), and remove the demos' namespace if it is left."""
        for name, proc in self.started.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if name == "socktrace" else signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        if not self.netns_before and NETNS in self._netns():
            subprocess.run(["ip", "netns", "delete", NETNS])


def demo_pid(lab, name):
    """The pid the demo's ready line names (it is the process started)."""
    m = re.search(r"\bpid (\d+)", lab.first_line[name])
    assert m, lab.first_line[name]
    assert int(m.group(1)) == lab.pid(name)
    return int(m.group(1))


def pgrep(*args):
    r = subprocess.run(("pgrep",) + args, stdout=subprocess.PIPE, text=True)
    return {int(p) for p in r.stdout.split()}


def helper_pid(name, parent=None):
    """Processes named *name* (children of *parent* only, if given)."""
    return pgrep("-x", name, *(("-P", str(parent)) if parent else ()))


def counts(out):
    """`sort | uniq -c` output -> {line: count}."""
    got = {}
    for line in out.splitlines():
        n, _, what = line.strip().partition(" ")
        got[what] = int(n)
    return got


# ---------------------------------------------------------------------------
# What each command must show (by section, in the README's order)
# ---------------------------------------------------------------------------


def _c_ready(name):
    def check(out, lab):
        assert out.startswith(name + ": pid %d " % lab.pid(name)), out
    return check


def _c_leaks(name, state):
    def check(out, lab):
        # named, with what grows (CLOSE_WAIT, ESTABLISHED) on its line
        pid = demo_pid(lab, name)
        assert re.search(r"^%s/%d: .*%s" % (name, pid, state), out, re.M), out
    return check


def _c_none(out, lab):
    pass


def _c1_stat(out, lab):
    pid = demo_pid(lab, "leaky-server")
    section = out[out.index("\nCLOSE_WAIT "):]
    m = re.search(r"per process:.*leaky-server/%d (\d+)" % pid, section)
    assert m and int(m.group(1)) >= 5, section
    # its rows among the oldest, unless older CLOSE_WAITs of other processes
    # (other tests on a shared host) fill the list
    rows = re.findall(r"^\S+:\d+\s+\S+:\d+\s+~[\d.]+m?s\s+\d+\s+.*$", section, re.M)
    assert rows, section
    ours = [r for r in rows if "leaky-server/%d " % pid in r]
    assert all(re.match(r"127\.0\.0\.1:7001 .* leaky-server/%d fd \d+$" % pid, r)
               for r in ours), section
    assert ours or len(rows) == 5, section


def _c1_ports(out, lab):
    pid = demo_pid(lab, "leaky-server")
    assert re.search(r"127\.0\.0\.1:7001\s+\d+/128\s+\d+\s+leaky-server/%d fd" % pid, out), out
    rows = re.findall(r"^CLOSE-WAIT\s+127\.0\.0\.1:7001\s+127\.0\.0\.1:\d+ .* leaky-server/%d fd \d+$"
                      % pid, out, re.M)
    assert len(rows) >= 5, out
    assert not re.search(r"^(?!CLOSE-WAIT)\S+ 127\.0\.0\.1:7001 127", out, re.M), out


def _c1_jq(out, lab):
    got = counts(out)
    assert got.get("leaky-server ESTABLISHED -> CLOSE_WAIT", 0) >= 5, out
    assert not [k for k in got if k.startswith("leaky-server CLOSE_WAIT ->")], out


def _c1_closed(out, lab):
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3, out
    for r in rows:   # the first connections, closed at exit after seconds in CLOSE_WAIT
        assert r["path"] == ["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"], r
        assert r["close_wait_s"] > 3.0, r


def _c2_stat(out, lab):
    pid = demo_pid(lab, "leaky-pool")
    m = re.search(r"^leaky-pool/%d\s+(\d+)\s+established (\d+)$" % pid, out, re.M)
    assert m and int(m.group(2)) >= 10, out
    assert re.search(r"^pool-backend/\d+\s+\d+\s+established \d+", out, re.M), out


def _c2_ports(out, lab):
    pid = demo_pid(lab, "leaky-pool")
    backend = helper_pid("pool-backend", pid)
    assert len(backend) == 1, backend
    m = re.search(r"127\.0\.0\.1:7002\s+0/128\s+(\d+)\s+pool-backend/%d fd" % backend.pop(), out)
    assert m and int(m.group(1)) >= 10, out
    rows = re.findall(r"^ESTAB\s+127\.0\.0\.1:\d+\s+127\.0\.0\.1:7002 .* leaky-pool/%d fd \d+$"
                      % pid, out, re.M)
    assert len(rows) >= 10, out


def _c2_fds(out, lab):
    assert int(out.strip()) >= 10, out


def _c2_jq(out, lab):
    got = counts(out)
    opened = got.get("SYN_SENT -> ESTABLISHED", 0)
    assert opened >= 10 and got.get("CLOSE -> SYN_SENT") == opened, out
    assert set(got) == {"CLOSE -> SYN_SENT", "SYN_SENT -> ESTABLISHED"}, out


def _c3_stat(out, lab):
    assert re.search(r"ephemeral ports 40000-40099 \(100\)", out), out
    assert "tcp_tw_reuse 0 (off)" in out, out
    m = re.search(r"^127\.0\.0\.1:7003\s+(\d+)\s+\d+\s+1\s+(\d+) \(([\d.]+)%\)\s+no$", out, re.M)
    assert m, out
    tw, used, pct = int(m.group(1)), int(m.group(2)), float(m.group(3))
    assert tw >= 95 and used >= 95 and pct >= 95.0, out


def _c3_jq(out, lab):
    got = counts(out)
    assert got.get("FIN_WAIT2 -> TIME_WAIT", 0) >= 95, out
    # connects that found no free local port: SYN_SENT -> CLOSE, never a SYN sent
    assert got.get("SYN_SENT -> CLOSE", 0) >= 10, out
    assert got.get("CLOSE -> SYN_SENT") == (got.get("SYN_SENT -> ESTABLISHED", 0)
                                             + got["SYN_SENT -> CLOSE"]), out


def _c3_closed(out, lab):
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2, out
    for r in rows:
        assert r == {"lport": 0, "rport": 7003, "path": ["SYN_SENT", "CLOSE"],
                     "end": "cancelled"}, r


def _c3_host(out, lab):
    # this namespace's view: none of tw-churn's sockets (they are in its own)
    assert re.match(r"TCP sockets: 0 ", out), out


def _c4_before(out, lab):
    lab.overflows_before = int(out)


def _c4_ports(out, lab):
    pid = demo_pid(lab, "slow-acceptor")
    assert re.search(r"^127\.0\.0\.1:7004\s+5/4\s+\d+\s+slow-acceptor/%d fd" % pid, out, re.M), out
    # five handshakes done and queued, owned by nobody until accept()
    assert len(re.findall(r"^ESTAB\s+127\.0\.0\.1:7004\s+127\.0\.0\.1:\d+ .* -$", out, re.M)) == 5, out
    assert len(re.findall(r"^SYN-SENT\s+127\.0\.0\.1:\d+\s+127\.0\.0\.1:7004 .* slow-client/\d+ fd",
                          out, re.M)) >= 5, out


def _c4_stat(out, lab):
    m = re.search(r"^127\.0\.0\.1:7004\s+(\d+)\s+5\s+4$", out, re.M)
    assert m, out
    m = re.search(r"ListenOverflows\s+(\d+)", out)
    assert m and int(m.group(1)) > lab.overflows_before, (lab.overflows_before, out)


def _c4_jq(out, lab):
    got = counts(out)
    assert got.get("slow-client client CLOSE -> SYN_SENT") == 20, out
    assert got.get("slow-acceptor server LISTEN -> SYN_RECV") == 5, out
    assert got.get("slow-acceptor server SYN_RECV -> ESTABLISHED") == 5, out
    assert got.get("slow-client client SYN_SENT -> ESTABLISHED", 0) >= 5, out


def _c4_closed(out, lab):
    never = queued = 0
    for line in out.splitlines():
        n, _, doc = line.strip().partition(" ")
        r = json.loads(doc)
        if r["path"] == ["SYN_SENT", "CLOSE"]:
            # connects the full queue never answered, given up at exit
            assert r["end"] == "cancelled" and r["syn_sent_s"] >= 1, line
            never += int(n)
        else:
            # handshakes the kernel queued and nobody accepted: reset with the listener
            assert r["path"][:2] == ["SYN_SENT", "ESTABLISHED"] and r["syn_sent_s"] == 0, line
            queued += int(n)
    assert queued == 5 and never == 15, out


def _c5_stop(out, lab):
    report = lab.read("lab.report")
    assert lab.started["socktrace"].returncode == 0, report[-3000:]
    assert "Traceback" not in report, report[-3000:]
    assert not os.path.exists(os.path.join(lab.workdir, "lab.pid"))


# section -> [(pattern the command must match in full, check)], in order
CHECKS = {
    0: [(r"socktrace --port 7001,7002,7003,7004 -o lab\.ndjson --pid-file lab\.pid 2>lab\.report &",
         _c_none),
        (r"sleep \d+", _c_none)],
    1: [(r"leaky-server &", _c_ready("leaky-server")),
        (r"socktrace leaks --duration 5", _c_leaks("leaky-server", "CLOSE_WAIT")),
        (r"socktrace stat", _c1_stat),
        (r"socktrace ports 7001 --state close-wait", _c1_ports),
        (r"jq .*CLOSE_WAIT.* lab\.ndjson \| sort \| uniq -c", _c1_jq),
        (r"kill \$\(pgrep -x leaky-server\)", _c_none),
        (r"sleep \d+", _c_none),
        (r"jq -c 'select\(.type==\"closed\" and .comm==\"leaky-server\"\).*", _c1_closed)],
    2: [(r"leaky-pool &", _c_ready("leaky-pool")),
        (r"socktrace leaks --duration 5", _c_leaks("leaky-pool", "ESTABLISHED")),
        (r"socktrace stat --state established", _c2_stat),
        (r"socktrace ports 7002", _c2_ports),
        (r"ls /proc/\$\(pgrep -x leaky-pool\)/fd \| wc -l", _c2_fds),
        (r"jq .*leaky-pool.* \| sort \| uniq -c", _c2_jq),
        (r"kill \$\(pgrep -x leaky-pool\)", _c_none)],
    3: [(r"tw-churn &", _c_ready("tw-churn")),
        (r"sleep \d+", _c_none),
        (r"ip netns exec socktrace-lab socktrace stat", _c3_stat),
        (r"jq .*tw-churn.* \| sort \| uniq -c", _c3_jq),
        (r"jq -c 'select\(.type==\"closed\" and .comm==\"tw-churn\"\).*", _c3_closed),
        (r"socktrace stat --rport 7003 \| head -n 1", _c3_host),
        (r"kill \$\(pgrep -x tw-churn\)", _c_none)],
    4: [(r"socktrace stat --json \| jq \.counters\.ListenOverflows", _c4_before),
        (r"slow-acceptor &", _c_ready("slow-acceptor")),
        (r"sleep \d+", _c_none),
        (r"socktrace ports 7004", _c4_ports),
        (r"socktrace stat --lport 7004", _c4_stat),
        (r"jq .*7004.* \| sort \| uniq -c", _c4_jq),
        (r"kill \$\(pgrep -x slow-acceptor\)", _c_none),
        (r"sleep \d+", _c_none),
        (r"jq -c 'select\(.type==\"closed\" and .comm==\"slow-client\"\).* \| sort \| uniq -c",
         _c4_closed)],
    5: [(r"kill \$\(cat lab\.pid\)", _c5_stop)],
}


def steps(section):
    """The section's commands, each with its check (the README and CHECKS
    must agree command for command)."""
    cmds = dict((n, c) for n, _, c in walkthrough())[section]
    want = CHECKS[section]
    assert len(cmds) == len(want), ("section %d: README has %d commands, CHECKS %d:\n%s"
                                    % (section, len(cmds), len(want), "\n".join(cmds)))
    for cmd, (pattern, check) in zip(cmds, want):
        assert re.fullmatch(pattern, cmd), "section %d: %r does not match %r" % (
            section, cmd, pattern)
    return [(cmd, check) for cmd, (_, check) in zip(cmds, want)]


def run_section(lab, section):
    for cmd, check in steps(section):
        t = time.monotonic()
        out = lab.run(cmd)
        if lab.echo:
            lab.echo(cmd, out, time.monotonic() - t)
        check(out, lab)


def host_settings():
    out = []
    for key in ("ip_local_port_range", "tcp_tw_reuse"):
        with open("/proc/sys/net/ipv4/" + key) as f:
            out.append(f.read().split())
    return out


def ports_free():
    busy = []
    for port in PORTS:
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        except OSError:
            busy.append(port)
        finally:
            s.close()
    return busy


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_every_walkthrough_command_is_checked():
    sections = [n for n, _, _ in walkthrough()]
    assert sections == sorted(CHECKS), sections
    for n in sections:
        steps(n)


LOCK = "/run/lock/socktrace-leaklab.lock"
LOCK_WAIT = 180      # another run of this module (same host) holds the lab's ports


def take_lock():
    """The lab's lock, waited for (bounded); closing the file releases it."""
    import fcntl
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    lock = open(LOCK, "w")
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                raise AssertionError("another run of the leak lab held %s for %d s"
                                     % (LOCK, LOCK_WAIT))
            time.sleep(0.5)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The walkthrough's section 0 (the trace) before the demo tests, its
    last section (stop the trace) after them.  The lab's fixed ports, names
    and namespace are the host's: one run at a time (a lock, waited for)."""
    lock = take_lock()
    lab = None
    try:
        busy = ports_free()
        if busy:
            pytest.fail("the lab's ports %s are in use on this host" % busy, pytrace=False)
        for name in DEMO_NAMES + HELPERS:
            if helper_pid(name):
                pytest.fail("a %s is already running (pgrep -x %s)" % (name, name),
                            pytrace=False)
        lab = Lab(str(tmp_path_factory.mktemp("leaklab")))
        run_section(lab, 0)
        yield lab
        run_section(lab, 5)
    finally:
        if lab is not None:
            lab.close()
        lock.close()
    assert lab.netns_before or NETNS not in Lab._netns()
    for proc in lab.started.values():
        assert not pgrep("-s", str(proc.pid)), "left running: %s" % pgrep("-s", str(proc.pid))


@pytest.mark.bpf
def test_close_wait_leaky_server(lab):
    run_section(lab, 1)


@pytest.mark.bpf
def test_pool_leaky_pool(lab):
    run_section(lab, 2)


@pytest.mark.bpf
def test_time_wait_exhaustion_tw_churn(lab):
    if shutil.which("ip") is None:
        pytest.skip("no ip (iproute2)")
    run_section(lab, 3)


@pytest.mark.bpf
def test_listen_overflow_slow_acceptor(lab):
    run_section(lab, 4)


def test_demos_stop_by_themselves_and_clean_up(tmp_path):
    """Each demo ends at --duration, closing its sockets, reaping its
    helper, and (tw-churn, as root) deleting the namespace it created."""
    if os.geteuid() != 0:
        pytest.skip("tw-churn needs root (a network namespace)")
    netns = "socktrace-lab-t%d" % os.getpid()
    runs = {
        "leaky-server": ["--port", "0", "--clients", "3", "--interval", "0.05"],
        "leaky-pool": ["--port", "0", "--interval", "0.05"],
        "tw-churn": ["--netns", netns, "--ports", "40000-40009", "--rate", "200"],
        "slow-acceptor": ["--port", "0", "--clients", "8", "--interval", "0.01"],
    }
    procs = {}
    before = host_settings()
    try:
        t0 = time.monotonic()
        for name, args in runs.items():
            procs[name] = subprocess.Popen(
                [os.path.join(DEMOS, name), "--duration", "2"] + args,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True)
        outs = {name: p.communicate(timeout=20)[0] for name, p in procs.items()}
        took = time.monotonic() - t0
        for name, p in procs.items():
            assert p.returncode == 0, (name, outs[name])
            assert outs[name].startswith(name + ": pid %d " % p.pid), outs[name]
            assert "stopped:" in outs[name].splitlines()[-1], outs[name]
        assert took < 12, took
        assert "EADDRNOTAVAIL" in outs["tw-churn"], outs["tw-churn"]
        assert netns not in Lab._netns()
        assert "closed 3 at exit" in outs["leaky-server"], outs["leaky-server"]
        for p in procs.values():     # helpers included: each demo is its own session
            assert not pgrep("-s", str(p.pid)), "left running: %s" % pgrep("-s", str(p.pid))
        assert host_settings() == before, "the host's own settings changed"
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        if netns in Lab._netns():
            subprocess.run(["ip", "netns", "delete", netns])


def test_vagrant_validate(tmp_path):
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("vagrant is not installed (apt-get install vagrant: not in install.sh's "
                    "test packages, it pulls ~250 packages)")
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "vagrant.d"),
               VAGRANT_CHECKPOINT_DISABLE="1")
    r = subprocess.run([vagrant, "validate"], cwd=VAGRANT, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=120)
    assert r.returncode == 0, r.stdout
    assert "validated successfully" in r.stdout, r.stdout


# ---------------------------------------------------------------------------
# sudo .venv/bin/python tests/test_leaklab.py: the walkthrough's real output
# ---------------------------------------------------------------------------


def _print_step(cmd, out, took):
    print("$ " + cmd)
    print("[%.1f s]" % took, file=sys.stderr)
    sys.stdout.write(out)
    sys.stdout.flush()


def main():
    lock = take_lock()
    work = tempfile.mkdtemp(prefix="leaklab.")
    lab = Lab(work, echo=_print_step)
    try:
        for n, title, _ in walkthrough():
            print("\n## %d. %s" % (n, title))
            run_section(lab, n)
    finally:
        lab.close()
        shutil.rmtree(work, ignore_errors=True)
        lock.close()


if __name__ == "__main__":
    main()
