"""Tests for i3_edu.model against a standalone transcription of the reference (tests/i3_reference_model.py): layout,
init, logits, checkpoints both ways, parameter counts, stateful generation vs the reference re-run loop."""
import copy, json
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from i3_edu.core import assert_close, set_seed
from i3_edu.model import (PRESETS, i3Config, i3Model, i3Block, reference_shapes, param_summary, plot_param_share,
                          check_state_dict, load_checked, sample_next, generate_ids, generate, attention_maps,
                          generation_step_times,
                          plot_generation_cost, next_token_probs, plot_next_token, MIXERS, heal_prompt)
import i3_reference_model as ref_lib
from i3_edu.pretrained import config_json, config_from_json, save_pretrained, load_pretrained



pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py

def ref_for(cfg):
    return ref_lib.i3Model(cfg.vocab_size, cfg.d_model, cfg.n_heads, cfg.max_seq_len, cfg.d_state, cfg.n_hybrid, cfg.n_attn)


def small_cfg(**kw):
    return i3Config.preset('tiny', **{'vocab_size': 100, **kw})


def stress(model, seed=0):
    "Give a model weights far from its init (larger hybrid dynamics and logits) so comparisons are not trivially easy."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('hybrid.A'):   # spectral radius about 0.9: long memory
                q, _ = torch.linalg.qr(torch.randn(p.shape, generator=g))
                p.copy_(0.9 * q)
            elif name.endswith('hybrid.w_mix'):
                p.copy_(torch.rand(p.shape, generator=g) * 0.98)
            elif name.endswith(('hybrid.B', 'hybrid.C')):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif p.ndim == 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


class FakeTokenizer:
    vocab_size = 100


# ---------------------------------------------------------------- configuration

def test_presets_are_valid():
    for name in PRESETS:
        assert i3Config.preset(name).validate() is not None
    assert i3Config.preset('i3-80m') == i3Config()
    c = i3Config()
    assert (c.vocab_size, c.d_model, c.n_heads, c.d_state, c.max_seq_len, c.n_hybrid, c.n_attn, c.n_layers) == \
        (35560, 512, 16, 32, 256, 10, 6, 16)


@pytest.mark.parametrize('kw,msg', [(dict(d_model=100, n_heads=16), 'not divisible'), (dict(hybrid_mode='x'), 'hybrid_mode'),
                                    (dict(attn_mode='x'), 'attn_mode'), (dict(max_seq_len=0), 'max_seq_len'),
                                    (dict(n_hybrid=0, n_attn=0), 'at least one block'), (dict(colour=1), 'unknown config')])
def test_invalid_configs(kw, msg):
    with pytest.raises(ValueError, match=msg):
        i3Config.preset('i3-80m', **kw)
    with pytest.raises(ValueError, match='unknown preset'):
        i3Config.preset('i3-1b')


def test_vocab_mismatch_with_tokenizer():
    tok = FakeTokenizer()
    assert i3Config.preset('tiny', tokenizer=tok).vocab_size == 100
    with pytest.raises(ValueError, match='vocabulary mismatch'):
        i3Config.preset('tiny').validate(tok)


# ---------------------------------------------------------------- layout, counts, init

def test_i3_80m_layout_and_count():
    cfg = i3Config.preset('i3-80m')
    with torch.device('meta'):
        m, r = i3Model(cfg), ref_for(cfg)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert len(shapes) == 208
    assert shapes == reference_shapes(cfg) == {k: tuple(v.shape) for k, v in r.state_dict().items()}
    t = param_summary(m)
    assert t.total == 76_861_160 == sum(p.numel() for p in m.parameters())
    assert dict((c, p) for c, _, p in t)['token embedding'] == 35560 * 512
    assert '76,861,160' in str(t) and '76,861,160' in t._repr_markdown_()
    with torch.device('meta'):
        card = i3Model(i3Config.preset('i3-80m', vocab_size=41_320))
    assert param_summary(card).total == 82_765_160 and 82_765_160 - 76_861_160 == 5_760 * 1_025


