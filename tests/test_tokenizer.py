"Chunk tokenizer: the fast paths give exactly the reference chunks and ids; files, building, the cache and plots."
import json, random
from collections import Counter
import numpy as np
import pytest
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from hypothesis import given, settings, strategies as st, HealthCheck

from i3_edu.tokenizer import (COMMON_TRIGRAMS, UNK_IDX, ChunkTokenizer, TokenizerFileError, chunk_text,
                              count_chunks)
from i3_edu.vocab import build_tokenizer, plot_chunk_lengths, plot_zipf, plot_vocab_sweep, vocab_sweep
import i3_edu.tokenizer as T
from i3_edu.tokenizer import _chunk_scan, _key_chunk, _segments

# Characters that stress the rule: spaces (the rule's only separator), trigram letters, other whitespace and control
# characters, letters whose lower case is longer ('İ' -> 'i̇') or context-dependent ('Σ'), non-BMP, a lone surrogate,
# characters just above 255 (0x120 would alias to a space if code points were truncated to a byte).
SPECIAL = [' ', ' ', ' ', 'the', 'and', 'ing', 'wit', 'h', 'e', 't', '\n', '\t', '\r', '\x00', '\x1f', '\x7f', '\xa0',
           'İ', 'Σ', 'ΑΣ', 'ß', 'ﬁ', 'ǅ', '😀', '\ud800', '\u0120', '\u0174', 'ÿ', ' ' * 17]
texts = st.lists(st.one_of(st.sampled_from(SPECIAL), st.text(max_size=6)), max_size=60).map(''.join)


def corpus(seed=0, n=300):
    "Seeded English-like texts with a few capitals, digits and odd characters."
    rng = random.Random(seed)
    words = 'the cat sat on a mat and then it was not there with you all in one hat but we can go out'.split()
    words += ['Bill', 'US', 'İstanbul', 'naïve', '3.14', 'ΑΣ', '😀', "don't"]
    return [' '.join(rng.choice(words) for _ in range(rng.randint(1, 40))) + rng.choice(['.', '!', '', '\n'])
            for _ in range(n)]


TOK = ChunkTokenizer.build(corpus(), progress=False)
VOCABS = [TOK, TOK.truncate(200), TOK.truncate(30), TOK.truncate(2), ChunkTokenizer({'a': 1})]


def test_trigrams():
    assert len(COMMON_TRIGRAMS) == 28 and all(len(t) == 3 and t.isalpha() for t in COMMON_TRIGRAMS)


@settings(max_examples=200, deadline=None)
@given(st.lists(texts, max_size=6))
def test_vectorised_chunks_equal_reference(batch):
    keys = _chunk_scan([t.lower() for t in batch])[-1]
    assert [_key_chunk(k) for k in keys.tolist()] == [c for t in batch for c in chunk_text(t)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts, st.integers(0, len(VOCABS) - 1))
def test_encode_equals_reference(text, v):
    tok = VOCABS[v]
    ref = tok.encode_ref(text)
    assert tok.encode(text) == ref
    assert tok.encode_batch([text, text]) == [ref, ref]
    # every character of the lower-cased text is covered exactly once; <UNK> stands for one character
    assert sum(1 if i == UNK_IDX else len(c) for i, c in zip(ref, tok.chunks(ref))) == len(text.lower())
    if UNK_IDX not in ref:
        assert tok.decode(ref) == text.lower()


@settings(max_examples=60, deadline=None)
@given(st.lists(texts, max_size=12), st.integers(0, len(VOCABS) - 1))
def test_encode_batch_equals_reference(batch, v):
    tok = VOCABS[v]
    assert tok.encode_batch(batch, batch_chars=64) == [tok.encode_ref(t) for t in batch]


@pytest.mark.parametrize('text', ['', ' ', 'a', 'İ' * 3000, ' ' * 5000, ('the  cat\t' * 700), '\x00' * 2500,
                                  'x' * 4097 + ' the', ''.join(chr(i) for i in range(0, 3000))])
def test_long_and_degenerate_texts(text):
    # > 2048 characters takes the blocked scan instead of the Python walk
    for tok in VOCABS[:3]:
        assert tok.encode(text) == tok.encode_ref(text)
    assert [_key_chunk(k) for k in _chunk_scan([text.lower()])[-1].tolist()] == chunk_text(text)


def test_long_realistic_text_both_walks():
    text = ' '.join(corpus(1, 400))
    assert len(text) > 2048
    for tok in VOCABS:
        assert tok.encode(text) == tok.encode_ref(text)


@settings(max_examples=60, deadline=None)
@given(texts, st.integers(3, 40))
def test_segments_equal_one_pass(text, size):
    low = text.lower()
    parts = list(_segments(low, size))
    keys = np.concatenate([k for *_, k in parts]) if parts else np.zeros(0, np.int64)
    assert np.array_equal(keys, _chunk_scan([low])[-1])
    assert np.array_equal(np.concatenate([a + P for a, _, _, P, _ in parts]) if parts else np.zeros(0), _chunk_scan([low])[5])


