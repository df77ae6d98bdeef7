"""Drive JupyterLab in headless Debian Chromium (Playwright's Python package), as a learner would.

Used by the `browser` tests in this folder. Everything here starts processes in fresh temporary folders and
stops them (by PID) in `close()`: the JupyterLab server, its kernels, the Playwright driver and Chromium.
Nothing is read from or written to the user's own Jupyter settings, and notebooks are opened from copies, so
the repository's notebooks are never modified by Lab (autosave is off as well)."""
import configparser, json, os, re, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import nbformat, psutil

CHROMIUM = '/usr/bin/chromium'
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync']
REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------- setup helpers

def _run(cmd, timeout):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return r.returncode, (r.stdout + r.stderr)[-2000:]

def ensure_browser_tools(log=print) -> str | None:
    "Install Debian chromium (+driver) and the `playwright` Python package if missing; None if ready, else why not."
    if not Path(CHROMIUM).exists():
        if shutil.which('apt-get') is None:
            return 'chromium is not installed and there is no apt-get to install it'
        if os.geteuid() != 0:
            return 'chromium is not installed and installing it with apt-get needs root'
        t = time.time()
        env_cmd = ['env', 'DEBIAN_FRONTEND=noninteractive']
        rc, out = _run(env_cmd + ['apt-get', 'update', '-qq'], 600)
        if rc == 0:
            rc, out = _run(env_cmd + ['apt-get', 'install', '-y', '-qq', 'chromium', 'chromium-driver'], 900)
        if rc != 0 or not Path(CHROMIUM).exists():
            return f'apt-get install chromium failed: {out}'
        log(f'installed chromium with apt-get in {time.time()-t:.0f} s')
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        t = time.time()
        rc, out = _run([sys.executable, '-m', 'pip', 'install', '-q', 'playwright'], 600)  # never `playwright install`
        if rc != 0:
            return f'pip install playwright failed: {out}'
        import importlib
        importlib.invalidate_caches()
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError as e:
            return f'playwright does not import after pip install: {e}'
        log(f'installed playwright with pip in {time.time()-t:.0f} s')
    return None

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def _descendants(pid=None) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid or os.getpid()).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()

def stop_pids(pids, timeout=10):
    "Terminate these processes (ours, by PID), then kill what is left."
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)

def skip_flags() -> set[str]:
    "Cell flags that `nbdev_test` skips: `tst_flags` of settings.ini (e.g. slow, gpu) plus notest."
    cfg = configparser.ConfigParser()
    cfg.read(REPO/'settings.ini')
    return set(cfg['DEFAULT'].get('tst_flags', 'notest').split()) | {'notest'}

_DIRECTIVE = re.compile(r'^\s*#\|\s*(.+?)\s*$')

def _skipped(src: str, flags: set[str]) -> bool:
    for line in src.splitlines():
        m = _DIRECTIVE.match(line)
        if not m:
            if line.strip():
                break  # directives come first in a cell
            continue
        d = m.group(1).replace(' ', '')
        if d in flags or d in ('eval:false', 'eval:False'):
            return True
    return False

def prepare_notebook(src: Path, dest_dir: Path) -> tuple[Path, int]:
    "Copy a notebook for Lab: no stored outputs, and without the cells `nbdev_test` would skip. Returns (path, n dropped)."
    nb = nbformat.read(src, as_version=4)
    flags, kept, dropped = skip_flags(), [], 0
    for c in nb.cells:
        if c.cell_type == 'code':
            if _skipped(c.source, flags):
                dropped += 1
                continue
            if not c.source.strip():
                continue  # Lab does not execute an empty cell
            c.outputs, c.execution_count = [], None
        kept.append(c)
    nb.cells = kept
    nb.metadata.pop('widgets', None)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dst = dest_dir/src.name
    nbformat.write(nb, dst)
    return dst, dropped

# ------------------------------------------------------------------------------------------ the lab session

_JS_KERNEL = """() => { const a = window.jupyterapp; const w = a && a.shell.currentWidget;
  if (!w || !w.sessionContext) return 'no-notebook'; if (!w.context.isReady) return 'loading';
  const k = w.sessionContext.session && w.sessionContext.session.kernel; return k ? k.status : 'no-kernel'; }"""

