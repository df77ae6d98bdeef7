"""The learner's experience in a real browser: JupyterLab + headless Chromium.

- chapter 08: run the notebook (IN_TEST=1, so it picks its short training) and check from the page that the live
  loss widget (CSS class `i3-live-loss`) rendered and updated while training ran;
- chapter 03: run the notebook, move a slider of the interactive recurrence panel, check that the figure changed;
- a self-test of the harness on a scratch notebook with the same two kinds of widget, so a failure in a chapter
  test can be told from a broken harness.

Opt-in: `I3_EDU_BROWSER=1 pytest -m browser tests/browser -s` (see tests/browser/README.md)."""
import os, time
from contextlib import contextmanager
from pathlib import Path
import nbformat
import pytest

from labdriver import REPO, distinct_states, move_slider, prepare_notebook

pytestmark = pytest.mark.browser

LIVE_LOSS = '.i3-live-loss'           # chapter 08's live loss widget (a text readout + a plot)
PANEL = '.i3-recurrence-panel'        # chapter 03's interactive panel (sliders + a figure)
TIMEOUT = float(os.environ.get('I3_EDU_BROWSER_TIMEOUT', 900))  # per notebook run, seconds

def _raise_on_error(lab, page):
    errs = lab.cells_state(page)['errors']
    if errs:
        e = errs[0]
        raise AssertionError(f"cell {e['cell']} raised {e['ename']}: {e['evalue']}\n{e['traceback'][-3000:]}")

@contextmanager
def running(lab, nb: Path, name: str):
    "Open a prepared notebook in a fresh workspace, record the live widget, run all cells (no waiting); clean up."
    page = None
    try:
        page = lab.open(nb, name)
        lab.watch(page, [LIVE_LOSS])
        lab.run_all(page)
        yield page, time.time()
    finally:  # also on failure, so a timed-out notebook does not keep its kernel busy during the next test
        if page is not None:
            page.close()
        lab.shutdown_kernels()

def check_live_widget(lab, page, t0: float, name: str):
    "While the notebook runs, the live widget must render and then show at least two different states."
    widget = page.locator(LIVE_LOSS).first
    def rendered():
        _raise_on_error(lab, page)
        if page.locator(LIVE_LOSS).count() > 0 and widget.inner_text().strip() != '':
            return True
        if lab.finished(page):
            lab.screenshot(page, f'{name}-no-widget')
            raise AssertionError(f'the notebook ran to the end without showing a {LIVE_LOSS} element with text')
        return False
    lab.wait_for(page, rendered, TIMEOUT, f'{LIVE_LOSS} widget rendered with text')
    first = widget.inner_text().strip()
    lab.screenshot(page, f'{name}-1-running', widget)
    print(f'\n[{name}] first read after {time.time()-t0:.1f} s: {first!r}')
    lab.wait_until_done(page, TIMEOUT)
    second = widget.inner_text().strip()
    lab.screenshot(page, f'{name}-2-done', widget)
    states = distinct_states(lab.watch_log(page, LIVE_LOSS))
    texts = {tuple(s['text'] for s in st) for st in states}
    pics = {tuple(s['pics'] for s in st) for st in states}
    print(f'[{name}] second read after {time.time()-t0:.1f} s: {second!r}; {len(states)} distinct states '
          f'({len(texts)} texts, {len(pics)} plot images)')
    assert len(states) >= 2 and (first != second or len(texts) >= 2 or len(pics) >= 2), \
        f'{LIVE_LOSS} never changed while the notebook ran: {first!r}'
    assert len(texts) >= 2, f'the text readout of {LIVE_LOSS} did not change: {sorted(texts)[:3]}'
    return first, second, len(states)

def check_slider_changes_figure(lab, page, t0: float, name: str):
    "Once the notebook has run, move a slider of the panel; its figure's bytes must change."
    lab.wait_until_done(page, TIMEOUT)
    print(f'\n[{name}] notebook ran in {time.time()-t0:.1f} s')
    if page.locator(PANEL).count():
        panel = page.locator(PANEL).first
    else:  # no hook: the output area of the first cell that shows a slider
        assert page.locator('.widget-slider').count(), f'no {PANEL} element and no ipywidgets slider on the page'
        panel = page.locator('.jp-Cell-outputWrapper', has=page.locator('.widget-slider')).first
        print(f'[{name}] no {PANEL} element: using the output of the first cell with a slider')
    slider = panel.locator('.widget-slider').first
    lab.wait_for(page, lambda: len(lab.figure_signature(panel)) > 0, 60, 'a figure in the panel')
    before, shot_before = lab.figure_signature(panel), panel.screenshot()
    lab.screenshot(page, f'{name}-1-before', panel)
    old, new = move_slider(page, slider)
    assert new != old, f'the slider did not move (value {old})'
    def changed():
        _raise_on_error(lab, page)
        sig = lab.figure_signature(panel)
        return len(sig) > 0 and sig != before
    lab.wait_for(page, changed, 120, 'the figure to change after moving the slider')
    last = [None]
    def settled():  # each key press may redraw: wait for the kernel to go idle and the figure to stop changing
        sig = lab.figure_signature(panel)
        same = sig == last[0]
        last[0] = sig
        return same and lab.finished(page)
    lab.wait_for(page, settled, 120, 'the figure to settle', poll=1.0)
    after, shot_after = lab.figure_signature(panel), panel.screenshot()
    lab.screenshot(page, f'{name}-2-after', panel)
    print(f'[{name}] slider {old} -> {new}; figure {before[0][:16]}.. -> {after[0][:16]}..')
    assert after != before and shot_after != shot_before

