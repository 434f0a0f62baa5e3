"""The optional C parts (tracer/_fmt.c: ring-buffer bytes -> NDJSON;
tracer/_diag.c: the sock_diag parser's loop);
everything else is in pyproject.toml.  Without a compiler the build skips it
(optional=True) and socktrace runs its pure-Python path, which produces the
same output."""
from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wno-missing-field-initializers"]

setup(ext_modules=[
    Extension("tracer._fmt", ["tracer/_fmt.c"], include_dirs=["bpf"],
              extra_compile_args=_FLAGS, optional=True),
    # the sock_diag parser's loop (tracer/sockdiag.py falls back to Python)
    Extension("tracer._diag", ["tracer/_diag.c"], extra_compile_args=_FLAGS, optional=True),
])