_JS_CELLS = """() => { const w = window.jupyterapp.shell.currentWidget; const cells = w.content.model.cells;
  let n = 0, done = 0, errors = [];
  for (let i = 0; i < cells.length; i++) { const c = cells.get(i); if (c.type !== 'code' || !String(c.toJSON().source).trim()) continue; n++;
    if (c.executionCount !== null && c.executionCount !== undefined) done++;
    for (const o of c.outputs.toJSON()) if (o.output_type === 'error')
      errors.push({cell: i, ename: o.ename, evalue: o.evalue,
                   traceback: (o.traceback || []).join('\\n').replace(/\\x1b\\[[0-9;]*m/g, '')}); }
  const running = Array.from(document.querySelectorAll('.jp-InputPrompt')).filter(e => e.textContent.includes('*')).length;
  return {n, done, running, errors}; }"""

# Records every distinct state of the watched elements (text + a fingerprint of their images/plots), so a widget
# that updates faster than we poll is still seen to update.
_JS_WATCH = """(selectors) => {
  const h = (s) => { let x = 5381; for (let i = 0; i < s.length; i++) x = ((x << 5) + x + s.charCodeAt(i)) | 0; return (x >>> 0).toString(16); };
  const snap = (sel) => Array.from(document.querySelectorAll(sel)).map(e => ({
      text: e.innerText.trim(),
      pics: Array.from(e.querySelectorAll('img, canvas, svg path, svg polyline')).map(p =>
        p.tagName === 'IMG' ? 'img:' + h(p.src) : p.tagName === 'CANVAS' ? 'canvas:' + p.width + 'x' + p.height
        : p.tagName.toLowerCase() + ':' + h(p.getAttribute('d') || p.getAttribute('points') || '')).join(',')}));
  window.__i3watch = {log: [], last: {}};
  const rec = () => { for (const sel of selectors) { const s = JSON.stringify(snap(sel));
      if (s !== window.__i3watch.last[sel]) { window.__i3watch.last[sel] = s;
        window.__i3watch.log.push({sel, t: performance.now(), state: JSON.parse(s)}); } } };
  new MutationObserver(rec).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                      attributes: true, attributeFilter: ['src', 'd', 'points']});
  rec(); }"""

_JS_FIGURE = """async (el) => {
  const hex = async (buf) => Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', buf)))
                                 .map(b => b.toString(16).padStart(2, '0')).join('');
  const out = [];
  for (const p of el.querySelectorAll('img, canvas, svg')) {
    if (p.tagName === 'IMG') { const r = await fetch(p.src); out.push('img:' + await hex(await r.arrayBuffer())); }
    else if (p.tagName === 'CANVAS') out.push('canvas:' + await hex(new TextEncoder().encode(p.toDataURL())));
    else out.push('svg:' + await hex(new TextEncoder().encode(p.outerHTML))); }
  return out; }"""

