"""The explorers of chapters 03, 04 and 07, driven from Python: every control moves, and what is
drawn (titles, kept-token counts, the sample) follows. Also the front-end detection and the static views."""

import json
import sys

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

pytest.importorskip("ipywidgets")

from tinyllm_lib import explorer as ex_mod  # noqa: E402
from tinyllm_lib.explorer import AttentionExplorer, ScheduleExplorer, check_schedule, short_label  # noqa: E402
from tinyllm_lib.generate import SamplingExplorer, generate, visible_text  # noqa: E402
from tinyllm_lib.model import GPT, GPTConfig  # noqa: E402
from tinyllm_lib.optim import get_lr  # noqa: E402
from tinyllm_lib.tokenizer import BPETokenizer  # noqa: E402

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n") * 3


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer().train(TEXT, 80)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, context_length=64, d_model=32, n_layers=3, n_heads=4, d_ff=64)
    m = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5 if "emb" in name else 0.3)
    return m


@pytest.fixture(autouse=True)
def close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


# -- front-end detection ----------------------------------------------------------------------------------

@pytest.fixture
def no_frontend(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("VSCODE_") or key in ("JPY_SESSION_NAME", "TINYLLM_WIDGETS"):
            monkeypatch.delenv(key)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    return monkeypatch


def test_no_front_end_means_static(no_frontend):
    assert ex_mod.frontend() is None and not ex_mod.widgets_live()


def test_colab_and_vscode_are_live(no_frontend):
    no_frontend.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    assert ex_mod.frontend() == "colab" and ex_mod.widgets_live()
    no_frontend.delitem(sys.modules, "google.colab")
    no_frontend.setenv("VSCODE_IPC_HOOK_CLI", "x")
    assert ex_mod.frontend() == "vscode" and ex_mod.widgets_live()


def test_jupyterlab_is_live_only_with_the_widget_extension(no_frontend):
    no_frontend.setenv("JPY_SESSION_NAME", "notebooks/07_sampling.ipynb")
    no_frontend.setattr(ex_mod, "_widget_extension_installed", lambda: True)
    assert ex_mod.frontend() == "jupyter" and ex_mod.widgets_live()
    no_frontend.setattr(ex_mod, "_widget_extension_installed", lambda: False)
    assert not ex_mod.widgets_live()  # JupyterLab without the extension would print VBox(children=...)


def test_forced_by_environment(no_frontend):
    no_frontend.setenv("TINYLLM_WIDGETS", "1")
    assert ex_mod.widgets_live()
    no_frontend.setenv("JPY_SESSION_NAME", "x")
    no_frontend.setenv("TINYLLM_WIDGETS", "0")
    assert not ex_mod.widgets_live()


def test_static_view_prints_no_widget_repr(no_frontend, model, tok, capsys):
    for explorer in (ScheduleExplorer(), AttentionExplorer(model, tok, "All:\nSpeak, speak."),
                     SamplingExplorer(model, tok, prompt="All:", max_new_tokens=5)):
        explorer.show()
        out = capsys.readouterr().out
        assert "static view" in out
        assert "children=" not in out and "interactive(" not in out


def test_live_show_displays_the_widget_only(monkeypatch, model, tok):
    """In a live front end the cell shows the widget and no separate static picture above it."""
    import IPython.display

    monkeypatch.setenv("TINYLLM_WIDGETS", "1")
    displayed = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: displayed.extend(objs))
    monkeypatch.setattr(ex_mod, "redraw", lambda out, fig: None)  # the figure drawn inside the widget
    for explorer in (ScheduleExplorer(), AttentionExplorer(model, tok, "All:\nSpeak, speak.")):
        displayed.clear()
        explorer.show()
        assert displayed == [explorer.widget]


# -- chapter 04: the schedule --------------------------------------------------------------------------------

def test_schedule_every_slider(monkeypatch):
    ex = ScheduleExplorer()
    drawn = []
    monkeypatch.setattr(ex_mod, "redraw", lambda out, fig: drawn.append(fig.axes[0].get_title()))
    ex.warmup.value = 300
    assert drawn[-1] == "warmup 300, max_lr 1.0e-03, min_lr 1.0e-04, 2000 steps"
    ex.max_lr.value = 1e-2
    assert "max_lr 1.0e-02" in drawn[-1]
    ex.min_lr.value = 1e-3
    assert "min_lr 1.0e-03" in drawn[-1]
    ex.max_iters.value = 200  # below the warmup: the warmup slider (and its readout) follows
    assert ex.warmup.value == 200 and ex.warmup.max == 200
    assert drawn[-1] == "warmup 200, max_lr 1.0e-02, min_lr 1.0e-03, 200 steps"
    fig = ex.figure()
    line = fig.axes[0].lines[0].get_ydata()
    assert line[200] == pytest.approx(get_lr(200, 1e-2, 1e-3, 200, 200))
    ex.max_iters.value = 1000
    assert ex.warmup.max == 1000 and ex.warmup.value == 200


