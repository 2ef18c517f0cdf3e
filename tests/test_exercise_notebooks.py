"""How the exercise notebooks teach: no hint gives its solution's code, and every committed notebook
comes from one clean top-to-bottom run."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def leaked_lines(notebook: Path) -> list[str]:
    """Lines of a solution block found in its prompt: the markdown just above it, or the cell around it."""
    found, nb = [], cells(notebook)
    for i, cell in enumerate(nb):
        source = "".join(cell["source"])
        if cell["cell_type"] != "code" or "### BEGIN SOLUTION" not in source:
            continue
        prompt, j = [BLOCK.sub("", source)], i - 1
        while j >= 0 and nb[j]["cell_type"] == "markdown":
            prompt.append("".join(nb[j]["source"]))
            j -= 1
        shown = squeeze("\n".join(prompt))
        for block in BLOCK.findall(source):
            for line in block.splitlines():
                line = line.strip()
                if len(line) >= 12 and not line.startswith("#") and squeeze(line) in shown:
                    found.append(f"{notebook.name}, cell {i}: {line}")
    return found


def test_the_leak_check_finds_a_hint_that_gives_the_code(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "source": "Clear them: `optimizer.zero_grad(set_to_none=True)`."},
                    {"cell_type": "code", "source": "def f():\n    ### BEGIN SOLUTION\n"
                                                    "    optimizer.zero_grad(set_to_none=True)\n    ### END SOLUTION\n"}]}
    (tmp_path / "x.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    assert leaked_lines(tmp_path / "x.ipynb") == ["x.ipynb, cell 1: optimizer.zero_grad(set_to_none=True)"]


@pytest.mark.parametrize("notebook", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.name)
def test_no_hint_contains_a_line_of_its_solution(notebook):
    assert leaked_lines(notebook) == []


@pytest.mark.parametrize("notebook", sorted([*(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "solutions").glob("*.ipynb")]),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_outputs_come_from_one_clean_run(notebook):
    """Execution counts 1, 2, ..., N over the code cells: every cell ran, once, in order, in one kernel."""
    counts = [c.get("execution_count") for c in cells(notebook) if c["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{notebook.name}: execution counts {counts}; run it top to bottom in a fresh kernel "
        f"(jupyter nbconvert --to notebook --execute --inplace) on an otherwise idle machine")


@pytest.mark.parametrize("notebook", sorted((ROOT / "exercises").glob("*.ipynb")), ids=lambda p: p.name)
def test_worked_answers_stay_in_solutions(notebook):
    """A worked answer lives inside a solution block, which the exercise notebook does not get."""
    shown = [i for i, cell in enumerate(cells(notebook)) if "worked answer" in "".join(cell["source"]).lower()
             and cell["cell_type"] == "markdown"]
    assert shown == [], f"{notebook.name}: markdown cells {shown} give a worked answer away"
