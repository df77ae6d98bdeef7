"""The learner's experience in a real browser: JupyterLab + headless Chromium.

- chapter 08: run the notebook (IN_TEST=1, so it picks its short training) and check from the page that the live
  loss widget (CSS class `i3-live-loss`) rendered and updated while training ran, then gave its place to one static
  figure; then drive the explorers on the trained model (attention head, sample one token, generate, state channel);
- chapter 03: move a slider of the interactive recurrence panel and pick a block in the state explorer;
- chapter 01: type a text into the tokenizer playground; chapter 05: pick a head and type a text in the attention
  explorer;
- every driven control must change the bytes of its panel's figure (and the generated text, for the buttons);
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
WIDGET_CELL = "train('demo'"         # a piece of the source of chapter 08's training cell
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

def check_live_widget(lab, page, t0: float, name: str, replaced: bool = False):
    """While the notebook runs, the live widget must render and then show at least two different states; with
    `replaced`, once training ends the widget must have given its place to one static figure (shown once)."""
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
    states = distinct_states(lab.watch_log(page, LIVE_LOSS))
    if replaced:
        second = ' '.join(s['text'] for s in states[-1]) if states else ''
        kinds = lab.output_kinds(page, WIDGET_CELL)
        lab.screenshot(page, f'{name}-2-done')
        print(f'[{name}] outputs of the training cell once it ended: {kinds}')
        assert page.locator(LIVE_LOSS).count() == 0, f'{LIVE_LOSS} is still on the page after training ended'
        assert sum('image/png' in k for k in kinds) == 1, \
            f'the training cell should end with exactly one figure (the live plot replaced), got outputs {kinds}'
    else:
        second = widget.inner_text().strip()
        lab.screenshot(page, f'{name}-2-done', widget)
    texts = {tuple(s['text'] for s in st) for st in states}
    pics = {tuple(s['pics'] for s in st) for st in states}
    print(f'[{name}] second read after {time.time()-t0:.1f} s: {second!r}; {len(states)} distinct states '
          f'({len(texts)} texts, {len(pics)} plot images)')
    assert len(states) >= 2 and (first != second or len(texts) >= 2 or len(pics) >= 2), \
        f'{LIVE_LOSS} never changed while the notebook ran: {first!r}'
    assert len(texts) >= 2, f'the text readout of {LIVE_LOSS} did not change: {sorted(texts)[:3]}'
    return first, second, len(states)

def check_control_changes_figure(lab, page, css: str, act, name: str, text=None):
    """Once the notebook has run, act on a control of the panel with CSS class `css` (`act(page, panel)` returns a
    description); the panel's figure must change, and so must the inner text of `text` (a selector) when given."""
    panel = page.locator(css).first
    lab.wait_for(page, lambda: page.locator(css).count() > 0 and len(lab.figure_signature(panel)) > 0, 60,
                 f'a figure in {css}')
    read = lambda: (lab.figure_signature(panel), panel.locator(text).first.inner_text() if text else '')
    before, shot_before = read(), panel.screenshot()
    lab.screenshot(page, f'{name}-1-before', panel)
    what = act(page, panel)
    def changed():
        _raise_on_error(lab, page)
        now = read()
        return len(now[0]) > 0 and now[0] != before[0] and (not text or now[1] != before[1])
    lab.wait_for(page, changed, 120, f'{css} to change after: {what}')
    last = [None]
    def settled():  # each key press may redraw: wait for the kernel to go idle and the figure to stop changing
        now = read()
        same = now == last[0]
        last[0] = now
        return same and lab.finished(page)
    lab.wait_for(page, settled, 120, f'{css} to settle', poll=1.0)
    after, shot_after = read(), panel.screenshot()
    lab.screenshot(page, f'{name}-2-after', panel)
    print(f'[{name}] {what}; figure {before[0][0][:16]}.. -> {after[0][0][:16]}..'
          + (f'; text {before[1][-40:]!r} -> {after[1][-40:]!r}' if text else ''))
    assert after != before and shot_after != shot_before
    return before, after

