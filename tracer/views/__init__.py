"""One-shot and live views for people: ``socktrace SUBCOMMAND``.

Each view is a module here with ``main(argv) -> int``, which parses its
own arguments and returns the exit status (0, 1 with one line on stderr,
2 for usage errors); ``COMMANDS[name]`` (below) imports it when it runs,
so a one-shot answer pays for no other view's imports.  Views read snapshots
(tracer/sockdiag.py, /proc) or the record stream; they never keep a second
copy of a connection's story.  Strings from the kernel or /proc go through
tracer.text.safe() before they reach a terminal.
"""

COMMANDS = {}


def run(name, argv):
    return COMMANDS[name](argv)


def _lazy(module):
    # a subcommand's module is imported only when it runs: a one-shot
    # answer pays for no other view's imports
    def main(argv):
        import importlib
        return importlib.import_module("." + module, __name__).main(argv)
    main.__name__ = module + "_main"
    return main


for _name in ("ports", "stat", "leaks"):
    COMMANDS[_name] = _lazy(_name)
del _name

# the live screen (rich): imported only when it runs, like the others
COMMANDS["top"] = _lazy("top")
