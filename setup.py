"""The optional C formatter (tracer/_fmt.c: ring-buffer bytes -> NDJSON);
everything else is in pyproject.toml.  Without a compiler the build skips it
(optional=True) and socktrace runs its pure-Python path, which produces the
same output."""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "tracer._fmt", ["tracer/_fmt.c"], include_dirs=["bpf"],
    extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
    optional=True)])
