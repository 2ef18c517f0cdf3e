"""The plain-words verdicts exercise check cells print (tinyllm_lib.checks), and strict mode."""

import os

import pytest
import torch

from tinyllm_lib.checks import STRICT_ENV, CheckFailed, check, check_value, difference
from tinyllm_lib.optim import get_lr

STRICT_WHEN_COLLECTED = os.environ.get(STRICT_ENV)  # before the fixture below clears it


@pytest.fixture(autouse=True)
def as_in_a_notebook(monkeypatch):
    """The learner's view: no strict mode (conftest.py turns it on for the notebooks' tests)."""
    monkeypatch.delenv(STRICT_ENV, raising=False)


def test_correct_function_passes(capsys):
    assert check(sorted, reference=lambda xs: sorted(xs), cases=[([3, 1, 2],), ([],)])
    assert "✓ correct" in capsys.readouterr().out


def test_wrong_function_shows_the_input_that_failed(capsys):
    assert not check(lambda xs: xs, reference=sorted, cases=[([1, 2],), ([2, 1],)], name="my_sort")
    out = capsys.readouterr().out
    assert "✗ my_sort differs" in out and "([2, 1],)" in out and "[1, 2]" in out


def test_unfinished_exercise_is_reported_not_raised(capsys):
    def stub(x):
        raise NotImplementedError

    assert not check(stub, reference=abs, cases=[(-1,)])
    assert "not written yet" in capsys.readouterr().out


def test_learner_exception_is_reported_in_words(capsys):
    assert not check(lambda x: 1 / x, reference=lambda x: x, cases=[(0,)], name="inverse")
    out = capsys.readouterr().out
    assert "inverse raised ZeroDivisionError" in out and "input: (0,)" in out
    assert "1 / x" in out  # the failing source line, not a caret marker


def test_tensor_differences_name_shape_and_position():
    a = torch.zeros(2, 3)
    assert difference(a, torch.zeros(3, 2)) == "shape (2, 3), expected (3, 2)"
    b = a.clone()
    b[1, 2] = 0.5
    assert "at index (1, 2)" in difference(b, a)
    assert difference(a + 1 + 1e-7, a + 1) is None


def test_check_value(capsys):
    assert check_value((2, 4), (2, 4), "shape")
    assert not check_value(3, 4, "heads", hint="d_model / d_head")
    out = capsys.readouterr().out
    assert "✓ correct: shape" in out and "✗ heads: got 3, expected 4 (d_model / d_head)" in out


def test_check_value_never_raises_on_mismatched_types(capsys):
    assert not check_value(torch.tensor([1.0, 2.0]), 3.0, "total")
    assert "✗ total" in capsys.readouterr().out


def test_singular_input_count(capsys):
    check(abs, reference=abs, cases=[(-2,)])
    assert "on 1 input\n" in capsys.readouterr().out


# -- tolerances scaled to the values ---------------------------------------------------------------

def test_small_values_get_a_tolerance_of_their_own_size():
    assert difference(1e-4 + 9e-6, 1e-4) is not None  # 9% off: an absolute 1e-5 would have let it pass
    assert difference(1e-4 * (1 + 1e-6), 1e-4) is None
    assert difference(1e-5, 0.0) is not None
    small = torch.tensor([1e-3, 2e-3, 5e-4])
    assert difference(small * 1.01, small) is not None
    assert difference(small * (1 + 1e-6), small) is None
    # near-zero entries are judged on the scale of the whole tensor, not on their own
    assert difference(torch.tensor([1.0, 1e-7]), torch.tensor([1.0, 0.0])) is None


def test_lr_checks_catch_an_off_by_one_warmup_and_a_small_constant_error(capsys):
    """The schedule's values are <= 1e-3: the bugs of issue 'lr_at passes with an absolute 1e-5'."""
    cases = [(0, 1e-3, 1e-4, 100, 1000), (40, 1e-3, 1e-4, 100, 1000), (550, 1e-3, 1e-4, 100, 1000)]

    def warmup_from_one(it, max_lr, min_lr, warmup_iters, max_iters):
        return get_lr(it + 1, max_lr, min_lr, warmup_iters, max_iters) if it < warmup_iters else \
            get_lr(it, max_lr, min_lr, warmup_iters, max_iters)

    assert not check(warmup_from_one, reference=get_lr, cases=cases)
    assert not check(lambda *args: get_lr(*args) + 9e-6, reference=get_lr, cases=cases)
    assert check(get_lr, reference=get_lr, cases=cases)


# -- strict mode: a wrong solution fails the tests ------------------------------------------------

def test_strict_mode_raises_on_a_wrong_answer_after_printing_it(monkeypatch, capsys):
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(CheckFailed, match=r"my_sort differs from the reference\ninput: +\(\[2, 1\],\)"):
        check(lambda xs: xs, reference=sorted, cases=[([1, 2],), ([2, 1],)], name="my_sort")
    assert "✗ my_sort differs" in capsys.readouterr().out  # the learner's words come first
    with pytest.raises(CheckFailed, match="inverse raised ZeroDivisionError") as failure:
        check(lambda x: 1 / x, reference=lambda x: x, cases=[(0,)], name="inverse")
    assert isinstance(failure.value.__cause__, ZeroDivisionError)
    with pytest.raises(CheckFailed, match="heads: got 3, expected 4"):
        check_value(3, 4, "heads")
    assert issubclass(CheckFailed, AssertionError)


def test_strict_mode_never_raises_for_an_exercise_not_written_yet(monkeypatch, capsys):
    monkeypatch.setenv(STRICT_ENV, "1")

    def stub(x):
        raise NotImplementedError

    assert not check(stub, reference=abs, cases=[(-1,)])
    assert not check_value(..., 4, "heads")
    assert not check_value(NotImplemented, 4, "heads")
    out = capsys.readouterr().out
    assert "not written yet" in out and "not answered yet" in out
    assert check(abs, reference=abs, cases=[(-1,)])  # and a right answer passes


@pytest.mark.parametrize("value, strict", [("", False), ("0", False), ("no", False), ("1", True), ("yes", True)])
def test_strict_mode_follows_the_environment_unless_told(monkeypatch, value, strict):
    monkeypatch.setenv(STRICT_ENV, value)
    wrong = dict(fn=abs, reference=lambda x: -x, cases=[(2,)])
    if strict:
        with pytest.raises(CheckFailed):
            check(**wrong)
    else:
        assert not check(**wrong)
    assert not check(**wrong, strict=False)
    with pytest.raises(CheckFailed):
        check(**wrong, strict=True)


def test_conftest_turns_strict_mode_on_for_the_notebooks():
    """conftest.py sets it in the pytest process before any test runs; every notebook kernel inherits it."""
    assert STRICT_WHEN_COLLECTED == "1"
