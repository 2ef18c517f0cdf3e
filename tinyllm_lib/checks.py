# Hand-written module: no notebook exports it, and tools/export.py never overwrites it.
"""Plain-words checks for exercise cells: compare your function with the reference.

    >>> check(lambda a, b: a + b, reference=lambda a, b: a + b, cases=[(1, 2), (3, 4)])
    ✓ correct: <lambda> matches the reference on 2 inputs
    True
    >>> check(lambda a, b: a - b, reference=lambda a, b: a + b, cases=[(1, 2)], strict=False)
    ✗ <lambda> differs from the reference
      input:    (1, 2)
      expected: 3
      got:      -1
    False

The reference is passed in by the check cell (usually a function from tinyllm_lib), so this
module never imports or runs the notebook you are working in.

In a notebook a check only prints its verdict. Under the tests (`conftest.py` sets
TINYLLM_STRICT_CHECKS=1) a wrong answer also raises `CheckFailed`, so that a wrong worked solution
fails CI; an exercise that is not written yet (`raise NotImplementedError`, `...`) never raises:

    >>> try:
    ...     check(lambda a, b: a - b, reference=lambda a, b: a + b, cases=[(1, 2)], strict=True)
    ... except CheckFailed:
    ...     print("-> raised CheckFailed")
    ✗ <lambda> differs from the reference
    ...
    -> raised CheckFailed

Floats are compared with a tolerance scaled to the expected values (see `difference`), so a
check on learning rates of 1e-4 is as strict as one on values near 1.
"""

from __future__ import annotations

import math
import os
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

STRICT_ENV = "TINYLLM_STRICT_CHECKS"


class CheckFailed(AssertionError):
    """A check found a wrong answer while strict mode was on (the tests turn it on)."""


def _strict(strict: bool | None) -> bool:
    if strict is not None:
        return strict
    return os.environ.get(STRICT_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    if isinstance(value, torch.Tensor) and value.numel() > 0:
        text = f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}: {value.flatten()[:8].tolist()}..."
    return text if len(text) <= limit else text[:limit] + " ..."


def difference(got: Any, expected: Any, atol: float = 1e-5, rtol: float = 1e-4) -> str | None:
    """None if `got` matches `expected`, else a sentence saying how it differs.

    Floats match when |got - expected| <= rtol·|expected| + atol·scale, where scale is the largest
    finite |value| of the expected tensor (for a single number: |expected| itself). The tolerance
    follows the size of the values: 1.00001e-4 matches 1e-4, but 1.1e-4 does not.

    >>> difference([1, 2], [1, 3])
    'item 1: 2 != 3'
    >>> difference(1.1e-4, 1e-4)
    '0.00011 != 0.0001'
    >>> difference(torch.tensor([1.0, 1e-7]), torch.tensor([1.0, 0.0])) is None   # judged on the tensor's scale
    True
    """
    if isinstance(expected, torch.Tensor) or isinstance(expected, np.ndarray):
        got_t = torch.as_tensor(got) if not isinstance(got, torch.Tensor) else got
        exp_t = torch.as_tensor(expected)
        if tuple(got_t.shape) != tuple(exp_t.shape):
            return f"shape {tuple(got_t.shape)}, expected {tuple(exp_t.shape)}"
        if exp_t.is_floating_point() or got_t.is_floating_point():
            got_f, exp_f = got_t.double(), exp_t.double()
            finite = exp_f[exp_f.isfinite()].abs()
            scale = finite.max().item() if finite.numel() else 0.0
            if not torch.allclose(got_f, exp_f, atol=atol * scale, rtol=rtol, equal_nan=True):
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
        close = math.isclose(got, expected, rel_tol=rtol, abs_tol=atol * abs(expected))
        return None if close else f"{got!r} != {expected!r}"
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


def _verdict(lines: list[str], strict: bool | None, cause: BaseException | None = None) -> bool:
    """Print a failed verdict; in strict mode raise it as well."""
    print("\n".join(lines))
    if _strict(strict):
        raise CheckFailed("\n".join(line.strip() for line in lines)) from cause
    return False


def check(
    fn: Callable,
    reference: Callable,
    cases: Iterable[tuple],
    atol: float = 1e-5,
    rtol: float = 1e-4,
    name: str | None = None,
    strict: bool | None = None,
) -> bool:
    """Call `fn(*case)` and `reference(*case)` for every case, print a verdict, return True if all match.

    `atol`, `rtol`: see `difference`. `strict`: raise `CheckFailed` on a wrong answer (default: on
    when the environment variable TINYLLM_STRICT_CHECKS is set, as under the tests). A function
    that is not written yet only prints that it is not written yet, strict or not.
    """
    name = name or getattr(fn, "__name__", "your function")
    cases = list(cases)
    for case in cases:
        expected = reference(*case)
        try:
            got = fn(*case)
        except NotImplementedError as exc:
            # Name the stub that is still there: in a plug-in cell it is one of several functions.
            stub = traceback.extract_tb(exc.__traceback__)[-1].name
            stub = f"`{stub}`" if stub.isidentifier() else "your code"
            print(f"✗ {name} is not written yet: {stub} still raises NotImplementedError; "
                  "replace that line with your code")
            return False
        except Exception as exc:  # the learner's bug: show it in words, not as a red traceback
            frame = traceback.extract_tb(exc.__traceback__)[-1]  # where it failed, in the learner's code or below
            return _verdict([f"✗ {name} raised {type(exc).__name__}: {exc}",
                             f"  input: {_short(case)}",
                             f"  at line {frame.lineno} of {frame.name}: {frame.line}"], strict, exc)
        if (diff := difference(got, expected, atol, rtol)) is not None:
            lines = [f"✗ {name} differs from the reference",
                     f"  input:    {_short(case)}",
                     f"  expected: {_short(expected)}",
                     f"  got:      {_short(got)}"]
            if not diff.startswith(_short(got, 80)):
                lines.append(f"  ({diff})")
            return _verdict(lines, strict)
    print(f"✓ correct: {name} matches the reference on {len(cases)} input{'s' if len(cases) != 1 else ''}")
    return True


def check_value(got: Any, expected: Any, what: str, hint: str = "", strict: bool | None = None) -> bool:
    """Check one answer (a number, a shape, a list) and say in words whether it is right.

    `strict` as in `check`; an answer still left as `...` is "not answered yet" and never raises.
    """
    if got is NotImplemented or got is Ellipsis:
        print(f"✗ {what}: not answered yet")
        return False
    if difference(got, expected) is not None:
        return _verdict([f"✗ {what}: got {_short(got)}, expected {_short(expected)}" + (f" ({hint})" if hint else "")],
                        strict)
    print(f"✓ correct: {what} = {_short(got)}")
    return True