def test_schedule_min_above_max_is_refused_in_words(monkeypatch):
    ex = ScheduleExplorer()
    said = []
    monkeypatch.setattr(ex_mod, "say", lambda out, message: said.append(message))
    ex.max_lr.value = 1e-4
    ex.min_lr.value = 1e-3
    assert ex.figure() is None and "min_lr=1.0e-03 is above max_lr=1.0e-04" in said[-1]
    assert check_schedule(100, 1e-3, 1e-4, 2000) is None
    assert "between 0 and max_iters" in check_schedule(300, 1e-3, 1e-4, 200)


def test_schedule_draws_the_chapters_own_function():
    calls = []
    ex = ScheduleExplorer(lr_fn=lambda it, *args: calls.append(it) or 0.5e-3)
    line = ex.figure().axes[0].lines[0].get_ydata()
    assert calls[:3] == [0, 1, 2] and set(line) == {0.5e-3}


def test_schedule_static_view(capsys):
    import IPython.display

    figs = []
    orig = IPython.display.display
    IPython.display.display = lambda *objs, **kw: figs.extend(objs)
    try:
        ScheduleExplorer().static_view()
    finally:
        IPython.display.display = orig
    assert "four settings" in capsys.readouterr().out
    titles = [ax.get_title() for ax in figs[0].axes]
    assert titles[1] == "warmup 0, max_lr 1.0e-03, min_lr 1.0e-04, 2000 steps" and len(titles) == 4


# -- chapter 03: attention maps ------------------------------------------------------------------------------

def test_attention_every_control(monkeypatch, model, tok):
    ex = AttentionExplorer(model, tok, "All:\nSpeak, speak.")
    drawn, said = [], []
    monkeypatch.setattr(ex_mod, "redraw", lambda out, fig: drawn.append(fig))
    monkeypatch.setattr(ex_mod, "say", lambda out, message: said.append(message))
    assert ex.layer.value == 2 and ex.layer.max == 2 and ex.head.max == 3
    ex.head.value = 3
    assert drawn[-1].axes[0].get_title() == "layer 2, head 3"  # the title names the head shown, not "head 0"
    ex.layer.value = 0
    assert drawn[-1].axes[0].get_title() == "layer 0, head 3"
    n = len(tok.encode("First Citizen:"))
    ex.text.value = "First Citizen:"
    fig = drawn[-1]
    assert fig.axes[0].get_title() == "layer 0, head 3"
    assert len(fig.axes[0].get_xticklabels()) == n
    expected = model.attention_maps(torch.tensor([tok.encode("First Citizen:")]))[0][0, 3]
    assert torch.allclose(torch.tensor(fig.axes[0].images[0].get_array()), expected.float(), atol=1e-6)
    ex.text.value = ""
    assert said[-1] == "type at least two tokens"


def test_attention_long_text_is_cut(monkeypatch, model, tok):
    ex = AttentionExplorer(model, tok, TEXT, max_tokens=20)
    fig = ex.figure()
    total = len(tok.encode(TEXT))
    assert fig.axes[0].get_title() == f"layer 2, head 0 (first 20 of {total} tokens)"
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(labels) == 20 and all(len(label) <= 8 for label in labels) and "↵" in "".join(labels)
    calls = []
    real = model.attention_maps
    monkeypatch.setattr(model, "attention_maps", lambda idx: calls.append(1) or real(idx))
    ex.head.value, ex.layer.value = 1, 1  # moving a slider reuses the text's maps
    ex.figure()
    assert calls == []


def test_short_label():
    assert short_label(" the\n") == "·the↵" and short_label("abcdefghijk") == "abcdefg…"


# -- chapter 07: sampling --------------------------------------------------------------------------------------

