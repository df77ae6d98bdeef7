"Tests for i3_edu.recurrence: every mode against the reference loop, the adjoint backward, state passing, stability."
import copy, math, warnings
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn
from hypothesis import given, settings, strategies as st
from i3_edu.core import assert_close, set_seed
from i3_edu.recurrence import (HYBRID_MODES, DEFAULT_MODE, RWKVMambaHybrid, HybridScanFn, StabilityWarning, hybrid_kernel, scan_loop, scan_blelloch, scan_chunked, scan_conv, powers,
                               spectral_radius, layer_stability, stability_report, memory_length,
                               plot_impulse_responses, plot_eigenvalues, plot_states, panel_figure, recurrence_panel)

pytestmark = pytest.mark.usefixtures('one_thread')   # tests/conftest.py

def trained_like(d_model=12, d_state=5, rho=0.95, dtype=torch.float64, seed=0):
    "A layer with parameters far from the tiny init, so that both parts matter."
    set_seed(seed)
    layer = RWKVMambaHybrid(d_model, d_state, mode='loop').to(dtype)
    with torch.no_grad():
        layer.w_mix.uniform_(0, 1)
        layer.A.mul_(rho / spectral_radius(layer.A))
        layer.B.normal_(0, 0.4)
        layer.C.normal_(0, 0.4)
        layer.D.uniform_(-1, 1)
    layer.check_every = 0
    return layer

def run(layer, mode, x, state, gy):
    layer.mode = mode
    y, (h, s) = layer(x, state)
    gs = torch.autograd.grad((y * gy).sum() + (h ** 2).sum() + s.sum(), [x, *state, *layer.parameters()])
    return (y, h, s), gs

# ------------------------------------------------------------------------------------------------ the contract

def test_parameters_match_reference():
    set_seed(0)
    layer = RWKVMambaHybrid(512, 32)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {'w_mix': (512,), 'A': (32, 32), 'B': (32, 512), 'C': (512, 32), 'D': (512,)}
    assert torch.all(layer.w_mix == 0.5) and torch.all(layer.D == 0.1)
    for p in (layer.A, layer.B, layer.C):
        assert 0.008 < p.std().item() < 0.012 and abs(p.mean().item()) < 2e-3
    assert layer.mode == DEFAULT_MODE == 'scan'
    assert 0.02 < spectral_radius(layer.A) < 0.1          # ~0.01 * sqrt(32)

def test_state_dict_moves_between_modes():
    a, b = RWKVMambaHybrid(16, 4, mode='loop'), RWKVMambaHybrid(16, 4, mode='chunked')
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 9, 16)
    assert_close(b(x)[0], a(x)[0], 1e-5)

def test_bad_mode():
    with pytest.raises(ValueError):
        RWKVMambaHybrid(8, 2, mode='fft')
    layer = RWKVMambaHybrid(8, 2)
    layer.mode = 'nope'
    with pytest.raises(ValueError):
        layer(torch.randn(1, 3, 8))

def test_init_state_and_step():
    layer = RWKVMambaHybrid(8, 3).double()
    h, s = layer.init_state(2)
    assert h.shape == (2, 8) and s.shape == (2, 3) and h.dtype == torch.float64 and not h.any() and not s.any()
    y, (h2, s2) = layer.step(torch.ones(2, 8, dtype=torch.float64), (h, s))
    assert_close(h2, torch.full((2, 8), 0.5, dtype=torch.float64), 1e-12)
    assert_close(s2, torch.ones(2, 8, dtype=torch.float64) @ layer.B.T, 1e-12)
    assert_close(y, s2 @ layer.C.T + layer.D * h2, 1e-12)

# ------------------------------------------------------------------------------------------------ modes == loop

@pytest.mark.parametrize('mode', [m for m in HYBRID_MODES if m != 'loop'])
@pytest.mark.parametrize('T', [1, 2, 7, 16, 37])
def test_modes_match_loop_float64(mode, T):
    layer = trained_like()
    set_seed(1)
    x = torch.randn(3, T, 12, dtype=torch.float64, requires_grad=True)
    state = (torch.randn(3, 12, dtype=torch.float64, requires_grad=True),
             torch.randn(3, 5, dtype=torch.float64, requires_grad=True))
    gy = torch.randn(3, T, 12, dtype=torch.float64)
    ref, gref = run(layer, 'loop', x, state, gy)
    out, gout = run(layer, mode, x, state, gy)
    for o, r, n in zip(out, ref, ('y', 'h_T', 's_T')):
        assert_close(o, r, 1e-10, f'{mode} {n}')
    names = ['x', 'h0', 's0'] + [n for n, _ in layer.named_parameters()]
    for g, r, n in zip(gout, gref, names):
        assert_close(g, r, 1e-10, f'{mode} grad {n}')