def test_i3_80m_init_on_cpu():
    set_seed(0)
    m = i3Model(i3Config.preset('i3-80m'))
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == reference_shapes(m.cfg)
    for name, mod in m.named_modules():
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            assert abs(mod.weight.std().item() - 0.02) < 0.002, name
            if getattr(mod, 'bias', None) is not None:
                assert (mod.bias == 0).all(), name
        if isinstance(mod, nn.LayerNorm):
            assert (mod.weight == 1).all() and (mod.bias == 0).all() and mod.eps == 1e-5
    for b in m.layers[:10]:      # the init loop must not touch the hybrid parameters
        h = b.hybrid
        assert (h.w_mix == 0.5).all() and (h.D == 0.1).all()
        for p in (h.A, h.B, h.C):
            assert abs(p.std().item() - 0.01) < 0.002
    assert [b.kind for b in m.layers] == ['hybrid'] * 10 + ['attn'] * 6
    assert isinstance(m.layers[0].ffn[1], nn.GELU) and m.layers[0].ffn[1].approximate == 'none'
    assert m.head.bias is not None and m.head.weight.data_ptr() != m.embed.weight.data_ptr()
    with torch.no_grad():
        logits, _ = m(torch.randint(0, 35560, (1, 8)))
    assert logits.shape == (1, 8, 35560)


def test_same_seed_same_weights_as_reference():
    cfg = small_cfg()
    set_seed(3)
    r = ref_for(cfg)
    set_seed(3)
    m = i3Model(cfg)
    a, b = r.state_dict(), m.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- same function as the reference

@pytest.mark.parametrize('modes', [('loop', 'naive'), ('scan', 'sdpa'), ('loop', 'sdpa'), ('scan', 'naive')])
def test_reference_weights_load_strictly_same_logits(modes):
    cfg = small_cfg()
    set_seed(0)
    r = stress(ref_for(cfg))
    m = i3Model(cfg).set_modes(*modes)
    m.load_state_dict(r.state_dict(), strict=True)
    idx = torch.randint(0, 100, (2, cfg.max_seq_len))
    with torch.no_grad():
        (lr, loss_r), (lm, loss_m) = r(idx, idx), m(idx, idx)
    assert_close(lm, lr, 1e-5, f'logits {modes}')
    assert_close(loss_m, loss_r, 1e-5, 'loss')
    r64, m64 = copy.deepcopy(r).double(), copy.deepcopy(m).double()
    with torch.no_grad():
        assert_close(m64(idx)[0], r64(idx)[0], 1e-10, f'logits float64 {modes}')


def test_library_weights_load_strictly_into_reference():
    cfg = small_cfg()
    set_seed(1)
    m = stress(i3Model(cfg))
    r = ref_for(cfg)
    r.load_state_dict(m.state_dict(), strict=True)
    idx = torch.randint(0, 100, (3, 20))
    with torch.no_grad():
        assert_close(m(idx)[0], r(idx)[0], 1e-5, 'logits')


def test_loss_ignores_masked_targets():
    set_seed(0)
    m = i3Model(small_cfg())
    idx = torch.randint(0, 100, (2, 10))
    tgt = idx.clone()
    tgt[:, :4] = -100
    logits, loss = m(idx, tgt)
    expect = nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 100), idx[:, 4:].reshape(-1))
    assert_close(loss, expect, 1e-6, 'masked loss')


def test_forward_errors():
    m = i3Model(small_cfg())
    with pytest.raises(ValueError, match='max_seq_len'):
        m(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match='outside the vocabulary'):
        m(torch.full((1, 3), 100))
    with pytest.raises(ValueError, match='empty'):
        m(torch.zeros(1, 0, dtype=torch.long))
    _, st = m.prefill(torch.zeros(1, 30, dtype=torch.long))
    with pytest.raises(ValueError, match='max_seq_len'):
        m.step(torch.zeros(1, 3, dtype=torch.long), st)
    with pytest.raises(ValueError, match='kind'):
        i3Block(small_cfg(), 'conv')