def test_sampling_every_control(monkeypatch, model, tok):
    ex = SamplingExplorer(model, tok, prompt="All:", max_new_tokens=12)
    drawn = []
    monkeypatch.setattr(ex_mod, "redraw", lambda out, fig: drawn.append(fig.axes[0].get_title()))
    moves = [("temperature", 1.3, "T=1.3"), ("top_k", 7, "top-k=7"), ("top_p", 0.5, "top-p=0.5"),
             ("min_p", 0.2, "min-p=0.2"), ("repetition_penalty", 1.6, "penalty=1.6")]
    for name, value, needle in moves:
        getattr(ex, name).value = value
        assert needle in drawn[-1], (name, drawn[-1])
    assert drawn[-1].startswith("after 'All:': ")
    kept = int(drawn[-1].split(": ")[2].split(" token")[0])
    assert 1 <= kept <= 7  # top-k = 7 at most
    ex.prompt.value = "First Citizen:"  # the chart follows the prompt without Generate
    assert drawn[-1].startswith("after 'First Citizen:': ")
    ex.button.click()
    expected = generate(model, tok, "First Citizen:", 12, temperature=1.3, top_k=7, top_p=0.5, min_p=0.2,
                        repetition_penalty=1.6, seed=0)
    assert ex.sample == expected
    assert "First Citizen:" in ex.text.value and "<pre" in ex.text.value
    ex.prompt.value = "All:"
    assert "the prompt changed" in ex.text.value


def test_sampling_box_is_selectable_and_shows_newlines(monkeypatch, model, tok):
    ex = SamplingExplorer(model, tok, prompt="All:", max_new_tokens=6)
    assert not getattr(ex.text, "disabled", False)  # an HTML widget: selectable, never greyed
    ex.show_sample("\n\n\n")
    assert "All:</span>↵\n↵\n↵\n<br>" in ex.text.value and "whitespace character(s) only: 3 newline(s)" in ex.text.value
    assert visible_text("a b \n") == "a b ↵\n" and visible_text("x  ") == "x··"


def test_sampling_static_view_says_what_it_shows(no_frontend, model, tok, capsys):
    ex = SamplingExplorer(model, tok, prompt="All:", max_new_tokens=5)
    ex.temperature.value = 0.0  # the static view shows its grid, not the sliders' position, and says so
    ex.show(static=True, grid=[dict(temperature=0.5)])
    out = capsys.readouterr().out
    assert "for each of these 1 settings, not the sliders' current position" in out
    assert "temperature=0.5, seed=0" in out


def test_sampling_layout_fits_a_narrow_notebook(model, tok):
    ex = SamplingExplorer(model, tok)
    sliders = ex.widget.children[1]
    assert sliders.layout.flex_flow == "row wrap"
    assert all(c.layout.width == "310px" for c in sliders.children)
    assert ex.prompt.layout.width == "100%" and ex.text.layout.width == "100%"


# -- saving in JupyterLab keeps the repository clean -------------------------------------------------------

def test_pre_save_hook_cleans_course_notebooks_only(tmp_path):
    from pathlib import Path

    root = Path(ex_mod.__file__).resolve().parents[1]
    saved = {"cells": [{"cell_type": "code", "source": "x", "execution_count": 1,
                        "metadata": {"execution": {"iopub.status.busy": "2026"}, "scrolled": True},
                        "outputs": [{"output_type": "display_data", "metadata": {},
                                     "data": {"text/plain": "Explorer", "application/vnd.jupyter.widget-view+json":
                                              {"model_id": "abc", "version_major": 2, "version_minor": 0}}}]}],
             "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                         "name": "python3"},
                          "language_info": {"name": "python", "version": "3.11.7"},
                          "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}}},
             "nbformat": 4, "nbformat_minor": 5}

    class Manager:
        root_dir = str(root)

    model = {"type": "notebook", "content": json.loads(json.dumps(saved))}
    ex_mod.jupyter_pre_save_hook(model, path="notebooks/07_sampling.ipynb", contents_manager=Manager())
    nb = model["content"]
    assert "widgets" not in nb["metadata"] and nb["metadata"]["kernelspec"]["display_name"] == "Python 3"
    assert nb["cells"][0]["metadata"] == {}
    assert nb["cells"][0]["outputs"] == []  # a widget view and its repr text `Explorer`: dropped
    outside = {"type": "notebook", "content": json.loads(json.dumps(saved))}

    class Elsewhere:
        root_dir = str(tmp_path)

    ex_mod.jupyter_pre_save_hook(outside, path="mine.ipynb", contents_manager=Elsewhere())
    assert outside["content"] == saved  # a learner's own notebook elsewhere is saved as it is
