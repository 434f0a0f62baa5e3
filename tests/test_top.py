"""socktrace top in a real terminal: tmux panes of 80x24 and 200x50.

Each test starts a shell in a tmux server of its own (``tmux -L``), runs
``socktrace top`` there, makes known loopback traffic on an address of its
own (connections to a port it picks, refused connects to a port bound but
not listening, a server that leaks CLOSE_WAIT), reads the screen with
``tmux capture-pane`` and checks what it says; then it types ``q`` and
checks the exit status and that the terminal got its modes back (``stty -g``
before and after).  Every wait is bounded; the tmux server and the
children are killed in a finally.
"""

import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT, SOCKTRACE, scaled

PY = os.path.join(ROOT, ".venv", "bin", "python")
if not os.path.exists(PY):
    PY = sys.executable

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="needs tmux (scripts/install.sh test)")

# A child: mode "leak" listens on ADDR and keeps every connection it accepts
# open (its peer closes: CLOSE_WAIT piles up); mode "traffic" listens on
# ADDR too, and until stdin closes (or 90 s) connects to itself, to a port
# that is bound but not listening (refused), and to the leaker (LEAKPORT)
# now and then; HOLD seconds per connection (the /proc backend sees only
# what lasts a poll).  Each says "ready PORT [REFUSEDPORT]" first.
CHILD = r"""
import ctypes, select, socket, sys, threading, time
name, mode, addr = sys.argv[1], sys.argv[2], sys.argv[3]
libc = ctypes.CDLL(None)
libc.prctl(15, ctypes.c_char_p(name.encode()), 0, 0, 0)
done = threading.Event()
def watch():
    sys.stdin.read()
    done.set()
threading.Thread(target=watch, daemon=True).start()
ls = socket.socket()
ls.bind((addr, 0))
ls.listen(128)
port = ls.getsockname()[1]
end = time.monotonic() + 90
if mode == "leak":
    print("ready %d" % port, flush=True)
    kept = []
    while not done.is_set() and time.monotonic() < end:
        if select.select([ls], [], [], 0.1)[0]:
            kept.append(ls.accept()[0])
    sys.exit(0)
leakport, hold, every = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
dead = socket.socket()
dead.bind((addr, 0))          # bound, never listening: a SYN gets a reset
print("ready %d %d" % (port, dead.getsockname()[1]), flush=True)
open_ = []
n = 0
while not done.is_set() and time.monotonic() < end:
    now = time.monotonic()
    c = socket.create_connection((addr, port), timeout=2)
    a = ls.accept()[0]
    open_.append((now + hold, c, a))
    if n % 3 == 0:
        r = socket.socket()
        try:
            r.connect((addr, dead.getsockname()[1]))
        except ConnectionRefusedError:
            pass
        r.close()
    if n % 4 == 0 and len(open_) < 400:
        try:
            lc = socket.create_connection((addr, leakport), timeout=2)
        except OSError:
            break     # the leaker is gone: the test is ending
        open_.append((now + hold, lc, None))
    keep = []
    for t, x, y in open_:
        if t <= now:
            x.close()
            if y is not None:
                y.close()
        else:
            keep.append((t, x, y))
    open_ = keep
    n += 1
    done.wait(every)
"""


