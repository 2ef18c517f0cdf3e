"""Every `>>>` example in the library's docstrings runs and prints what it says."""

import doctest
import importlib
import pkgutil

import matplotlib
import pytest

import tinyllm_lib

matplotlib.use("Agg")  # examples that plot must not need a screen

MODULES = sorted(m.name for m in pkgutil.iter_modules(tinyllm_lib.__path__))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"tinyllm_lib.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in tinyllm_lib/{name}.py failed"
