"""One-shot and live views for people: ``socktrace SUBCOMMAND``.

Each view is a module here that registers ``COMMANDS[name] = main`` where
``main(argv) -> int`` parses its own arguments and returns the exit status
(0, 1 with one line on stderr, 2 for usage errors).  Views read snapshots
(tracer/sockdiag.py, /proc) or the record stream; they never keep a second
copy of a connection's story.  Strings from the kernel or /proc go through
tracer.text.safe() before they reach a terminal.
"""

COMMANDS = {}


def run(name, argv):
    return COMMANDS[name](argv)


def _register():
    # imported here, after COMMANDS exists: each module adds itself
    from . import ports, stat
    COMMANDS["ports"] = ports.main
    COMMANDS["stat"] = stat.main


_register()