class Child:
    def __init__(self, args, user=None):
        cmd = [PY, "-c", CHILD] + [str(a) for a in args]
        if user:
            cmd = ["setpriv", "--reuid=" + user, "--regid=nogroup", "--clear-groups"] + cmd
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, cwd="/")
        line = self.p.stdout.readline()     # bounded: the child answers or dies
        assert line.startswith("ready "), (args, line, self.p.poll())
        self.ports = [int(x) for x in line.split()[1:]]
        self.pid = self.p.pid

    def stop(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(5)
        self.p.stdout.close()


class Pane:
    """One tmux server (its own socket) with one shell in a w x h pane."""

    def __init__(self, w, h, tmp):
        self.w, self.h, self.tmp = w, h, tmp
        self.sock = "socktrace-top-%d-%d" % (os.getpid(), random.randrange(1 << 30))
        shell = "env PS1='top-test$ ' bash --norc --noprofile"
        self.tmux("new-session", "-d", "-s", "t", "-x", str(w), "-y", str(h),
                  "-e", "LANG=C.UTF-8", shell)
        self.tmux("set-option", "-g", "status", "off")
        self.wait_for(lambda s: "top-test$" in s, 10, "the shell's prompt")

    def tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.sock, "-f", "/dev/null"] + list(args),
                              capture_output=True, text=True, timeout=10, check=True).stdout

    def send(self, *keys):
        self.tmux("send-keys", "-t", "t", *keys)

    def type(self, text):
        self.tmux("send-keys", "-t", "t", "-l", text)

    def screen(self):
        # -J: a line the terminal wrapped comes back as one, longer than w
        return self.tmux("capture-pane", "-p", "-J", "-t", "t")

    def wait_for(self, pred, timeout, what):
        deadline = time.monotonic() + scaled(timeout)
        while True:
            s = self.screen()
            got = pred(s)
            if got:
                return got
            if time.monotonic() >= deadline:
                pytest.fail("timed out after %.0f s waiting for %s; the screen:\n%s"
                            % (scaled(timeout), what, s))
            time.sleep(0.3)

    def kill(self):
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def run_top(tmp_path):
    """run_top(w, h, args) -> Pane running socktrace top ARGS, its screen up."""
    made = []

    def start(w, h, args, prefix=""):
        pane = Pane(w, h, str(tmp_path))
        made.append(pane)
        before, after = tmp_path / "stty.before", tmp_path / "stty.after"
        # quoted: the checkout may live in a path with spaces
        q = shlex.quote
        cmd = "stty -g > %s; %s%s top %s; echo top-exit=$?; stty -g > %s" % (
            q(str(before)), prefix, q(SOCKTRACE), " ".join(map(q, args)), q(str(after)))
        pane.type(cmd)
        pane.send("Enter")
        pane.wait_for(lambda s: s.startswith("socktrace top  "), 40, "top's first frame")
        pane.stty = (before, after)
        return pane

    try:
        yield start
    finally:
        for p in made:
            p.kill()


@pytest.fixture
def children():
    made = []

    def start(*args, user=None):
        c = Child(args, user=user)
        made.append(c)
        return c

    try:
        yield start
    finally:
        for c in reversed(made):     # the traffic before the server it connects to
            c.stop()


def own_addr():
    r = random.Random()
    return "127.%d.%d.%d" % (r.randrange(100, 250), r.randrange(1, 250), r.randrange(1, 250))


# --- reading the screen -----------------------------------------------------------------


def column(lines, heading):
    """The rows under *heading* (a left-aligned column of a panel): the
    text from the heading's column on, until an empty cell or the next
    heading row."""
    out = []
    for i, line in enumerate(lines):
        at = line.find(heading + " ")
        if at < 0:
            continue
        for row in lines[i + 1:]:
            cell = row[at:]
            if not cell[:1].strip() or cell.split()[0].isupper():
                break    # nothing right at the column: the panel ended
            out.append(cell.split())
        break
    return out


def checks(screen, w, h, gen, leak, lport):
    """What the screen must say about the test's traffic: {check: ok}."""
    lines = screen.splitlines()
    procs = [r[0] for r in column(lines, "PROCESS")]
    ports = [r[0] for r in column(lines, "PORT")]
    cw = column(lines, "CLOSE_WAIT BY PROCESS")
    m = re.search(r"refused (\d+)/(\d+)", screen)
    return {
        "process": "toptraffic/%d" % gen.pid in procs,
        "port": str(lport) in ports,
        "refused": bool(m) and int(m.group(2)) > 0,
        "grower": any(r[0] == "cwleaker/%d" % leak.pid and len(r) >= 3
                      and r[2].startswith("+") for r in cw),
    }


def check_layout(screen, w, h):
    lines = screen.splitlines()
    assert "Traceback" not in screen, screen
    assert lines and lines[0].startswith("socktrace top  "), screen
    assert len(lines) <= h, screen
    long = [x for x in lines if len(x) > w]
    assert not long, "lines longer than %d (wrapped):\n%s" % (w, "\n".join(long))
    for heading in ("STATE", "PROCESS", "REMOTE ADDR", "PORT", "CLOSE_WAIT BY PROCESS",
                    "FAILED"):
        assert any(heading + " " in x for x in lines), (heading, screen)


def quit_and_check(pane):
    pane.type("q")
    got = pane.wait_for(lambda s: re.search(r"top-exit=(\d+)", s), 15, "top to exit")
    assert got.group(1) == "0", pane.screen()
    screen = pane.wait_for(lambda s: s.rstrip().endswith("top-test$") and s, 10,
                           "the prompt after top")
    assert "Traceback" not in screen, screen
    before, after = pane.stty
    deadline = time.monotonic() + 5
    while not os.path.exists(after) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open(before).read() == open(after).read(), "terminal modes not restored"
    # the shell's screen is back: the command line typed before top is there
    assert "top-test$ stty -g" in screen, screen


