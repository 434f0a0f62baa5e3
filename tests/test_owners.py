"""Tests for tracer.owners: a fake proc tree (tmp_path/<pid>/fd/<n> symlinks
to "socket:[inode]", tmp_path/<pid>/comm) for the caching logic, and the
real /proc for the current process."""

import doctest
import os
import socket
import time

import pytest

from tracer import owners
from tracer.owners import OwnerCache, owner_of_inode, read_comm


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def add_proc(root, pid, comm, inodes=(), others=("/dev/null", "pipe:[77]")):
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "comm").write_bytes(comm + b"\n" if isinstance(comm, bytes) else (comm + "\n").encode())
    n = 0
    for n, target in enumerate(others):
        os.symlink(target, d / "fd" / str(n))
    for i, ino in enumerate(inodes, start=n + 1):
        os.symlink("socket:[%d]" % ino, d / "fd" / str(i))
    return d


def add_fd(root, pid, fd, ino):
    os.symlink("socket:[%d]" % ino, root / str(pid) / "fd" / str(fd))


def replace_fd(root, pid, fd, ino):
    path = root / str(pid) / "fd" / str(fd)
    os.unlink(path)
    os.symlink("socket:[%d]" % ino, path)


def rm_proc(root, pid):
    import shutil

    shutil.rmtree(root / str(pid))


@pytest.fixture
def tree(tmp_path):
    # Noise that a real /proc has: non-numeric entries.
    (tmp_path / "self").mkdir()
    (tmp_path / "net").mkdir()
    (tmp_path / "sys").mkdir()
    add_proc(tmp_path, 1, "init", [100])
    add_proc(tmp_path, 42, "sshd", [200, 201])
    add_proc(tmp_path, 43, "nginx", [300], others=("anon_inode:[eventfd]", "socket:[bad]"))
    add_proc(tmp_path, 44, "cat", [])  # no sockets
    return tmp_path


def snapshot(cache):
    return dict(cache.stats)


def delta(before, cache):
    return {k: v - before[k] for k, v in cache.stats.items() if v != before[k]}


def test_resolution(tree):
    cache = OwnerCache(str(tree), clock=Clock())
    got = cache.resolve([100, 200, 201, 300, 999, 0])
    assert got == {
        100: (1, "init"),
        200: (42, "sshd"),
        201: (42, "sshd"),
        300: (43, "nginx"),
    }
    assert cache.owner(300) == (43, "nginx")
    assert cache.owner_of_inode(999) is None
    assert cache.owner(0) is None
    assert owner_of_inode(201, str(tree)) == (42, "sshd")
    assert owner_of_inode(999, str(tree)) is None
    assert owner_of_inode(0, str(tree)) is None


def test_no_rescan_when_all_known(tree):
    cache = OwnerCache(str(tree), clock=Clock())
    cache.resolve([100, 200, 300])
    assert cache.stats["scans"] == 1 and cache.stats["full_scans"] == 0
    before = snapshot(cache)
    for _ in range(100):
        assert cache.resolve([300, 200, 100, 0]) == {
            100: (1, "init"),
            200: (42, "sshd"),
            300: (43, "nginx"),
        }
    # Nothing but the call counter moved: no listing, no walk.
    assert delta(before, cache) == {"resolves": 100}


def test_no_system_calls_when_all_known(tree, monkeypatch):
    cache = OwnerCache(str(tree), clock=Clock())
    cache.resolve([100, 200])

    def boom(*a, **k):
        raise AssertionError("system call on a cache hit")

    for name in ("scandir", "listdir", "stat", "open", "readlink"):
        monkeypatch.setattr(owners.os, name, boom)
    monkeypatch.setattr("builtins.open", boom)
    assert cache.resolve([200, 100]) == {100: (1, "init"), 200: (42, "sshd")}


def test_new_process_walks_only_it(tree):
    cache = OwnerCache(str(tree), clock=Clock())
    cache.resolve([100])
    before = snapshot(cache)
    add_proc(tree, 50, "curl", [500])
    assert cache.resolve([100, 500]) == {100: (1, "init"), 500: (50, "curl")}
    # One listing, one walk (pid 50); the other fd tables were left alone.
    # (The fake tree's fd directories never change size, so pass 1 sees
    # no count change in them.)
    assert delta(before, cache) == {"resolves": 1, "pid_lists": 1, "scans": 1, "pid_walks": 1}


def test_new_socket_in_known_process_found_by_full_pass(tree):
    cache = OwnerCache(str(tree), clock=Clock())
    cache.resolve([200])
    # sshd closes fd 3 and accept() reuses the number: same fd count.
    replace_fd(tree, 42, 2, 250)
    before = snapshot(cache)
    assert cache.resolve([250]) == {250: (42, "sshd")}
    d = delta(before, cache)
    assert d["full_scans"] == 1 and d["scans"] == 1
    assert cache.resolve([200]) == {}  # the closed one is gone after the rebuild


