"""Faults and bad input met through `i3-train`, as a user would meet them: each ends with one clear message, the right
exit code (2: bad input, 3: training diverged), no traceback, and nothing written before is lost."""
import os, shutil, signal, subprocess, sys, tempfile, time, zipfile
from pathlib import Path
import pytest
import torch
import i3_edu.learner as L
import i3_edu.train as T
from i3_edu.core import atomic_write, honour_umask
from i3_edu.learner import CheckpointError
from i3_edu.callbacks import read_metrics
from i3_edu.tokenizer import ChunkTokenizer
from i3_edu.train import train, i3_train

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

# ------------------------------------------------------------------------------------------------ settings of the wrong kind

@pytest.mark.parametrize('setting, words', [('steps=10.5', 'steps must be a whole number, got 10.5'),
                                            ('batch_size=abc', "batch_size must be a whole number, got 'abc'"),
                                            ('betas=0.9', 'betas must be two numbers'),
                                            ('compile=yes', "compile must be true or false, got 'yes'")])
def test_settings_of_the_wrong_kind_are_refused(tmp_path, setting, words):
    p = tiny(tmp_path/'run', setting)
    assert p.returncode == 2 and words in p.stderr, p.stderr[-2000:]
    no_traceback(p)
    assert not (tmp_path/'run'/'run_config.json').exists()

def test_one_prompt_is_one_prompt(tmp_path):
    "`--set prompts=hello` is the prompt 'hello', not five one-letter prompts."
    out = tmp_path/'run'
    assert tiny(out, 'steps=2', 'eval_every=2', 'prompts=hello').returncode == 0
    assert [r['prompt'] for r in read_metrics(out/'metrics.jsonl') if r['kind'] == 'sample'] == ['hello']

# ------------------------------------------------------------------------------------------------ checkpoints

