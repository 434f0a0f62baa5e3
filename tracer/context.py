"""Turn the kernel's context ids into what users read: cgroup, container, unit, netns.

Every record carries a cgroup v2 id (the socket's own, sk_cgrp_data: what
sock_diag's INET_DIAG_CGROUP_ID and bpf_get_current_cgroup_id() give) and a
network namespace inode.  Neither means anything to a person; a path like
"/system.slice/nginx.service", a container id or "ip netns" name does.  The
ids are cheap to carry and the names are not, so this module resolves each
id once and remembers it: the per-record cost is one dict lookup.

A cgroup v2 id is, on 64-bit kernels, the inode number of the cgroup's
directory in the cgroup2 mount (kernfs gives each node a 64-bit id that is
both its inode and its cgroup id, and never reuses it).  So one walk of the
tree maps every id to its path; a cgroup created since is found by walking
again, at most once per *min_rewalk* seconds, so that a flood of unknown ids
(a cgroup that lived less than a second) cannot turn into a flood of walks.

Container ids and systemd units are read from the path alone, as the
runtimes and systemd name their cgroups: no daemon is asked, and a host
without Docker or systemd costs nothing.  Strings returned here come from
the system and may hold anything a file name can: text.safe() escapes them
before they reach a terminal.
"""

import fcntl
import os
import re
import stat
import struct
import time

_FILEID_KERNFS = 0xFE    # include/linux/exportfs.h: a kernfs node's 64-bit id
_libc = None

__all__ = ["ContextError", "CgroupError", "NetnsError", "cgroup2_root", "Cgroups",
           "container_id", "pod_uid", "unit", "Context", "netns_inode", "netns_names"]


class ContextError(ValueError):
    """Something a user asked for (a cgroup, a namespace) does not exist here."""


class CgroupError(ContextError):
    """A --cgroup that names no cgroup here."""


class NetnsError(ContextError):
    """A --netns that names no network namespace here."""


def _unescape(field):
    r"""Undo mountinfo's octal escapes (space, tab, newline, backslash).

    >>> _unescape(r"/mnt/with\040space\134x")
    '/mnt/with space\\x'
    """
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def cgroup2_root(mountinfo="/proc/self/mountinfo"):
    """Where the cgroup v2 hierarchy is mounted, or None.

    Usually /sys/fs/cgroup; /sys/fs/cgroup/unified on hosts in systemd's
    "hybrid" layout (v1 controllers beside it).  A mount whose root is a
    sub-cgroup (a bind mount, a container's view) is used only if no mount
    shows the whole hierarchy.
    """
    found = []
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                try:   # optional fields (shared:N ...) end at a lone "-"
                    sep = fields.index("-", 6)
                except ValueError:
                    continue
                if len(fields) > sep + 1 and fields[sep + 1] == "cgroup2":
                    found.append((fields[3] != "/", _unescape(fields[4])))
    except OSError:
        return None
    return min(found, key=lambda f: f[0])[1] if found else None