def test_long_texts_go_piece_by_piece(monkeypatch):
    monkeypatch.setattr(T, '_SEGMENT', 50)                 # force the piecewise path on short texts
    batch = corpus(4, 30) + ['', 'x', ' ' * 120, 'İ' * 77]
    for tok in VOCABS:
        ref = [tok.encode_ref(t) for t in batch]
        assert [tok._encode_lowered([t.lower()])[0] for t in batch] == ref
        assert tok.encode_batch(batch, batch_chars=60) == ref
    counts, _ = count_chunks(batch, progress=False, batch_chars=60)
    assert counts == Counter(c for t in batch for c in chunk_text(t))


def test_lowercase_before_chunking():
    # 'İ'.lower() has 2 characters: the rule must see the lower-cased text
    assert chunk_text('İİ the') == chunk_text('İİ the'.lower()) and ''.join(chunk_text('İİ the')) == 'İİ the'.lower()
    assert TOK.encode('Bill US') == TOK.encode('bill us')


def test_vocab_order_and_counts():
    texts = ['the cat', 'the hat', 'a cat']
    tok = ChunkTokenizer.build(texts, progress=False)
    assert tok.chunk_to_idx == {'<UNK>': 0, 'at': 1, 'the': 2, ' c': 3, ' h': 4, 'a ': 5, 'cat': 6}
    assert tok.counts.tolist() == [0, 2, 2, 1, 1, 1, 1]
    c = Counter(c for t in corpus() for c in chunk_text(t))
    order = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))
    assert [TOK.idx_to_chunk[i] for i in range(1, TOK.vocab_size)] == [k for k, _ in order]


def test_build_skips_and_counts_bad_rows():
    rows = ['the cat', None, 3, '', b'bytes', {'text': 'a dict row'}, {'text': None}]
    counts, stats = count_chunks(rows, progress=False, batch_chars=4)
    assert stats == dict(rows=7, texts=2, skipped=4, empty=1, chars=17, chunks=sum(counts.values()))
    assert counts == Counter(chunk_text('the cat') + chunk_text('a dict row'))
    with pytest.raises(KeyError, match="columns are \\['body'\\]"):
        count_chunks([{'body': 'x'}], progress=False)
    with pytest.raises(ValueError, match='no text'):
        ChunkTokenizer.build([None, ''], progress=False)


def test_build_from_datasets_stream(tmp_path):
    datasets = pytest.importorskip('datasets')
    docs = corpus(2, 50)
    ds = datasets.Dataset.from_dict({'text': docs + [None]}).to_iterable_dataset()
    tok = ChunkTokenizer.build(ds, progress=False)
    assert tok.stats['skipped'] == 1
    assert tok.chunk_to_idx == ChunkTokenizer.build(docs, progress=False).chunk_to_idx


def test_build_memory_is_bounded_by_distinct_chunks():
    def stream():           # 2 million characters, never held at once
        for _ in range(20000):
            yield 'the cat sat on the mat ' * 4 + ''
    counts, stats = count_chunks(stream(), progress=False, batch_chars=1 << 16)
    assert stats['chars'] == 20000 * 92 and len(counts) < 30


def test_save_load_roundtrip(tmp_path):
    p = TOK.save(tmp_path / 'tokenizer.json')
    d = json.loads(p.read_text())
    assert list(d) == ['chunk_to_idx', 'idx_to_chunk', 'vocab_size', 'unk_token', 'unk_idx']
    assert d['vocab_size'] == TOK.vocab_size and d['idx_to_chunk']['0'] == '<UNK>' and d['unk_idx'] == 0
    tok = ChunkTokenizer.load(p)
    assert tok.chunk_to_idx == TOK.chunk_to_idx and tok.fingerprint == TOK.fingerprint
    text = ' '.join(corpus(3, 20))
    assert tok.encode(text) == TOK.encode(text)
    assert not list(tmp_path.glob('*.tmp'))


def test_load_reference_layout_without_unk_in_chunk_to_idx(tmp_path):
    d = {'chunk_to_idx': {'the': 1, ' c': 2, 'at': 3}, 'idx_to_chunk': {'1': 'the', '2': ' c', '3': 'at'},
         'vocab_size': 4, 'unk_token': '<UNK>', 'unk_idx': 0}
    (tmp_path / 'v.json').write_text(json.dumps(d))
    tok = ChunkTokenizer.load(tmp_path / 'v.json')
    assert tok.encode('The cat!') == [1, 2, 3, 0] and tok.decode([1, 0]) == 'the<UNK>'