def test_prefill_and_steps_equal_full_forward():
    set_seed(0)
    m = stress(i3Model(small_cfg()))
    idx = torch.randint(0, 100, (2, 32))
    with torch.no_grad():
        full, _ = m(idx)
        out, st = m.prefill(idx[:, :5])
        outs = [out]
        for t in range(5, 20):
            outs.append(m.step(idx[:, t:t + 1], st)[0])
        outs.append(m.step(idx[:, 20:], st)[0])
    assert st.pos == 32
    assert_close(torch.cat(outs, 1), full, 1e-5, 'stateful logits')


# ---------------------------------------------------------------- generation

@pytest.mark.parametrize('prompt_len,n_new', [(5, 20), (5, 45), (40, 6)])   # inside, across, and past the window
def test_generation_matches_reference_rerun(prompt_len, n_new):
    cfg = small_cfg()
    set_seed(0)
    r = stress(ref_for(cfg))
    m = i3Model(cfg)
    m.load_state_dict(r.state_dict())
    prompt = torch.randint(0, 100, (2, prompt_len))
    ids_r, logits_r = r.generate(prompt, n_new, top_k=1, return_logits=True)        # greedy reference re-run
    steps = []
    ids_s = generate_ids(m, prompt, n_new, top_k=1, callback=lambda ids, logits: steps.append(logits))  # stateful
    logits_s = torch.stack(steps, 1)
    assert torch.equal(ids_s, ids_r)
    for t in range(n_new):
        assert_close(logits_s[:, t], logits_r[:, t], 1e-5, f'logits step {t}')
    assert torch.equal(generate_ids(m, prompt, n_new, temperature=0), ids_r)        # temperature 0 is greedy too
    ids_f = generate_ids(copy.deepcopy(m).set_modes('loop', 'naive'), prompt, n_new, top_k=1, stateful=False)
    assert torch.equal(ids_f, ids_r)
    torch.manual_seed(11)
    ids_rs = r.generate(prompt, n_new, temperature=0.9, top_k=30)  # sampled, same seed
    assert torch.equal(generate_ids(m, prompt, n_new, temperature=0.9, top_k=30, seed=11), ids_rs)


def test_generate_ids_errors_and_mode_restore():
    m = i3Model(small_cfg()).train()
    with pytest.raises(ValueError, match='empty'):
        generate_ids(m, torch.zeros(1, 0, dtype=torch.long))
    out = generate_ids(m, torch.zeros(1, 2, dtype=torch.long), 3, seed=0)
    assert out.shape == (1, 5) and m.training
    seen = []
    generate_ids(m, torch.zeros(1, 2, dtype=torch.long), 4, seed=0, callback=lambda ids, logits: seen.append((ids, logits)))
    assert len(seen) == 4 and seen[0][0].shape == (1,) and seen[0][1].shape == (1, 100)