def test_unresolvable_not_rescanned(tree):
    clock = Clock()
    cache = OwnerCache(str(tree), unresolved_ttl=30.0, refresh_interval=1e9, clock=clock)
    assert cache.resolve([999]) == {}
    assert cache.stats["full_scans"] == 1
    before = snapshot(cache)
    for _ in range(50):
        assert cache.resolve([999, 100]) == {100: (1, "init")}
    # No fake loadavg: each call lists the tree to look for new pids, but
    # nothing is walked and there is no full scan.
    d = delta(before, cache)
    assert d.get("pid_walks", 0) == 0 and d.get("full_scans", 0) == 0
    assert d.get("scans", 0) == 0

    # A new process holding it: found by walking just that process.
    add_proc(tree, 60, "late", [999])
    before = snapshot(cache)
    assert cache.resolve([999]) == {999: (60, "late")}
    d = delta(before, cache)
    assert d["pid_walks"] == 1 and d.get("full_scans", 0) == 0


def test_unresolvable_with_loadavg_costs_one_read(tree):
    (tree / "loadavg").write_text("0.00 0.01 0.05 1/85 3630\n")
    clock = Clock()
    cache = OwnerCache(str(tree), unresolved_ttl=30.0, refresh_interval=1e9, clock=clock)
    cache.resolve([999])
    before = snapshot(cache)
    for _ in range(20):
        assert cache.resolve([999]) == {}
    assert delta(before, cache) == {"resolves": 20}  # not even a listing
    # The pid counter moved: list, and walk the new process.
    (tree / "loadavg").write_text("0.00 0.01 0.05 1/86 3631\n")
    add_proc(tree, 3631, "new", [999])
    assert cache.resolve([999]) == {999: (3631, "new")}


def test_unresolvable_expires(tree):
    clock = Clock()
    cache = OwnerCache(str(tree), unresolved_ttl=30.0, refresh_interval=1e9, clock=clock)
    cache.resolve([999])
    assert cache.stats["full_scans"] == 1
    clock.now += 10
    cache.resolve([999])
    assert cache.stats["full_scans"] == 1
    # Given to an existing process over a unix socket: invisible until the
    # ttl runs out, then a full scan finds it.
    replace_fd(tree, 44, 1, 999)
    clock.now += 10
    assert cache.resolve([999]) == {}
    clock.now += 11
    assert cache.resolve([999]) == {999: (44, "cat")}
    assert cache.stats["full_scans"] == 2


def test_vanished_process(tree):
    clock = Clock()
    cache = OwnerCache(str(tree), refresh_interval=5.0, clock=clock)
    assert cache.resolve([300]) == {300: (43, "nginx")}
    rm_proc(tree, 43)
    # Within the refresh interval the answer comes from memory...
    assert cache.resolve([300]) == {300: (43, "nginx")}
    # ...after it, the dead process is forgotten.
    clock.now += 6
    assert cache.resolve([300]) == {}
    assert 43 not in cache._procs


def test_socket_left_to_child_after_parent_exits(tree):
    clock = Clock()
    cache = OwnerCache(str(tree), refresh_interval=5.0, clock=clock)
    add_proc(tree, 70, "daemon", [700])
    assert cache.resolve([700]) == {700: (70, "daemon")}
    add_proc(tree, 71, "daemon-child", [700])  # forked...
    rm_proc(tree, 70)  # ...and the parent exits
    clock.now += 6
    assert cache.resolve([700]) == {700: (71, "daemon-child")}


def test_process_vanishing_during_walk(tree, monkeypatch):
    add_proc(tree, 80, "dying", [800])
    add_proc(tree, 81, "zombie", [])
    __import__("shutil").rmtree(tree / "81" / "fd")  # exited: fd/ gone
    os.unlink(tree / "80" / "comm")  # exited between the fd walk and comm
    cache = OwnerCache(str(tree), clock=Clock())
    assert cache.resolve([800, 100]) == {100: (1, "init")}

    real = owners._socket_inodes

    def racing(root, pid):
        if pid == 42:
            raise ProcessLookupError(3, "No such process")
        return real(root, pid)

    monkeypatch.setattr(owners, "_socket_inodes", racing)
    cache = OwnerCache(str(tree), clock=Clock())
    assert cache.resolve([200, 300]) == {300: (43, "nginx")}


def test_permission_denied_is_skipped(tree, monkeypatch):
    real = owners._socket_inodes

    def denied(root, pid):
        if pid == 42:
            raise PermissionError(13, "Permission denied")
        return real(root, pid)

    monkeypatch.setattr(owners, "_socket_inodes", denied)
    clock = Clock()
    cache = OwnerCache(str(tree), refresh_interval=1e9, clock=clock)
    assert cache.resolve([200, 300]) == {300: (43, "nginx")}
    # Denied processes are remembered, not "new" again on every call.
    before = snapshot(cache)
    add_proc(tree, 90, "x", [900])
    assert cache.resolve([900]) == {900: (90, "x")}
    assert delta(before, cache)["pid_walks"] == 1


