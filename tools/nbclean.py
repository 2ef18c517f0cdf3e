#!/usr/bin/env python
"""Normalise committed notebooks: one metadata layout, no widget state, no execution timestamps.

Usage:
    python tools/nbclean.py                 # clean notebooks/, solutions/ and exercises/ in place
    python tools/nbclean.py --check         # exit 1 naming each notebook that is not clean
    python tools/nbclean.py path.ipynb ...  # clean just these
    python tools/nbclean.py --install-hook  # once per environment: JupyterLab then saves them clean

Run it after executing a notebook (`jupyter nbconvert --execute --inplace ...`), then run
`python tools/exercises.py` if the notebook was in solutions/.

JupyterLab writes what the check rejects (its kernel metadata, live widget state, widget views) each
time it saves. `--install-hook` registers `tinyllm_lib.explorer.jupyter_pre_save_hook` with the Jupyter
server of this Python environment (in <sys.prefix>/etc/jupyter/jupyter_server_config.json): from
the next server start on, notebooks of notebooks/, solutions/ and exercises/ are cleaned as they are saved.
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
        # A widget view cannot render outside a live kernel, and its text fallback is repr noise
        # (`VBox(children=...)`): drop the whole output. (Saving in JupyterLab writes them.)
        if "outputs" in cell:
            cell["outputs"] = [o for o in cell["outputs"]
                               if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]
        for output in cell.get("outputs", []):
            output.get("metadata", {}).pop("execution", None)
    return nb


def dumps(nb: dict) -> str:
    """The byte layout Jupyter itself writes (indent 1, sorted keys, non-ASCII kept)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


HOOK = "tinyllm_lib.explorer.jupyter_pre_save_hook"


def hook_config_path(prefix: str | Path = sys.prefix) -> Path:
    return Path(prefix) / "etc" / "jupyter" / "jupyter_server_config.json"


def install_hook(prefix: str | Path = sys.prefix) -> Path:
    """Register the pre-save hook with this environment's Jupyter server (merged into its
    jupyter_server_config.json, other settings kept); returns the file written."""
    path = hook_config_path(prefix)
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config.setdefault("ContentsManager", {})["pre_save_hook"] = HOOK
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--install-hook", action="store_true",
                        help="make this environment's Jupyter server clean the course's notebooks as it saves them")
    args = parser.parse_args(argv)
    if args.install_hook:
        print(f"wrote {install_hook()}: restart JupyterLab; saving a notebook of the course now cleans it")
        return 0
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