def slide(page, panel):
    "Move the panel's first slider three steps with the keyboard."
    old, new = move_slider(page, panel.locator('.widget-slider').first)
    assert new != old, f'the slider did not move (value {old})'
    return f'slider {old} -> {new}'

def type_text(value: str):
    "Type `value` into the panel's first text box and press Enter."
    def act(page, panel):
        box = panel.locator('.widget-text input').first
        box.fill(value)
        box.press('Enter')
        return f'typed {value!r}'
    return act

def choose(n: int, label: str):
    "Pick the option `label` in the panel's n-th dropdown."
    def act(page, panel):
        panel.locator('.widget-dropdown select').nth(n).select_option(label=label)
        return f'dropdown {n} -> {label!r}'
    return act

def click(label: str):
    "Click the panel's button `label`."
    def act(page, panel):
        panel.locator('button', has_text=label).first.click()
        return f'clicked {label!r}'
    return act

def check_notebook_done(lab, page, t0: float, name: str):
    lab.wait_until_done(page, TIMEOUT)
    print(f'\n[{name}] notebook ran in {time.time()-t0:.1f} s')
    assert not lab.figures_as_text(page), \
        f'cells {lab.figures_as_text(page)} show a figure as text (<Figure size ...>) instead of an image in Lab'

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
        lab.wait_until_done(page, TIMEOUT)
        check_control_changes_figure(lab, page, PANEL, slide, 'scratch-slider')
        assert lab.figures_as_text(page) == [2]  # cell 2 of the prepared copy (the #| slow cell is left out)

# ------------------------------------------------------------------------------------------------ chapters

def _chapter(lab, stem):
    src = REPO/'nbs'/f'{stem}.ipynb'
    if not src.exists():
        pytest.skip(f'{src.relative_to(REPO)} does not exist yet')
    path, dropped = prepare_notebook(src, lab.root/'nbs')
    print(f'\n[{stem}] {dropped} cell(s) flagged for nbdev_test to skip are left out')
    return path

def test_ch08_live_loss_then_explorers_on_the_trained_model(lab):
    with running(lab, _chapter(lab, '08_train_i3'), 'ch08') as (page, t0):
        check_live_widget(lab, page, t0, 'ch08-live-loss', replaced=True)
        check_notebook_done(lab, page, t0, 'ch08')
        check_control_changes_figure(lab, page, '.i3-attention-explorer', choose(1, 'head 1'), 'ch08-attention')
        _, after = check_control_changes_figure(lab, page, '.i3-generation-playground', click('sample one token'),
                                                'ch08-generate', text='.i3-generation-text')
        check_control_changes_figure(lab, page, '.i3-generation-playground', click('generate'), 'ch08-generate-20',
                                     text='.i3-generation-text')
        check_control_changes_figure(lab, page, '.i3-state-explorer', slide, 'ch08-states')

def test_ch03_recurrence_panel_and_state_explorer(lab):
    with running(lab, _chapter(lab, '03_recurrence'), 'ch03') as (page, t0):
        check_notebook_done(lab, page, t0, 'ch03')
        check_control_changes_figure(lab, page, PANEL, slide, 'ch03-panel')
        check_control_changes_figure(lab, page, '.i3-state-explorer', choose(0, 'block 1'), 'ch03-states')

def test_ch01_tokenizer_playground(lab):
    with running(lab, _chapter(lab, '01_tokenizer'), 'ch01') as (page, t0):
        check_notebook_done(lab, page, t0, 'ch01')
        _, after = check_control_changes_figure(lab, page, '.i3-tokenizer-explorer', type_text('Zoë and the wizard!'),
                                                'ch01-tokenizer')
        assert '<UNK>' in page.locator('.i3-tokenizer-explorer').first.inner_text()

def test_ch05_attention_explorer(lab):
    with running(lab, _chapter(lab, '05_model'), 'ch05') as (page, t0):
        check_notebook_done(lab, page, t0, 'ch05')
        check_control_changes_figure(lab, page, '.i3-attention-explorer', choose(1, 'head 2'), 'ch05-attention')
        check_control_changes_figure(lab, page, '.i3-attention-explorer', type_text('the dog ran to the park.'),
                                     'ch05-attention-text')
