"""Where records go: NDJSON (one orjson object per line) or aligned text,
on standard output or in a file.

Writes are batched: the main loop hands over everything one ring-buffer read
produced and the sink writes it with one system call, so output costs little
per event and still reaches the reader within a poll interval.

Every record is one line, and a line is written whole or not at all: when a
write fails (a full disk, EIO, a file size limit) the partial line is cut
off again, the sink stops writing and counts, exactly, every record it was
given from then on (``Output.unwritten``); run.py ends the run with one line
and status 1.  A reader that went away (EPIPE) is not a failure: SinkClosed.

Output files are opened as root, maybe in /tmp, where another user may have
planted a symbolic link (fs.protected_symlinks is 0 on many hosts) or a file
of theirs: see open_output().
"""

import errno
import fcntl
import os
import select
import stat
import sys

import orjson

from .text import safe

_NL = orjson.OPT_APPEND_NEWLINE


class SinkClosed(Exception):
    """The reader went away (``socktrace | head``): stop quietly."""


class OutputError(Exception):
    """The output cannot be opened or used: one line for the user."""


def _why(e):
    return e.strerror or str(e)


def open_output(path, append=True):
    """Open *path* to append records (or, not *append*, to replace what it
    holds), as root, safely; return the fd.

    - The last component is never followed if it is a symbolic link
      (O_NOFOLLOW): socktrace writes to the file the user named or to none.
    - A file or FIFO that already exists in a sticky directory others can
      write (/tmp) and belongs to neither us nor the directory's owner is
      refused, as the kernel's protected_regular=2 and protected_fifos=2
      would: another user may have planted it there.
    - A regular file with more than one hard link in such a directory is
      refused too: it may be another name of a file we must not touch.
    - A FIFO is opened without blocking first, so that the checks run
      before socktrace waits for a reader.
    """
    shown = safe(path)
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    flags |= os.O_APPEND if append else 0
    created = False
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            created = True
        except FileExistsError:
            fd = _open_existing(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError("refusing to write %s: it is a symbolic link "
                              "(name the file itself)" % shown)
        raise OutputError("cannot write %s: %s" % (shown, _why(e)))
    try:
        st = os.fstat(fd)
        if not created:
            _check_planted(path, shown, st)
        if stat.S_ISFIFO(st.st_mode):
            fl = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
        elif not append and stat.S_ISREG(st.st_mode):
            os.ftruncate(fd, 0)        # only once the checks have passed
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_existing(path, flags):
    try:
        return os.open(path, flags | os.O_NONBLOCK)
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise
    # a FIFO with no reader yet: check it by name, then wait for a reader
    _check_planted(path, safe(path), os.lstat(path))
    return os.open(path, flags)


def _check_planted(path, shown, st):
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        return
    parent = os.path.dirname(os.path.abspath(path))
    try:
        dst = os.stat(parent)
    except OSError:
        return
    shared = dst.st_mode & stat.S_ISVTX and dst.st_mode & (stat.S_IWOTH | stat.S_IWGRP)
    if not shared:
        return
    if st.st_uid not in (os.geteuid(), dst.st_uid):
        raise OutputError("refusing to write %s: it belongs to uid %d, in the shared "
                          "sticky directory %s (another user may have planted it; "
                          "remove it or choose another name)"
                          % (shown, st.st_uid, safe(parent)))
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        raise OutputError("refusing to write %s: it has %d hard links, in the shared "
                          "directory %s (it may be another name of a file socktrace "
                          "must not touch)" % (shown, st.st_nlink, safe(parent)))


class PidFile:
    """``--pid-file FILE``: this process's id while it runs, for signals
    (``kill -USR1 $(cat FILE)``) that reach socktrace and nothing else.
    Opened as output files are (open_output); removed at exit if it still
    names us."""

    def __init__(self, path):
        self.path = path
        fd = open_output(path, append=False)
        try:
            os.write(fd, b"%d\n" % os.getpid())
        except OSError as e:
            raise OutputError("cannot write %s: %s" % (safe(path), _why(e)))
        finally:
            os.close(fd)

    def remove(self):
        try:
            with open(self.path, "rb") as f:
                if f.read().strip() != b"%d" % os.getpid():
                    return
            os.unlink(self.path)
        except OSError:
            pass


class Output:
    """Standard output or a file: whole lines, write errors counted."""

    def __init__(self, path=None):
        self.path = None if path in (None, "-") else path
        self.name = "standard output" if self.path is None else safe(self.path)
        self.failed = None       # the one line that says why writing stopped
        self.unwritten = 0       # records handed over since, and not written
        if self.path is None:
            self.fd = sys.stdout.fileno()
            try:
                mode = fcntl.fcntl(self.fd, fcntl.F_GETFL) & os.O_ACCMODE
            except OSError:
                raise OutputError("standard output is closed (give -o FILE, or "
                                  "redirect it: socktrace > FILE)")
            if mode == os.O_RDONLY:
                raise OutputError("standard output is not open for writing")
        else:
            self.fd = open_output(self.path)
        self._watch()

    def _watch(self):
        # A pipe or socket whose reader left reports POLLERR at once; check it
        # every loop so `socktrace | head -1` ends even when the host is quiet.
        self._poll = None
        mode = os.fstat(self.fd).st_mode
        self.regular = stat.S_ISREG(mode)
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            self._poll = select.poll()
            self._poll.register(self.fd, select.POLLERR | select.POLLHUP)

    def check(self):
        """Raise SinkClosed when the reader has gone away."""
        if self._poll is not None and self._poll.poll(0):
            raise SinkClosed()

    def write(self, data, records=None):
        """Write *data*, whole lines holding *records* records (None: one
        record a line)."""
        if self.failed is not None:
            self.unwritten += data.count(b"\n") if records is None else records
            return
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                try:
                    done += os.write(self.fd, view[done:])
                except BlockingIOError:
                    # an inherited O_NONBLOCK descriptor: wait until it drains
                    select.select([], [self.fd], [], 1.0)
        except BrokenPipeError:
            raise SinkClosed()
        except OSError as e:
            self._fail(e, data, done, records)

    def _fail(self, e, data, done, records):
        whole = data.rfind(b"\n", 0, done) + 1      # bytes of whole lines written
        if whole < done and self.regular:
            # cut the partial line off again; the file ends with a whole record
            try:
                os.ftruncate(self.fd, os.fstat(self.fd).st_size - (done - whole))
            except OSError:
                pass
        if records is None:
            records = data.count(b"\n")
        # lines written whole, less the text layout's "# date" lines
        lines = data.count(b"\n", 0, whole) - data.count(b"\n#", 0, whole) - data.startswith(b"#")
        self.unwritten += records - min(records, max(0, lines))
        self.failed = "cannot write %s: %s" % (self.name, _why(e))

    def reopen(self):
        """After a rotation (logrotate's create mode, SIGHUP): the same name,
        the new file.  Standard output stays as it is."""
        if self.path is None or self.failed is not None:
            return
        try:
            fd = open_output(self.path)
        except OutputError as e:
            self.failed = str(e)
            return
        os.close(self.fd)
        self.fd = fd
        self._watch()

    def close(self):
        if self.path is not None:
            os.close(self.fd)


class JsonSink:
    def __init__(self, path=None):
        self.out = Output(path)

    def start(self):
        pass

    @staticmethod
    def encode(records):
        """NDJSON for *records*, one line each."""
        # One growing buffer, each line appended and dropped at once:
        # keeping a few thousand small bytes objects alive for a join
        # costs ~5 us a line in allocator work (measured), appending ~0.3.
        buf = bytearray()
        add = buf.extend
        dumps = orjson.dumps
        for r in records:
            add(dumps(r, option=_NL))
        return buf

    def write(self, records):
        if records:
            self.out.write(self.encode(records), len(records))

    def write_bytes(self, data):
        """Records already encoded, a line each (tracer/_fmt.c writes them)."""
        if data:
            self.out.write(data)

    def check(self):
        self.out.check()

    def close(self):
        self.out.close()


class EcsSink(JsonSink):
    """NDJSON in the Elastic Common Schema (tracer/ecs.py)."""

    def __init__(self, path=None):
        super().__init__(path)
        from .ecs import Ecs
        self.ecs = Ecs()

    def write(self, records):
        if records:
            to_ecs = self.ecs.record
            self.out.write(self.encode([to_ecs(r) for r in records]), len(records))


def _width(fd):
    try:
        if os.isatty(fd):
            return os.get_terminal_size(fd).columns
    except OSError:
        pass
    try:
        return int(os.environ.get("COLUMNS", "80"))
    except ValueError:
        return 80


class TextSink:
    """Columns for people (tracer/columns.py): 80 wide, or the terminal's
    width when writing to one (``COLUMNS`` otherwise, as ls does)."""

    def __init__(self, path=None):
        self.out = Output(path)
        from .columns import Columns
        self.columns = Columns(width=_width(self.out.fd))

    def start(self):
        self.out.write(self.columns.header().encode(), 0)

    def write(self, records):
        if records:
            line = self.columns.line
            text = "".join(line(r) for r in records)
            # "# date" lines are not records: count the records, not lines
            self.out.write(text.encode(), len(records))

    def check(self):
        self.out.check()

    def close(self):
        self.out.close()
