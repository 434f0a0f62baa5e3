"""The checkout's ``.venv/bin/socktrace`` (written by scripts/install.sh):
Python starts with ``-S``, without site's start-up work, and only the trace
loads it.

Site processing runs every ``.pth`` file of the venv and of the system's
site-packages; the editable install's import hook alone imports pathlib, re
and fnmatch.  That is 40-80 ms here, more than ``ss -tanp`` takes to list
10,000 sockets, and a one-shot answer (``socktrace ports``, ``stat``) needs
none of it: the checkout and the venv's site-packages on sys.path are
enough.  The trace needs bcc, from the system's site-packages, so it runs
``site.main()`` first: then everything is as in a plain start.
"""

import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    from . import views
    if not (argv and argv[0] in views.COMMANDS):
        import site
        site.main()
    from .cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
