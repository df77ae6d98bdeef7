"Tests of i3_edu.recall: task layouts, determinism, data pools, parameter matching, and a tiny model learning to copy."
import pytest, torch
from matplotlib.figure import Figure
from i3_edu.recall import (PAD, SEP, IGNORE, N_SPECIAL, copy_task, mqar_task, mqar_split, mqar_chance,
                            frequent_value_chance, frequent_value_accuracy, task_data, recall_accuracy, accuracy_per_position, matched_configs, count_params, train_task, state_numbers,
                           plot_state_sizes, plot_recall_attention, attention_on_pairs, plot_recall_sweep, AccuracyCB,
                           recall_run, verdict, describe_sweep, plot_learning_curves)
from i3_edu.model import i3Config, i3Model

def shown(fig) -> bool:
    "A figure Jupyter shows as an image without pyplot (a bare `Figure` shows as the text `<Figure size ...>`)."
    return isinstance(fig, Figure) and fig._repr_png_()[:4] == b'\x89PNG'


def test_copy_docstring_example():
    x, y = copy_task(1, vocab_size=10, seq_len=8, seed=0)
    assert x.tolist() == [[6, 9, 7, 2, SEP, 6, 9, 7]]
    assert y.tolist() == [[-100] * 4 + [6, 9, 7, 2]]


@pytest.mark.parametrize('V,T', [(3, 2), (12, 20), (50, 64)])
def test_copy_layout(V, T):
    x, y = copy_task(300, vocab_size=V, seq_len=T, seed=5)
    L = T // 2
    assert x.shape == y.shape == (300, T) and x.dtype == y.dtype == torch.long
    assert (x[:, L] == SEP).all() and (y[:, :L] == IGNORE).all()
    assert torch.equal(y[:, L:], x[:, :L]) and torch.equal(x[:, L + 1:], x[:, :L - 1])
    assert x[:, :L].min() >= N_SPECIAL and x.max() < V
    assert torch.equal(copy_task(300, V, T, seed=5)[0], x)


def test_copy_bad_args():
    with pytest.raises(ValueError, match='even'):
        copy_task(2, 10, 7)
    with pytest.raises(ValueError, match='vocab_size'):
        copy_task(2, 2, 8)


def test_mqar_docstring_example():
    x, y = mqar_task(1, vocab_size=16, n_pairs=3, seq_len=12, seed=1)
    assert x.tolist() == [[6, 14, 3, 9, 8, 12, PAD, PAD, PAD, 3, 6, 8]]
    assert y.tolist() == [[-100] * 9 + [9, 14, 12]]


@pytest.mark.parametrize('V,P,T,Q', [(32, 4, 32, None), (16, 7, 21, None), (40, 6, 30, 3), (8, 1, 3, 1)])
def test_mqar_layout(V, P, T, Q):
    x, y = mqar_task(400, vocab_size=V, n_pairs=P, seq_len=T, n_queries=Q, seed=11)
    Q = P if Q is None else Q
    keys, vals = mqar_split(V)
    assert x.shape == y.shape == (400, T)
    k, v = x[:, 0:2 * P:2], x[:, 1:2 * P:2]
    assert all(len(set(r)) == P for r in k.tolist())
    assert (k >= keys.start).all() and (k < keys.stop).all() and (v >= vals.start).all() and (v < vals.stop).all()
    assert (x[:, 2 * P:T - Q] == PAD).all() and (y[:, :T - Q] == IGNORE).all()
    q = x[:, T - Q:]
    assert all(len(set(r)) == Q for r in q.tolist())                  # distinct queries
    match = q[:, :, None] == k[:, None, :]                            # (n, Q, P)
    assert (match.sum(-1) == 1).all()
    assert torch.equal(y[:, T - Q:], (match * v[:, None, :]).sum(-1))
    assert torch.equal(mqar_task(400, V, P, T, Q, seed=11)[1], y)
    assert not torch.equal(mqar_task(400, V, P, T, Q, seed=12)[0], x) or P == 1