@pytest.mark.parametrize('mode', HYBRID_MODES[1:])
def test_modes_match_loop_float32(mode):
    l64 = trained_like(32, 8, rho=1.0)
    l32 = copy.deepcopy(l64).float()
    x = torch.randn(2, 100, 32, dtype=torch.float64)
    with torch.no_grad():
        ref, _ = l64(x)
        l32.mode = mode
        assert_close(l32(x.float())[0], ref, 1e-5, mode)

def test_chunk_sizes():
    layer = trained_like()
    x = torch.randn(2, 23, 12, dtype=torch.float64)
    with torch.no_grad():
        ref, _ = layer(x)
        layer.mode = 'chunked'
        for L in (1, 3, 8, 23, 64):
            layer.chunk_size = L
            assert_close(layer(x)[0], ref, 1e-10, f'L={L}')

def test_no_grad_inputs_and_params():
    "x without grad but parameters with grad, and the other way round."
    layer = trained_like()
    x = torch.randn(2, 10, 12, dtype=torch.float64)
    grads = {}
    for mode in HYBRID_MODES:
        layer.mode = mode
        grads[mode] = torch.autograd.grad(layer(x)[0].sum(), list(layer.parameters()))
    for mode in HYBRID_MODES[1:]:
        for g, r in zip(grads[mode], grads['loop']):
            assert_close(g, r, 1e-10, mode)
    layer.requires_grad_(False)
    xg = x.clone().requires_grad_()
    for mode in HYBRID_MODES:
        layer.mode = mode
        g = torch.autograd.grad(layer(xg)[0].sum(), xg)[0]
        if mode == 'loop':
            gref = g
        else:
            assert_close(g, gref, 1e-10, mode)

@pytest.mark.parametrize('kernel', [scan_blelloch, scan_chunked])
def test_gradcheck_full(kernel):
    "The hand-written adjoint against finite differences, every input, full Jacobian."
    layer = trained_like(5, 3, rho=1.2)                 # also beyond the stable range
    set_seed(2)
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    h0, s0 = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    args = [t.detach().clone().requires_grad_() for t in (x, *layer.parameters(), h0, s0)]
    assert torch.autograd.gradcheck(lambda *z: HybridScanFn.apply(*z, kernel), args)

def test_prefill_then_step():
    layer = trained_like()
    x = torch.randn(2, 30, 12, dtype=torch.float64)
    with torch.no_grad():
        y_all, _ = layer(x)
        for mode in HYBRID_MODES:
            layer.mode = mode
            y, state = layer(x[:, :17])
            ys = [y]
            y2, state = layer(x[:, 17:21], state)
            ys.append(y2)   # a second parallel chunk
            for t in range(21, 30):
                y_t, state = layer.step(x[:, t], state)
                ys.append(y_t[:, None])
            assert_close(torch.cat(ys, 1), y_all, 1e-10, mode)

def test_unrolled_kernel():
    layer = trained_like(6, 3)
    x = torch.randn(1, 8, 6, dtype=torch.float64)
    K = hybrid_kernel(layer.w_mix, layer.A, layer.B, layer.C, layer.D, 8)
    y = torch.stack([sum(x[:, t - k] @ K[k].T for k in range(t + 1)) for t in range(8)], 1)
    assert_close(y, layer(x)[0], 1e-10)

# ------------------------------------------------------------------------------------------------ kernels

@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 70), K=st.integers(1, 4), diag=st.booleans(), reverse=st.booleans(),
       L=st.integers(1, 9), seed=st.integers(0, 1000))
def test_kernels_match_loop(T, K, diag, reverse, L, seed):
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(K, generator=g, dtype=torch.float64) * 2.2 - 1.1 if diag
         else torch.randn(K, K, generator=g, dtype=torch.float64) * 0.5)
    u = torch.randn(2, T, K, generator=g, dtype=torch.float64)
    s0 = torch.randn(2, K, generator=g, dtype=torch.float64)
    flip = (lambda z: z.flip(1)) if reverse else (lambda z: z)
    ref = flip(scan_loop(flip(u), a, s0, diag))
    scale = ref.abs().max().item()
    for name, out in [('blelloch', scan_blelloch(u, a, s0, diag, reverse=reverse)),
                      ('chunked', scan_chunked(u, a, s0, diag, reverse=reverse, L=L)),
                      ('conv', flip(scan_conv(flip(u), a, s0, diag)))]:
        assert (out - ref).abs().max().item() <= 1e-9 * max(scale, 1.0) * (1 + (name == 'conv') * 1e3), name

def test_blelloch_inplace_and_none_state():
    u = torch.randn(2, 16, 3, dtype=torch.float64)
    a = torch.rand(3, dtype=torch.float64)
    ref = scan_loop(u, a, None, True)
    v = u.clone()
    out = scan_blelloch(v, a, None, True, inplace=True)
    assert out.data_ptr() == v.data_ptr()
    assert_close(out, ref, 1e-12)
    assert_close(scan_blelloch(u, a, None, True), ref, 1e-12)

