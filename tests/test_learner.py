"""The trainer (i3_edu.learner): schedule, exact resume, Ctrl-C, NaN guard, accumulation, samples, metrics, widget, wandb.

A tiny stand-in model and a character-level data set keep these tests fast and independent of the model and data
chapters; one test at the end runs the real i3Model ('tiny' preset)."""
import json, math, os, signal
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from i3_edu.core import set_seed, assert_close
from i3_edu.learner import lr_at, plot_lr, TrainConfig, Learner, Callback, NonFiniteLossError, Batches
from i3_edu.callbacks import LiveLossCB, MetricsCB, WandbCB, read_metrics, wandb_mode, plot_history, default_callbacks

# ------------------------------------------------------------------------------------------------ stand-ins

class TinyLM(nn.Module):
    "Embedding, a causal running mean, a linear head: forward(x, y) -> (logits, loss) like i3Model."
    def __init__(self, V, D=16, T=32):
        super().__init__()
        self.emb, self.pos, self.mix, self.head = nn.Embedding(V, D), nn.Embedding(T, D), nn.Linear(D, D), nn.Linear(D, V)
    def forward(self, idx, targets=None):
        T = idx.shape[1]
        x = self.emb(idx) + self.pos(torch.arange(T, device=idx.device))                    # (B, T, D)
        x = x + torch.tanh(self.mix(x.cumsum(1) / torch.arange(1, T + 1, device=idx.device)[:, None]))
        logits = self.head(x)                                                                 # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

class Split:
    def __init__(self, ids): self.tokens = torch.as_tensor(ids)
    def __len__(self): return len(self.tokens)
    def sample(self, batch_size, seq_len, generator=None, device='cpu', cross_docs=True):
        i = torch.randint(0, len(self.tokens) - seq_len - 1, (batch_size,), generator=generator)
        w = self.tokens[i[:, None] + torch.arange(seq_len + 1)]                               # (B, T+1)
        return w[:, :-1].to(device), w[:, 1:].to(device)

class CharTok:
    def __init__(self, text):
        self.chars = sorted(set(text))
        self.s2i = {c: i for i, c in enumerate(self.chars)}
    @property
    def vocab_size(self): return len(self.chars)
    def encode(self, t): return [self.s2i[c] for c in t if c in self.s2i]
    def decode(self, ids): return ''.join(self.chars[i] for i in ids)

class Bundle:
    def __init__(self):
        text = 'hello there. user: tell me a story. once upon a time a cat sat on a mat. ' * 60
        self.tokenizer = CharTok(text)
        ids = self.tokenizer.encode(text)
        n = int(0.9 * len(ids))
        self.train, self.val = Split(ids[:n]), Split(ids[n:])

DATA = Bundle()

def cfg(tmp=None, **kw):
    base = dict(steps=12, batch_size=4, seq_len=16, lr=3e-3, warmup=3, eval_every=4, eval_batches=2, sample_tokens=5,
                log_every=2, wandb='off', out_dir=str(tmp) if tmp else '')
    return TrainConfig(**{**base, **kw})

def learner(c, cbs=(), **kw):
    set_seed(0)
    return Learner(TinyLM(DATA.tokenizer.vocab_size), DATA, c, cbs=cbs, **kw)

class At(Callback):
    "Call `fn(learn)` once, before the step that follows `step` completed steps."
    all_ranks = True
    def __init__(self, step, fn): self.at, self.fn, self.done = step, fn, False
    def before_step(self, learn):
        if learn.step == self.at and not self.done:
            self.done = True
            self.fn(learn)

# ------------------------------------------------------------------------------------------------ schedule

def test_lr_at_is_the_reference_schedule():
    lr = 3e-4
    for s in range(5000):
        ref = lr * (s + 1) / 100 if s < 100 else lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 100) / (5000 - 100))))
        assert lr_at(s, lr) == pytest.approx(ref, rel=1e-15, abs=0)
    assert lr_at(0, lr) == lr / 100 and lr_at(99, lr) == lr and lr_at(100, lr) == lr
    assert lr_at(4999, lr) == pytest.approx(0.1 * lr, rel=1e-5) and lr_at(10_000, lr) == pytest.approx(0.1 * lr)
    fig = plot_lr()
    assert fig.axes and fig._repr_png_()[:4] == b'\x89PNG'     # shown as an image in Jupyter, with or without pyplot

