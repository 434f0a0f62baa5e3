"""TCP state names: the one table shared by every backend, filter and report.

The numbers are the kernel's (include/net/tcp_states.h); they are also what
/proc/net/tcp prints in its ``st`` column (hex) and what the
``sock:inet_sock_set_state`` tracepoint carries.

>>> NAMES[1], NUMBERS["TIME_WAIT"]
('ESTABLISHED', 6)
>>> parse_state("time-wait"), parse_state("CLOSE_WAIT"), parse_state("syn-recv")
('TIME_WAIT', 'CLOSE_WAIT', 'SYN_RECV')
"""

# index == kernel number; 0 is unused by the kernel.
NAMES = (
    None,
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
)
NUMBERS = {name: num for num, name in enumerate(NAMES) if name}

ESTABLISHED = NUMBERS["ESTABLISHED"]
SYN_SENT = NUMBERS["SYN_SENT"]
SYN_RECV = NUMBERS["SYN_RECV"]
FIN_WAIT1 = NUMBERS["FIN_WAIT1"]
FIN_WAIT2 = NUMBERS["FIN_WAIT2"]
TIME_WAIT = NUMBERS["TIME_WAIT"]
CLOSE = NUMBERS["CLOSE"]
CLOSE_WAIT = NUMBERS["CLOSE_WAIT"]
LAST_ACK = NUMBERS["LAST_ACK"]
LISTEN = NUMBERS["LISTEN"]
CLOSING = NUMBERS["CLOSING"]
NEW_SYN_RECV = NUMBERS["NEW_SYN_RECV"]

# ss(8) spells states in lower case with dashes (state-filter names) and
# netstat uses FIN_WAIT1 / TIME_WAIT; accept both, plus ss's "syn-recv".
_ALIASES = {
    "SYN_RECEIVED": "SYN_RECV",
    "CLOSED": "CLOSE",
    "UNCONN": "CLOSE",
    "LISTENING": "LISTEN",
}


def parse_state(text):
    """Return the canonical state name for *text*, or raise ValueError.

    Accepts the kernel's names with or without ``TCP_``, netstat's and ss's
    spellings (``time-wait``, ``fin-wait-1``, ``close-wait``).
    """
    key = text.strip().upper().replace("-", "_")
    if key.startswith("TCP_"):
        key = key[4:]
    key = key.replace("FIN_WAIT_", "FIN_WAIT")
    key = _ALIASES.get(key, key)
    if key not in NUMBERS:
        raise ValueError(
            "unknown TCP state %r (one of: %s)"
            % (text, ", ".join(n.lower().replace("_", "-") for n in NAMES if n))
        )
    return key
