"""Network namespaces: finding one by its inode, and looking into it.

sock_diag answers for the namespace of the socket that asks.  To see the
sockets of another namespace (a view's --netns, reconciliation of the
connections of containers) the asking socket is made inside it: the
calling *thread* enters the namespace (setns(2) moves only that thread),
opens the socket, and goes back.  A socket keeps the namespace it was made
in, so nothing else runs in the other namespace.

A namespace is found by its inode (the number in ``ip netns identify``'s
``/proc/PID/ns/net -> net:[INODE]`` and in every record's ``netns``): in
/run/netns (``ip netns add``) or in some process's /proc/PID/ns/net.  One
that neither holds (kept alive only by a socket or an open file) cannot be
entered.
"""

import contextlib
import ctypes
import errno
import os

CLONE_NEWNET = 0x40000000

_libc = None


def _setns(fd):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def own_inode():
    """This thread's network namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino


_paths = {}      # inode -> the file last found to hold it


def path_of(ino):
    """A file that holds network namespace *ino*: /run/netns/NAME first,
    else some process's /proc/PID/ns/net; None when none does.  Found
    files are remembered and checked again before use, so a reconciliation
    every few seconds does not stat every process each time."""
    path = _paths.get(ino)
    try:
        if path is not None and os.stat(path).st_ino == ino:
            return path
    except OSError:
        pass
    _scan()
    return _paths.get(ino)


def every():
    """Every network namespace a file holds now: their inodes, sorted."""
    _scan()
    return sorted(_paths)


def _scan():
    cands = []
    try:
        cands = [os.path.join("/run/netns", n) for n in sorted(os.listdir("/run/netns"))]
    except OSError:
        pass
    cands += ["/proc/%s/ns/net" % n for n in os.listdir("/proc") if n.isdigit()]
    _paths.clear()
    for cand in cands:
        try:
            _paths.setdefault(os.stat(cand).st_ino, cand)
        except OSError:           # a process that just ended, a dangling name
            continue


def enter(path):
    """Move the calling thread into the namespace *path* for good (a view's
    --netns, as ``ip netns exec`` does).  Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(ino):
    """The calling thread in network namespace *ino* for the with-block,
    then back in its own.  Raises OSError: ENOENT when no file holds the
    namespace, EPERM without CAP_SYS_ADMIN, ESRCH when the file found no
    longer holds it (its process ended and the pid was taken again).
    Failing to go back would leave the thread looking at the wrong
    sockets, so that is raised too, never ignored."""
    path = path_of(ino)
    if path is None:
        raise OSError(errno.ENOENT, "no process or /run/netns entry holds it")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter(path)
        try:
            if own_inode() != ino:
                raise OSError(errno.ESRCH, "it went away while it was being entered")
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)