def test_mqar_bad_args():
    with pytest.raises(ValueError, match='n_pairs'):
        mqar_task(2, vocab_size=10, n_pairs=5, seq_len=40)
    with pytest.raises(ValueError, match='seq_len'):
        mqar_task(2, vocab_size=32, n_pairs=4, seq_len=11)
    with pytest.raises(ValueError, match='n_queries'):
        mqar_task(2, vocab_size=32, n_pairs=4, seq_len=32, n_queries=5)


def test_chance_and_split():
    k, v = mqar_split(32)
    assert len(k) == len(v) == 15 and k.start == N_SPECIAL and v.stop == 32 and k.stop == v.start
    assert mqar_chance(32, 4) == dict(uniform=1 / 15, frequent=frequent_value_chance(15, 4))


def test_no_recall_baseline_is_exact():
    "The most-frequent-value baseline: exact for small cases by enumeration, and what it scores on generated data."
    import itertools
    for K, P in ((3, 2), (4, 3), (5, 4), (15, 1)):
        best = [max(c.count(v) for v in c) for c in itertools.product(range(K), repeat=P)]
        assert abs(frequent_value_chance(K, P) - sum(best) / len(best) / P) < 1e-12
    for P in (2, 4, 8):
        x, y = mqar_task(20_000, 32, P, 32, seed=P)
        assert abs(frequent_value_accuracy(x, y, P) - frequent_value_chance(15, P)) < 0.015
    x = torch.tensor([[2, 20, 3, 20, 4, 21, 0, 3, 2, 4]])          # values 20, 20, 21: 20 is the most frequent
    y = torch.full_like(x, IGNORE)
    y[0, 7:] = torch.tensor([20, 20, 21])
    assert abs(frequent_value_accuracy(x, y, 3) - 2 / 3) < 1e-6


def test_task_data_pools():
    d = task_data(mqar_task, n_train=300, n_val=50, seed=3, vocab_size=32, n_pairs=4, seq_len=16)
    assert len(d.train) == 300 and len(d.val) == 50 and d.seq_len == 16 and d.info['n_pairs'] == 4
    assert not torch.equal(d.train.x[:50], d.val.x)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = d.train.sample(8, 16, generator=g1), d.train.sample(8, 16, generator=g2)
    assert torch.equal(a[0], b[0]) and a[0].shape == (8, 16)
    with pytest.raises(ValueError, match='length 16'):
        d.train.sample(8, 32)


class _Oracle(torch.nn.Module):
    "Predicts the target wherever there is one (and token 0 elsewhere): accuracy 1 by construction."
    def __init__(self, y, V):
        super().__init__()
        self.y, self.V, self.w = y, V, torch.nn.Parameter(torch.zeros(1))
    def forward(self, x, targets=None):
        logits = torch.zeros(*x.shape, self.V)
        t = self.y[:len(x)].clamp_min(0)
        return logits.scatter(-1, t[..., None], 1.0), None


def test_recall_accuracy_oracle_and_wrong():
    x, y = mqar_task(64, 32, 4, 16, seed=0)
    assert recall_accuracy(_Oracle(y, 32), x, y) == 1.0
    wrong = _Oracle(y.roll(1, 0), 32)
    acc, per = recall_accuracy(wrong, x, y), accuracy_per_position(wrong, x, y)
    assert acc < 0.5 and set(per) == {12, 13, 14, 15}


def test_matched_configs():
    cfgs = matched_configs(vocab_size=32, seq_len=32)
    assert (cfgs['hybrid only'].n_attn, cfgs['attention only'].n_hybrid) == (0, 0)
    assert cfgs['i3'].n_hybrid >= 1 and cfgs['i3'].n_attn >= 1
    n = [count_params(c) for c in cfgs.values()]
    assert max(n) / min(n) < 1.05
    for c in list(cfgs.values()) + [i3Config(), i3Config(vocab_size=41320)]:
        with torch.device('meta'):
            m = i3Model(c)
        assert count_params(c) == sum(p.numel() for p in m.parameters())
    assert count_params(i3Config()) == 76_861_160 and count_params(i3Config(vocab_size=41320)) == 82_765_160   # nbs/reference.md, 1