@pytest.mark.parametrize('content, message', [
    ('{"chunk_to_idx": {', 'not a valid JSON'),
    ('[1, 2]', 'expected a JSON object'),
    ('{"chunk_to_idx": {"a": 1}}', 'missing key(s) idx_to_chunk, vocab_size, unk_token, unk_idx'),
    (json.dumps({'chunk_to_idx': {'a': 1}, 'idx_to_chunk': {'1': 'b'}, 'vocab_size': 2, 'unk_token': '<UNK>', 'unk_idx': 0}), 'disagree'),
    (json.dumps({'chunk_to_idx': {'a': 1}, 'idx_to_chunk': {'1': 'a'}, 'vocab_size': 9, 'unk_token': '<UNK>', 'unk_idx': 0}), 'vocab_size is 9'),
    (json.dumps({'chunk_to_idx': {'a': 1, 'b': 1}, 'idx_to_chunk': {'1': 'a'}, 'vocab_size': 2, 'unk_token': '<UNK>', 'unk_idx': 0}), 'id 1 is given to both'),
    (json.dumps({'chunk_to_idx': {'a': '1'}, 'idx_to_chunk': {'1': 'a'}, 'vocab_size': 2, 'unk_token': '<UNK>', 'unk_idx': 0}), 'int >= 0'),
    (json.dumps({'chunk_to_idx': {'a': 1}, 'idx_to_chunk': {'x': 'a'}, 'vocab_size': 2, 'unk_token': '<UNK>', 'unk_idx': 0}), 'ids written as strings'),
    (json.dumps({'chunk_to_idx': {'a': 1}, 'idx_to_chunk': {'1': 'a'}, 'vocab_size': 2, 'unk_token': '<unk>', 'unk_idx': 0}), 'unk_token'),
    (json.dumps({'chunk_to_idx': {'a': 1}, 'idx_to_chunk': {'1': 'a'}, 'vocab_size': 2, 'unk_token': '<UNK>', 'unk_idx': 3}), 'unk_idx is 3'),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, content, message):
    p = tmp_path / 'broken_vocab.json'
    p.write_text(content)
    with pytest.raises(TokenizerFileError) as e:
        ChunkTokenizer.load(p)
    assert str(p) in str(e.value) and message in str(e.value)
    assert isinstance(e.value, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothere.json'):
        ChunkTokenizer.load(tmp_path / 'nothere.json')


def test_cache_hits_misses_and_repairs(tmp_path):
    reads = []
    def texts():
        for t in corpus():
            reads.append(1)
            yield t
    a = build_tokenizer(texts(), key='corpus-v1', cache_dir=tmp_path, progress=False)
    assert not a.from_cache and reads
    reads.clear()
    b = build_tokenizer(texts(), key='corpus-v1', cache_dir=tmp_path, progress=False)
    assert b.from_cache and not reads and b.fingerprint == a.fingerprint == TOK.fingerprint
    c = build_tokenizer(texts(), key='corpus-v2', cache_dir=tmp_path, progress=False)
    assert not c.from_cache and c.cache_path != a.cache_path
    d = build_tokenizer(texts(), key='corpus-v1', cache_dir=tmp_path, progress=False, max_vocab=50)
    assert not d.from_cache and d.vocab_size == 50                      # a setting is part of the key
    a.cache_path.write_text('{"chunk_to_idx": {"a": 1}}')             # damaged: rebuilt with a warning
    with pytest.warns(UserWarning, match='missing key'):
        e = build_tokenizer(texts(), key='corpus-v1', cache_dir=tmp_path, progress=False)
    assert not e.from_cache and e.fingerprint == a.fingerprint
    assert json.loads(a.cache_path.with_suffix('.meta.json').read_text())['key'] == 'corpus-v1'


def test_constructor_and_helpers():
    tok = ChunkTokenizer({'ab': 1, 'c': 3})
    assert tok.vocab_size == 4 and tok.decode([1, 2, 3, 0]) == 'ab<UNK>c<UNK>'
    assert tok.chunks(np.array([1, 3])) == ['ab', 'c'] and len(tok) == 4
    assert ChunkTokenizer({'c': 3, 'ab': 1}).fingerprint == tok.fingerprint
    assert ChunkTokenizer({'ab': 1, 'c': 2}).fingerprint != tok.fingerprint
    for bad in [{'a': 0}, {'a': 1, 'b': 1}, {'': 1}, {'a': True}, {1: 1}, ['a']]:
        with pytest.raises(ValueError):
            ChunkTokenizer(bad)
    t = TOK.truncate(10)
    assert t.vocab_size == 11 and all(TOK.chunk_to_idx[c] == i for c, i in t.chunk_to_idx.items())


def test_plots_return_figures():
    held = corpus(5, 40)
    for fig in [plot_chunk_lengths(TOK), plot_chunk_lengths(TOK, held), plot_zipf(TOK), plot_zipf(Counter('abracadabra')),
                plot_zipf([5, 3, 1])]:
        assert isinstance(fig, plt.Figure)
        plt.close(fig)
    rows = vocab_sweep(TOK, held, [4, 16, 64, TOK.vocab_size])
    assert [r['size'] for r in rows] == [4, 16, 64, TOK.vocab_size - 1]
    assert rows[0]['unk_rate'] >= rows[-1]['unk_rate'] and rows[-1]['chars_per_token'] > 1
    fig = plot_vocab_sweep(rows)
    assert isinstance(fig, plt.Figure)
    plt.close(fig)
    with pytest.raises(ValueError, match='no counts'):
        plot_zipf(ChunkTokenizer({'a': 1}))
