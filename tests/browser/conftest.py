"""Fixtures for the end-to-end browser tests: opt-in, install what is missing, one JupyterLab + Chromium per session."""
import os, shutil, time
import pytest

from labdriver import REPO, LabSession, ensure_browser_tools

SHOTS = REPO/'test-output'/'browser'
OPT_IN = 'I3_EDU_BROWSER'  # unset/0: skip; 1: run, skip if Chromium cannot be installed; require: fail instead

def pytest_configure(config):
    config.addinivalue_line('markers', 'browser: end-to-end test in JupyterLab + headless Chromium (opt-in: I3_EDU_BROWSER=1)')

@pytest.fixture(scope='session')
def browser_tools():
    mode = os.environ.get(OPT_IN, '0').strip().lower()
    if mode in ('', '0', 'no', 'false'):
        pytest.skip(f'browser tests are opt-in (they start JupyterLab and Chromium, a few minutes): '
                    f'run `{OPT_IN}=1 pytest -m browser tests/browser`')
    why = ensure_browser_tools()
    if why:
        if mode == 'require':
            pytest.fail(f'{OPT_IN}=require but the browser cannot be set up: {why}')
        pytest.skip(f'cannot run the browser tests here: {why}')

@pytest.fixture(scope='session')
def lab(browser_tools, tmp_path_factory):
    "A JupyterLab server and a headless Chromium for the whole session; every process is stopped at the end."
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    t = time.time()
    session = LabSession(tmp_path_factory.mktemp('jupyterlab'), SHOTS)
    print(f'\n[browser] JupyterLab + Chromium started in {time.time()-t:.1f} s; screenshots in {SHOTS}')
    try:
        yield session
    finally:
        t = time.time()
        session.close()
        print(f'\n[browser] stopped JupyterLab, kernels and Chromium in {time.time()-t:.1f} s')
