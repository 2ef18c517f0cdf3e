# Hand-written module: no notebook exports it, and tools/export.py never overwrites it.
"""Plug your code in: run the library with your own functions in place of its own, then put it back.

`use_mine(target, name=your_function, ...)` replaces `target.name` (target: a module, a class or an
object) for the length of a `with` block and restores it on the way out, even after an error. The
library looks the name up at the moment it calls it, so a real run inside the block uses yours:

    >>> from tinyllm_lib import bpe
    >>> def my_count_pairs(words):                     # yours (a wrong one: it finds no pair)
    ...     return {}
    >>> with use_mine(bpe, count_pairs=my_count_pairs) as plugged:
    ...     bpe.train_merges_naive([(0, 1), (0, 1)], ["a", "b"], num_merges=5)   # the trainer calls yours
    []
    >>> plugged.calls                                  # how many times the library called it
    {'count_pairs': 1}
    >>> bpe.train_merges_naive([(0, 1), (0, 1)], ["a", "b"], num_merges=5)       # the library's again
    [(0, 1)]

A function put on a class becomes a method (it receives `self`): `use_mine(Block, forward=my_forward)`.
A class put in a module replaces the one the library builds: `use_mine(model, MultiHeadAttention=Mine)`.

If the block ends while one of your functions (or classes) was never called, `use_mine` raises
`NotPluggedIn`: the run went around your code, so comparing its result would prove nothing.

    >>> with use_mine(bpe, count_pairs=my_count_pairs):
    ...     _ = bpe.apply_merges([0, 1], {(0, 1): 2})      # apply_merges never counts pairs
    Traceback (most recent call last):
    tinyllm_lib.plugin.NotPluggedIn: your my_count_pairs never ran: nothing called tinyllm_lib.bpe.count_pairs inside the `with` block

Use it inside a check, so that a wrong result, an error or an unwritten stub is reported in words:
`check(run_with_mine, reference=run_reference, cases=[()], name="your attention inside a GPT")`.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_MISSING = object()


class NotPluggedIn(AssertionError):
    """The `with use_mine(...)` block ended without calling one of the replacements."""


class Plugged:
    """What `use_mine` yields: `calls[name]` counts the calls of each replacement so far."""

    def __init__(self, names: list[str]):
        self.calls = dict.fromkeys(names, 0)

    def __repr__(self) -> str:
        return f"Plugged(calls={self.calls})"


def _describe(target: Any) -> str:
    if inspect.ismodule(target):
        return target.__name__
    if inspect.isclass(target):
        return f"{target.__module__}.{target.__qualname__}"
    return f"this {type(target).__name__} object"


def _counting(name: str, value: Any, plugged: Plugged) -> Any:
    """`value`, wrapped so that calling it (or building an instance of it) counts in `plugged.calls`."""
    if inspect.isclass(value):
        def __init__(self, *args, **kwargs):
            plugged.calls[name] += 1
            value.__init__(self, *args, **kwargs)

        # A subclass, not a wrapper function: isinstance() and class attributes keep working.
        return type(value.__name__, (value,), {"__init__": __init__, "__module__": value.__module__,
                                               "__qualname__": value.__qualname__})
    if inspect.isfunction(value) or inspect.ismethod(value) or isinstance(value, functools.partial):
        @functools.wraps(value)
        def counted(*args, **kwargs):
            plugged.calls[name] += 1
            return value(*args, **kwargs)

        return counted  # a plain function: put on a class, it binds `self` like the original method
    return value  # anything else (a number, a callable object): put in place as it is, not counted


@contextmanager
def use_mine(target: Any, *, require_called: bool = True, **replacements: Any) -> Iterator[Plugged]:
    """Replace `target.<name>` by each `name=value` inside a `with` block; restore on exit.

    target: a module (`tinyllm_lib.attention`), a class (`Block`) or an object. Every name must
    already exist on it: a misspelt name is an error, never a new attribute nobody calls.
    require_called: raise `NotPluggedIn` at the end of the block if a replacement function or class
    was never called (a constant is never counted). Yields a `Plugged` whose `calls` counts them.
    """
    if not replacements:
        raise TypeError("use_mine needs at least one name=your_function to plug in")
    where = _describe(target)
    saved: list[tuple[str, Any]] = []
    for name in replacements:
        if not hasattr(target, name):
            close = difflib.get_close_matches(name, [n for n in dir(target) if not n.startswith("__")], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise AttributeError(f"{where} has no {name!r} to replace{hint}")
        own = vars(target).get(name, _MISSING) if hasattr(target, "__dict__") else getattr(target, name)
        saved.append((name, own))
    plugged = Plugged(list(replacements))
    done: list[tuple[str, Any]] = []  # restore only what was really replaced, in reverse order
    try:
        for (name, own), value in zip(saved, replacements.values()):
            setattr(target, name, _counting(name, value, plugged))
            done.append((name, own))
        yield plugged
    finally:
        for name, own in reversed(done):
            if own is _MISSING:  # it was inherited (from a class or a base class): remove our copy
                delattr(target, name)
            else:
                setattr(target, name, own)
    if require_called:
        for name, value in replacements.items():
            counted = inspect.isclass(value) or inspect.isfunction(value) or inspect.ismethod(value) \
                or isinstance(value, functools.partial)
            if counted and plugged.calls[name] == 0:
                yours = getattr(value, "__name__", name)
                raise NotPluggedIn(f"your {yours} never ran: nothing called {where}.{name} inside the `with` block")
