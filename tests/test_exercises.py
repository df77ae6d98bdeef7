"""The exercise checkers (i3_edu.exercises): each accepts the reference and answers a typical mistake with its hint."""
import math
import numpy as np
import pytest
import torch
from i3_edu.exercises import (ExerciseError, check_01_1, check_02_1, check_03_1, check_03_2, check_04_1, check_05_1,
                              check_06_1, check_07_1, check_08_1)
from i3_edu.tokenizer import ChunkTokenizer, chunk_text
from i3_edu.data import TokenSplit
from i3_edu.recurrence import hybrid_step, memory_length
from i3_edu.attention import naive_attention
from i3_edu.learner import lr_at
from i3_edu.model import heal_prompt
from i3_edu.recall import state_numbers
from i3_edu.train import ngram_baselines
from i3_edu.demo import demo_corpus


def wrong(check, fn, hint, *args):
    with pytest.raises(ExerciseError, match=hint):
        check(fn, *args)


def test_01_chunker():
    assert 'correct' in check_01_1(chunk_text)
    wrong(check_01_1, lambda t: [t.lower()[i:i + 2] for i in range(0, len(t), 2)], 'common trigram|space')
    wrong(check_01_1, lambda t: [t[i:i + 2] for i in range(0, len(t), 2)], 'lower-case the text first')
    wrong(check_01_1, lambda t: ''.join(chunk_text(t)), 'return a list of strings')


def test_02_windows():
    check_02_1(lambda tokens, starts, L: TokenSplit(tokens).windows(starts, L))
    wrong(check_02_1, lambda tk, st, L: np.stack([tk[s + 1:s + 1 + L] for s in st]), r'shifted by \+1')
    wrong(check_02_1, lambda tk, st, L: np.stack([tk[s:s + L - 1] for s in st]), 'exactly L=')
    wrong(check_02_1, lambda tk, st, L: TokenSplit(tk).windows(st, L).T, 'one row per start|exactly L=|shape')


def test_03_step_and_memory():
    check_03_1(hybrid_step)
    def old_state_out(x, state, w, A, B, C, D):
        h, s = state
        return s @ C.T + h * D, hybrid_step(x, state, w, A, B, C, D)[1]
    wrong(check_03_1, old_state_out, 'not the one before this step')
    def left(x, state, w, A, B, C, D):
        h, s = state
        h1, s1 = w * h + (1 - w) * x, s @ A + x @ B.T
        return s1 @ C.T + h1 * D, (h1, s1)
    wrong(check_03_1, left, 'from the left')
    wrong(check_03_1, lambda *a: hybrid_step(*a)[0], r'return \(y_t, \(h_t, s_t\)\)')
    check_03_2(memory_length)
    wrong(check_03_2, lambda w, eps: -memory_length(w, eps), 'never forgets|negative lengths')
    wrong(check_03_2, lambda w, eps: torch.where(w >= 1, math.inf, torch.log(torch.tensor(eps)) / torch.log(w)).clamp_min(0) * 2,
          'memory length')


def test_04_attention():
    check_04_1(naive_attention)
    check_04_1(lambda q, k, v: naive_attention(q, k, v)[0])
    mask = lambda T: ~torch.ones(T, T, dtype=torch.bool).tril()
    unscaled = lambda q, k, v: torch.softmax((q @ k.transpose(-2, -1)).masked_fill(mask(q.shape[-2]), -math.inf), -1) @ v
    wrong(check_04_1, unscaled, 'sqrt')
    no_mask = lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v
    wrong(check_04_1, no_mask, 'mask')


def test_05_healing():
    tok = ChunkTokenizer.build([t for d in demo_corpus(scale=0.05).values() for t in d], progress=False)
    check_05_1(heal_prompt, tok)
    wrong(check_05_1, lambda tk, p: (tk.encode(p), None), 'heal it', tok)
    def with_unk(tk, p):
        ids, first = heal_prompt(tk, p)
        return ids, first if first is None else first + [0]
    wrong(check_05_1, with_unk, 'except <UNK>', tok)


def test_06_schedule():
    check_06_1(lr_at)
    def to_zero(step, lr, warmup, total, mr):
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * min(1, (step - warmup) / (total - warmup))))
    wrong(check_06_1, to_zero, 'not to 0|floor')


def test_07_state():
    check_07_1(state_numbers)
    def grows(cfg, T):
        d = state_numbers(cfg, T)
        return dict(d, hybrid_layer=d['hybrid_layer'] * T)
    wrong(check_07_1, grows, 'does not grow')
    wrong(check_07_1, lambda cfg, T: {'model': 0}, 'keys hybrid_layer')


def test_08_unigram():
    check_08_1(lambda tr, va, V: ngram_baselines(tr, va, V)['unigram'])
    def no_smoothing(tr, va, V):
        with np.errstate(divide='ignore'):
            return float(-np.log(np.bincount(tr, minlength=V)[va] / len(tr)).mean())
    wrong(check_08_1, no_smoothing, 'add one|expected')


def test_hints_for_a_negative_infinity_and_a_masked_diagonal():
    naive = lambda w, eps: math.log(eps) / torch.log(w)               # -inf at w = 1, where the memory never fades
    wrong(check_03_2, naive, 'never forgets')
    def own_key_hidden(q, k, v):
        T = q.shape[-2]
        s = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(0), -math.inf)
        return s.softmax(-1) @ v
    wrong(check_04_1, own_key_hidden, 'its own key')
