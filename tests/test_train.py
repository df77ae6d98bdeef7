"""Training end to end (i3_edu.train): presets, the i3-train / i3-generate commands, exact resume through the command
line, Ctrl-C, the GPU-preset guard, and two-process DDP (gloo) against one process with the same global batch."""
import json, math, os, signal, subprocess, sys, threading, time
from pathlib import Path
import numpy as np
import pytest
import torch

from i3_edu.core import assert_close
from i3_edu.learner import TrainConfig
from i3_edu.callbacks import read_metrics
from i3_edu.train import (resolve_run, parse_overrides, ngram_baselines, pick_device, NeedsGPU, i3_train, i3_generate)

import tempfile
LAUNCH = "from i3_edu.train import {f}\n{f}()\n"

def launcher(fn) -> str:
    "A script that runs the command like its console script does (`python -c` would not pass the arguments on)."
    p = Path(tempfile.gettempdir())/f'i3_edu_test_{fn}.py'
    p.write_text(LAUNCH.format(f=fn))
    return str(p)
# the tiny preset, made smaller still: a few seconds per run even on a busy 2-core machine
FAST = ['--set', 'seq_len=16', 'eval_batches=2', 'sample_tokens=5', 'wandb=off']

def env():
    e = dict(os.environ, WANDB_MODE='disabled', HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', MPLBACKEND='Agg',
             CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1')
    e.pop('IN_TEST', None)
    return e

def cli(fn, *args, timeout=300, check=True):
    "Run i3_train / i3_generate as a command (same as the console script) and return the finished process."
    p = subprocess.run([sys.executable, launcher(fn), *map(str, args)], capture_output=True, text=True,
                       env=env(), timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f'{fn} {args} -> {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}')
    return p

def losses(out): return [r['loss'] for r in read_metrics(Path(out)/'metrics.jsonl') if r['kind'] == 'train']

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    "One uninterrupted tiny run of 8 steps through the command line; several tests compare against it."
    out = tmp_path_factory.mktemp('runs')/'full'
    p = cli('i3_train', '--preset', 'tiny', '--out', out, '--steps', 8, *FAST, 'eval_every=4')
    return out, p

# ------------------------------------------------------------------------------------------------ pure functions

def test_i3_80m_preset_is_the_reference_recipe():
    r = resolve_run('i3-80m')
    assert r['gpu'] and r['model_preset'] == 'i3-80m' and r['data']['sources'] == ['tinystories', 'tinychat', 'hq_sentences']
    t = TrainConfig.from_dict(r['train'])
    assert (t.steps, t.batch_size, t.seq_len, t.lr, t.warmup, t.min_lr_ratio, t.betas, t.weight_decay, t.grad_clip,
            t.eval_every, t.sample_tokens) == (5000, 4, 256, 3e-4, 100, 0.1, (0.9, 0.999), 0.01, 1.0, 500, 50)
    fast = resolve_run('i3-80m-fast')['train']
    assert fast['batch_size'] > 4 and fast['steps'] == 5000          # the throughput preset is a separate preset

def test_overrides_reach_the_right_part():
    r = resolve_run('demo', **parse_overrides(['steps=7', 'lr=1e-3', 'd_model=64', 'n_attn=1',
                                               'sources=demo,demo', 'val_frac=0.1', 'prompts=["a", "b"]']))
    assert r['train']['steps'] == 7 and r['train']['lr'] == 1e-3 and r['train']['prompts'] == ('a', 'b')
    assert r['model'] == {'d_model': 64, 'n_attn': 1} and r['data'] == {'sources': ['demo', 'demo'], 'val_frac': 0.1}
    with pytest.raises(ValueError, match='unknown setting'):
        resolve_run('demo', stepz=1)
    with pytest.raises(ValueError, match='unknown preset'):
        resolve_run('i3-800m')
    json.dumps(r)                                                    # saved as run_config.json

def test_ngram_baselines_by_hand():
    tr, va = np.array([0, 1, 0, 1, 0, 2]), np.array([0, 1, 2])
    b = ngram_baselines(tr, va, 3)
    p_uni = (np.bincount(tr, minlength=3) + 1) / (len(tr) + 3)
    assert b['unigram'] == pytest.approx(-np.log(p_uni[va]).mean())
    l = b['bigram_lambda']                                           # p(1|0) = 2/3, p(2|1) = 0/2
    ref = -np.mean([np.log(l * 2 / 3 + (1 - l) * p_uni[1]), np.log((1 - l) * p_uni[2])])
    assert b['bigram'] == pytest.approx(ref)

@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_gpu_preset_refuses_the_cpu():
    with pytest.raises(NeedsGPU, match='--device cpu'):
        pick_device(resolve_run('i3-80m'))
    assert pick_device(resolve_run('i3-80m-fast'), 'cpu').type == 'cpu'

# ------------------------------------------------------------------------------------------------ command line

def test_cli_trains_and_writes_the_reference_artifacts(tiny_run):
    out, p = tiny_run
    for f in ('pytorch_model.bin', 'config.json', 'tokenizer.json', 'run_config.json', 'metrics.jsonl', 'loss.png',
              'checkpoints/last.pt', 'checkpoints/best.pt'):
        assert (out/f).exists(), f
    assert 'final validation loss' in p.stdout and 'unigram' in p.stdout
    cfg = json.loads((out/'config.json').read_text())
    assert cfg['model_type'] == 'i3' and cfg['architectures'] == ['i3Model']
    run = json.loads((out/'run_config.json').read_text())
    assert run['preset'] == 'tiny' and run['train']['steps'] == 8 and run['train']['seq_len'] == 16
    from i3_edu.pretrained import load_pretrained
    model, tok = load_pretrained(out)
    ck = torch.load(out/'checkpoints'/'last.pt', weights_only=True)
    assert ck['step'] == 8
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck['model'][k]), k
    assert len(losses(out)) == 8

