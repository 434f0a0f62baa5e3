"""tracer.context against real cgroups and network namespaces this test makes,
and against the path shapes container runtimes and systemd produce."""

import doctest
import os
import shutil
import signal
import subprocess

import pytest

from tracer import context
from tracer.context import (CgroupError, Cgroups, Context, ContextError, NetnsError,
                            cgroup2_root, container_id, netns_inode, netns_names, pod_uid, unit)

CID = "3f4e5d6c7b8a9f0e" * 4
UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
UID_ = UID.replace("-", "_")


def test_doctests():
    res = doctest.testmod(context, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0


# ---------------------------------------------------------------------------
# mountinfo
# ---------------------------------------------------------------------------

HYBRID = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:10 - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime shared:11 master:3 - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:12 - cgroup2 cgroup2 rw,nsdelegate
"""


def _mountinfo(tmp_path, text):
    p = tmp_path / "mountinfo"
    p.write_text(text)
    return str(p)


def test_cgroup2_root_hybrid(tmp_path):
    assert cgroup2_root(_mountinfo(tmp_path, HYBRID)) == "/sys/fs/cgroup/unified"


def test_cgroup2_root_escapes_and_prefers_whole_hierarchy(tmp_path):
    text = ("50 23 0:40 /system.slice /mnt/sub\\040cg rw - cgroup2 cgroup2 rw\n"
            "51 23 0:40 / /mnt/my\\040cg\\011x\\134y rw shared:1 master:2 - cgroup2 none rw\n"
            "52 23 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    assert cgroup2_root(_mountinfo(tmp_path, text)) == "/mnt/my cg\tx\\y"
    assert cgroup2_root(_mountinfo(tmp_path, text.splitlines(True)[0])) == "/mnt/sub cg"


def test_cgroup2_root_none(tmp_path):
    v1 = "".join(line + "\n" for line in HYBRID.splitlines() if "cgroup2" not in line)
    assert cgroup2_root(_mountinfo(tmp_path, v1 + "garbage line\n\n")) is None
    assert cgroup2_root(str(tmp_path / "missing")) is None


def test_cgroup2_root_of_this_machine():
    root = cgroup2_root()
    if root is not None:
        assert os.path.exists(os.path.join(root, "cgroup.procs"))


# ---------------------------------------------------------------------------
# parsing: containers, pods, units
# ---------------------------------------------------------------------------

POSITIVE = [
    "/system.slice/docker-%s.scope",
    "/system.slice/docker-%s.scope/init.scope",
    "/docker/%s",
    "/docker/%s/init.scope",
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice/cri-containerd-%%s.scope" % UID_,
    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice/cri-containerd-%%s.scope" % UID_,
    "/kubepods.slice/kubepods-pod%s.slice/cri-containerd-%%s.scope" % UID_,
    "/kubepods/burstable/pod%s/%%s" % UID,
    "/kubepods/besteffort/pod%s/%%s" % UID,
    "/kubepods/pod%s/%%s" % UID,
    "/kubepods/pod%s/crio-%%s" % UID,
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice/crio-%%s.scope" % UID_,
    "/kubepods.slice/kubepods-pod%s.slice/crio-%%s.scope/container" % UID_,
    "/machine.slice/libpod-%s.scope",
    "/machine.slice/libpod-%s.scope/container",
    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-%s.scope",
    "/libpod_parent/libpod-%s",
    # nested: the innermost wins
    "/docker/" + "ab" * 32 + "/docker/%s",
    "/system.slice/docker-" + "ab" * 32 + ".scope/kubepods/burstable/pod%s/%%s" % UID,
    "/system.slice/docker-%s.scope/system.slice/nginx.service",
]


@pytest.mark.parametrize("shape", POSITIVE)
def test_container_id_shapes(shape):
    assert container_id(shape % CID) == CID
    assert container_id(shape % CID.upper()) == CID


NEGATIVE = [
    "", "/", "//", "/system.slice", "/init.scope",
    "/%s" % CID,                                       # bare hex at the top
    "/system.slice/%s" % CID,                          # bare hex under a slice
    "/system.slice/backup-%s.service" % CID,           # hex in an unrelated unit
    "/system.slice/docker-%s.service" % CID,           # not a scope
    "/system.slice/docker-%s.scope" % CID[:63],        # 63 hex
    "/system.slice/docker-%sa.scope" % CID,            # 65 hex
    "/system.slice/docker-%s.scope" % ("g" + CID[1:]),  # not hex
    "/machine.slice/libpod-conmon-%s.scope" % CID,     # podman's monitor
    "/kubepods.slice/kubepods-pod%s.slice/crio-conmon-%s.scope" % (UID_, CID),  # CRI-O's monitor
    "/kubepods/burstable/pod%s" % UID,                 # the pod, no container
    "/user.slice/%s/x" % CID,
    "/docker",
    "/mydocker/%s" % CID,
]


@pytest.mark.parametrize("path", NEGATIVE)
def test_container_id_negatives(path):
    assert container_id(path) is None


def test_pod_uid():
    assert pod_uid(POSITIVE[4] % CID) == UID
    assert pod_uid(POSITIVE[6] % CID) == UID           # guaranteed, systemd driver
    assert pod_uid(POSITIVE[7] % CID) == UID           # cgroupfs driver
    assert pod_uid("/kubepods/pod%s" % UID) == UID
    static = "0123456789abcdef" * 2                     # static pods: an md5, no dashes
    assert pod_uid("/kubepods/burstable/pod%s/%s" % (static, CID)) == static
    # kind and other "kubelet" cgroup roots prefix the slice names
    kind = "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod%s.slice" % UID_
    assert pod_uid(kind) == UID
    for p in ["", "/", "/docker/%s" % CID, "/pod%s" % UID, "/system.slice/pod%s" % UID,
              "/kubepods/burstable/pod1234", "/kubepods.slice/kubepods-podxyz.slice"]:
        assert pod_uid(p) is None, p


@pytest.mark.parametrize("path,expected", [
    ("/system.slice/nginx.service", "nginx.service"),
    ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope"),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service", "foo.service"),
    ("/user.slice/user-1000.slice/user@1000.service", "user@1000.service"),
    ("/system.slice/docker-%s.scope" % CID, "docker-%s.scope" % CID),
    ("/system.slice/ssh.socket", "ssh.socket"),
    ("/system.slice/dev-sda2.swap", "dev-sda2.swap"),
    ("/system.slice/mnt-a\\x2db.mount", "mnt-a\\x2db.mount"),
    ("/init.scope", "init.scope"),
    ("/", None), ("", None), ("/system.slice", None), ("/user.slice/user-1000.slice", None),
    ("/docker/%s" % CID, None), ("/kubepods/burstable/pod%s/%s" % (UID, CID), None),
    ("/system.slice/.service", None),
])
def test_unit(path, expected):
    assert unit(path) == expected


# ---------------------------------------------------------------------------
# Cgroups on a tree of plain directories: walking, rate limits, bounds
# ---------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "cg"
    for d in ["system.slice/nginx.service", "system.slice/docker-%s.scope" % CID, "user.slice"]:
        (root / d).mkdir(parents=True)
    return root


def ino(path):
    return os.stat(path).st_ino


def test_walk_maps_ids_to_paths(tree):
    cg = Cgroups(str(tree), clock=Clock())
    assert cg.path(ino(tree)) == "/"
    assert cg.path(ino(tree / "system.slice/nginx.service")) == "/system.slice/nginx.service"
    assert cg.path(ino(tree / "user.slice")) == "/user.slice"
    assert cg.walks == 1


def test_miss_rewalks_at_most_once_per_interval(tree):
    clock = Clock()
    cg = Cgroups(str(tree), min_rewalk=1.0, clock=clock)
    assert cg.path(ino(tree)) == "/" and cg.walks == 1
    unknown = 2 ** 60 + 7
    clock.t += 1.0
    assert cg.path(unknown) is None and cg.walks == 2      # interval passed: walks again
    new = tree / "system.slice" / "new.service"
    new.mkdir()
    for _ in range(100):                                   # a flood of misses: no walk
        clock.t += 0.005
        assert cg.path(unknown) is None
        assert cg.path(ino(new)) is None
    assert cg.walks == 2
    clock.t += 0.6                                         # 1.1 s since the last walk
    assert cg.path(ino(new)) == "/system.slice/new.service" and cg.walks == 3
    assert cg.path(ino(new)) == "/system.slice/new.service" and cg.walks == 3   # a hit
    # a removed cgroup keeps its name for late records
    gone = ino(new)
    new.rmdir()
    clock.t += 5
    cg.path(unknown)
    assert cg.walks == 4 and cg.path(gone) == "/system.slice/new.service"


def test_walk_is_bounded_and_skips_symlinks(tree):
    (tree / "user.slice" / "link").symlink_to(tree / "system.slice")
    cg = Cgroups(str(tree), clock=Clock())
    cg.path(0)
    assert not any(p.startswith("/user.slice/link") for p in cg._paths.values())
    assert len(cg._paths) == 5          # root, 2 slices, 2 below system.slice
    small = Cgroups(str(tree), max_dirs=3, clock=Clock())
    small.path(0)
    assert len(small._paths) == 3


def test_id_of(tree):
    cg = Cgroups(str(tree), clock=Clock())
    svc = tree / "system.slice" / "nginx.service"
    assert cg.id_of("/") == (ino(tree), 0)
    assert cg.id_of(str(tree)) == (ino(tree), 0)
    assert cg.id_of("/system.slice") == (ino(tree / "system.slice"), 1)
    assert cg.id_of("/system.slice/nginx.service") == (ino(svc), 2)
    assert cg.id_of("system.slice/nginx.service/") == (ino(svc), 2)
    assert cg.id_of(str(svc)) == (ino(svc), 2)                  # a file system path
    assert cg.id_of("/user.slice/../system.slice") == (ino(tree / "system.slice"), 1)
    for bad in ["/nope", "/system.slice/nope.service", "../etc", str(tree) + "/x"]:
        with pytest.raises(CgroupError) as e:
            cg.id_of(bad)
        assert bad in str(e.value) and "\n" not in str(e.value)
        assert isinstance(e.value, ValueError) and isinstance(e.value, ContextError)
    (tree / "file").write_text("")
    with pytest.raises(CgroupError, match="not a cgroup"):
        cg.id_of("/file")


def test_no_cgroup2(tmp_path):
    cg = Cgroups(None)
    cg.root = None                      # as on a host without a cgroup2 mount
    assert cg.path(1) is None and cg.walks == 0
    with pytest.raises(CgroupError, match="no cgroup2") as e:
        cg.id_of("/system.slice/foo.service")
    assert "/system.slice/foo.service" in str(e.value)
    assert Context(cg).describe(1) == (None, None, None)


def test_context_describe_caches(tree):
    clock = Clock()
    cg = Cgroups(str(tree), clock=clock)
    ctx = Context(cg, max_ids=2)
    dock = ino(tree / "system.slice" / ("docker-%s.scope" % CID))
    assert ctx.describe(dock) == ("/system.slice/docker-%s.scope" % CID, CID,
                                  "docker-%s.scope" % CID)
    assert ctx.describe(ino(tree)) == ("/", None, None)
    walks = cg.walks
    cg._paths.clear()                    # answers now come from the Context alone
    assert ctx.describe(dock)[1] == CID and cg.walks == walks
    # an id not known yet is not remembered as unknown: a later walk names it
    new = tree / "system.slice" / "late.service"
    new.mkdir()
    assert ctx.describe(ino(new)) == (None, None, None)
    clock.t += 1
    assert ctx.describe(ino(new)) == ("/system.slice/late.service", None, "late.service")
    assert len(ctx._seen) <= 2


# ---------------------------------------------------------------------------
# the real cgroup2 hierarchy: a cgroup of our own with a process in it
# ---------------------------------------------------------------------------

def _own_cgroup_line(pid):
    with open("/proc/%d/cgroup" % pid) as f:
        return next(line.rstrip("\n")[3:] for line in f if line.startswith("0::"))


@pytest.fixture
def real_cgroup():
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup2 file system mounted on this host")
    if os.geteuid() != 0:
        pytest.skip("creating cgroups needs root")
    parent = os.path.join(root, "socktrace-test-%d" % os.getpid())
    child = os.path.join(parent, "child")
    proc = None
    made = []
    try:
        for d in (parent, child):
            try:
                os.mkdir(d)
            except OSError as e:      # e.g. a read-only cgroup2 in an unprivileged container
                pytest.skip("cannot create cgroup %s: %s" % (d, e))
            made.append(d)
        proc = subprocess.Popen(["sleep", "60"])
        home = _own_cgroup_line(proc.pid)
        with open(os.path.join(child, "cgroup.procs"), "w") as f:
            f.write(str(proc.pid))
        yield root, child, proc, home
    finally:
        if proc is not None:
            try:
                with open(os.path.join(root, home.lstrip("/"), "cgroup.procs"), "w") as f:
                    f.write(str(proc.pid))
            except (OSError, NameError):
                pass
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        for d in reversed(made):
            os.rmdir(d)


def test_real_cgroup(real_cgroup):
    root, child, proc, home = real_cgroup
    path = _own_cgroup_line(proc.pid)
    assert path == "/socktrace-test-%d/child" % os.getpid()
    cid = os.stat(child).st_ino
    cg = Cgroups()
    assert cg.root == root
    assert cg.path(cid) == path
    assert cg.path(os.stat(root).st_ino) == "/"
    assert cg.id_of(path) == (cid, 2)
    assert cg.id_of(child) == (cid, 2)
    assert cg.id_of(os.path.dirname(path)) == (os.stat(os.path.dirname(child)).st_ino, 1)
    assert Context(cg).describe(cid) == (path, None, None)
    # our own cgroup, found by the same walk
    mine = _own_cgroup_line(os.getpid())
    assert Cgroups().id_of(mine)[1] == mine.rstrip("/").count("/")
    with pytest.raises(CgroupError, match="no such cgroup"):
        cg.id_of(path + "/missing")


def test_new_cgroup_found_by_its_id_at_once(real_cgroup):
    """A cgroup made after the last walk (a container that just started) is
    named on its first record, by its id (open_by_handle_at), not a second
    later by the next walk; a gone one is None."""
    root, child, proc, home = real_cgroup
    cg = Cgroups(min_rewalk=3600)
    cg.path(os.stat(root).st_ino)                       # the walk
    walks = cg.walks
    new = os.path.join(child, "docker-%s.scope" % ("cd" * 32))
    os.mkdir(new)
    try:
        cid = os.stat(new).st_ino
        path = "/socktrace-test-%d/child/docker-%s.scope" % (os.getpid(), "cd" * 32)
        assert cg.path(cid) == path and cg.walks == walks
        assert Context(Cgroups(min_rewalk=3600)).describe(cid)[1] == "cd" * 32
    finally:
        os.rmdir(new)
    assert Cgroups(min_rewalk=3600)._by_handle(cid) is None


# ---------------------------------------------------------------------------
# network namespaces
# ---------------------------------------------------------------------------

@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("ip netns add needs root")
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip("no ip(8) on this host")
    name = "socktrace-ctx-%d" % os.getpid()
    subprocess.run([ip, "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run([ip, "netns", "delete", name], check=True)


def test_netns_real(netns):
    path = "/run/netns/" + netns
    inode = os.stat(path).st_ino
    assert inode != os.stat("/proc/self/ns/net").st_ino
    assert netns_inode(netns) == inode
    assert netns_inode(path) == inode
    assert netns_inode(str(inode)) == inode
    assert netns_inode(" %d " % inode) == inode
    assert netns_names()[inode] == netns


def test_netns_self_and_errors(tmp_path):
    assert netns_inode("/proc/self/ns/net") == os.stat("/proc/self/ns/net").st_ino
    assert netns_inode("/proc/%d/ns/net" % os.getpid()) == os.stat("/proc/self/ns/net").st_ino
    missing = "socktrace-no-such-ns-%d" % os.getpid()
    with pytest.raises(NetnsError) as e:
        netns_inode(missing)
    msg = str(e.value)
    assert missing in msg and "\n" not in msg and isinstance(e.value, ValueError)
    stale = tmp_path / "stale"                # what a netns file is when nothing is mounted on it
    stale.write_text("")
    for bad in [str(stale), "/proc/self/ns/mnt", "/etc"]:
        with pytest.raises(NetnsError, match="not a network namespace"):
            netns_inode(bad)
    for bad in ["", "0", "4294967296", ".."]:
        with pytest.raises(NetnsError):
            netns_inode(bad)
    assert netns_names(str(tmp_path / "none")) == {}
    assert netns_names(str(tmp_path)) == {}   # a stale file is no namespace
