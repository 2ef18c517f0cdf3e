"""The plain-words verdicts exercise check cells print (tinyllm_lib.checks)."""

import torch

from tinyllm_lib.checks import check, check_value, difference


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
    assert difference(a + 1e-7, a) is None


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