# ------------------------------------------------------------------------------------------------ self-test

SCRATCH = [
    "import time, numpy as np, matplotlib.pyplot as plt, ipywidgets as W\n%matplotlib inline",
    # a slider panel like chapter 03's
    "out = W.Output()\n"
    "w = W.FloatSlider(value=0.5, min=0.0, max=0.95, step=0.05, description='decay w')\n"
    "def draw(v):\n"
    "    with out:\n"
    "        out.clear_output(wait=True)\n"
    "        fig, ax = plt.subplots(figsize=(4, 2.5)); ax.stem(v ** np.arange(20)); ax.set_title(f'impulse response, w={v:.2f}')\n"
    "        plt.show()\n"
    "w.observe(lambda ch: draw(ch['new']), 'value'); draw(w.value)\n"
    "panel = W.VBox([w, out]); panel.add_class('i3-recurrence-panel'); panel",
    "#| slow\nraise RuntimeError('a #| slow cell must not run in the browser test')",
    # what a figure looks like when no image formatter is active (the `figures_as_text` check must see it)
    "display({'text/plain': '<Figure size 640x480 with 1 Axes>'}, raw=True)",
    # a live loss widget like chapter 08's: a text readout and a plot that grow as 'training' proceeds
    "readout, plot = W.HTML(), W.Output()\n"
    "box = W.VBox([readout, plot]); box.add_class('i3-live-loss'); display(box)\n"
    "losses = []\n"
    "for step in range(1, 31):\n"
    "    losses.append(5 * np.exp(-step / 10) + 1); time.sleep(0.05)\n"
    "    readout.value = f'step {step}/30 &middot; train loss {losses[-1]:.3f}'\n"
    "    if step % 10 == 0:\n"
    "        with plot:\n"
    "            plot.clear_output(wait=True); fig, ax = plt.subplots(figsize=(4, 2.5)); ax.plot(losses); plt.show()",
]

def test_harness_on_scratch_notebook(lab):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in SCRATCH])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    src = lab.work/'scratch-src'/'scratch.ipynb'
    src.parent.mkdir(exist_ok=True)
    nbformat.write(nb, src)
    path, dropped = prepare_notebook(src, lab.root/'scratch')
    assert dropped == 1
    with running(lab, path, 'scratch') as (page, t0):
        first, second, n = check_live_widget(lab, page, t0, 'scratch-live-loss')
        assert first != second and 'step 30/30' in second
        check_slider_changes_figure(lab, page, t0, 'scratch-slider')
        assert lab.figures_as_text(page) == [2]  # cell 2 of the prepared copy (the #| slow cell is left out)

# ------------------------------------------------------------------------------------------------ chapters

def _chapter(lab, stem):
    src = REPO/'nbs'/f'{stem}.ipynb'
    if not src.exists():
        pytest.skip(f'{src.relative_to(REPO)} does not exist yet')
    path, dropped = prepare_notebook(src, lab.root/'nbs')
    print(f'\n[{stem}] {dropped} cell(s) flagged for nbdev_test to skip are left out')
    return path

def test_ch08_live_loss_widget_updates(lab):
    with running(lab, _chapter(lab, '08_train_i3'), 'ch08') as (page, t0):
        check_live_widget(lab, page, t0, 'ch08-live-loss')
        assert not lab.figures_as_text(page), \
            f'cells {lab.figures_as_text(page)} show a figure as text (<Figure size ...>) instead of an image in Lab'

def test_ch03_slider_changes_figure(lab):
    with running(lab, _chapter(lab, '03_recurrence'), 'ch03') as (page, t0):
        check_slider_changes_figure(lab, page, t0, 'ch03-panel')
        assert not lab.figures_as_text(page), \
            f'cells {lab.figures_as_text(page)} show a figure as text (<Figure size ...>) instead of an image in Lab'

