#!/usr/bin/env python
"""Normalise committed notebooks: one metadata layout, no widget state, no execution timestamps.

Usage:
    python tools/nbclean.py                 # clean notebooks/, solutions/ and exercises/ in place
    python tools/nbclean.py --check         # exit 1 naming each notebook that is not clean
    python tools/nbclean.py path.ipynb ...  # clean just these

Run it after executing a notebook (`jupyter nbconvert --execute --inplace ...`), then run
`python tools/exercises.py` if the notebook was in solutions/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("notebooks", "solutions", "exercises")
NOTEBOOK_METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
KEPT_CELL_METADATA = ("tags",)  # everything else (execution times, collapsed, scrolled...) is noise


def clean(nb: dict) -> dict:
    nb["metadata"] = dict(NOTEBOOK_METADATA)
    for cell in nb["cells"]:
        meta = cell.get("metadata", {})
        cell["metadata"] = {k: meta[k] for k in KEPT_CELL_METADATA if meta.get(k)}
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            # Widget views cannot render outside a live kernel; keep their text fallback.
            data.pop("application/vnd.jupyter.widget-view+json", None)
            output.get("metadata", {}).pop("execution", None)
    return nb


def dumps(nb: dict) -> str:
    """The byte layout Jupyter itself writes (indent 1, sorted keys, non-ASCII kept)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(p for f in FOLDERS for p in (ROOT / f).glob("*.ipynb"))
    dirty = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        cleaned = dumps(clean(json.loads(text)))
        if cleaned != text:
            dirty.append(path)
            if not args.check:
                path.write_text(cleaned, encoding="utf-8")
    for path in dirty:
        print(f"{'not clean' if args.check else 'cleaned'}: {path}", file=sys.stderr if args.check else sys.stdout)
    return 1 if (args.check and dirty) else 0


if __name__ == "__main__":
    sys.exit(main())