class Cgroups:
    """Cgroup v2 ids to paths relative to the cgroup2 root ("/", "/a/b").

    *root* defaults to the cgroup2 mount; without one, lookups answer None
    and id_of() raises CgroupError.  *clock* is for tests.
    """

    def __init__(self, root=None, min_rewalk=1.0, max_dirs=200_000, clock=time.monotonic):
        self.root = root if root is not None else cgroup2_root()
        self.min_rewalk, self.max_dirs, self._clock = min_rewalk, max_dirs, clock
        self._paths, self._last_walk, self.walks = {}, None, 0

    def path(self, cgroup_id):
        """The path of *cgroup_id*, or None when it is unknown even after a walk.

        A cgroup made since the last walk (a container that just started) is
        asked for by its id first (open_by_handle_at, as systemd and bpftool
        do): exact at once, where a walk may wait out *min_rewalk*."""
        p = self._paths.get(cgroup_id)
        if p is None and self.root is not None:
            p = self._by_handle(cgroup_id)
            if p is None and (self._last_walk is None
                              or self._clock() - self._last_walk >= self.min_rewalk):
                self._walk()
                p = self._paths.get(cgroup_id)
        return p

    def _by_handle(self, cgroup_id):
        """The path of one cgroup from its id: kernfs file handles are the
        64-bit node id (FILEID_KERNFS); the directory opened from it says
        where it is (/proc/self/fd).  Needs CAP_DAC_READ_SEARCH, which
        socktrace has; None on any failure (gone: ESTALE)."""
        import ctypes
        global _libc
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        handle = struct.pack("=Ii", 8, _FILEID_KERNFS) + struct.pack("=Q", cgroup_id)
        try:
            mfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fd = _libc.open_by_handle_at(mfd, ctypes.c_char_p(handle),
                                         os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if fd < 0:
                return None
            try:
                where = os.readlink("/proc/self/fd/%d" % fd)
            finally:
                os.close(fd)
        except OSError:
            return None
        finally:
            os.close(mfd)
        root = os.path.normpath(self.root)
        if where == root:
            rel = "/"
        elif where.startswith(root.rstrip("/") + "/"):
            rel = where[len(root.rstrip("/")):]
        else:
            return None          # not below our mount (another cgroup namespace)
        if len(self._paths) < self.max_dirs:
            self._paths[cgroup_id] = rel
        return rel

    def _walk(self):
        self.walks += 1
        self._last_walk = self._clock()
        try:
            found = {os.stat(self.root).st_ino: "/"}
        except OSError:
            return
        stack = [(self.root, "")]
        while stack and len(found) < self.max_dirs:
            top, rel = stack.pop()
            try:
                with os.scandir(top) as it:
                    for e in it:
                        # kernfs readdir reports the node id as d_ino: no stat needed
                        if e.is_dir(follow_symlinks=False) and len(found) < self.max_dirs:
                            found[e.inode()] = rel + "/" + e.name
                            stack.append((e.path, rel + "/" + e.name))
            except OSError:
                continue   # removed while we walked
        # ids are never reused, so a departed cgroup's path stays right for
        # late records (a socket closing after its container ended): keep it
        if len(self._paths) + len(found) <= self.max_dirs:
            self._paths.update(found)
        else:
            self._paths = found

    def id_of(self, path):
        """(cgroup id, level) of a user's cgroup *path*, for --cgroup.

        *path* is a cgroup path ("/system.slice/foo.service") or a file system
        path under the cgroup2 mount.  Level is the depth below the root (0 for
        "/"), what bpf_get_current_ancestor_cgroup_id(level) takes to match
        this cgroup and all below it.  (Inside a cgroup namespace the depth
        counts from the namespace's root, not the kernel's.)
        """
        if self.root is None:
            raise CgroupError("cannot resolve cgroup %s: no cgroup2 file system is mounted" % path)
        root = os.path.normpath(self.root)
        p = os.path.normpath(path)
        if p == root or p.startswith(root.rstrip("/") + "/"):
            p = p[len(root):]
        rel = "/".join(c for c in p.split("/") if c)
        if rel.split("/")[0] == "..":
            raise CgroupError("no such cgroup: %s (outside %s)" % (path, root))
        full = os.path.join(root, rel) if rel else root
        try:
            st, rst = os.stat(full), os.stat(root)
        except OSError as e:
            raise CgroupError("no such cgroup: %s (%s under %s)" % (path, e.strerror, root)) from None
        if not os.path.isdir(full) or st.st_dev != rst.st_dev:
            raise CgroupError("not a cgroup: %s (under %s)" % (path, root))
        self._paths.setdefault(st.st_ino, "/" + rel)
        return st.st_ino, rel.count("/") + 1 if rel else 0

    def of_container(self, prefix):
        """[(path, id, level)] of the cgroups whose container id starts with
        *prefix* (lowercase hex), the outermost of each container: --container.
        Raises CgroupError when no running container's cgroup matches."""
        self._walk()
        hits = sorted(p for p in self._paths.values()
                      if (container_id(p) or "").startswith(prefix))
        top = []
        for p in hits:
            if not any(p.startswith(t + "/") for t in top):
                top.append(p)
        ids = {container_id(p) for p in top}
        if not top:
            raise CgroupError("no container with an id starting %s has a cgroup here" % prefix)
        if len(ids) > 1:
            raise CgroupError("container id %s is ambiguous: %s" % (
                prefix, ", ".join(sorted(i[:12] for i in ids))))
        return [(p,) + self.id_of(p) for p in top]


_HEX64 = r"([0-9a-fA-F]{64})"
# a runtime's scope (systemd cgroup driver); the conmon scopes hold the
# monitor process, not the container, and "conmon-" is no hex: no match
_SCOPE = re.compile(r"(?:docker|cri-containerd|crio|libpod)-%s\.scope" % _HEX64)
# cgroupfs drivers: <parent>/<id>, or crio-<id> / libpod-<id> without .scope
_BARE = re.compile(r"(?:crio-|libpod-)?%s" % _HEX64)
# static pods' uids are an md5 sum without dashes
_UID = r"((?:[0-9a-fA-F]{8}[-_](?:[0-9a-fA-F]{4}[-_]){3}[0-9a-fA-F]{12})|[0-9a-fA-F]{32})"
_POD_SLICE = re.compile(r"(?:.+-)?kubepods(?:-burstable|-besteffort)?-pod%s\.slice" % _UID)
_POD_DIR = re.compile(r"pod%s" % _UID)


def _is_pod_dir(parts, i):
    """parts[i] is a cgroupfs pod directory: /kubepods[/burstable|/besteffort]/pod<uid>."""
    if not _POD_DIR.fullmatch(parts[i]):
        return False
    up = parts[i - 1] if i >= 1 else ""
    return up == "kubepods" or (up in ("burstable", "besteffort") and i >= 2
                                and parts[i - 2] == "kubepods")


def process_cgroup(pid, proc_root="/proc"):
    """The cgroup v2 path of a process (its "0::" line in /proc/PID/cgroup),
    or None (gone, or no v2 line).  Bytes that are not UTF-8 become \\xNN,
    as in every string from the system (tracer/text.py)."""
    from .text import decode
    try:
        with open("%s/%d/cgroup" % (proc_root, pid), "rb") as f:
            for line in f:
                if line.startswith(b"0::"):
                    return decode(line[3:].rstrip(b"\n"))
    except OSError:
        pass
    return None


def container_id(path):
    """The (innermost) container id a cgroup path names, 64 lowercase hex, or None.

    >>> cid = "ab" * 32
    >>> for p in ["/system.slice/docker-%s.scope", "/docker/%s",
    ...           "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
    ...           "0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-%s.scope",
    ...           "/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/%s",
    ...           "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-%s.scope",
    ...           "/kubepods.slice/kubepods-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/crio-%s.scope",
    ...           "/docker/%s/docker/%s" % ("cd" * 32, "%s")]:   # nested: the innermost
    ...     assert container_id(p % cid) == cid, p
    >>> container_id("/machine.slice/libpod-conmon-%s.scope" % cid) is None  # the monitor
    True
    >>> container_id("/system.slice/backup-%s.service" % cid) is None
    True
    >>> container_id("/%s" % cid), container_id("/"), container_id("")
    (None, None, None)
    """
    parts = [c for c in path.split("/") if c]
    for i in range(len(parts) - 1, -1, -1):
        m = _SCOPE.fullmatch(parts[i])
        if m:
            return m.group(1).lower()
        m = _BARE.fullmatch(parts[i])
        if m and i >= 1:
            up = parts[i - 1]
            if ((up == "docker" and parts[i] == m.group(1))
                    or (up == "libpod_parent" and parts[i].startswith("libpod-"))
                    or _is_pod_dir(parts, i - 1)):
                return m.group(1).lower()
    return None


def pod_uid(path):
    """The Kubernetes pod uid (with dashes) of a cgroup path, either driver, or None.

    >>> pod_uid("/kubepods.slice/kubepods-besteffort.slice/"
    ...         "kubepods-besteffort-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/x.scope")
    '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0'
    >>> pod_uid("/kubepods/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/" + "ab" * 32)
    '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0'
    """
    parts = [c for c in path.split("/") if c]
    for i in range(len(parts) - 1, -1, -1):
        m = _POD_SLICE.fullmatch(parts[i])
        if m or _is_pod_dir(parts, i):
            return (m or _POD_DIR.fullmatch(parts[i])).group(1).replace("_", "-").lower()
    return None


# unit types that can hold processes or name them; a .slice only groups units
_UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".swap", ".target",
                  ".automount", ".path", ".timer", ".device")