class LabSession:
    "A JupyterLab server in isolated folders plus a headless Chromium; `close()` stops every process it started."
    def __init__(self, work: Path, shots: Path, env_extra: dict | None = None, log=print):
        self.work, self.shots, self.log = Path(work), Path(shots), log
        self.root = self.work/'lab'
        self.root.mkdir(parents=True, exist_ok=True)
        self.shots.mkdir(parents=True, exist_ok=True)
        self.token, self.port = secrets.token_hex(16), free_port()
        self.base = f'http://127.0.0.1:{self.port}'
        self.server = self._pw = self.ctx = None
        self._before = _descendants()
        self._lab_log = open(self.work/'jupyterlab.log', 'w')
        try:
            self._start_server(env_extra or {})
            self._start_browser()
        except BaseException:
            self.close()
            raise

    # --- server
    def _env(self, env_extra):
        home = self.work/'home'
        data = home/'.local/share/jupyter'
        spec = data/'kernels'/'python3'
        spec.mkdir(parents=True, exist_ok=True)
        (spec/'kernel.json').write_text(json.dumps({
            'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
            'display_name': 'Python 3 (i3_edu browser test)', 'language': 'python'}))
        settings = home/'lab-settings'
        for name, value in {  # no autosave into the copies, all cells in the DOM, no news/update fetches
                'docmanager-extension/plugin': {'autosave': False},
                'notebook-extension/tracker': {'windowingMode': 'none'},
                'apputils-extension/notification': {'fetchNews': 'false', 'checkForUpdates': False}}.items():
            f = settings/'@jupyterlab'/f'{name}.jupyterlab-settings'
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(value))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(('JUPYTER', 'IPYTHON')) and k not in ('MPLBACKEND', 'PYTEST_CURRENT_TEST')}
        env.update(HOME=str(home), JUPYTER_CONFIG_DIR=str(home/'.jupyter'), JUPYTER_DATA_DIR=str(data),
                   JUPYTER_RUNTIME_DIR=str(home/'runtime'), IPYTHONDIR=str(home/'.ipython'),
                   JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(home/'workspaces'),
                   JUPYTER_PREFER_ENV_PATH='0', JUPYTER_PLATFORM_DIRS='0', PYTHONPATH=str(REPO),
                   IN_TEST='1', WANDB_MODE='disabled', HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1',
                   I3_EDU_CACHE=os.environ.get('I3_EDU_CACHE') or str(self.work/'i3_edu_cache'))
        env.update(env_extra)
        return env

    def _start_server(self, env_extra):
        cmd = [sys.executable, '-m', 'jupyterlab', '--allow-root', '--no-browser', '--ip=127.0.0.1',
               f'--port={self.port}', '--ServerApp.port_retries=0', f'--IdentityProvider.token={self.token}',
               '--LabApp.expose_app_in_browser=True', f'--ServerApp.root_dir={self.root}']
        self.server = subprocess.Popen(cmd, env=self._env(env_extra), cwd=self.root, stdout=self._lab_log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        t, deadline = time.time(), time.time() + 120
        while True:
            if self.server.poll() is not None:
                raise RuntimeError(f'JupyterLab exited:\n{self.lab_log_tail()}')
            try:
                with urllib.request.urlopen(f'{self.base}/api/status?token={self.token}', timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f'JupyterLab did not answer:\n{self.lab_log_tail()}')
            time.sleep(0.5)
        self.log(f'JupyterLab up on port {self.port} in {time.time()-t:.1f} s')

    def lab_log_tail(self, n=4000):
        self._lab_log.flush()
        return (self.work/'jupyterlab.log').read_text(errors='replace')[-n:]

    # --- browser
    def _start_browser(self):
        from playwright.sync_api import sync_playwright
        self._pw = sync_playwright().start()
        profile = self.work/'chromium-profile'
        profile.mkdir()  # a new, empty profile every run
        self.ctx = self._pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={'width': 1400, 'height': 1000})
        self.ctx.set_default_timeout(60_000)

    def close(self):
        "Stop the browser, the Playwright driver, the server and its kernels (and anything else we started), by PID."
        ours = _descendants() - self._before  # collected first: kernels are children of the server
        if self.server is not None and self.server.poll() is None:
            try:  # ask the server to shut its kernels down, then stop it
                req = urllib.request.Request(f'{self.base}/api/shutdown?token={self.token}', method='POST')
                urllib.request.urlopen(req, timeout=10).close()
                self.server.wait(timeout=15)
            except Exception:
                pass
        for step in (lambda: self.ctx and self.ctx.close(), lambda: self._pw and self._pw.stop()):
            try:
                step()
            except Exception:
                pass
        stop_pids(ours | (_descendants() - self._before))
        self._lab_log.close()

    # --- notebooks
    def open(self, notebook: Path, name: str):
        "Open a prepared notebook (under `self.root`) in a fresh workspace; wait until its kernel is idle."
        rel = Path(notebook).relative_to(self.root).as_posix()
        page = self.ctx.new_page()
        page.goto(f'{self.base}/lab/workspaces/{name}-{secrets.token_hex(3)}/tree/{rel}?reset&token={self.token}')
        page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=120_000)
        self.wait_for(page, lambda: page.evaluate(_JS_KERNEL) == 'idle', 120, 'kernel idle after opening')
        return page

    def wait_for(self, page, cond, timeout, what, poll=0.25):
        deadline = time.time() + timeout
        while not cond():
            if time.time() > deadline:
                self.screenshot(page, f'timeout-{re.sub(r"[^a-z0-9]+", "-", what.lower())}')
                raise TimeoutError(f'timed out after {timeout} s waiting for: {what}')
            page.wait_for_timeout(poll * 1000)

    def watch(self, page, selectors):
        "Start recording every distinct state of elements matching `selectors` (see `watch_log`)."
        page.evaluate(_JS_WATCH, list(selectors))

    def watch_log(self, page, selector=None):
        log = page.evaluate('() => window.__i3watch ? window.__i3watch.log : []')
        return [e for e in log if selector is None or e['sel'] == selector]

    def run_all(self, page):
        "Start `notebook:run-all-cells` without waiting for it."
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

    def cells_state(self, page): return page.evaluate(_JS_CELLS)

    def figures_as_text(self, page) -> list[int]:
        "Cells with a matplotlib figure shown as its text repr ('<Figure size ...>') and no image: a learner sees no plot."
        return page.evaluate("""() => { const cells = window.jupyterapp.shell.currentWidget.content.model.cells, bad = [];
          for (let i = 0; i < cells.length; i++) { const c = cells.get(i); if (c.type !== 'code') continue;
            for (const o of c.outputs.toJSON()) { const d = o.data || {}, t = [].concat(d['text/plain'] || []).join('');
              if (/^<Figure size/.test(t) && !d['image/png'] && !d['image/svg+xml']) bad.push(i); } }
          return bad; }""")

    def output_kinds(self, page, marker: str) -> list[list[str]]:
        "The MIME types of each output of the first code cell whose source contains `marker`."
        return page.evaluate("""(marker) => { const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
          for (let i = 0; i < cells.length; i++) { const c = cells.get(i);
            if (c.type === 'code' && c.sharedModel.getSource().includes(marker))
              return c.outputs.toJSON().map(o => Object.keys(o.data || {}).concat(o.output_type === 'stream' ? ['stream'] : [])); }
          return null; }""", marker)

    def shutdown_kernels(self):
        "Delete every session (and so its kernel) on the server, e.g. between two notebooks."
        api = f'{self.base}/api/sessions'
        with urllib.request.urlopen(f'{api}?token={self.token}', timeout=10) as r:
            sessions = json.load(r)
        for s in sessions:
            req = urllib.request.Request(f"{api}/{s['id']}?token={self.token}", method='DELETE')
            urllib.request.urlopen(req, timeout=30).close()

    def finished(self, page) -> bool:
        "True when every code cell has run (or one failed) and the kernel is idle."
        s = self.cells_state(page)
        if s['errors']:
            return True
        return s['running'] == 0 and s['done'] == s['n'] and page.evaluate(_JS_KERNEL) == 'idle'

    def wait_until_done(self, page, timeout):
        "Wait for the run to finish (every code cell executed, or a cell failed); raise with the traceback on error."
        t0 = time.time()
        self.wait_for(page, lambda: self.finished(page), timeout, 'all cells executed', poll=0.5)
        s = self.cells_state(page)
        if s['errors']:
            e = s['errors'][0]
            raise AssertionError(f"cell {e['cell']} raised {e['ename']}: {e['evalue']}\n{e['traceback'][-3000:]}")
        return time.time() - t0

    def figure_signature(self, locator) -> list[str]:
        "SHA-256 of the bytes of every image (img/canvas/svg) inside an element."
        return locator.evaluate(_JS_FIGURE)

    def screenshot(self, page, name, locator=None) -> Path:
        path = self.shots/f'{name}.png'
        try:
            if locator is not None:
                locator.scroll_into_view_if_needed(timeout=10_000)
            page.screenshot(path=str(path))
        except Exception as e:
            self.log(f'screenshot {name} failed: {e}')
        return path

