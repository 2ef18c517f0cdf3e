# Hand-written module: no notebook exports it, and tools/export.py never overwrites it.
"""The explorers' toolkit: live sliders where a widget front end can draw them, a static view that
teaches everywhere else (GitHub, nbviewer, nbconvert, the tests), and never widget repr text.

    >>> frontend() is None or isinstance(frontend(), str)   # None under pytest: no front end
    True

Every explorer of the course (chapter 03's attention maps, chapter 04's learning-rate schedule,
chapter 07's `SamplingExplorer`) follows one pattern, the `Explorer` class below:

- `figure(...)` draws one setting and returns a matplotlib figure (testable without a browser);
- `draw()` redraws the live output after a control moved (the controls `observe` it);
- `static_view()` prints what it shows and draws a small grid of settings;
- `show(static=None)` picks one of the two: the live widget where `widgets_live()`, else the static view.
  A cell shows one or the other, never both, so a live notebook has exactly one picture that reacts.

This module also holds `ScheduleExplorer` (chapter 04's learning-rate schedule) and
`AttentionExplorer` (chapter 03's attention maps), and `jupyter_pre_save_hook`, which cleans a
notebook of the course as JupyterLab saves it (see CONTRIBUTING.md, "Saving notebooks").
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# -- where can widgets draw? ---------------------------------------------------------------------------


def _widget_extension_installed() -> bool:
    """JupyterLab / Notebook 7 draw ipywidgets only with the `@jupyter-widgets/jupyterlab-manager`
    extension (the `jupyterlab_widgets` package); without it a widget prints as `VBox(children=...)`."""
    if importlib.util.find_spec("jupyterlab_widgets") is not None:
        return True
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:
        return False
    return any(Path(p).is_dir() for p in jupyter_path("labextensions", "@jupyter-widgets", "jupyterlab-manager"))


def frontend() -> str | None:
    """Which front end runs this kernel: "colab", "vscode", "jupyter" (JupyterLab or Notebook 7,
    whose server names the session in JPY_SESSION_NAME), or None (nbconvert, nbval, a plain Python)."""
    if "google.colab" in sys.modules:
        return "colab"
    if any(k.startswith("VSCODE_") for k in os.environ):
        return "vscode"
    if "JPY_SESSION_NAME" in os.environ:
        return "jupyter"
    return None


def widgets_live() -> bool:
    """Can live widgets draw here? ipywidgets is installed, and the front end renders it: Colab and
    VS Code always do; JupyterLab and Notebook 7 only with the widget extension installed.
    TINYLLM_WIDGETS=0 (or 1) forces the static (or live) view."""
    forced = os.environ.get("TINYLLM_WIDGETS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if importlib.util.find_spec("ipywidgets") is None:
        return False
    where = frontend()
    if where in ("colab", "vscode"):
        return True
    return where == "jupyter" and _widget_extension_installed()


def redraw(output, fig) -> None:
    """Replace what a widgets.Output shows by `fig` (and free the figure)."""
    import matplotlib.pyplot as plt
    from IPython.display import clear_output, display

    with output:
        clear_output(wait=True)
        if fig is not None:
            display(fig)
    if fig is not None:
        plt.close(fig)


def say(output, message: str) -> None:
    """Replace what a widgets.Output shows by a line of text."""
    from IPython.display import clear_output

    with output:
        clear_output(wait=True)
        print(message)


class Explorer:
    """Base of the course's explorers. A subclass builds `self.controls` (widgets) and `self.out`
    (a widgets.Output) in `__init__`, calls `self.watch(*controls)`, and writes `figure()` and `static_view()`."""

    static_note = ""  # one line: what the static view shows

    def watch(self, *controls) -> None:
        for control in controls:
            control.observe(lambda _: self.draw(), names="value")

    def figure(self):  # pragma: no cover - subclasses
        """The picture for the current controls, or None with `self.message` saying why there is none."""
        raise NotImplementedError

    def draw(self) -> None:
        fig = self.figure()
        if fig is None:
            say(self.out, self.message)
        else:
            redraw(self.out, fig)

    def static_view(self) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    def show(self, static: bool | None = None) -> None:
        """The live widget where a front end can draw it, else (or with static=True) the static view."""
        from IPython.display import display

        if static is None:
            static = not widgets_live()
            if static:
                print("(No live widget front end here, e.g. on GitHub or under nbconvert: this is the static view. "
                      "Open the notebook in JupyterLab, Notebook 7, VS Code or Colab to move the controls.)")
        if static:
            self.static_view()
            return
        self.draw()
        display(self.widget)


# -- chapter 04: the learning-rate schedule ----------------------------------------------------------------


def check_schedule(warmup_iters: int, max_lr: float, min_lr: float, max_iters: int) -> str | None:
    """None if these settings make a schedule, else a sentence saying what is wrong."""
    if max_iters < 1:
        return f"max_iters={max_iters}: the schedule needs at least one step"
    if not 0 <= warmup_iters <= max_iters:
        return f"warmup_iters={warmup_iters} must be between 0 and max_iters={max_iters}"
    if max_lr <= 0 or min_lr < 0:
        return f"max_lr={max_lr:.1e} must be > 0 and min_lr={min_lr:.1e} >= 0"
    if min_lr > max_lr:
        return (f"min_lr={min_lr:.1e} is above max_lr={max_lr:.1e}: the cosine would climb after warmup instead "
                f"of decaying. Lower min_lr (or raise max_lr).")
    return None


def schedule_figure(warmup_iters: int, max_lr: float, min_lr: float, max_iters: int, ax=None, lr_fn=None):
    """Chapter 04's `get_lr` (or `lr_fn`, the same signature) over every step; returns the axes
    (title: the settings drawn)."""
    import matplotlib.pyplot as plt
    import numpy as np

    if lr_fn is None:
        from tinyllm_lib.optim import get_lr as lr_fn

    ax = ax or plt.subplots(figsize=(7, 3))[1]
    steps = np.arange(max_iters + 1)
    ax.plot(steps, [lr_fn(int(s), max_lr, min_lr, warmup_iters, max_iters) for s in steps])
    ax.axvline(warmup_iters, color="k", ls=":", lw=0.8, label=f"end of warmup (step {warmup_iters})")
    ax.set(xlabel="step", ylabel="learning rate", ylim=(0, 1.05 * max_lr),
           title=f"warmup {warmup_iters}, max_lr {max_lr:.1e}, min_lr {min_lr:.1e}, {max_iters} steps")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


class ScheduleExplorer(Explorer):
    """Sliders for chapter 04's warmup + cosine schedule. The warmup slider never goes past max_iters
    (its readout is the warmup drawn), and min_lr > max_lr prints why it is refused instead of a plot.

    `lr_fn(it, max_lr, min_lr, warmup_iters, max_iters)` is the schedule drawn (default: the library's
    `get_lr`; chapter 04 passes the one it just wrote).
    `ex = ScheduleExplorer(); ex.max_iters.value = 500; ex.warmup.value` -> at most 500.
    """

    STATIC_GRID = (dict(warmup_iters=100, max_lr=1e-3, min_lr=1e-4, max_iters=2000),
                   dict(warmup_iters=0, max_lr=1e-3, min_lr=1e-4, max_iters=2000),
                   dict(warmup_iters=500, max_lr=1e-3, min_lr=1e-4, max_iters=2000),
                   dict(warmup_iters=100, max_lr=1e-3, min_lr=1e-3, max_iters=2000))
    static_note = ("four settings: the default (warmup 100), no warmup, a long warmup, and min_lr = max_lr "
                   "(no decay: a constant rate after warmup)")

    def __init__(self, warmup_iters: int = 100, max_lr: float = 1e-3, min_lr: float = 1e-4, max_iters: int = 2000,
                 lr_fn=None):
        import ipywidgets as w

        self.lr_fn = lr_fn
        self.max_iters = w.IntSlider(value=max_iters, min=100, max=10_000, step=100, description="max_iters")
        self.warmup = w.IntSlider(value=min(warmup_iters, max_iters), min=0, max=max_iters, step=10,
                                  description="warmup")
        self.max_lr = w.FloatLogSlider(value=max_lr, base=10, min=-5, max=-1, description="max_lr",
                                       readout_format=".1e")
        self.min_lr = w.FloatLogSlider(value=min_lr, base=10, min=-6, max=-2, description="min_lr",
                                       readout_format=".1e")
        self.out = w.Output()
        # Setting the warmup slider's max clamps its value (and its readout) to max_iters first.
        self.max_iters.observe(lambda change: setattr(self.warmup, "max", change["new"]), names="value")
        self.watch(self.max_iters, self.warmup, self.max_lr, self.min_lr)
        self.message: str | None = None
        self.widget = w.VBox([w.HBox([w.VBox([self.warmup, self.max_iters]), w.VBox([self.max_lr, self.min_lr])],
                                     layout=w.Layout(flex_flow="row wrap")), self.out])

    def settings(self) -> dict:
        return dict(warmup_iters=self.warmup.value, max_lr=self.max_lr.value, min_lr=self.min_lr.value,
                    max_iters=self.max_iters.value)

    def figure(self, settings: dict | None = None):
        """The schedule for `settings` (default: the sliders'), or None (and `self.message`) if refused."""
        import matplotlib.pyplot as plt

        settings = settings or self.settings()
        self.message = check_schedule(**settings)
        if self.message:
            return None
        fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
        schedule_figure(ax=ax, lr_fn=self.lr_fn, **settings)
        return fig

    def static_view(self, grid: Sequence[dict] = STATIC_GRID) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        print(f"Static view of the schedule explorer: {self.static_note}.")
        fig, axes = plt.subplots(2, 2, figsize=(10, 5.5), layout="constrained", squeeze=False)
        for ax, settings in zip(axes.flat, grid):
            schedule_figure(ax=ax, lr_fn=self.lr_fn, **settings)
        display(fig)
        plt.close(fig)


# -- chapter 03: attention maps ----------------------------------------------------------------------------


def short_label(piece: str, width: int = 8) -> str:
    """A token's piece as a readable axis label: whitespace made visible, long pieces cut."""
    label = piece.replace("\n", "↵").replace("\t", "⇥").replace(" ", "·")
    return label if len(label) <= width else label[: width - 1] + "…"


class AttentionExplorer(Explorer):
    """A text box and two sliders (layer, head): one attention map of `model`, titled with the
    layer and head it shows. Texts are cut to `max_tokens` tokens so that a redraw stays fast and the
    labels readable (the title says so). The maps of one text are computed once; moving a slider
    only redraws.

    `ex = AttentionExplorer(model, tok, "To be"); ex.head.value = 2; ex.figure().axes[0].get_title()`
    -> 'layer 1, head 2'.
    """

    static_note = "every head of the first and of the last layer, for the text in the box"

    def __init__(self, model, tokenizer, text: str, max_tokens: int = 32):
        import ipywidgets as w

        self.model, self.tokenizer, self.max_tokens = model, tokenizer, max_tokens
        n_layers, n_heads = model.config.n_layers, model.config.n_heads
        self.text = w.Textarea(value=text, description="text", continuous_update=False,
                               layout=w.Layout(width="100%", max_width="760px", height="3.2em"))
        self.layer = w.IntSlider(value=n_layers - 1, min=0, max=n_layers - 1, description="layer")
        self.head = w.IntSlider(value=0, min=0, max=n_heads - 1, description="head")
        self.out = w.Output()
        self.watch(self.text, self.layer, self.head)
        self._cache: tuple[str, list, list[str], int] | None = None
        self.message: str | None = None
        self.widget = w.VBox([self.text, w.HBox([self.layer, self.head], layout=w.Layout(flex_flow="row wrap")),
                              self.out])

    def maps(self, text: str):
        """(maps, labels, n_tokens): the model's attention maps for the first `max_tokens` tokens of
        `text` (n_layers × (n_heads, T, T)), their labels, and how many tokens the whole text has."""
        import torch

        if self._cache is None or self._cache[0] != text:
            ids = self.tokenizer.encode(text)
            kept = ids[: min(self.max_tokens, self.model.config.context_length)]
            if hasattr(self.tokenizer, "pieces"):  # the tokenizer's own pieces (chapter 01's BPETokenizer)
                pieces = self.tokenizer.pieces(text)[: len(kept)]
            else:
                pieces = [self.tokenizer.decode([i]) for i in kept]
            labels = [short_label(piece) for piece in pieces]
            maps = []
            if len(kept) >= 2:
                was_training = self.model.training
                self.model.eval()
                with torch.no_grad():
                    maps = [m[0] for m in self.model.attention_maps(torch.tensor([kept]))]  # (n_heads, T, T) each
                self.model.train(was_training)
            self._cache = (text, maps, labels, len(ids))
        return self._cache[1:]

    def _suffix(self, n_shown: int, n_total: int) -> str:
        return f" (first {n_shown} of {n_total} tokens)" if n_total > n_shown else ""

    def figure(self, layer: int | None = None, head: int | None = None):
        """One map (default: the sliders' layer and head), or None (and `self.message`) for a text
        of fewer than two tokens."""
        from tinyllm_lib.attention import plot_attention

        layer = self.layer.value if layer is None else layer
        head = self.head.value if head is None else head
        maps, labels, n_total = self.maps(self.text.value)
        if not maps:
            self.message = "type at least two tokens"
            return None
        self.message = None
        fig = plot_attention(maps[layer][head], labels)
        fig.axes[0].set_title(f"layer {layer}, head {head}" + self._suffix(len(labels), n_total), fontsize=10)
        return fig

    def static_view(self) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        from tinyllm_lib.attention import plot_attention

        print(f"Static view of the attention explorer: {self.static_note} ({self.text.value[:60]!r}).")
        maps, labels, n_total = self.maps(self.text.value)
        if not maps:
            print("type at least two tokens")
            return
        for layer in sorted({0, len(maps) - 1}):
            fig = plot_attention(maps[layer], labels, title=f"layer {layer}: heads 0 to {len(maps[layer]) - 1}"
                                 + self._suffix(len(labels), n_total))
            display(fig)
            plt.close(fig)


# -- saving notebooks ------------------------------------------------------------------------------------


def jupyter_pre_save_hook(model: dict, path: str = "", **kwargs) -> None:
    """A Jupyter server `ContentsManager.pre_save_hook`: clean the notebooks of this repository
    (notebooks/, solutions/, exercises/) as `tools/nbclean.py` does, before they are written, so that
    saving in JupyterLab (widget views, kernel metadata, timings) never breaks the hygiene test.
    Other notebooks are saved untouched (TINYLLM_NBCLEAN_ROOTS, a list of folders separated by
    os.pathsep, adds folders whose notebooks are cleaned too: the browser test uses it).
    Install it once per environment with `python tools/nbclean.py --install-hook`."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    root = Path(__file__).resolve().parents[1]
    tools = root / "tools" / "nbclean.py"
    if not tools.is_file():
        return
    spec = importlib.util.spec_from_file_location("_tinyllm_nbclean", tools)
    nbclean = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nbclean)
    folders = [root / f for f in nbclean.FOLDERS]
    folders += [Path(p) for p in os.environ.get("TINYLLM_NBCLEAN_ROOTS", "").split(os.pathsep) if p]
    manager = kwargs.get("contents_manager")
    full = (Path(getattr(manager, "root_dir", "") or os.getcwd()) / path).resolve()
    if any(full.is_relative_to(folder.resolve()) for folder in folders):
        nbclean.clean(model["content"])