def test_pid_reuse(tree):
    clock = Clock()
    cache = OwnerCache(str(tree), refresh_interval=1e9, clock=clock)
    assert cache.resolve([300]) == {300: (43, "nginx")}
    # pid 43 exits and a new process gets the same pid.  Build the new
    # directory first so that it cannot get the old one's inode number.
    add_proc(tree / "next", 43, "redis", [301])
    rm_proc(tree, 43)
    os.rename(tree / "next" / "43", tree / "43")
    before = snapshot(cache)
    assert cache.resolve([301]) == {301: (43, "redis")}
    assert delta(before, cache).get("full_scans", 0) == 0  # seen as new
    assert cache.resolve([300]) == {}


def test_shared_socket_goes_to_lowest_pid(tree):
    add_proc(tree, 1000, "worker", [555])
    add_proc(tree, 999, "master", [555])
    add_proc(tree, 1001, "worker", [555])
    assert OwnerCache(str(tree), clock=Clock()).resolve([555]) == {555: (999, "master")}
    assert owner_of_inode(555, str(tree)) == (999, "master")


def test_comm(tree):
    add_proc(tree, 5, b"a\xffb  ", [5000])
    add_proc(tree, 6, "fifteen-chars-x", [6000])
    got = OwnerCache(str(tree), clock=Clock()).resolve([5000, 6000])
    assert got[5000] == (5, "a\\xffb  ")  # undecodable byte escaped, spaces kept
    assert got[6000] == (6, "fifteen-chars-x")
    assert read_comm(str(tree), 12345) is None


def test_clear(tree):
    cache = OwnerCache(str(tree), clock=Clock())
    cache.resolve([100])
    cache.clear()
    before = snapshot(cache)
    assert cache.resolve([100]) == {100: (1, "init")}
    assert delta(before, cache)["pid_walks"] == 4  # every process again


# --- the real /proc -----------------------------------------------------------


def test_real_current_process():
    import psutil

    s = socket.socket()
    try:
        ino = os.fstat(s.fileno()).st_ino
        cache = OwnerCache()
        got = cache.resolve([ino])
        me = psutil.Process()
        with open("/proc/self/comm") as f:
            comm = f.read().rstrip("\n")
        assert got == {ino: (os.getpid(), comm)}
        if len(comm) < 15:  # psutil expands 15-char names from the cmdline
            assert comm == me.name()
        assert owner_of_inode(ino) == (os.getpid(), comm)
    finally:
        s.close()


def test_real_incremental():
    cache = OwnerCache(unresolved_ttl=600, refresh_interval=600)
    socks = []
    try:
        s1 = socket.socket()
        socks.append(s1)
        ino1 = os.fstat(s1.fileno()).st_ino
        assert cache.resolve([ino1])[ino1][0] == os.getpid()
        full = cache.stats["full_scans"]

        # A new fd raises this process's fd count (st_size of
        # /proc/<pid>/fd, Linux >= 6.2): pass 1 finds it.
        s2 = socket.socket()
        socks.append(s2)
        ino2 = os.fstat(s2.fileno()).st_ino
        assert cache.resolve([ino2])[ino2][0] == os.getpid()
        if os.stat("/proc/self/fd").st_size:
            assert cache.stats["full_scans"] == full

        # Close one and open another on the same fd number: same count, so
        # only the full pass can find it.  It must.
        fd = s1.fileno()
        s1.close()
        s3 = socket.socket()
        socks.append(s3)
        ino3 = os.fstat(s3.fileno()).st_ino
        assert s3.fileno() == fd
        assert cache.resolve([ino3])[ino3][0] == os.getpid()

        # Cheap when nothing changed.
        before = dict(cache.stats)
        t = time.perf_counter()
        for _ in range(1000):
            cache.resolve([ino2, ino3])
        per_call = (time.perf_counter() - t) / 1000
        assert cache.stats["pid_walks"] == before["pid_walks"]
        assert per_call < 0.001
    finally:
        for s in socks:
            s.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")
def test_real_other_users_processes_are_skipped():
    # As an ordinary user, other users' fd tables are unreadable: their
    # sockets stay unknown and nothing raises.
    mine = socket.socket()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            own = socket.socket()
            own_ino = os.fstat(own.fileno()).st_ino
            root_ino = os.fstat(mine.fileno()).st_ino
            cache = OwnerCache()
            # The parent also holds "mine" and the child inherited it;
            # close the child's copy so only root's process has it.
            mine.close()
            got = cache.resolve([own_ino, root_ino])
            ok = got == {own_ino: (os.getpid(), read_comm("/proc", os.getpid()))}
            again = cache.resolve([root_ino])
            os.write(w, b"ok" if ok and again == {} else repr(got).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        msg = os.read(r, 4096)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(r)
        mine.close()
    assert status == 0
    assert msg == b"ok", msg


def test_doctests():
    failures, tests = doctest.testmod(owners)
    assert tests > 0 and failures == 0
