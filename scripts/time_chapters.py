"""Time each chapter as a learner runs it: every code cell in order, in a fresh process, like "Run All" in JupyterLab.

    python scripts/time_chapters.py [NOTEBOOK ...] [--test] [--skip slow gpu] [--json FILE] [--save]

Notebooks default to nbs/[0-9]*.ipynb, run in order with one shared, new cache folder (a learner's first pass).
--test sets IN_TEST as nbdev_test does, so the notebooks pick their small test settings.
--skip FLAG ... leaves out cells carrying those `#|` flags (default: none; JupyterLab runs them all).
Prints one line per notebook (time, slowest cells, cells left out); --json writes the numbers; --save stores the
outputs in the notebooks (run nbdev_clean afterwards). Exit 1 if a notebook fails, with its traceback."""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

root = Path(__file__).resolve().parent.parent

def run_one(path: Path, skip: set, save: bool = False) -> dict:
    "Run one notebook in this process; return its total and per-cell seconds (and store the outputs if `save`)."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    from nbdev.process import extract_directives
    nb = read_nb(path)
    shell, cells, skipped = CaptureShell(path), [], []
    start = time.perf_counter()
    with working_directory(path.parent):
        for c in nb.cells:
            if c.cell_type != 'code' or 'nbdev_export' + '(' in c.source:
                continue
            direc = extract_directives(c, remove=False)     # nbdev's parser: `#| slow`, `#| eval: false`, ...
            flags = set(direc)
            if flags & skip or direc.get('eval:', [''])[0].lower() == 'false':
                skipped.append(c.idx_)
                if save:                                 # no output from an earlier run may look like this run's
                    c.outputs, c.execution_count = [], None
                continue
            t = time.perf_counter()
            shell.cell(c)
            cells.append((c.idx_, round(time.perf_counter() - t, 2), sorted(flags & {'slow', 'gpu'})))
            if shell.exc:
                return {'notebook': path.name, 'ok': False, 'error': shell.prettytb(fname=path)}
    secs = round(time.perf_counter() - start, 1)
    if save:
        write_nb(nb, path)                               # then run nbdev_clean, as after any notebook edit
    return {'notebook': path.name, 'ok': True, 'seconds': secs, 'cells': cells, 'skipped_cells': skipped}

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('notebooks', nargs='*', type=Path)
    ap.add_argument('--test', action='store_true', help='set IN_TEST like nbdev_test')
    ap.add_argument('--skip', nargs='*', default=[], help='leave out cells with these flags, e.g. slow gpu')
    ap.add_argument('--json', type=Path, help='write the results here')
    ap.add_argument('--save', action='store_true', help='store the new outputs in the notebooks (then run nbdev_clean)')
    ap.add_argument('--one', type=Path, help=argparse.SUPPRESS)  # internal: run one notebook, print JSON
    a = ap.parse_args()
    if a.one:
        print('\n@@RESULT@@' + json.dumps(run_one(a.one.resolve(), set(a.skip), a.save)))
        return
    nbs = [p.resolve() for p in a.notebooks] or sorted((root/'nbs').glob('[0-9]*.ipynb'))
    env = {k: v for k, v in os.environ.items() if k != 'IN_TEST'} | {'MPLBACKEND': 'Agg'}
    env.setdefault('WANDB_MODE', 'disabled')
    if a.test:
        env['IN_TEST'] = '1'
    env['I3_EDU_CACHE'] = env.get('I3_EDU_CACHE') or tempfile.mkdtemp(prefix='i3_edu_cache.')
    results, failed = [], False
    for p in nbs:
        # a fresh interpreter per notebook, as a new kernel would be
        cmd = [sys.executable, __file__, '--one', str(p), *(['--save'] if a.save else []), '--skip', *a.skip]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode or '@@RESULT@@' not in r.stdout:
            res = {'notebook': p.name, 'ok': False, 'error': r.stderr[-4000:]}
        else:
            res = json.loads(r.stdout.rsplit('@@RESULT@@', 1)[1])
        results.append(res)
        if not res['ok']:
            failed = True
            print(f"{p.name}: FAILED\n{res['error']}", file=sys.stderr)
            continue
        top = sorted(res['cells'], key=lambda c: -c[1])[:3]
        print(f"{p.name}: {res['seconds']:.0f} s  (slowest cells: " +
              ', '.join(f"#{i} {s:.0f} s{' [' + ','.join(f) + ']' if f else ''}" for i, s, f in top) + ')' +
              (f"  left out: {len(res['skipped_cells'])} cells" if res['skipped_cells'] else ''), flush=True)
    ok = [r for r in results if r['ok']]
    print(f"total {sum(r['seconds'] for r in ok):.0f} s for {len(ok)} notebooks"
          f" ({'IN_TEST' if a.test else 'learner mode'}, skip: {' '.join(a.skip) or 'nothing'}, torch threads: default)")
    if a.json:
        a.json.write_text(json.dumps({'mode': 'test' if a.test else 'learner', 'skip': a.skip, 'results': results}, indent=1))
    sys.exit(1 if failed else 0)

if __name__ == '__main__':
    main()
