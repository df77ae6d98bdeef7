"""The explorers (i3_edu.explore): their figures, their exact sampling, and their widgets driven from Python."""
import random
import pytest
import torch
from i3_edu.core import set_seed
from i3_edu.demo import demo_corpus
from i3_edu.tokenizer import ChunkTokenizer, chunk_text
from i3_edu.model import i3Config, i3Model, generate
from i3_edu.explore import (explain_encoding, encoding_report, plot_encoding, tokenizer_explorer, Sampler,
                            generation_playground, attention_explorer, hybrid_states, state_explorer, text_ids)


@pytest.fixture(scope='module')
def tok():
    c = demo_corpus(seed=0, scale=0.02)
    return ChunkTokenizer.build(c['stories'] + c['chats'] + c['sentences'], progress=False)


@pytest.fixture(scope='module')
def model(tok):
    set_seed(0)
    return i3Model(i3Config.preset('tiny', vocab_size=tok.vocab_size, max_seq_len=24))


def test_explained_encoding_is_the_encoders(tok):
    rng = random.Random(0)
    alphabet = list('the and ing wit  abcxyz.,!?\n') + ['İ', 'ë', '😀']
    texts = ['Once upon a time, Zoë the dragon sang.', '', 'a'] + \
            [''.join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(200)]
    for t in texts:
        rows = explain_encoding(tok, t)
        assert [r['id'] for r in rows] == tok.encode(t), t
        assert ''.join(r['text'] for r in rows) == t.lower()
        assert all(r['text'] == r['cut'] for r in rows if r['got'] == 'whole')
        assert all(r['cut'].startswith(r['text']) for r in rows)
        assert all(len(r['text']) < len(r['cut']) for r in rows if r['got'] == 'prefix')
    rows = explain_encoding(tok, 'the cat')
    assert [r['cut'] for r in rows] == chunk_text('the cat') and rows[0]['rule'] == 'trigram'


def test_report_names_each_fallback(tok):
    rows = explain_encoding(tok, 'Zoë sang')
    unk = [r for r in rows if r['got'] == 'unk']
    assert unk and all(r['id'] == 0 for r in unk)
    rep = encoding_report(tok, 'Zoë sang')
    assert rep.count('&lt;UNK&gt;') == len(unk) and 'rules:' in rep


@pytest.mark.parametrize('kw', [dict(temperature=0.8, top_k=20), dict(temperature=1.0, top_p=0.7), dict(temperature=0)])
@pytest.mark.parametrize('prompt', ['once upon a ti', 'the cat sat on the mat. ' * 3])
def test_sampler_clicks_equal_generate(model, tok, kw, prompt):
    "n samples equal one generate call with the same seed: healing, top-k/top-p, and past the 24-token context."
    s = Sampler(model, tok, prompt, seed=5)
    for _ in range(30):
        s.sample(**kw)
    assert s.text == generate(model, tok, prompt, max_new_tokens=30, seed=5, **kw)


def test_sampler_probs_are_what_it_draws_from(model, tok):
    s = Sampler(model, tok, 'once upon a time', seed=0)
    p = s.probs(temperature=1.0, top_k=5)
    assert (p > 0).sum() == 5 and abs(float(p.sum()) - 1) < 1e-5
    s.sample(top_k=5)
    assert p[s.ids[-1]] > 0                                 # the drawn chunk is one of the five kept
    with pytest.raises(ValueError, match='empty prompt'):
        s.reset('')


def test_generation_playground_buttons(model, tok):
    ui = generation_playground(model, tok, 'once upon a time', n=7)
    s = ui.sampler
    box, sliders, buttons = ui.children[0], ui.children[1].children, ui.children[2].children
    n0, img0 = len(s.ids), ui.children[4].value
    buttons[0].click()
    assert len(s.ids) == n0 + 1 and ui.children[4].value != img0
    buttons[1].click()
    assert len(s.ids) == n0 + 8
    buttons[2].click()
    assert len(s.ids) == n0 and s.new_text == ''
    sliders[0].value = 0.0                                  # temperature 0: the chart puts everything on one chunk
    assert float(s.probs(temperature=0).max()) == 1.0
    box.value = 'the dog'
    assert s.prompt == 'the dog' and s.ids == tok.encode('the dog')[:len(s.ids)]


def test_attention_and_state_explorers_redraw(model, tok):
    ui = attention_explorer(model, tok, 'the cat sat on the mat.')
    box, (layer, head), img = ui.children[0], ui.children[1].children, ui.children[2]
    before = img.value
    head.value = 1
    assert img.value != before
    box.value = 'a dog ran.'
    assert img.value != before

    ui = state_explorer(model, tok, 'the cat sat on the mat.')
    box, (layer, chan, ent), img = ui.children[0], ui.children[1].children, ui.children[2]
    before = img.value
    chan.value = 3
    assert img.value != before
    ent.value = 2
    layer.value = 1


def test_hybrid_states_end_where_prefill_ends(model, tok):
    idx = text_ids(model, tok, 'once upon a time there was a cat.')
    states = hybrid_states(model, idx)
    _, st = model.prefill(idx)
    assert len(states) == model.cfg.n_hybrid
    for (u, h, s), (hT, sT) in zip(states, st.layers):
        assert h.shape == (idx.shape[1], model.cfg.d_model) and s.shape == (idx.shape[1], model.cfg.d_state)
        torch.testing.assert_close(h[-1], hT[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s[-1], sT[0], atol=1e-5, rtol=1e-5)


def test_tokenizer_explorer_redraws(tok):
    ui = tokenizer_explorer(tok, 'the cat')
    box, img, rep = ui.children
    before = (img.value, rep.value)
    box.value = 'Zoë the cat'
    assert img.value != before[0] and '&lt;UNK&gt;' in rep.value
    assert plot_encoding(tok, 'x' * 40, per_row=7) is not None