# ------------------------------------------------------------------------------------------------ exact resume

def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    full = learner(cfg(tmp_path/'full')).fit()
    part = learner(cfg(tmp_path/'part')).fit(until=7)              # stop at step 7 (not a checkpoint multiple)
    assert part.step == 7 and part.last_ckpt[1] == 7
    resumed = learner(cfg(tmp_path/'part')).load(tmp_path/'part'/'checkpoints'/'last.pt').fit()
    assert resumed.step == 12
    assert resumed.history['loss'] == full.history['loss']          # exactly, not approximately
    assert resumed.history['val_loss'] == full.history['val_loss']
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k

def test_crash_between_checkpoints_resumes_from_the_last_one(tmp_path):
    "A run that dies (no chance to save) at step 6 resumes from the periodic checkpoint of step 4."
    full = learner(cfg(tmp_path/'full', ckpt_every=4)).fit()
    def crash(learn): raise RuntimeError('power cut')
    out = tmp_path/'crash'
    lrn = learner(cfg(out, ckpt_every=4), cbs=[MetricsCB(out/'metrics.jsonl'), At(6, crash)])
    with pytest.raises(RuntimeError, match='power cut'):
        lrn.fit()
    assert torch.load(out/'checkpoints'/'last.pt', weights_only=True)['step'] == 4
    resumed = learner(cfg(out, ckpt_every=4), cbs=[MetricsCB(out/'metrics.jsonl')])
    resumed.load(out/'checkpoints'/'last.pt').fit()
    assert resumed.history['loss'] == full.history['loss']
    steps = [r['step'] for r in read_metrics(out/'metrics.jsonl') if r['kind'] == 'train']
    assert steps == list(range(1, 13))                             # records past the checkpoint were dropped, no gaps

def test_keyboard_interrupt_saves_a_checkpoint(tmp_path, capsys):
    full = learner(cfg(tmp_path/'full')).fit()
    def ctrl_c(learn): raise KeyboardInterrupt
    lrn = learner(cfg(tmp_path/'int'), cbs=[At(5, ctrl_c)])
    with pytest.raises(KeyboardInterrupt):
        lrn.fit()
    assert 'interrupted at step 5/12' in capsys.readouterr().err
    ck = tmp_path/'int'/'checkpoints'/'last.pt'
    assert torch.load(ck, weights_only=True)['step'] == 5
    resumed = learner(cfg(tmp_path/'int')).load(ck).fit()
    assert resumed.history['loss'] == full.history['loss']

def test_sigint_finishes_the_step_then_saves(tmp_path, capsys):
    "A real SIGINT (Ctrl-C) lets the running step finish, saves, then raises KeyboardInterrupt."
    lrn = learner(cfg(tmp_path), cbs=[At(3, lambda learn: os.kill(os.getpid(), signal.SIGINT))])
    before = signal.getsignal(signal.SIGINT)                        # Python's default, or SIG_IGN in a background job
    with pytest.raises(KeyboardInterrupt):
        lrn.fit()
    assert lrn.step == 4                                            # the step during which Ctrl-C came was completed
    assert torch.load(tmp_path/'checkpoints'/'last.pt', weights_only=True)['step'] == 4
    assert signal.getsignal(signal.SIGINT) is before                # restored to whatever it was
    assert 'Ctrl-C' in capsys.readouterr().err

def test_request_stop_ends_fit_cleanly_and_resumes_exactly(tmp_path, capsys):
    "A callback's `request_stop` ends the run at that step with `last.pt` saved and no exception; resume is exact."
    full = learner(cfg(tmp_path/'full')).fit()
    lrn = learner(cfg(tmp_path/'stop'), cbs=[At(5, lambda learn: learn.request_stop('no improvement'))]).fit()
    assert lrn.step == 6                                            # the step that had begun finishes, then it stops
    assert 'stopped at step 6/12: no improvement' in capsys.readouterr().err
    ck = tmp_path/'stop'/'checkpoints'/'last.pt'
    assert torch.load(ck, weights_only=True)['step'] == 6
    resumed = learner(cfg(tmp_path/'stop')).load(ck).fit()
    assert resumed.step == 12 and resumed.history['loss'] == full.history['loss']