def test_state_numbers_and_plot():
    ref = i3Config()
    assert state_numbers(ref, 10) == dict(hybrid_layer=544, attn_layer=10240, model=10 * 544 + 6 * 10240)
    assert shown(plot_state_sizes(ref))


def test_tiny_attention_model_learns_copy():
    "One attention block, 120 steps of batch 32: held-out copy accuracy far above chance (0.1)."
    data = task_data(copy_task, n_train=4096, n_val=500, vocab_size=12, seq_len=16)
    cfg = i3Config(vocab_size=12, d_model=32, n_heads=2, d_state=8, max_seq_len=16, n_hybrid=0, n_attn=1)
    model, learn = train_task(cfg, data, steps=120, batch_size=32, seed=0, device='cpu')
    acc = recall_accuracy(model, data.val.x, data.val.y)
    assert acc > 0.5, f'copy accuracy {acc:.3f}, chance 0.1'
    assert learn.step == 120


def test_plots_on_small_model():
    data = task_data(mqar_task, n_train=64, n_val=8, vocab_size=16, n_pairs=3, seq_len=12)
    cfg = matched_configs(16, 12, d_model=16, n_heads=2, d_state=4)['i3']
    model = i3Model(cfg).eval()
    assert shown(plot_recall_attention(model, data.val.x[0], data.val.y[0]))
    on = attention_on_pairs(model, data.val.x, data.val.y)
    assert len(on['key']) == len(on['value']) == 2 and all(0 <= a <= 1 for a in on['key'] + on['value'])
    res = [dict(arrangement=a, n_pairs=P, seq_len=T, acc=0.5, **mqar_chance(16, P))
           for a in ('hybrid only', 'attention only', 'i3') for P, T in ((2, 12), (3, 12), (3, 16))]
    assert shown(plot_recall_sweep(res, n_pairs=3, seq_len=12))


def test_accuracy_callback_records_a_learning_curve():
    "AccuracyCB measures at step 0, every `every` steps and at the last step; the copy curve rises from chance."
    data = task_data(copy_task, n_train=4096, n_val=500, vocab_size=12, seq_len=16)
    cfg = i3Config(vocab_size=12, d_model=32, n_heads=2, d_state=8, max_seq_len=16, n_hybrid=0, n_attn=1)
    cb = AccuracyCB(data.val.x, data.val.y, every=50)
    model, _ = train_task(cfg, data, steps=120, batch_size=32, seed=0, device='cpu', cbs=[cb])
    assert cb.steps == [0, 50, 100, 120]
    assert cb.acc[0] < 0.2 and cb.acc[-1] > 0.5
    assert cb.acc[-1] == recall_accuracy(model, data.val.x, data.val.y)     # the last point is the final model


def test_recall_run_records_and_describes():
    res = recall_run(n_pairs=2, seq_len=8, vocab_size=16, n_train=256, steps=6, batch_size=16, d_model=16,
                     d_state=4, curve_every=3)
    assert [r['arrangement'] for r in res] == ['hybrid only', 'attention only', 'i3']
    for r in res:
        assert r['curve'][0] == [0, 3, 6] and 0 <= r['acc'] <= 1 and len(r['acc_per_query']) == 2
        assert verdict(r) in ('solved', 'partly recalled', 'no recall', 'below the no-recall baseline')
    assert shown(plot_learning_curves(res))
    text = describe_sweep(res)
    assert all(f'**{a}**' in text for a in ('hybrid only', 'attention only', 'i3')) and 'T = 8' in text


def test_verdict_thresholds():
    ch = mqar_chance(32, 4)                                  # uniform 1/15, most frequent value 0.343
    v = lambda a: verdict(dict(acc=a, **ch))
    assert (v(0.95), v(0.5), v(0.32), v(0.2)) == ('solved', 'partly recalled', 'no recall', 'below the no-recall baseline')
