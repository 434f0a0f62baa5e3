"""The worked examples in the modules' docstrings are tests too."""

import doctest
import importlib
import pkgutil

import pytest

import tracer

# modules whose import needs what a test host may lack are skipped, not hidden
MODULES = sorted(m.name for m in pkgutil.walk_packages(tracer.__path__, "tracer.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert res.failed == 0, "%d of %d examples failed in %s" % (res.failed, res.attempted, name)