# ------------------------------------------------------------------------------------------------ NaN guard

def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def poison(learn):
        with torch.no_grad():
            learn.model.head.bias.fill_(float('nan'))
    lrn = learner(cfg(tmp_path, ckpt_every=3), cbs=[At(7, poison)])
    with pytest.raises(NonFiniteLossError) as e:
        lrn.fit()
    msg = str(e.value)
    assert 'step 8' in msg and 'last.pt' in msg and '(step 6)' in msg, msg
    ck = torch.load(tmp_path/'checkpoints'/'last.pt', weights_only=True)
    assert ck['step'] == 6 and all(torch.isfinite(v).all() for v in ck['model'].values())

# ------------------------------------------------------------------------------------------------ the step itself

def test_gradient_accumulation_matches_the_full_batch():
    ws = []
    for acc in (1, 2, 4):
        lrn = learner(cfg(steps=5, eval_every=0, grad_accum=acc)).fit()
        ws.append(torch.cat([p.detach().flatten() for p in lrn.model.parameters()]))
    # Adam magnifies the rounding of tiny gradients; with one CPU thread the error reaches 2e-5 (chapter 06)
    assert_close(ws[1], ws[0], 1e-4, 'weights, grad_accum 2 vs 1')
    assert_close(ws[2], ws[0], 1e-4, 'weights, grad_accum 4 vs 1')

def test_clipping_and_records():
    lrn = learner(cfg(steps=6, eval_every=3, grad_clip=1e-3, lr=1e-2)).fit()
    h = lrn.history
    assert h['step'] == list(range(1, 7)) and h['val_step'] == [3, 6]
    assert all(g > 1e-3 for g in h['grad_norm'])                   # the norm before clipping is what is reported
    assert h['lr'] == [lr_at(s, 1e-2, 3, 6) for s in range(6)]

def test_bf16_autocast_on_cpu_when_asked():
    lrn = learner(cfg(steps=2, eval_every=2, dtype='bf16'))
    assert lrn.amp_dtype == torch.bfloat16
    lrn.fit()
    assert all(math.isfinite(l) for l in lrn.history['loss'])
    assert learner(cfg()).amp_dtype is None                        # float32 on the CPU by default

def test_config_checks():
    with pytest.raises(ValueError, match='multiple of grad_accum'):
        TrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match='unknown TrainConfig fields'):
        TrainConfig.from_dict({'stepz': 3})
    c = TrainConfig.from_dict(json.loads(json.dumps(TrainConfig().__dict__)))
    assert c == TrainConfig() and c.sample_every == 500 and c.ckpt_every == 500

# ------------------------------------------------------------------------------------------------ samples and logs

def test_sampling_errors_are_reported_not_swallowed(tmp_path, capsys):
    def broken(model, tok, prompt, **kw): raise ValueError(f'cannot sample {prompt!r}')
    lrn = learner(cfg(tmp_path, steps=4), cbs=[MetricsCB(tmp_path/'m.jsonl')], sample_fn=broken).fit()
    err = capsys.readouterr().err
    assert "sampling failed at step 4 for prompt 'hello'" in err and 'ValueError' in err
    recs = [r for r in read_metrics(tmp_path/'m.jsonl') if r['kind'] == 'sample']
    assert len(recs) == 3 and all(r['error'].startswith('ValueError') for r in recs)

def test_samples_and_metrics_file(tmp_path):
    lrn = learner(cfg(tmp_path, steps=4), cbs=[MetricsCB(tmp_path/'m.jsonl')]).fit()
    assert [s['prompt'] for s in lrn.samples] == ['hello', 'user: tell me', 'once upon a time']
    assert all(s['text'].startswith(s['prompt']) for s in lrn.samples)
    recs = read_metrics(tmp_path/'m.jsonl')
    assert recs[0]['kind'] == 'config' and recs[0]['train']['steps'] == 4
    kinds = [r['kind'] for r in recs]
    assert kinds.count('train') == 4 and kinds.count('eval') == 1 and kinds.count('sample') == 3
    ev = next(r for r in recs if r['kind'] == 'eval')
    assert ev['val_ppl'] == pytest.approx(math.exp(ev['val_loss']))