def traffic(children, addr, hold=0.0, every=0.1, user=None):
    leak = children("cwleaker", "leak", addr, user=user)
    gen = children("toptraffic", "traffic", addr, leak.ports[0], hold, every, user=user)
    return gen, leak


# --- the tests ---------------------------------------------------------------------------


@needs_tmux
@pytest.mark.bpf
@pytest.mark.parametrize("w,h", [(80, 24), (200, 50)])
def test_top_in_a_terminal(run_top, children, w, h):
    addr = own_addr()
    # the address filter keeps the host's other traffic off the lists
    pane = run_top(w, h, ["--addr", addr + "/32"])
    gen, leak = traffic(children, addr)
    lport = gen.ports[0]

    def ok(s):
        return all(checks(s, w, h, gen, leak, lport).values()) and s
    deadline = time.monotonic() + scaled(25)
    screen = None
    while time.monotonic() < deadline:
        screen = pane.screen()
        if ok(screen):
            break
        time.sleep(0.5)
    res = checks(screen, w, h, gen, leak, lport)
    assert all(res.values()), "%s; the screen:\n%s" % (res, screen)
    check_layout(screen, w, h)
    assert "bpf" in screen.splitlines()[0]
    m = re.search(r"connect p50 (\S+) p99 (\S+)", screen)
    assert m and m.group(1) != "-" and m.group(2) != "-", screen
    if w >= 150:
        # the wide layout: three panels a row, and connect latency per process
        assert any("PROCESS" in x and "FAILED" in x for x in screen.splitlines()), screen
        assert "CONN p50" in screen, screen
    quit_and_check(pane)


@needs_tmux
@pytest.mark.bpf
def test_top_keys(run_top, children):
    """s sorts by the next column, f filters the lists, c clears, p pauses."""
    addr = own_addr()
    pane = run_top(200, 50, ["--addr", addr + "/32", "-d", "0.5"])
    gen, leak = traffic(children, addr)
    pane.wait_for(lambda s: "toptraffic/%d" % gen.pid in s and "cwleaker/%d" % leak.pid in s,
                  20, "both children on screen")
    pane.type("s")
    pane.wait_for(lambda s: "sort:open" in s.splitlines()[0], 5, "sort:open")
    pane.type("f")
    pane.wait_for(lambda s: "filter: _" in s.splitlines()[0], 5, "the filter prompt")
    pane.type("cwleak")
    pane.send("Enter")

    def filtered(s):
        procs = [r[0] for r in column(s.splitlines(), "PROCESS")]
        return ("filter 'cwleak'" in s.splitlines()[0] and procs
                and all(p.startswith("cwleaker/") for p in procs))
    pane.wait_for(filtered, 5, "only cwleaker in the lists")
    pane.type("c")
    pane.wait_for(lambda s: "toptraffic/%d" % gen.pid in s and "filter '" not in s, 5,
                  "the filter cleared")
    pane.type("p")
    pane.wait_for(lambda s: "PAUSED" in s.splitlines()[0], 5, "PAUSED")
    frozen = pane.screen()
    time.sleep(1.6)
    assert pane.screen() == frozen, "the screen changed while paused"
    pane.type("p")
    pane.wait_for(lambda s: "PAUSED" not in s.splitlines()[0], 5, "unpaused")
    check_layout(pane.screen(), 200, 50)
    quit_and_check(pane)


@needs_tmux
@pytest.mark.bpf
@pytest.mark.parametrize("sig", ["INT", "TERM"])
def test_top_ends_on_signals(run_top, sig):
    """Ctrl-C in the terminal, SIGTERM from elsewhere: status 0, terminal back."""
    pane = run_top(80, 24, ["--port", "1"])
    if sig == "INT":
        pane.send("C-c")
    else:
        pid = pane.tmux("list-panes", "-t", "t", "-F", "#{pane_pid}").split()[0]
        kids = subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split()
        assert len(kids) == 1, kids
        os.kill(int(kids[0]), 15)
    got = pane.wait_for(lambda s: re.search(r"top-exit=(\d+)", s), 15, "top to exit")
    assert got.group(1) == "0", pane.screen()
    before, after = pane.stty
    deadline = time.monotonic() + 5
    while not os.path.exists(after) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open(before).read() == open(after).read()