def test_resume_falls_back_to_best_when_last_is_damaged(tmp_path):
    out = tmp_path/'run'
    assert tiny(out, 'steps=4', 'eval_every=2').returncode == 0
    ck = out/'checkpoints'
    good = (ck/'last.pt').read_bytes()
    (ck/'last.pt').write_bytes(good[:len(good) // 2])                 # cut short, as by a full disk or a kill
    p = cli('i3_train', '--out', out, '--resume', '--set', 'steps=6', check=False)
    assert p.returncode == 0 and 'last.pt is damaged' in p.stderr and 'best.pt instead' in p.stderr, p.stderr[-2000:]
    with zipfile.ZipFile(ck/'last.pt', 'w') as z:                     # a zip file, but not a checkpoint
        z.writestr('x', 'y')
    p = cli('i3_train', '--out', out, '--resume', '--set', 'steps=8', check=False)
    assert p.returncode == 2 and 'cannot be read' in p.stderr and 'best.pt' in p.stderr, p.stderr[-2000:]
    no_traceback(p)
    (ck/'last.pt').write_bytes(b'\0' * 100)
    (ck/'best.pt').write_bytes(b'random bytes')
    p = cli('i3_train', '--out', out, '--resume', '--set', 'steps=8', check=False)
    assert p.returncode == 2 and 'nothing to resume' in p.stderr and 'best.pt is damaged' in p.stderr, p.stderr[-2000:]
    no_traceback(p)

def test_resume_with_the_checkpoint_of_another_model_is_refused(tmp_path):
    a, b = tmp_path/'a', tmp_path/'b'
    assert tiny(a, 'steps=2', 'eval_every=2').returncode == 0
    assert tiny(b, 'steps=2', 'eval_every=2', 'd_model=48').returncode == 0
    shutil.copy(b/'checkpoints'/'last.pt', a/'checkpoints'/'last.pt')
    before = (a/'run_config.json').read_bytes()
    p = cli('i3_train', '--out', a, '--resume', '--set', 'steps=4', check=False)
    assert p.returncode == 2 and 'does not fit this model' in p.stderr and 'another preset' in p.stderr, p.stderr[-2000:]
    no_traceback(p)
    assert (a/'run_config.json').read_bytes() == before

def test_resume_after_the_data_changed_is_refused(tmp_path):
    src = tmp_path/'stories.txt'
    src.write_text('\n'.join(f'once upon a time there was a cat called number {i}.' for i in range(400)))
    out = tmp_path/'run'
    assert tiny(out, 'steps=2', 'eval_every=2', f'sources={src}').returncode == 0
    with open(src, 'a') as f:
        f.write('\nand one more story.')
    before = (out/'run_config.json').read_bytes()
    p = cli('i3_train', '--out', out, '--resume', '--set', 'steps=4', check=False)
    assert p.returncode == 2 and 'the data changed since this run started' in p.stderr, p.stderr[-2000:]
    no_traceback(p)
    assert (out/'run_config.json').read_bytes() == before

def fast_train(out, **kw):
    "An in-process tiny run (for faults injected with monkeypatch)."
    return train('tiny', out_dir=out, progress=False, seq_len=16, eval_batches=2, sample_tokens=5, wandb='off', **kw)

def test_a_full_disk_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = L.torch_save
    def full_disk(obj, path):
        if Path(path).name == 'last.pt' and obj['step'] >= 4:
            raise RuntimeError('[enforce fail at inline_container.cc:664] . unexpected pos 320 vs 256')
        return real(obj, path)
    monkeypatch.setattr(L, 'torch_save', full_disk)
    with pytest.raises(CheckpointError) as e:
        fast_train(tmp_path/'run', steps=6, eval_every=2)
    msg = str(e.value)
    assert 'last.pt could not be written' in msg and 'GiB are free there' in msg and 'step 2) is kept' in msg, msg
    assert torch.load(tmp_path/'run'/'checkpoints'/'last.pt', weights_only=True)['step'] == 2

def test_a_best_checkpoint_that_cannot_be_written_does_not_stop_the_run(tmp_path, monkeypatch):
    real = L.torch_save
    def no_room_for_best(obj, path):
        if Path(path).name == 'best.pt':
            raise OSError(28, 'No space left on device')
        return real(obj, path)
    monkeypatch.setattr(L, 'torch_save', no_room_for_best)
    with pytest.warns(UserWarning, match='best.pt could not be written.*Training goes on'):
        learn = fast_train(tmp_path/'run', steps=4, eval_every=2)
    assert learn.step == 4 and not (tmp_path/'run'/'checkpoints'/'best.pt').exists()

def test_an_output_folder_that_cannot_be_written(tmp_path, monkeypatch, capsys):
    def denied(self):
        raise PermissionError(13, 'Permission denied', str(self.path))
    monkeypatch.setattr(T.RunLock, 'acquire', denied)                 # what a read-only folder gives (root ignores modes)
    with pytest.raises(SystemExit) as e:
        i3_train(preset='tiny', out=str(tmp_path/'ro'), steps=2)
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'Permission denied' in err and 'must be writable' in err, err

def test_ctrl_c_before_the_first_checkpoint_does_not_suggest_resume(tmp_path, monkeypatch, capsys):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(T, 'load_data', interrupted)                  # Ctrl-C while the data is being prepared
    with pytest.raises(SystemExit) as e:
        i3_train(preset='tiny', out=str(tmp_path/'run'), steps=2)
    err = capsys.readouterr().err
    assert e.value.code == 130 and 'before the first checkpoint' in err and '--resume' not in err, err

def test_files_and_folders_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path/'f.json', lambda t: Path(t).write_text('{}'))
        d = Path(tempfile.mkdtemp(dir=tmp_path))                      # mode 0700, like a cache being built
        honour_umask(d, folder=True)
        assert (tmp_path/'f.json').stat().st_mode & 0o777 == 0o644 and d.stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(old)

# ------------------------------------------------------------------------------------------------ i3-generate

def test_i3_generate_with_damaged_weights_or_another_vocabulary(tmp_path):
    out = tmp_path/'run'
    assert tiny(out, 'steps=2', 'eval_every=2').returncode == 0
    tok = ChunkTokenizer.load(out/'tokenizer.json')
    ids = sorted(tok.idx_to_chunk)[1:]
    ChunkTokenizer({tok.idx_to_chunk[i]: j for i, j in zip(ids, ids[1:] + ids[:1])}).save(out/'tokenizer.json')
    p = cli('i3_generate', '--out', out, '--prompt', 'hello', check=False)
    assert p.returncode == 2 and 'not the vocabulary these weights were trained with' in p.stderr, p.stderr[-2000:]
    no_traceback(p)
    tok.save(out/'tokenizer.json')
    w = (out/'model.safetensors').read_bytes()
    (out/'model.safetensors').write_bytes(w[:len(w) // 3])
    p = cli('i3_generate', '--out', out, '--prompt', 'hello', check=False)
    assert p.returncode == 2 and 'model.safetensors cannot be read' in p.stderr, p.stderr[-2000:]
    no_traceback(p)

# ------------------------------------------------------------------------------------------------ data sources

def test_data_sources_that_cannot_be_read(tmp_path):
    fake = tmp_path/'stories.jsonl.gz'
    fake.write_text('a plain text file\nwith a compressed name\n')
    cases = [('sources=data/my_stories.txt', 'no file or folder', 'data/my_stories.txt'),   # not a hub id
             (f'sources={fake}', 'cannot read', 'really what its name says'),
             ('sources=tinystories', 'HF_HUB_OFFLINE is set', '--preset demo')]        # offline: at once
    for setting, *words in cases:
        t0 = time.time()
        p = tiny(tmp_path/'run', setting)
        assert p.returncode == 2 and all(w in p.stderr for w in words), (setting, p.stderr[-2000:])
        no_traceback(p)
        assert time.time() - t0 < 60