def test_sampling_does_not_change_the_training_run():
    a = learner(cfg(steps=6, eval_every=2)).fit()
    b = learner(cfg(steps=6, eval_every=2, sample_every=0)).fit()
    assert a.history['loss'] == b.history['loss'] and len(a.samples) == 9 and not b.samples

def test_live_widget_updates_in_place():
    pytest.importorskip('ipywidgets')
    cb = LiveLossCB(every=2, plot_every_s=1e9, notebook=True, show_final=False)   # redraw the plot at evals only
    seen = []
    class Spy(Callback):
        order = 20
        def log(self, learn, rec):
            if rec['kind'] == 'train':
                seen.append((cb.text.value, len(cb.image.value)))
    lrn = learner(cfg(steps=6, eval_every=3, sample_every=0), cbs=[cb, Spy()]).fit()
    assert 'i3-live-loss' in cb.widget._dom_classes
    texts, sizes = zip(*seen)
    assert texts[-1].startswith('step 6/6') and 'val loss' in texts[-1]
    assert len(set(texts)) >= 3 and len(set(sizes)) >= 2 and cb.image.value[:4] == b'\x89PNG'
    assert plot_history(lrn.history).axes

def test_console_progress_bar_outside_a_notebook(capsys):
    learner(cfg(steps=4, eval_every=2), cbs=[LiveLossCB(notebook=False, show_final=False)]).fit()
    err = capsys.readouterr().err
    assert '4/4' in err and 'val loss' in err

# ------------------------------------------------------------------------------------------------ wandb

def test_wandb_mode_is_decided_before_init(monkeypatch, tmp_path):
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.setenv('NETRC', str(tmp_path/'netrc'))
    for k in ('WANDB_API_KEY', 'WANDB_MODE', 'IN_TEST'):
        monkeypatch.delenv(k, raising=False)
    assert wandb_mode('off') is None and wandb_mode('auto') is None          # no key: auto means no wandb
    assert wandb_mode('online') == 'offline' and wandb_mode('offline') == 'offline'
    (tmp_path/'netrc').write_text('machine api.wandb.ai login user password 0123456789abcdef\n')
    assert wandb_mode('auto') == 'online' and wandb_mode('online') == 'online'
    monkeypatch.setenv('IN_TEST', '1')
    assert wandb_mode('auto') is None    # tests never log by accident
    monkeypatch.setenv('WANDB_MODE', 'disabled')
    assert wandb_mode('online') is None and wandb_mode('offline') is None
    monkeypatch.setenv('WANDB_MODE', 'offline')
    assert wandb_mode('online') == 'offline'
    assert default_callbacks(cfg(), progress=False) == []

def test_wandb_offline_needs_no_key_and_no_network(monkeypatch, tmp_path):
    pytest.importorskip('wandb')
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.setenv('NETRC', str(tmp_path/'netrc'))
    monkeypatch.setenv('WANDB_SILENT', 'true')
    for k in ('WANDB_API_KEY', 'WANDB_MODE'):
        monkeypatch.delenv(k, raising=False)
    cb = WandbCB('offline', init_timeout=60)
    lrn = learner(cfg(tmp_path, steps=4, eval_every=2), cbs=[cb]).fit()
    assert cb.mode == 'offline' and cb.run is None                           # finished
    runs = list((tmp_path/'wandb').glob('offline-run-*'))
    assert len(runs) == 1 and list(runs[0].glob('*.wandb'))

# ------------------------------------------------------------------------------------------------ the real model

def test_trains_the_real_i3_model():
    model = pytest.importorskip('i3_edu.model')
    set_seed(0)
    m = model.i3Model(model.i3Config.preset('tiny', vocab_size=DATA.tokenizer.vocab_size, max_seq_len=16))
    lrn = Learner(m, DATA, cfg(steps=8, eval_every=8, lr=1e-2), sample_fn=lambda m, t, p, **kw: p + '...').fit()
    assert lrn.history['val_loss'][-1] < math.log(DATA.tokenizer.vocab_size)


def test_data_without_sample_is_refused_with_a_clear_message():
    assert isinstance(DATA.train, Batches)                      # the stand-in split offers the protocol
    with pytest.raises(TypeError, match='has no sample'):
        Learner(TinyLM(8), [1, 2, 3])
