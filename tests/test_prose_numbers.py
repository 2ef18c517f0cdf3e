"""Every measured number in a chapter's prose is printed by a cell of that chapter.

The prose of a notebook is written from its committed full run. When a re-run changes a figure (a loss,
a time, a ratio), the sentence quoting the old figure becomes false; this test finds it. A number
counts as quoted when it has a decimal point (2.37), thousands separators (858,880) or a unit
(51 s, 0.98×, 97.7%). It must then appear in an output or in the code of the same notebook.
Facts that no cell prints (a datasheet figure, an arithmetic example, a constant of a file format)
are listed below with the reason, one by one, so that a new measured number is never waved through.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for folder in ("notebooks", "solutions") for p in (ROOT / folder).glob("*.ipynb"))

UNITS = r"%|×|x\b|s\b|min\b|ms\b|MB\b|GB\b|MiB\b|GiB\b|bits\b|nats\b|steps\b|tokens\b|parameters\b"
QUOTED = re.compile(
    rf"(?<![\w.$^/-])(\d+\.\d+|\d{{1,3}}(?:,\d{{3}})+|\d+(?=\s?(?:{UNITS})))(?![\w.]*\d)"
)
MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$", re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")

# (notebook stem, number as written): why no cell prints it.
FACTS = {
    ("01_bpe", "50,000"): "GPT-2's vocab.bpe holds 50,000 merges: a property of the published file",
    ("04_training_loop", "6,500"): "the step count of a shell command shown in the text",
    ("04_training_loop", "65,535"): "the largest uint16, a property of the type",
    ("04b_robust_training", "6,500"): "the step count of a shell command shown in the text",
    ("04b_robust_training", "65,535"): "the largest uint16, a property of the type",
    ("05_mixed_precision", "10,000"): "the vocabulary size of the benchmark configuration, set in bench/",
    ("05_mixed_precision", "19.5"): "an A100 datasheet figure (fp32 TFLOPS)",
    ("05_mixed_precision", "1.5"): "arithmetic shown inline: 1 / (1 - 1/3)",
    ("07_sampling", "0.09"): "worked example of min_p on a 0.9 top probability",
    ("07_sampling", "0.005"): "worked example of min_p on a 0.05 top probability",
    ("07_sampling", "1.1"): "advice: a repetition penalty near 1.1-1.3",
    ("07_sampling", "1.3"): "advice: a repetition penalty near 1.1-1.3",
    ("08_custom_data", "1.0"): "the value token-F1 returns for two empty answers, part of the exercise's statement",
    ("10_gpt2", "50,000"): "GPT-2's vocab.bpe holds 50,000 merges: a property of the published file",
}


def normalise(text: str) -> str:
    """Digits as a cell may print them: 858,880 / 858_880 / 858880 all become 858880."""
    return re.sub(r"(?<=\d)[,_](?=\d)", "", text)


def printed_text(cells: list[dict]) -> str:
    parts = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        parts.append("".join(cell["source"]))
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain", "")
            parts.append("".join(text) if isinstance(text, list) else text)
    return normalise("\n".join(parts))


def quoted_numbers(markdown: str) -> list[str]:
    prose = CODE_SPAN.sub(" ", MATH.sub(" ", markdown))
    return [m.group(1) for m in QUOTED.finditer(prose)]


def unprinted_numbers(path: Path) -> list[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    printed = printed_text(cells)
    missing = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        for number in quoted_numbers("".join(cell["source"])):
            if (path.stem, number) in FACTS or normalise(number) in printed:
                continue
            missing.append(f"{path.parent.name}/{path.name}, cell {index}: {number}")
    return missing


def test_the_pattern_finds_quoted_numbers_and_skips_math_and_code():
    text = "It reached 2.373 bits/char with 858,880 parameters in 51 s ($\\sqrt{2.5}$, `lr=3e-4`, 0.98×), chapter 4."
    assert quoted_numbers(text) == ["2.373", "858,880", "51", "0.98"]


def test_a_number_no_cell_prints_is_reported(tmp_path: Path):
    notebook = {"cells": [
        {"cell_type": "code", "source": ["print(f'{loss:.2f}')"], "outputs": [{"text": ["2.41\n"]}]},
        {"cell_type": "markdown", "source": ["The loss ends at 2.41, then 2.39 after resuming."]},
    ]}
    path = tmp_path / "99_demo.ipynb"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    assert unprinted_numbers(path) == [f"{tmp_path.name}/99_demo.ipynb, cell 1: 2.39"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_quoted_number_is_printed_by_the_notebook(path: Path):
    missing = unprinted_numbers(path)
    assert not missing, "numbers in the prose that no cell of the notebook prints (update the text from the " \
                        "outputs, or list a fact in FACTS with its reason):\n" + "\n".join(missing)


def test_every_listed_fact_is_still_in_its_notebook():
    quoted = {(p.stem, number) for p in NOTEBOOKS for cell in json.loads(p.read_text(encoding="utf-8"))["cells"]
              if cell["cell_type"] == "markdown" for number in quoted_numbers("".join(cell["source"]))}
    stale = sorted(set(FACTS) - quoted)
    assert not stale, f"FACTS entries no notebook prose quotes any more: {stale}"