def test_i3_generate_samples_from_the_artifacts(tiny_run, capsys):
    out, _ = tiny_run
    i3_generate(out=str(out), prompt=['once upon a time', 'the cat'], max_new_tokens=5, seed=0)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("'once upon a time' -> 'once upon a time"), lines   # healed
    i3_generate(str(out), prompt=['once upon a time'], max_new_tokens=5, seed=0, no_heal=True)
    assert capsys.readouterr().out.startswith("'once upon a time' -> 'once upon a tim<UNK>")        # the reference
    with pytest.raises(SystemExit) as e:
        i3_generate(out=str(out/'nope'))
    assert e.value.code == 2 and 'no folder' in capsys.readouterr().err


def test_cli_until_then_resume_matches_the_uninterrupted_run(tiny_run, tmp_path, capsys, one_thread):
    full, _ = tiny_run
    out = str(tmp_path/'split')
    i3_train(preset='tiny', out=out, steps=8, until=3, set=FAST[1:] + ['eval_every=4'])
    so = capsys.readouterr().out
    assert 'stopped at step 3 of 8' in so and '--resume' in so and 'latest validation loss' not in so
    i3_train(out=out, resume=True)
    assert 'final validation loss' in capsys.readouterr().out
    assert losses(out) == losses(full)                                # exactly
    a = torch.load(full/'pytorch_model.bin', weights_only=True)
    b = torch.load(Path(out)/'pytorch_model.bin', weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)

def test_cli_ctrl_c_saves_and_says_how_to_resume(tmp_path, capsys, one_thread):
    "A real SIGINT, sent once training runs: the step finishes, a checkpoint is saved, exit status 130."
    out = tmp_path/'int'
    def press_ctrl_c():
        t0 = time.time()
        while len(losses(out)) < 2 and time.time() - t0 < 240:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(SystemExit) as e:
        i3_train(preset='tiny', out=str(out), steps=100000, set=FAST[1:] + ['eval_every=0'])
    assert e.value.code == 130
    assert f'i3-train --out {out} --resume' in capsys.readouterr().err
    ck = torch.load(out/'checkpoints'/'last.pt', weights_only=True)
    assert ck['step'] >= 2 and ck['step'] == len(losses(out))

