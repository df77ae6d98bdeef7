"Project-level checks: the package imports, the README is current, the nbdev config is what the guide says."
import configparser, subprocess, sys
from pathlib import Path
import i3_edu

root = Path(__file__).resolve().parent.parent

def test_version_matches_settings():
    cfg = configparser.ConfigParser()
    cfg.read(root/'settings.ini')
    assert i3_edu.__version__ == cfg['DEFAULT']['version']

def test_tst_flags_gate_slow_and_gpu_cells():
    cfg = configparser.ConfigParser()
    cfg.read(root/'settings.ini')
    assert {'slow', 'gpu'} <= set(cfg['DEFAULT']['tst_flags'].split())

def test_readme_is_generated_from_index():
    r = subprocess.run([sys.executable, str(root/'scripts'/'make_readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

THREADS = '''
import multiprocessing as mp
def child(q):
    import i3_edu.core, torch; q.put(torch.get_num_threads())
if __name__ == '__main__':
    # like nbdev_test: the parent forks its worker before anything imported i3_edu
    ctx = mp.get_context('fork'); q = ctx.Queue(); p = ctx.Process(target=child, args=(q,)); p.start()
    worker = q.get(timeout=120); p.join()
    import i3_edu.core, torch
    print(torch.get_num_threads(), worker)
'''

def threads(tmp_path, **env):
    "(threads of a main process, threads of a worker it forks), both importing i3_edu, under `env`."
    (tmp_path/'threads.py').write_text(THREADS)
    e = {k: v for k, v in __import__('os').environ.items() if k not in ('IN_TEST', 'OMP_NUM_THREADS')} | env
    r = subprocess.run([sys.executable, str(tmp_path/'threads.py')], capture_output=True, text=True, env=e, timeout=300)
    assert r.returncode == 0, r.stderr
    return tuple(int(n) for n in r.stdout.split())

def test_parallel_nbdev_test_workers_use_one_thread_each(tmp_path):
    import torch
    cores = torch.get_num_threads() if 'OMP_NUM_THREADS' not in __import__('os').environ else None
    main, worker = threads(tmp_path, IN_TEST='1')
    assert worker == 1                                   # a test worker shares the cores with the others
    if cores:
        assert main == cores                       # the main process (JupyterLab, pytest) keeps them all
    assert threads(tmp_path)[1] == main                  # outside tests nothing changes
    assert threads(tmp_path, IN_TEST='1', OMP_NUM_THREADS='2')[1] == 2  # an explicit choice wins

def test_stored_outputs_show_figures_as_images():
    "A figure Jupyter could not render is stored as the text `<Figure size ...>` alone: what GitHub and a reader see."
    import json, re
    bad = []
    for nb in sorted((root/'nbs').glob('*.ipynb')):
        for i, c in enumerate(json.loads(nb.read_text())['cells']):
            for o in c.get('outputs', []):
                d = o.get('data', {})
                if re.match(r'<Figure size', ''.join(d.get('text/plain', ''))) and not {'image/png', 'image/svg+xml'} & d.keys():
                    bad.append(f'{nb.name} cell {i}')
    assert not bad, 'figures stored as text, not images (return a ShowFigure or use pyplot): ' + ', '.join(bad)


def test_library_modules_stay_small():
    "One job per module: no library module over 600 lines (CONTRIBUTING.md)."
    sizes = {p.name: len(p.read_text().splitlines()) for p in (root/'i3_edu').glob('*.py') if p.name != '_modidx.py'}
    assert max(sizes.values()) <= 600, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_command_line_tools_do_not_import_matplotlib():
    "The CLIs never draw on start-up: matplotlib (about 0.3 s) is imported on first use only."
    import subprocess, sys
    code = ("import sys, i3_edu.train, i3_edu.pretrained, i3_edu.recall, i3_edu.vocab\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == '[]', r.stdout + r.stderr[-2000:]
    from i3_edu.model import plt                 # the stand-in still draws when asked
    assert plt.subplots is __import__('matplotlib.pyplot').pyplot.subplots