def slider_value(slider) -> str:
    "The value an ipywidgets slider shows: its readout text (noUiSlider's aria-valuenow is rounded to 0.1)."
    readout = slider.locator('.widget-readout')
    if readout.count():
        return readout.first.inner_text().strip()
    h = slider.locator('.noUi-handle').first
    return h.get_attribute('aria-valuetext') or h.get_attribute('aria-valuenow')

def move_slider(page, slider, presses=3) -> tuple[str, str]:
    "Move an ipywidgets slider with the keyboard (focus its handle, press arrows); returns (old, new) shown value."
    handle = slider.locator('.noUi-handle').first
    handle.scroll_into_view_if_needed()
    old = slider_value(slider)
    now, hi = (float(handle.get_attribute(a)) for a in ('aria-valuenow', 'aria-valuemax'))
    key = 'ArrowRight' if now < hi else 'ArrowLeft'
    handle.focus()
    for _ in range(presses):
        page.keyboard.press(key)
        page.wait_for_timeout(100)
    new = slider_value(slider)
    if new == old:  # fall back to dragging the handle along the track
        box, track = handle.bounding_box(), slider.locator('.noUi-target').first.bounding_box()
        x0, y = box['x'] + box['width']/2, box['y'] + box['height']/2
        frac = (box['x'] + box['width']/2 - track['x']) / track['width']
        x1 = track['x'] + track['width'] * (0.8 if frac < 0.5 else 0.2)
        page.mouse.move(x0, y)
        page.mouse.down()
        page.mouse.move(x1, y, steps=10)
        page.mouse.up()
        new = slider_value(slider)
    return old, new

def distinct_states(log) -> list:
    "The distinct non-empty recorded states, in order of first appearance."
    seen, out = set(), []
    for e in log:
        key = json.dumps(e['state'], sort_keys=True)
        if e['state'] and any(s['text'] or s['pics'] for s in e['state']) and key not in seen:
            seen.add(key)
            out.append(e['state'])
    return out