@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_cli_gpu_preset_without_gpu_exits_cleanly(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        i3_train(preset='i3-80m', out=str(tmp_path/'x'))
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'no CUDA GPU' in err and '--preset demo' in err
    assert not (tmp_path/'x'/'checkpoints').exists()

def test_cli_rejects_unknown_settings(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        i3_train(preset='tiny', out=str(tmp_path), set=['stepz=3'])
    assert e.value.code == 2 and "unknown setting 'stepz'" in capsys.readouterr().err

# ------------------------------------------------------------------------------------------------ several processes

def test_ddp_two_cpu_processes_match_one_process(tmp_path, one_thread):
    "torchrun, 2 processes (gloo), global batch 4 = 2 x 2: the same weights as 1 process with batch 4."
    pytest.importorskip('torch.distributed.run')
    args = ['--preset', 'tiny', '--steps', 3, *FAST, 'eval_every=0', 'sample_every=0', 'batch_size=4']
    i3_train(preset='tiny', out=str(tmp_path/'one'), steps=3, set=FAST[1:] + ['eval_every=0', 'sample_every=0', 'batch_size=4'])
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        launcher('i3_train'), '--out', str(tmp_path/'two'), *map(str, args)],
                       capture_output=True, text=True, env=env(), timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    one = torch.load(tmp_path/'one'/'pytorch_model.bin', weights_only=True)
    two = torch.load(tmp_path/'two'/'pytorch_model.bin', weights_only=True)
    # The gradients are summed in another order (two halves, then averaged): float rounding, which AdamW can blow up
    # to lr-sized steps where a gradient is pure rounding noise (the key bias, whose true gradient is exactly 0). So
    # compare all weights at once: rounding gives ~1e-5 of the largest weight; a wrong split of the batch between
    # the processes gives lr-sized differences everywhere (~1e-2 of it).
    cat = lambda sd: torch.cat([v.flatten() for v in sd.values()])
    assert list(one) == list(two)
    assert_close(cat(two), cat(one), 1e-4, 'all weights after 3 steps, 2 processes vs 1')
    l1, l2 = losses(tmp_path/'one'), losses(tmp_path/'two')       # the global loss, all-reduced over the processes
    assert len(l1) == len(l2) == 3 and all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(l1, l2))


def test_a_finished_learner_leaves_nothing_alive(tmp_path, one_thread):
    "i3-train frees the Learner, and with it DDP's hold on the gloo process group, before destroying the group."
    # Left alive until interpreter shutdown, the DDP reducer's process group aborted rank 1 now and then
    # ('terminate called without an active exception'). i3_train drops its Learner and collects: that only
    # works if nothing else (a callback, a module global) keeps the Learner.
    import gc, weakref
    from i3_edu.train import train
    learn = train('tiny', out_dir=tmp_path, progress=False, steps=2, seq_len=16, eval_batches=2, sample_tokens=5,
                  wandb='off')
    ref = weakref.ref(learn)
    del learn
    gc.collect()
    assert ref() is None


def test_a_run_config_trains_the_same_run_again(tiny_run, tmp_path):
    "i3-train --config <a run's run_config.json> repeats that run exactly; a file that is not a run is refused."
    full, _ = tiny_run
    again = tmp_path/'again'
    cli('i3_train', '--config', full/'run_config.json', '--out', again)
    assert losses(again) == losses(full)
    (tmp_path/'bad.json').write_text('{"steps": 5}')
    for bad, words in ((tmp_path/'bad.json', "no ['preset', 'model_preset'"), (tmp_path/'none.json', 'cannot read it')):
        p = cli('i3_train', '--config', bad, '--out', tmp_path/'x', check=False)
        assert p.returncode == 2 and words in p.stderr and 'Traceback' not in p.stderr, p.stderr[-1500:]


