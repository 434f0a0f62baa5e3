"""socktrace: every TCP state transition on a Linux host, live, as NDJSON."""

__version__ = "0.1.0"
