#!/usr/bin/env python
"""Generate `exercises/NN_topic.ipynb` from `solutions/NN_topic.ipynb`.

Each block

        ### BEGIN SOLUTION
        counts[pair] += 1
        ### END SOLUTION

becomes, at the marker's indentation,

        # YOUR CODE HERE
        raise NotImplementedError

A value exercise (an answer, not a function) is written as a stub line `name = ...` followed by
its solution block at the same indentation:

    n_params = ...  # replace ... with your expression
    ### BEGIN SOLUTION
    n_params = 64 * 64
    ### END SOLUTION

There the block is simply removed: the learner replaces `...`, and the check cell says "not
answered yet" while `...` is left, with no traceback before the ✓ once it is right.

All outputs are cleared. A cell that received a `raise NotImplementedError` stub is tagged
`raises-exception`, so the exercise notebook still runs under nbval while the learner has not
filled it in.
`#| export` is refused in both folders: a learner's stub must never reach the library.

Usage:
    python tools/exercises.py           # regenerate every exercise notebook
    python tools/exercises.py --check   # exit 1 if exercises/ differs from what solutions/ generates
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

from nbclean import dumps  # tools/ is on sys.path when this script runs

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
EXERCISES = ROOT / "exercises"
BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*### END SOLUTION\s*$")
VALUE_STUB = re.compile(r"^(\s*)[A-Za-z_]\w*\s*=\s*\.\.\.\s*(#.*)?$")  # `answer = ...  # comment`
EXPORT = re.compile(r"^#\|\s*(export|default_exp)\b")
RAISES_TAG = "raises-exception"


class MarkerError(Exception):
    """Malformed solution markers; the message names the notebook and the cell."""


def strip_solutions(source: str, where: str) -> tuple[str, int]:
    """Replace every solution block; return the new source and how many `raise` stubs it received.

    >>> strip_solutions("def f():\\n    ### BEGIN SOLUTION\\n    return 1\\n    ### END SOLUTION\\n", "x")[0]
    'def f():\\n    # YOUR CODE HERE\\n    raise NotImplementedError\\n'
    >>> strip_solutions("x = ...  # your answer\\n### BEGIN SOLUTION\\nx = 4\\n### END SOLUTION\\n", "x")
    ('x = ...  # your answer\\n', 0)
    """
    out, indent, blocks = [], None, 0
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        if m := BEGIN.match(line):
            if indent is not None:
                raise MarkerError(f"{where}: nested `### BEGIN SOLUTION` at line {number}")
            indent = m.group(1)
            stub = VALUE_STUB.match(out[-1]) if out else None
            if stub and stub.group(1) == indent:  # a value exercise: the `name = ...` line is the stub
                continue
            blocks += 1
            out.append(f"{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError\n")
        elif END.match(line):
            if indent is None:
                raise MarkerError(f"{where}: `### END SOLUTION` without a BEGIN at line {number}")
            indent = None
        elif indent is None:
            out.append(line)
    if indent is not None:
        raise MarkerError(f"{where}: `### BEGIN SOLUTION` is never closed by `### END SOLUTION`")
    return "".join(out), blocks


def make_exercise(solution: dict, name: str) -> dict:
    nb = copy.deepcopy(solution)
    for number, cell in enumerate(nb["cells"], start=1):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        where = f"solutions/{name}, cell {number}"
        if cell.get("cell_type") != "code":
            if "### BEGIN SOLUTION" in source or "### END SOLUTION" in source:
                raise MarkerError(f"{where}: solution markers belong in code cells only")
            continue
        if any(EXPORT.match(line) for line in source.splitlines()):
            raise MarkerError(f"{where}: `#| export` is not allowed in solutions/ (export from notebooks/)")
        new_source, blocks = strip_solutions(source, where)
        cell["source"] = new_source.splitlines(keepends=True)
        cell["outputs"] = []
        cell["execution_count"] = None
        if blocks:
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if RAISES_TAG not in tags:
                tags.append(RAISES_TAG)
    return nb


def generate() -> dict[Path, str]:
    result = {}
    for path in sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb")):
        try:
            solution = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise MarkerError(f"solutions/{path.name}: not valid notebook JSON ({exc})") from exc
        result[EXERCISES / path.name] = dumps(make_exercise(solution, path.name))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report drift instead of writing")
    args = parser.parse_args(argv)
    try:
        wanted = generate()
    except MarkerError as exc:
        print(f"exercise error: {exc}", file=sys.stderr)
        return 2
    stale = sorted(set(EXERCISES.glob("*.ipynb")) - set(wanted))
    if args.check:
        problems = [
            f"exercises/{p.name} differs from what solutions/{p.name} generates"
            for p, text in wanted.items()
            if not p.exists() or p.read_text(encoding="utf-8") != text
        ] + [f"exercises/{p.name} has no solutions/{p.name}" for p in stale]
        for p in problems:
            print(f"exercise drift: {p} (run python tools/exercises.py)", file=sys.stderr)
        if not problems:
            print(f"exercise check: {len(wanted)} exercise notebooks match solutions/")
        return 1 if problems else 0
    EXERCISES.mkdir(exist_ok=True)
    for path, text in wanted.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote exercises/{path.name}")
    for path in stale:
        path.unlink()
        print(f"removed exercises/{path.name} (no solution notebook)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