def test_wandb_offline_run_follows_the_conventions_and_resumes_into_the_same_run(tmp_path, monkeypatch, one_thread):
    "train/ and val/ metrics, the best val/loss in the summary, the whole run as config, and one run id across resumes."
    pytest.importorskip('wandb')
    from i3_edu.callbacks import WandbCB
    from i3_edu.learner import Callback
    from i3_edu.train import train
    for k, v in dict(WANDB_SILENT='true', HOME=str(tmp_path), NETRC=str(tmp_path/'netrc')).items():
        monkeypatch.setenv(k, v)
    for k in ('WANDB_API_KEY', 'WANDB_MODE'):
        monkeypatch.delenv(k, raising=False)
    seen = []

    class Peek(Callback):
        order = 19                                   # after_fit runs before WandbCB's, which finishes the run
        def after_fit(self, learn):
            r = wcb.run
            for _ in range(100):                     # filled in by wandb's own process; the row of the last step
                if r.summary.get('_step') == learn.step - 1:     # is only committed when the run finishes
                    break
                time.sleep(0.1)
            seen.append(dict(id=r.id, name=r.name, group=r.group, tags=set(r.tags), config=dict(r.config),
                             summary=dict(r.summary), val_min=dict(r.summary['val/loss']).get('min')))

    out = tmp_path/'run'
    kw = dict(out_dir=out, progress=False, seq_len=16, eval_batches=2, sample_tokens=5, eval_every=2, steps=8,
              log_every=1)
    wcb = WandbCB('offline', init_timeout=60)
    first = train('tiny', until=5, cbs=[wcb, Peek()], **kw)
    rid = first.run_ids['wandb']
    assert torch.load(out/'checkpoints'/'last.pt', weights_only=True)['run_ids'] == {'wandb': rid}
    wcb = WandbCB('offline', init_timeout=60)
    second = train('tiny', resume=True, cbs=[wcb, Peek()], out_dir=out, progress=False)
    assert second.run_ids == {'wandb': rid} and [s['id'] for s in seen] == [rid, rid]
    a = seen[0]
    assert (a['name'], a['group']) == ('run', 'tiny') and {'tiny', 'cpu'} <= a['tags']
    assert {'preset', 'data', 'model', 'train', 'model_config'} <= set(a['config'])
    assert a['config']['data']['sources'] == 'demo' and a['config']['train']['steps'] == 8
    logged = {k for k in a['summary'] if not k.startswith('_')}
    assert {'train/loss', 'train/lr', 'train/grad_norm', 'train/tokens_per_s', 'val/loss'} <= logged
    assert not logged & {'lr', 'grad_norm', 'tokens_per_s', 'tokens'}            # no metric outside train/ or val/
    assert a['val_min'] == pytest.approx(min(first.history['val_loss']))          # the best, kept by define_metric
    runs = sorted(p.name for p in (out/'wandb').glob('offline-run-*'))
    assert len(runs) == 2 and all(f'-{rid}' in r for r in runs)                  # `wandb sync` joins them into one run


def test_init_starts_from_a_trained_model_and_its_tokenizer(tiny_run, tmp_path, one_thread):
    "--init: the run's first weights are the given model's, its data tokenized with that model's tokenizer."
    full, _ = tiny_run
    base = torch.load(full/'pytorch_model.bin', weights_only=True)
    p = cli('i3_train', '--preset', 'tiny', '--init', full, '--out', tmp_path/'ft', '--steps', 2, *FAST,
            'lr=1e-12', 'eval_every=0', 'sample_every=0', 'weight_decay=0', 'warmup=0')
    after = torch.load(tmp_path/'ft'/'pytorch_model.bin', weights_only=True)
    for k in base:                                        # a learning rate of 1e-12: the weights barely move
        assert_close(after[k], base[k], 1e-6, k)
    assert (tmp_path/'ft'/'tokenizer.json').read_text() == (full/'tokenizer.json').read_text()
    run = json.loads((tmp_path/'ft'/'run_config.json').read_text())
    assert run['init'] == str(full.resolve())
    fresh = torch.load(full/'checkpoints'/'last.pt', weights_only=True)['history']['loss'][0]
    assert losses(tmp_path/'ft')[0] < fresh - 0.5             # it starts where the trained model is, not at random
    # a setting that changes the weights' shapes, a missing model, and --init with --resume: one message, exit 2
    for args, words in ((['--out', tmp_path/'x', '--set', 'd_model=48'], 'change the shapes'),
                        (['--out', tmp_path/'y'], 'no folder'),
                        (['--out', tmp_path/'ft', '--resume'], 'drop --init')):
        init = tmp_path/'nowhere' if words == 'no folder' else full
        q = cli('i3_train', '--preset', 'tiny', '--init', init, *args, check=False)
        assert q.returncode == 2 and words in q.stderr and 'Traceback' not in q.stderr, q.stderr[-1500:]