def test_sample_next():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.0, top_k=2, generator=g) for _ in range(200)])
    assert set(draws[:, 0].tolist()) <= {1, 3}
    p = logits[0].softmax(-1)                                   # sorted: 0.644 (1), 0.237 (3), 0.087 (2), 0.032 (0)
    draws = torch.stack([sample_next(logits, 1.0, top_p=0.8, generator=g) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {1, 3} and p[1] < 0.8 < p[1] + p[3]
    assert set(sample_next(logits, 1.0, top_p=0.5, generator=g).tolist()) <= {1, 0}
    with pytest.raises(ValueError):
        sample_next(logits, -1.0)
    with pytest.raises(ValueError):
        sample_next(logits, 1.0, top_p=0.0)


# ---------------------------------------------------------------- checkpoints

def test_load_checked_lists_problems_and_loads_nothing():
    set_seed(0)
    m = i3Model(small_cfg())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    sd = i3Model(small_cfg(d_state=4)).state_dict()
    sd['extra.weight'] = torch.zeros(1)
    del sd['ln_f.bias']
    probs = check_state_dict(m, sd)
    assert any(p.startswith('missing: ln_f.bias') for p in probs)
    assert any(p.startswith('unexpected: extra.weight') for p in probs)
    assert any('layers.0.hybrid.A checkpoint (4, 4) vs model (8, 8)' in p for p in probs)
    with pytest.raises(ValueError, match='does not fit') as e:
        load_checked(m, sd)
    assert 'layers.1.hybrid.C' in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert check_state_dict(m, before) == [] and load_checked(m, before) is m


def test_config_json_fields():
    cfg = i3Config.preset('i3-80m')
    d = config_json(cfg, ['roneneldan/TinyStories'])
    assert d['architectures'] == ['i3Model'] and d['model_type'] == 'i3' and d['tokenizer_type'] == 'chunk'
    assert (d['n_layers'], d['conv_layers'], d['attn_layers'], d['d_state'], d['torch_dtype']) == (16, 10, 6, 32, 'float32')
    assert config_from_json(d) == cfg
    with pytest.raises(ValueError, match='n_layers'):
        config_from_json({**d, 'n_layers': 12})


def test_reference_config_with_wrong_d_state_is_corrected():
    cfg = small_cfg()
    d = config_json(cfg)
    d['d_state'] = 64
    del d['i3_edu']
    sd = i3Model(cfg).state_dict()
    with pytest.warns(UserWarning, match='d_state'):
        c = config_from_json(d, sd)
    assert c.d_state == cfg.d_state


@pytest.fixture(scope='module')
def tok():
    tk = pytest.importorskip('i3_edu.tokenizer')
    texts = ['once upon a time there was a little cat.', 'user: tell me a story about the sea.',
             'the quick brown fox jumps over the lazy dog.'] * 3
    return tk.ChunkTokenizer.build(texts, progress=False)


def test_save_load_roundtrip(tok, tmp_path):
    cfg = i3Config.preset('tiny', tokenizer=tok)
    set_seed(0)
    m = stress(i3Model(cfg))
    save_pretrained(m, tok, tmp_path, safetensors=True, dataset_sources=['demo'])
    assert {p.name for p in tmp_path.iterdir()} == {'pytorch_model.bin', 'model.safetensors', 'config.json', 'tokenizer.json',
                                                    'README.md'}
    d = json.loads((tmp_path / 'config.json').read_text())
    assert d['dataset_sources'] == ['demo'] and d['vocab_size'] == tok.vocab_size
    sd = torch.load(tmp_path / 'pytorch_model.bin', weights_only=True)
    assert {k: tuple(v.shape) for k, v in sd.items()} == reference_shapes(cfg)
    r = ref_for(cfg)
    r.load_state_dict(sd, strict=True)                 # the reference reads our file
    idx = torch.tensor([tok.encode('once upon a time')])
    for drop in (None, 'model.safetensors'):
        if drop:
            (tmp_path / drop).unlink()
        m2, tok2 = load_pretrained(tmp_path)
        with torch.no_grad():
            assert torch.equal(m2(idx)[0], m(idx)[0])
            assert_close(r(idx)[0], m(idx)[0], 1e-5, 'reference with our file')
        assert tok2.chunk_to_idx == tok.chunk_to_idx and not m2.training


@pytest.mark.filterwarnings('ignore:config.json says d_state', 'ignore:n_heads=')
def test_load_pretrained_reference_folder_and_errors(tok, tmp_path):
    cfg = i3Config.preset('tiny', tokenizer=tok)
    set_seed(0)
    r = ref_for(cfg)
    torch.save(r.state_dict(), tmp_path / 'pytorch_model.bin')              # as the reference writes it
    d = config_json(cfg)
    d['d_state'] = 64
    del d['i3_edu']
    (tmp_path / 'config.json').write_text(json.dumps(d))
    tok.save(tmp_path / 'chunk_vocab_combined.json')
    with pytest.warns(UserWarning, match='d_state'):
        m, _ = load_pretrained(tmp_path)
    idx = torch.tensor([tok.encode('the lazy dog')])
    with torch.no_grad():
        assert_close(m(idx)[0], r(idx)[0], 1e-5, 'reference checkpoint logits')
    d['vocab_size'] = tok.vocab_size + 1                              # a config that disagrees: the weights win
    (tmp_path / 'config.json').write_text(json.dumps(d))
    with pytest.warns(UserWarning, match=f'vocab_size={tok.vocab_size + 1} but the weights have vocab_size={tok.vocab_size}'):
        m, _ = load_pretrained(tmp_path)
    assert m.cfg.vocab_size == tok.vocab_size
    tok.truncate(10).save(tmp_path / 'chunk_vocab_combined.json')     # a vocabulary of another size: refused
    with pytest.raises(ValueError, match='has 11 entries'):
        load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / 'nowhere')


def test_generate_text(tok):
    cfg = i3Config.preset('tiny', tokenizer=tok)
    set_seed(0)
    m = i3Model(cfg)
    with pytest.raises(ValueError, match='empty'):
        generate(m, tok, '')
    with pytest.raises(ValueError, match='vocabulary mismatch'):
        generate(i3Model(small_cfg(vocab_size=7)), tok, 'hi')
    text = generate(m, tok, 'Once upon a ☃', max_new_tokens=5, seed=0)     # unknown character: tokenizer rules
    assert text.startswith(tok.decode(tok.encode('Once upon a ☃')))
    assert text == generate(m, tok, 'Once upon a ☃', max_new_tokens=5, seed=0, stateful=False)
    pieces = []
    t2 = generate(m, tok, 'hello', max_new_tokens=6, seed=1, stream=pieces.append, heal=False)
    assert len(pieces) == 6 and t2 == tok.decode(tok.encode('hello')) + ''.join(pieces)
    p = next_token_probs(m, tok, 'hello')
    assert p.shape == (tok.vocab_size,) and abs(p.sum().item() - 1) < 1e-5
    assert isinstance(plot_next_token(m, tok, 'hello', k=5), plt.Figure)
    plt.close('all')


def test_token_healing():
    "A partial last chunk is backed up over and the first new token starts with its text; whole chunks: no change."
    from i3_edu.demo import demo_corpus
    from i3_edu.tokenizer import ChunkTokenizer, chunk_text
    tok = ChunkTokenizer.build([t for d in demo_corpus(scale=0.05).values() for t in d], progress=False)
    set_seed(0)
    m = i3Model(i3Config.preset('tiny', tokenizer=tok))
    for p in ('hello', 'once upon a time', 'user: tell me'):
        ids, first = heal_prompt(tok, p)
        tail = chunk_text(p)[-1]
        assert tok.encode(p)[-1] == tok.unk_idx and ids == tok.encode(p)[:-1] and tail
        assert first and sorted(first) == sorted(i for c, i in tok.chunk_to_idx.items() if c.startswith(tail) and i)
        for seed in range(5):
            seen = []
            text = generate(m, tok, p, max_new_tokens=4, seed=seed, temperature=1.5,
                            stream=seen.append)
            assert seen[0].startswith(tail) and text.startswith(tok.decode(ids) + tail)   # the word goes on
    # the first token is sampled only among the allowed ids, from the renormalised distribution
    ids, first = heal_prompt(tok, 'hello')
    out = generate_ids(m, torch.tensor([ids]), 1, temperature=0, first_ids=first)
    with torch.no_grad():
        logits = m(torch.tensor([ids]))[0][0, -1]
    assert out[0, -1].item() == max(first, key=lambda i: logits[i].item())
    # prompts that end on a known chunk, or whose tail starts no chunk, are not touched
    for p in ('once upon a t', 'hi ☃', 'o'):
        assert heal_prompt(tok, p) == (tok.encode(p), None)
        assert generate(m, tok, p, 6, seed=2, temperature=1.0) == generate(m, tok, p, 6, seed=2, temperature=1.0, heal=False)


# ---------------------------------------------------------------- helpers and figures

def test_attention_maps():
    set_seed(0)
    m = i3Model(small_cfg(n_attn=2))
    idx = torch.randint(0, 100, (1, 9))
    w = attention_maps(m, idx)
    assert w.shape == (2, 1, 4, 9, 9)
    assert torch.allclose(w.sum(-1), torch.ones(2, 1, 4, 9)) and (w[..., 0, 1:] == 0).all()


def test_param_summary_and_plots():
    m = i3Model(small_cfg())
    t = param_summary(m)
    assert t.total == sum(p.numel() for p in m.parameters())
    assert [r[0] for r in t][0] == 'token embedding'
    assert isinstance(plot_param_share(m), plt.Figure)
    lengths = [1, 4, 8]
    times = generation_step_times(m, lengths, reps=1)
    assert set(times) == {'re-run, loop + naive (reference)', 're-run, fast modes', 'stateful step'}
    assert all(len(v) == 3 and min(v) > 0 for v in times.values())
    assert m.cfg.hybrid_mode == 'scan' and m.cfg.attn_mode == 'sdpa'                 # modes restored
    assert isinstance(plot_generation_cost(lengths, times), plt.Figure)
    plt.close('all')

def test_chunked_cross_entropy_is_the_full_loss():
    "Value and gradients of F.cross_entropy on all logits, for chunks that do not divide N, ignored positions, bf16."
    from i3_edu.model import chunked_cross_entropy
    torch.manual_seed(0)
    h, W, b = torch.randn(70, 8), 0.5 * torch.randn(30, 8), torch.randn(30)
    y = torch.randint(0, 30, (70,))
    y[:25] = -100                                                   # the whole first chunk is ignored
    for autocast in (False, True):
        ps = [t.clone().requires_grad_() for t in (h, W, b)]
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            full = F.cross_entropy(ps[0] @ ps[1].T + ps[2], y, ignore_index=-100)
            chunked = chunked_cross_entropy(*ps, y, chunk=20)
        tol = 2e-2 if autocast else 1e-5
        assert abs(chunked.item() - full.item()) / full.item() < tol
        for a, r, p in zip(torch.autograd.grad(chunked, ps), torch.autograd.grad(full, ps), ps):
            assert a.dtype == p.dtype and ((a - r).norm() / r.norm()).item() < tol
    with pytest.raises(ValueError, match='loss_chunk'):
        i3Config(loss_chunk=-1).validate()


@pytest.mark.parametrize('kind', list(MIXERS))
def test_every_mixer_has_the_one_interface(kind):
    "forward(x, state=None) -> (y, state), and a state carried over pieces (one of a single token) gives the same y."
    cfg = small_cfg()
    set_seed(0)
    mixer = MIXERS[kind][0](cfg).double()
    x = torch.randn(2, 9, cfg.d_model, dtype=torch.float64)
    with torch.no_grad():
        y, _ = mixer(x)                                                  # (B, T, D)
        y1, s = mixer(x[:, :5], mixer.init_state(2, cfg.max_seq_len))
        y2, s = mixer(x[:, 5:6], s)
        y3, s = mixer(x[:, 6:], s)
    assert y.shape == x.shape
    assert_close(torch.cat([y1, y2, y3], 1), y, 1e-10, kind)
    assert i3Block(cfg, kind).mixer.__class__ is mixer.__class__