def test_powers():
    A = torch.randn(3, 3, dtype=torch.float64) * 0.5
    P = powers(A, 11, False)
    for k in range(11):
        assert_close(P[k], torch.linalg.matrix_power(A, k), 1e-12, f'A^{k}')
    w = torch.tensor([0.0, -0.5, 1.1], dtype=torch.float64)
    assert_close(powers(w, 9, True), torch.stack([w ** k for k in range(9)]), 1e-12)

# ------------------------------------------------------------------------------------------------ precision

def test_autocast_bf16_runs_in_float32():
    set_seed(3)
    layer = RWKVMambaHybrid(16, 4)
    x = torch.randn(2, 50, 16)
    ref, _ = layer(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y, (h, s) = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    assert_close(y.float(), ref, 2e-2)

# ------------------------------------------------------------------------------------------------ stability

def test_stability_warning_and_report():
    good, bad = trained_like(rho=0.9), trained_like(rho=1.05)
    bad.check_every = 1
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter('always')
        bad(torch.randn(1, 3, 12, dtype=torch.float64))
        bad(torch.randn(1, 3, 12, dtype=torch.float64))          # warns once, not at every call
    msgs = [r for r in rec if issubclass(r.category, StabilityWarning)]
    assert len(msgs) == 1 and 'rho(A) = 1.05' in str(msgs[0].message) and 'conv' not in str(msgs[0].message).split(':')[-1]
    assert msgs[0].filename == __file__                           # points at the caller
    with torch.no_grad():
        bad.w_mix.fill_(-0.2)
    model = nn.ModuleDict(dict(a=good, b=nn.Sequential(nn.Identity(), bad)))
    with pytest.warns(StabilityWarning, match=r'b\.1.*w_mix'):
        rep = stability_report(model)
    assert [r['name'] for r in rep] == ['a', 'b.1'] and [r['stable'] for r in rep] == [True, False]
    assert abs(rep[0]['rho'] - 0.9) < 1e-6 and rep[1]['w_min'] == pytest.approx(-0.2)
    assert rep[0]['accurate_modes'] == HYBRID_MODES and 'conv' not in rep[1]['accurate_modes']
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        stability_report(model, warn=False)
        good.check_every = 1
        good(torch.randn(1, 3, 12, dtype=torch.float64))   # a stable layer never warns

def test_w_on_the_boundary_is_stable():
    layer = trained_like(rho=0.5)
    with torch.no_grad():
        layer.w_mix.copy_(torch.linspace(0, 1, 12))
    assert layer_stability(layer)['stable']

def test_memory_length():
    m = memory_length(torch.tensor([0.0, 0.5, 0.99, 1.0, 1.5]))
    assert m[0] == 0 and m[1] == pytest.approx(math.log(0.01) / math.log(0.5)) and math.isinf(m[3]) and math.isinf(m[4])

# ------------------------------------------------------------------------------------------------ pictures

def test_plots_return_figures():
    A = torch.randn(8, 8) * 0.1
    figs = [plot_impulse_responses([0.5, 0.9]), plot_eigenvalues(A, A * 5, labels=['a', 'b']),
            plot_states(torch.randn(10, 20), torch.randn(10, 4), labels=list('abcdefghij')), panel_figure(1.05, 1.05, 0.3)]
    for f in figs:
        assert isinstance(f, plt.Figure)
    plt.close('all')

def test_state_norms_cover_every_channel():
    "plot_states draws every 4th channel of h, but |h_t| and |s_t| are norms over all channels."
    h, s = torch.randn(10, 20), torch.randn(10, 4)
    fig = plot_states(h, s, every=4)
    lines = {l.get_label(): l.get_ydata() for ax in fig.axes for l in ax.get_lines()}
    assert torch.allclose(torch.as_tensor(lines['|h_t|']), h.norm(dim=-1))
    assert torch.allclose(torch.as_tensor(lines['|s_t|']), s.norm(dim=-1))
    assert fig.axes[0].get_ylabel().endswith('(every 4th)')

def test_panel_widget():
    W = pytest.importorskip('ipywidgets')
    panel = recurrence_panel()
    assert 'i3-recurrence-panel' in panel._dom_classes
    sliders = [w for w in panel.children[0].children if isinstance(w, W.FloatSlider)]
    assert [s.description for s in sliders] == ['w', 'rho(A)', 'theta']
    readout, img = panel.children[1], panel.children[2]
    assert 'i3-recurrence-figure' in img._dom_classes and img.value[:8] == b'\x89PNG\r\n\x1a\n'
    before, png = readout.value, img.value
    sliders[1].value = 1.05                                      # redraws
    assert readout.value != before and 'unstable' in readout.value and img.value != png
    plt.close('all')