def unit(path):
    r"""The innermost systemd unit a cgroup path names, or None.

    >>> unit("/system.slice/nginx.service")
    'nginx.service'
    >>> unit("/user.slice/user-1000.slice/session-3.scope")
    'session-3.scope'
    >>> unit(r"/system.slice/mnt-a\x2db.mount")   # systemd's escape kept as is
    'mnt-a\\x2db.mount'
    >>> unit("/user.slice"), unit("/"), unit("")
    (None, None, None)
    """
    for c in reversed([c for c in path.split("/") if c]):
        if c.endswith(_UNIT_SUFFIXES) and not c.startswith("."):
            return c
    return None


class Context:
    """What a backend holds: describe(cgroup_id) -> (path, container, unit).

    Answers are remembered per id (at most *max_ids*, oldest dropped
    first); an id not found yet is not remembered, so a cgroup born after
    the last walk is found by a later one instead of staying unnamed.
    """

    def __init__(self, cgroups=None, max_ids=65536):
        self.cgroups = cgroups if cgroups is not None else Cgroups()
        self.max_ids = max_ids
        self._seen = {}

    def describe(self, cgroup_id):
        d = self._seen.get(cgroup_id)
        if d is None:
            p = self.cgroups.path(cgroup_id)
            if p is None:
                return (None, None, None)
            if len(self._seen) >= self.max_ids:
                del self._seen[next(iter(self._seen))]
            d = self._seen[cgroup_id] = (p, container_id(p), unit(p))
        return d