@needs_tmux
@pytest.mark.parametrize("w,h", [(60, 14), (40, 10)])
def test_top_small_terminal(run_top, w, h):
    """Below 80x24 panels are dropped, never wrapped (the /proc backend)."""
    pane = run_top(w, h, ["--backend", "proc", "--port", "1"])
    time.sleep(1.5)
    screen = pane.screen()
    lines = screen.splitlines()
    assert "Traceback" not in screen
    assert lines[0].startswith("socktrace top  proc"), screen
    assert not [x for x in lines if len(x) > w], screen
    assert "PROCESS " in screen, screen
    quit_and_check(pane)


@needs_tmux
def test_top_without_root(run_top, children, readable_checkout):
    """As nobody: the /proc backend and sock_diag; the owners of nobody's
    own sockets are found (the children run as nobody too)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root to switch to nobody (setpriv)")
    addr = own_addr()
    pane = run_top(80, 24, ["--addr", addr + "/32"],
                   prefix="setpriv --reuid=nobody --regid=nogroup --clear-groups ")
    # connections held 2.5 s: the poller sees what lasts a poll
    gen, leak = traffic(children, addr, hold=2.5, every=0.25, user="nobody")
    lport = gen.ports[0]
    deadline = time.monotonic() + scaled(25)
    while time.monotonic() < deadline:
        screen = pane.screen()
        res = checks(screen, 80, 24, gen, leak, lport)
        if res["process"] and res["port"] and res["grower"]:
            break
        time.sleep(0.5)
    assert res["process"] and res["port"] and res["grower"], "%s\n%s" % (res, screen)
    check_layout(screen, 80, 24)
    assert screen.splitlines()[0].startswith("socktrace top  proc"), screen
    assert "note: eBPF unavailable" in screen, screen
    quit_and_check(pane)


def test_once_without_a_terminal():
    """--once prints one frame without a terminal (text, or --json); the
    live screen without one is refused in one line, status 2."""
    r = subprocess.run([SOCKTRACE, "top", "--backend", "proc"], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r
    assert len(r.stderr.splitlines()) == 1 and "--once" in r.stderr, r.stderr
    r = subprocess.run([SOCKTRACE, "top", "--backend", "proc", "--once", "-d", "0.5"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                       env=dict(os.environ, COLUMNS="80", LINES="24"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("socktrace top  proc"), r.stdout
    assert not [x for x in lines if len(x) > 80], r.stdout
    assert "\x1b" not in r.stdout
    r = subprocess.run([SOCKTRACE, "top", "--backend", "proc", "--once", "-d", "0.5", "--json"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["command"] == "top" and doc["source"] == "proc"
    for k in ("opened_per_s", "closed_per_s", "states", "connect_latency", "failures",
              "processes", "remote_addresses", "ports", "close_wait"):
        assert k in doc, k
    r = subprocess.run([SOCKTRACE, "top", "--json"], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r


def test_names_are_escaped():
    """A process name with an escape sequence reaches the screen escaped."""
    from rich.console import Console

    from tracer.views import top
    evil = "x\x1b]0;pwn\x07\x1b[2J"
    st = top.Stats()
    rec = {"type": "state", "old": "CLOSE", "new": "SYN_SENT", "pid": 66, "comm": evil,
           "family": 4, "raddr": "10.0.0.1", "lport": 0, "rport": 443, "role": "client",
           "in_old_ns": None, "lower_bound": False}
    st.add([rec])
    st.tick(1.0)
    cw = top.CloseWaitHistory()
    cw.add(0.0, {(66, evil): 1})
    cw.add(5.0, {(66, evil): 3})
    sample = {"t": 0.0, "states": {"ESTABLISHED": 1}, "total": 1, "cw": None, "denied": None}
    doc = top.frame(st, sample, None, cw, "bpf", time.monotonic(), top.UI(),
                    notes=["a note \x1b[31m"])
    for w, h in ((80, 24), (200, 50)):
        con = Console(width=w, height=h, force_terminal=False, color_system=None,
                      file=open(os.devnull, "w"))
        with con.capture() as cap:
            con.print(top.render(doc, w, h, top.UI()), crop=True)
        out = cap.get()
        assert "\x1b" not in out and "\x07" not in out
        assert "x\\x1b]0;pwn\\x07" in out, out


@pytest.mark.parametrize("argv", [["-d", "0"], ["-d", "nan"], ["--interval", "inf"],
                                  ["--port", "x"], ["--state", "bogus"], ["--backend", "x"],
                                  ["--addr", "::1/129"], ["--json"], ["extra"]])
def test_bad_arguments_one_line(argv):
    r = subprocess.run([SOCKTRACE, "top"] + argv, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("socktrace top: "), r.stderr
    assert lines[0].isprintable()
