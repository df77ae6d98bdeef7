"""Faults and bad input met through `i3-train`, as a user would meet them: each ends with one clear message, the right
exit code (2: bad input, 3: training diverged), no traceback, and nothing written before is lost."""
import signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch

from test_train import FAST, cli, env, launcher, losses

def no_traceback(p):
    assert 'Traceback' not in p.stderr, p.stderr[-3000:]

def tiny(out, *extra, check=False, **kw):
    return cli('i3_train', '--preset', 'tiny', '--out', out, *FAST, *extra, check=check, **kw)

def checkpoints_are_good(out):
    "Every checkpoint in `out` has finite weights and finite validation losses."
    for ck in (Path(out)/'checkpoints').glob('*.pt'):
        c = torch.load(ck, weights_only=True)
        assert all(torch.isfinite(v).all() for v in c['model'].values() if v.is_floating_point()), ck
        assert all(v == v and abs(v) != float('inf') for v in c['history']['val_loss']), ck

# ------------------------------------------------------------------------------------------------ one run per folder

def test_second_run_in_the_same_folder_is_refused(tmp_path):
    out = tmp_path/'run'
    first = subprocess.Popen([sys.executable, launcher('i3_train'), '--preset', 'tiny', '--out', str(out),
                              '--steps', '100000', *FAST, 'eval_every=0'], env=env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while len(losses(out)) < 5 and time.time() - t0 < 120 and first.poll() is None:
            time.sleep(0.1)
        assert first.poll() is None and (out/'.lock').exists()
        before = (out/'run_config.json').read_bytes()
        p = tiny(out, '--steps', 3)
        assert p.returncode == 2 and 'in use by another run' in p.stderr and f'process {first.pid}' in p.stderr
        no_traceback(p)
        assert (out/'run_config.json').read_bytes() == before and first.poll() is None   # the first run goes on
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    assert first.returncode == 130 and not (out/'.lock').exists()                          # released on Ctrl-C

def test_lock_and_temp_files_of_a_killed_run_are_cleaned_up(tmp_path):
    out = tmp_path/'run'
    run = subprocess.Popen([sys.executable, launcher('i3_train'), '--preset', 'tiny', '--out', str(out),
                            '--steps', '100000', *FAST, 'eval_every=5'], env=env(), text=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (out/'checkpoints'/'last.pt').exists() and time.time() - t0 < 120:
        time.sleep(0.1)
    run.kill()                                                       # kill -9: no chance to clean up
    run.wait()
    assert (out/'.lock').exists()
    tmp = out/'checkpoints'/'last.pt.x1y2z3.tmp'                     # what a kill during a write leaves
    tmp.write_bytes(b'\0' * 4096)
    step = torch.load(out/'checkpoints'/'last.pt', weights_only=True)['step']
    p = cli('i3_train', '--out', out, '--resume', '--set', 'steps=' + str(step + 2), check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'taking over the lock of process' in p.stderr and 'left by an interrupted write' in p.stderr
    assert not tmp.exists() and not (out/'.lock').exists()

# ------------------------------------------------------------------------------------------------ evaluation

@pytest.mark.parametrize('setting, words', [('val_frac=0', 'validation split has 0 tokens'),
                                            ('eval_batches=0', 'eval_batches=0')])
def test_evaluation_that_cannot_run_is_refused_before_the_first_step(tmp_path, setting, words):
    p = tiny(tmp_path/'run', 'steps=30', setting)
    assert p.returncode == 2 and words in p.stderr, p.stderr[-2000:]
    no_traceback(p)
    assert not (tmp_path/'run'/'checkpoints').exists()               # no step ran

def test_diverged_run_keeps_only_good_checkpoints(tmp_path):
    "lr 1e6 with an evaluation every step: whatever goes non-finite first, no checkpoint with it is kept or called good."
    out = tmp_path/'run'
    p = tiny(out, 'steps=20', 'lr=1e6', 'eval_every=1', 'warmup=1')
    assert p.returncode == 3 and 'non-finite' in p.stderr and 'Last good checkpoint' in p.stderr, p.stderr[-2000:]
    no_traceback(p)
    checkpoints_are_good(out)

def test_resume_from_a_poisoned_checkpoint_is_refused_and_changes_nothing(tmp_path):
    out = tmp_path/'run'
    assert tiny(out, 'steps=4', 'eval_every=2').returncode == 0
    ck = out/'checkpoints'/'last.pt'
    c = torch.load(ck, weights_only=True)
    c['model']['head.bias'][0] = float('nan')                        # as an older version could have saved it
    torch.save(c, ck)
    before = {f: (out/f).read_bytes() for f in ('run_config.json', 'metrics.jsonl')}
    p = cli('i3_train', '--out', out, '--resume', '--set', 'steps=8', check=False)
    assert p.returncode == 2 and 'non-finite weights (head.bias)' in p.stderr, p.stderr[-2000:]
    no_traceback(p)
    assert {f: (out/f).read_bytes() for f in before} == before       # the failed resume rewrote nothing

# ------------------------------------------------------------------------------------------------ bad settings

@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
@pytest.mark.parametrize('device, words', [('cuda', 'no CUDA GPU is visible'), ('cuda:x', 'not a device name')])
def test_device_that_is_not_here(tmp_path, device, words):
    p = tiny(tmp_path/'run', '--device', device)
    assert p.returncode == 2 and words in p.stderr, p.stderr[-2000:]
    no_traceback(p)
    assert not (tmp_path/'run'/'run_config.json').exists()

@pytest.mark.parametrize('args, words', [(['--temperature', '-1'], '--temperature -1.0'),
                                         (['--top_p', '0'], '--top_p 0.0'), (['--top_p', '1.5'], '--top_p 1.5'),
                                         (['--top_k', '-3'], '--top_k -3'), (['--max_new_tokens', '-5'], '--max_new_tokens -5'),
                                         (['--prompt', ''], 'empty --prompt')])
def test_i3_generate_rejects_bad_sampling_settings(tmp_path, args, words):
    p = cli('i3_generate', '--out', tmp_path/'none', *args, check=False)
    assert p.returncode == 2 and words in p.stderr, p.stderr[-2000:]
    no_traceback(p)
