"Tests for i3_edu.attention: reference attention, the fused path, the key/value cache, errors and plots."
import math
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn
from i3_edu.core import assert_close, set_seed
from i3_edu.attention import (ATTN_MODES, FullAttention, KVCache, causal_mask, naive_attention, sdpa_attention,
                              plot_attention, plot_causal_mask)



pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py

def by_formula(layer, x):
    "Attention written straight from the i3 description with explicit weight slices (q, k, v in that order)."
    B, T, D = x.shape
    H, hd = layer.n_heads, D // layer.n_heads
    W, b = layer.qkv.weight, layer.qkv.bias
    q, k, v = (x @ W[i*D:(i+1)*D].T + b[i*D:(i+1)*D] for i in range(3))
    out = torch.zeros(B, T, D, dtype=x.dtype)
    for h in range(H):
        sl = slice(h * hd, (h + 1) * hd)
        for t in range(T):
            s = (q[:, t, sl][:, None] * k[:, :t+1, sl]).sum(-1) / math.sqrt(hd)   # (B, t+1)
            out[:, t, sl] = (s.softmax(-1)[..., None] * v[:, :t+1, sl]).sum(1)
    return layer.out_proj(out)


def test_causal_mask():
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    assert torch.equal(causal_mask(1, 4), torch.ones(1, 4, dtype=torch.bool))
    assert torch.equal(causal_mask(2, 3), torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool))


def test_parameters_and_names():
    a = FullAttention(512, 16)
    assert a.head_dim == 32
    assert {k: tuple(v.shape) for k, v in a.state_dict().items()} == {
        'qkv.weight': (1536, 512), 'qkv.bias': (1536,), 'out_proj.weight': (512, 512), 'out_proj.bias': (512,)}


@pytest.mark.parametrize('mode', ATTN_MODES)
def test_matches_formula(mode):
    set_seed(0)
    a = FullAttention(24, 3, mode=mode).double()
    nn.init.normal_(a.qkv.bias)
    nn.init.normal_(a.out_proj.bias)      # non-zero biases are part of the layer
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    assert_close(a(x)[0], by_formula(a, x), 1e-12, f'{mode} vs formula')


@pytest.mark.parametrize('B,T,D,H', [(1, 1, 8, 2), (2, 17, 32, 4), (3, 64, 64, 16)])
def test_sdpa_equals_naive(B, T, D, H):
    set_seed(B + T)
    a = FullAttention(D, H).double()
    x = torch.randn(B, T, D, dtype=torch.float64)
    a.mode = 'naive'
    y_ref = a(x)[0]
    a.mode = 'sdpa'
    y = a(x)[0]
    assert_close(y, y_ref, 1e-12, 'sdpa vs naive float64')
    a.float()
    xf = x.float()
    a.mode = 'naive'
    y_ref = a(xf)[0]
    a.mode = 'sdpa'
    assert_close(a(xf)[0], y_ref, 1e-5, 'sdpa vs naive float32')


def test_gradients_agree():
    set_seed(0)
    a = FullAttention(32, 4).double()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    grads = []
    for mode in ATTN_MODES:
        a.mode = mode
        a.zero_grad()
        a(x)[0].pow(2).sum().backward()
        grads.append(a.qkv.weight.grad.clone())
    assert_close(grads[1], grads[0], 1e-10, 'qkv grad')


def test_weights_returned():
    set_seed(0)
    a = FullAttention(16, 2)                                           # an sdpa layer still gives its weights
    x = torch.randn(2, 7, 16)
    w = a.weights(x)
    assert w.shape == (2, 2, 7, 7)
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, 7))
    assert (w.masked_select(~causal_mask(7)) == 0).all()
    a.mode = 'naive'
    assert torch.equal(a.weights(x), w)


def test_causality():
    set_seed(0)
    a = FullAttention(16, 4)
    x = torch.randn(1, 12, 16)
    x2 = x.clone()
    x2[:, 8:] = torch.randn(1, 4, 16)
    for mode in ATTN_MODES:
        a.mode = mode
        assert torch.allclose(a(x)[0][:, :8], a(x2)[0][:, :8], atol=1e-6)


@pytest.mark.parametrize('mode', ATTN_MODES)
@pytest.mark.parametrize('capacity', [0, 3, 64])
def test_kv_cache_equals_full(mode, capacity):
    set_seed(0)
    a = FullAttention(32, 4, mode=mode)
    x = torch.randn(2, 40, 32)
    with torch.no_grad():
        y_full, _ = a(x)
        cache, ys = KVCache(capacity), []
        for lo, hi in [(0, 1), (1, 9), (9, 10), (10, 11), (11, 30), (30, 40)]:
            y, cache = a(x[:, lo:hi], cache)
            ys.append(y)
    assert len(cache) == 40 and cache.k.shape == cache.v.shape == (2, 4, 40, 8)
    assert_close(torch.cat(ys, 1), y_full, 1e-5, f'cache ({mode}, capacity {capacity})')


def test_kv_cache_weights_cover_all_positions():
    set_seed(0)
    a = FullAttention(16, 2)
    x = torch.randn(1, 6, 16)
    cache = KVCache()
    _, cache = a(x[:, :5], cache)
    w = a.weights(x[:, 5:], cache)
    w_full = a.weights(x)
    assert len(cache) == 5                                             # weights() leaves the cache as it was
    assert w.shape == (1, 2, 1, 6)
    assert_close(w[0, :, 0], w_full[0, :, 5], 1e-5, 'weights of the newest token')


def test_functional_helpers_with_offset():
    set_seed(0)
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 4)
    o, w = naive_attention(q, k, v)
    assert_close(sdpa_attention(q, k, v), o, 1e-5, 'sdpa with offset mask')
    assert (w[..., 0, 5:] == 0).all() and (w[..., 2, :] > 0).all()


def test_errors():
    with pytest.raises(ValueError, match='not divisible'):
        FullAttention(30, 4)
    with pytest.raises(ValueError, match='mode'):
        FullAttention(32, 4, mode='flash')


def test_plots_return_figures():
    fig = plot_causal_mask(5)
    assert isinstance(fig, plt.Figure)
    w = torch.rand(2, 3, 4, 4)
    fig = plot_attention(w, labels=list('abcd'), layer_names=['l0', 'l1'])
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 12           # 6 maps, each with its colour bar
    maps = [a for a in fig.axes if a.get_title()]
    assert len(maps) == 6 and maps[0].get_ylabel() == 'l0\nquery' and maps[-1].get_xlabel() == 'key (attended to)'
    assert isinstance(plot_attention(w[0], titles=['a', 'b', 'c']), plt.Figure)
    plt.close('all')
