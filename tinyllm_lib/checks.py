# Hand-written module: no notebook exports it, and tools/export.py never overwrites it.
"""Plain-words checks for exercise cells: compare your function with the reference.

    >>> check(lambda a, b: a + b, reference=lambda a, b: a + b, cases=[(1, 2), (3, 4)])
    ✓ correct: <lambda> matches the reference on 2 inputs
    True
    >>> check(lambda a, b: a - b, reference=lambda a, b: a + b, cases=[(1, 2)])
    ✗ <lambda> differs from the reference
      input:    (1, 2)
      expected: 3
      got:      -1
    False

The reference is passed in by the check cell (usually a function from tinyllm_lib), so this
module never imports or runs the notebook you are working in.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    if isinstance(value, torch.Tensor) and value.numel() > 0:
        text = f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}: {value.flatten()[:8].tolist()}..."
    return text if len(text) <= limit else text[:limit] + " ..."


def difference(got: Any, expected: Any, atol: float = 1e-5, rtol: float = 1e-4) -> str | None:
    """None if `got` matches `expected`, else a sentence saying how it differs.

    >>> difference([1, 2], [1, 3])
    'item 1: 2 != 3'
    """
    if isinstance(expected, torch.Tensor) or isinstance(expected, np.ndarray):
        got_t = torch.as_tensor(got) if not isinstance(got, torch.Tensor) else got
        exp_t = torch.as_tensor(expected)
        if tuple(got_t.shape) != tuple(exp_t.shape):
            return f"shape {tuple(got_t.shape)}, expected {tuple(exp_t.shape)}"
        if exp_t.is_floating_point() or got_t.is_floating_point():
            got_f, exp_f = got_t.double(), exp_t.double()
            if not torch.allclose(got_f, exp_f, atol=atol, rtol=rtol, equal_nan=True):
                err = (got_f - exp_f).abs().nan_to_num(nan=math.inf)
                where = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
                return (f"values differ: largest difference {err.max().item():.3g} at index {where} "
                        f"(got {got_f[where].item():.6g}, expected {exp_f[where].item():.6g})")
            return None
        if not torch.equal(got_t.to(exp_t.dtype), exp_t):
            where = tuple(int(i) for i in torch.nonzero(got_t.to(exp_t.dtype) != exp_t)[0])
            return f"values differ at index {where}: got {got_t[where].item()}, expected {exp_t[where].item()}"
        return None
    if isinstance(expected, float) and isinstance(got, (int, float)):
        return None if math.isclose(got, expected, rel_tol=rtol, abs_tol=atol) else f"{got!r} != {expected!r}"
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
        if len(got) != len(expected):
            return f"length {len(got)}, expected {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            if (d := difference(g, e, atol, rtol)) is not None:
                return f"item {i}: {d}"
        return None
    if isinstance(expected, dict) and isinstance(got, dict):
        missing, extra = expected.keys() - got.keys(), got.keys() - expected.keys()
        if missing or extra:
            return f"keys differ: missing {sorted(missing, key=repr)}, unexpected {sorted(extra, key=repr)}"
        for k in expected:
            if (d := difference(got[k], expected[k], atol, rtol)) is not None:
                return f"key {k!r}: {d}"
        return None
    try:
        equal = bool(got == expected)
    except Exception:  # e.g. a tensor compared with a number: ambiguous, so not equal
        equal = False
    return None if equal else f"{_short(got, 80)} != {_short(expected, 80)}"


def check(
    fn: Callable,
    reference: Callable,
    cases: Iterable[tuple],
    atol: float = 1e-5,
    rtol: float = 1e-4,
    name: str | None = None,
) -> bool:
    """Call `fn(*case)` and `reference(*case)` for every case, print a verdict, return True if all match."""
    name = name or getattr(fn, "__name__", "your function")
    cases = list(cases)
    for case in cases:
        expected = reference(*case)
        try:
            got = fn(*case)
        except NotImplementedError:
            print(f"✗ {name} is not written yet: replace `raise NotImplementedError` in the cell above")
            return False
        except Exception as exc:  # the learner's bug: show it in words, not as a red traceback
            print(f"✗ {name} raised {type(exc).__name__}: {exc}")
            print(f"  input: {_short(case)}")
            frame = traceback.extract_tb(exc.__traceback__)[-1]  # where it failed, in the learner's code or below
            print(f"  at line {frame.lineno} of {frame.name}: {frame.line}")
            return False
        if (diff := difference(got, expected, atol, rtol)) is not None:
            print(f"✗ {name} differs from the reference")
            print(f"  input:    {_short(case)}")
            print(f"  expected: {_short(expected)}")
            print(f"  got:      {_short(got)}")
            if not diff.startswith(_short(got, 80)):
                print(f"  ({diff})")
            return False
    print(f"✓ correct: {name} matches the reference on {len(cases)} input{'s' if len(cases) != 1 else ''}")
    return True


def check_value(got: Any, expected: Any, what: str, hint: str = "") -> bool:
    """Check one answer (a number, a shape, a list) and say in words whether it is right."""
    if got is NotImplemented or got is Ellipsis:
        print(f"✗ {what}: not answered yet")
        return False
    if difference(got, expected) is not None:
        print(f"✗ {what}: got {_short(got)}, expected {_short(expected)}" + (f" ({hint})" if hint else ""))
        return False
    print(f"✓ correct: {what} = {_short(got)}")
    return True
