"""Strings from the kernel or /proc, made safe for a terminal.

Any process can name itself (``prctl(PR_SET_NAME)``), so a ``comm`` may hold
a carriage return, an escape sequence, a newline that forges a second
record, or a bidi override that reorders what the eye reads.  Every view
that writes such a string for people passes it through ``safe()``; NDJSON
needs nothing more (orjson escapes control characters, and undecodable
bytes were turned into ``\\xNN`` by ``decode()``).

>>> safe("nginx")
'nginx'
>>> safe("\\r\\x1b[16C1/sshd ")
'\\\\r\\\\x1b[16C1/sshd '
>>> safe("a\\nid>/tmp/rP;#")
'a\\\\nid>/tmp/rP;#'
>>> safe("evil\\u202egnp.exe")
'evil\\\\u202egnp.exe'
>>> decode(b"ok\\xff\\xfe")
'ok\\\\xff\\\\xfe'
>>> safe(decode(b"ok\\xff"))
'ok\\\\xff'
"""

import re
import unicodedata

# C0 controls, DEL and C1 controls; and the format characters that change
# how text is ordered or joined on screen without being seen: bidi
# embeddings, overrides and isolates, marks, zero-width joiners, BOM.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e"
                     "\u2060-\u2069\ufeff\ufff9-\ufffb]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m):
    ch = m.group()
    named = _NAMED.get(ch)
    if named:
        return named
    n = ord(ch)
    return "\\x%02x" % n if n < 0x100 else "\\u%04x" % n


def safe(text):
    """*text* with every character that could move the cursor, clear the
    screen, start a line or reorder text written as a visible escape."""
    if text is None:
        return text
    text = _UNSAFE.sub(_escape, text)
    if text.isascii():
        return text
    # the rest of Unicode's invisible format (Cf), private-use, surrogate
    # and unassigned characters
    return "".join(_hidden(c) if unicodedata.category(c) in _HIDDEN else c for c in text)


_HIDDEN = frozenset(("Cf", "Co", "Cs", "Cn"))


def _hidden(c):
    n = ord(c)
    return "\\u%04x" % n if n <= 0xFFFF else "\\U%08x" % n


def decode(raw):
    """A kernel name (bytes, up to its first NUL) as text; bytes that are not
    UTF-8 become ``\\xNN``, as the proc backend and tracer/_fmt.c write them."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def one_line(text):
    """A message for stderr: runs of white space (newlines from a compiler,
    a mount helper) become one space, the rest as safe() shows it."""
    return safe(" ".join(text.split()))