_NS_GET_NSTYPE = 0xB703     # linux/nsfs.h: _IO(0xb7, 0x3)
_CLONE_NEWNET = 0x40000000


def _netns_ino(path):
    """The inode of *path* if it is a network namespace file, else None (OSError passes).

    Only regular files (nsfs files are) are opened: a FIFO or device could block or act.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return os.fstat(fd).st_ino if fcntl.ioctl(fd, _NS_GET_NSTYPE) == _CLONE_NEWNET else None
    except OSError:        # ENOTTY: a plain file (a stale /run/netns entry)
        return None
    finally:
        os.close(fd)


def netns_inode(arg, netns_dir="/run/netns"):
    """The inode of the network namespace a user's --netns names.

    A decimal number is taken as the inode itself (what `lsns -t net` and
    `readlink /proc/PID/ns/net` show); a name without "/" is looked up in
    *netns_dir* as `ip netns` does (so a namespace named only by digits is
    spelled /run/netns/NAME); anything else is a path to a namespace file.

    >>> netns_inode("4026531840")
    4026531840
    """
    s = str(arg).strip()
    if s.isdigit():
        if not 0 < int(s) < 2 ** 32:
            raise NetnsError("--netns %s: not a namespace inode (1 to 4294967295)" % s)
        return int(s)
    if not s or s in (".", ".."):
        raise NetnsError("--netns %r: give an inode, a name from `ip netns list` or a path" % s)
    path = s if "/" in s else os.path.join(netns_dir, s)
    try:
        ino = _netns_ino(path)
    except OSError as e:
        where = "" if "/" in s else " (`ip netns list` shows the names)"
        raise NetnsError("no network namespace %s: %s%s" % (path, e.strerror, where)) from None
    if ino is None:
        raise NetnsError("not a network namespace: %s" % path)
    return ino


def netns_names(netns_dir="/run/netns"):
    """{inode: name} of the namespaces `ip netns list` shows (first name if several)."""
    names = {}
    # ip(8) creates the directory when it first names a namespace
    for name in sorted(os.listdir(netns_dir)) if os.path.isdir(netns_dir) else ():
        try:
            ino = _netns_ino(os.path.join(netns_dir, name))
        except OSError:
            continue
        if ino is not None:
            names.setdefault(ino, name)
    return names
