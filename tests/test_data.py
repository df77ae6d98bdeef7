"Tests for i3_edu.data: demo corpus, hub failures, local files, mixing, the token cache, splits, batches, prepare_data."
import gzip, json, os, re, shutil, time
from collections import Counter
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
import i3_edu.data as D
from i3_edu.files import iter_text_documents, text_unit
from i3_edu.data import (HUB_SOURCES, CacheError, DataBundle, HubUnavailableError, Source, TokenSplit,
                         build_token_cache, clean_texts, iter_documents, load_hub, load_local,
                         load_token_cache, mix, plot_batch, plot_doc_lengths, prepare_data, resolve_sources, show_chunks,
                         token_dtype)
from i3_edu.tokenizer import ChunkTokenizer
from i3_edu.demo import DEMO_STYLES, demo_corpus, iter_demo
from i3_edu.core import offline_flag, hub_endpoint, hub_problem

SMALL = 0.02   # demo scale for tests: 80 stories, 120 chats, 200 sentences


@pytest.fixture(scope='module')
def demo(): return demo_corpus(scale=SMALL)


@pytest.fixture(scope='module')
def tok(demo): return ChunkTokenizer.build((t for d in demo.values() for t in d), progress=False)


@pytest.fixture(scope='module')
def docs(demo): return [(i, t) for i, d in enumerate(demo.values()) for t in d]


class BigVocab:
    "A tokenizer stand-in with more than 65,536 ids, to exercise the uint32 path."
    vocab_size, fingerprint = 70_000, 'big'
    def encode(self, text): return [60_000 + ord(c) % 9000 for c in text[:50]]


# ---------------------------------------------------------------- demo corpus
def test_demo_corpus_deterministic_and_prefix(demo):
    assert set(demo) == {'stories', 'chats', 'sentences'} == set(DEMO_STYLES)
    assert demo == demo_corpus(scale=SMALL)
    assert demo['chats'] != demo_corpus(seed=1, scale=SMALL)['chats']
    tiny = demo_corpus(scale=0.005)
    assert all(demo[k][:len(v)] == v for k, v in tiny.items())
    assert list(iter_demo('stories', scale=SMALL)) == demo['stories']
    assert all(isinstance(t, str) and t.strip() for d in demo.values() for t in d)


def test_demo_corpus_styles(demo):
    for s in demo['stories']:
        assert 3 <= s.count('\n') + 1 <= 4 and '\n\n' not in s and s.endswith(('.', '!', '"'))
    for c in demo['chats']:
        turns = re.findall(r'\[INST\] (.*?) \[/INST\] (.*?)(?= \[INST\]|$)', c)
        assert c.startswith('[INST] ') and turns and len(turns) == c.count('[INST]') == c.count('[/INST]')
    assert all('\n' not in s and s.endswith(('.', ']')) for s in demo['sentences'])
    assert any('%' in s for s in demo['sentences']) and any(re.search(r'\d,\d{3}', s) for s in demo['sentences'])


def test_demo_corpus_size():
    # a few MB at scale 1: sizes follow from the document counts, so check the counts and the mean lengths
    c = demo_corpus(scale=0.05)
    mb = sum(len(t) * DEMO_STYLES[k][1] / len(v) for k, v in c.items() for t in v) / 1e6
    assert 2 < mb < 8, mb


# ---------------------------------------------------------------- hub
def test_offline_flag_fails_without_calling_datasets(monkeypatch):
    import datasets
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(datasets, 'load_dataset', lambda *a, **k: pytest.fail('load_dataset must not be called'))
    with pytest.raises(HubUnavailableError) as e:
        load_hub('roneneldan/TinyStories')
    msg = str(e.value)
    assert 'roneneldan/TinyStories' in msg and 'HF_HUB_OFFLINE' in msg and "prepare_data('demo')" in msg
    assert isinstance(e.value, ConnectionError)
    monkeypatch.delenv('HF_HUB_OFFLINE')
    monkeypatch.setenv('HF_DATASETS_OFFLINE', 'true')
    assert offline_flag() == 'HF_DATASETS_OFFLINE'


def test_unreachable_endpoint_fails_before_datasets(monkeypatch):
    import datasets
    for v in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE'):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv('HF_ENDPOINT', 'http://127.0.0.1:9')   # discard port: nothing listens, connection refused
    assert hub_endpoint() == ('127.0.0.1', 9)
    monkeypatch.setattr(datasets, 'load_dataset', lambda *a, **k: pytest.fail('load_dataset must not be called'))
    assert 'cannot connect to 127.0.0.1:9' in hub_problem(timeout=1)
    with pytest.raises(HubUnavailableError, match='starhopp3r/TinyChat'):
        load_hub('starhopp3r/TinyChat', timeout=1)


def test_os_errors_from_load_and_first_row_are_wrapped(monkeypatch):
    import datasets
    monkeypatch.setattr(D, 'hub_problem', lambda timeout=2.0: None)
    def refuse(*a, **k): raise ConnectionError("Couldn't reach the Hub")
    monkeypatch.setattr(datasets, 'load_dataset', refuse)
    with pytest.raises(HubUnavailableError, match="Couldn't reach"):
        load_hub('x/y')
    class Stream:
        def __iter__(self): raise OSError('connection reset')
    monkeypatch.setattr(datasets, 'load_dataset', lambda *a, **k: Stream())
    with pytest.raises(HubUnavailableError, match='connection reset'):
        load_hub('x/y')
    monkeypatch.setattr(datasets, 'load_dataset', lambda *a, **k: [{'story': 'a'}])
    with pytest.raises(ValueError, match=r"no column 'text'.*\['story'\]"):
        load_hub('x/y')


def test_prepare_data_offline_hub_is_fast_error(monkeypatch, tmp_path):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(HubUnavailableError, match='agentlans/high-quality-english-sentences'):
        prepare_data(['demo', 'hq_sentences'], cache_dir=tmp_path, progress=False, demo_scale=SMALL)


# ---------------------------------------------------------------- local files and sources
def test_local_formats(tmp_path, demo):
    import datasets
    texts = demo['stories'][:20]
    (tmp_path / 'a.jsonl').write_text(''.join(json.dumps({'text': t, 'n': i}) + '\n' for i, t in enumerate(texts)))
    datasets.Dataset.from_dict({'text': texts}).to_parquet(tmp_path / 'b.parquet')
    datasets.Dataset.from_dict({'text': texts}).to_csv(tmp_path / 'c.csv')
    (tmp_path / 'd.txt').write_text('\n'.join(demo['sentences'][:20]) + '\n')
    with gzip.open(tmp_path / 'e.jsonl.gz', 'wt') as f:
        f.write(''.join(json.dumps({'text': t}) + '\n' for t in texts))
    (tmp_path / 'dir').mkdir()
    shutil.copy(tmp_path / 'a.jsonl', tmp_path / 'dir' / 'x.jsonl')
    shutil.copy(tmp_path / 'a.jsonl', tmp_path / 'dir' / 'y.jsonl')
    for name in ('a.jsonl', 'b.parquet', 'c.csv', 'e.jsonl.gz'):
        assert list(Source(name, 'local', str(tmp_path / name)).rows()) == texts, name
    assert list(Source('d', 'local', str(tmp_path / 'd.txt')).rows()) == demo['sentences'][:20]
    assert list(Source('dir', 'local', str(tmp_path / 'dir')).rows()) == texts * 2
    (tmp_path / 'f.xyz').write_text('x')
    with pytest.raises(ValueError, match='unknown file type'):
        load_local(tmp_path / 'f.xyz')
    with pytest.raises(FileNotFoundError):
        load_local(tmp_path / 'missing.jsonl')


def test_resolve_sources(tmp_path):
    (tmp_path / 'a.jsonl').write_text('{"text": "hi"}\n')
    s = resolve_sources(['demo', 'tinychat', 'someone/data', str(tmp_path / 'a.jsonl')])
    assert [x.name for x in s[:3]] == ['demo:stories', 'demo:chats', 'demo:sentences']
    assert (s[3].kind, s[3].ref, s[3].column) == ('hub', HUB_SOURCES['tinychat'][0], 'text')
    assert (s[4].kind, s[4].ref) == ('hub', 'someone/data') and s[5].kind == 'local'
    assert resolve_sources((str(tmp_path / 'a.jsonl'), 'body'))[0].column == 'body'
    with pytest.raises(ValueError, match='same name'):
        resolve_sources(['demo', 'demo:chats'])
    with pytest.raises(ValueError, match='unknown source'):
        resolve_sources('no_such_thing')
    k1 = resolve_sources(str(tmp_path / 'a.jsonl'))[0].key()
    (tmp_path / 'a.jsonl').write_text('{"text": "hi there"}\n')
    assert resolve_sources(str(tmp_path / 'a.jsonl'))[0].key() != k1   # edits change the key


def test_bad_rows_counted_and_errors(tmp_path):
    rows = [{'text': 'ok'}, {'text': None}, {'text': 3}, {'text': ['x']}, {'text': ''}, {'text': ' \t\n'}, {'text': 'fine'}]
    (tmp_path / 'bad.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    counts = {}
    assert list(clean_texts(Source('bad', 'local', str(tmp_path / 'bad.jsonl')).rows(), counts)) == ['ok', 'fine']
    assert counts == {'docs': 2, 'not_text': 3, 'empty': 2}
    with pytest.raises(ValueError, match=r"no column 'body'; the columns are \['text'\]"):
        list(Source('bad', 'local', str(tmp_path / 'bad.jsonl'), column='body').rows())
    with pytest.raises(ValueError, match="source 'nothing' has no usable text"):
        list(clean_texts([None, '', '  '], {}, 'nothing'))
    (tmp_path / 'empty.txt').write_text('')
    with pytest.raises(ValueError, match='no usable text'):
        prepare_data(str(tmp_path / 'empty.txt'), cache_dir=tmp_path / 'c', progress=False)


def test_mix():
    a, b, c = range(0, 1000), range(1000, 2000), range(2000, 3000)
    assert [x for _, x in mix([a, b])] == list(range(2000))
    out = list(mix([a, b, c], [0.5, 0.3, 0.2], seed=1))
    n = Counter(i for i, _ in out)
    assert n[0] == 1000 and abs(n[1] / len(out) - 0.3) < 0.04 and abs(n[2] / len(out) - 0.2) < 0.04
    assert out == list(mix([a, b, c], [0.5, 0.3, 0.2], seed=1)) != list(mix([a, b, c], [0.5, 0.3, 0.2], seed=2))
    assert all(x in (a, b, c)[i] for i, x in out)
    assert sorted(x for _, x in mix([a, b, c], [5, 1, 0.1], stopping='all_used')) == list(range(3000))
    assert Counter(i for i, _ in mix([a, b], [1, 0])) == {0: 1000}
    with pytest.raises(ValueError):
        list(mix([a, b], [1]))
    with pytest.raises(ValueError):
        list(mix([a, b], [-1, 2]))


def test_iter_documents_max_docs_and_stats():
    srcs = resolve_sources('demo', demo_scale=SMALL)
    stats = {}
    out = list(iter_documents(srcs, max_docs=7, stats=stats))
    assert Counter(i for i, _ in out) == {0: 7, 1: 7, 2: 7}
    assert stats == {s.name: {'docs': 7} for s in srcs}


# ---------------------------------------------------------------- token cache
def test_cache_equals_reference_list(tmp_path, tok, docs):
    ref = [i for _, t in docs for i in tok.encode(t)]
    meta = build_token_cache(docs, tok, tmp_path / 'c', val_frac=0, progress=False, chunk_tokens=1000)
    m, tr, va = load_token_cache(tmp_path / 'c')
    assert m == meta and tr.tokens.dtype == np.uint16 and np.array_equal(tr.tokens, ref) and len(va) == 0
    assert tr.n_docs == len(docs) and tr.doc_sources.tolist() == [i for i, _ in docs]
    assert tr.doc_lengths().tolist() == [len(tok.encode(t)) for _, t in docs]
    assert m['splits']['train'] == {'n_tokens': len(ref), 'n_docs': len(docs)} and m['tokenizer'] == tok.fingerprint
    # chunk size does not change the result: streaming in chunks is exact
    build_token_cache(docs, tok, tmp_path / 'd', val_frac=0, progress=False, chunk_tokens=7)
    for f in ('train.tokens', 'train.docs', 'train.src'):
        assert (tmp_path / 'c' / f).read_bytes() == (tmp_path / 'd' / f).read_bytes()


def test_uint32_when_vocab_is_large(tmp_path):
    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    build_token_cache([(0, 'hello world'), (0, 'more text')], BigVocab(), tmp_path / 'c', val_frac=0, progress=False)
    m, tr, _ = load_token_cache(tmp_path / 'c')
    assert m['dtype'] == 'uint32' and tr.tokens.dtype == np.uint32 and int(tr.tokens.max()) >= 60_000
    assert (tmp_path / 'c' / 'train.tokens').stat().st_size == 4 * len(tr)


def test_split_by_document(tmp_path, tok, docs):
    build_token_cache(docs, tok, tmp_path / 'a', val_frac=0.2, seed=0, progress=False)
    build_token_cache(docs, tok, tmp_path / 'b', val_frac=0.2, seed=0, progress=False)
    build_token_cache(docs, tok, tmp_path / 'c', val_frac=0.2, seed=1, progress=False)
    for f in ('train.tokens', 'val.tokens', 'val.docs'):
        assert (tmp_path / 'a' / f).read_bytes() == (tmp_path / 'b' / f).read_bytes()
    assert (tmp_path / 'a' / 'val.tokens').read_bytes() != (tmp_path / 'c' / 'val.tokens').read_bytes()
    _, tr, va = load_token_cache(tmp_path / 'a')
    whole = lambda sp: Counter(tuple(sp.tokens[s:s + n].tolist()) for s, n in zip(sp.doc_starts, sp.doc_lengths()))
    assert whole(tr) + whole(va) == Counter(tuple(tok.encode(t)) for _, t in docs)
    assert 0.12 < va.n_docs / len(docs) < 0.28


def test_tiny_corpus_still_gets_validation(tmp_path, tok):
    docs = [(0, 'the first story.'), (0, 'the second story.'), (1, 'a chat.')]
    build_token_cache(docs, tok, tmp_path / 'c', val_frac=0.01, seed=0, progress=False)
    _, tr, va = load_token_cache(tmp_path / 'c')
    assert (tr.n_docs, va.n_docs) == (2, 1) and va.tokens.tolist() == tok.encode('a chat.')
    assert va.doc_sources.tolist() == [1] and tr.tokens.tolist() == tok.encode(docs[0][1]) + tok.encode(docs[1][1])
    with pytest.raises(ValueError, match='no training documents'):
        build_token_cache(docs, tok, tmp_path / 'd', val_frac=1.0, progress=False)


def test_damaged_cache_errors(tmp_path, tok, docs):
    good = tmp_path / 'good'
    build_token_cache(docs, tok, good, val_frac=0.1, progress=False)
    def damaged(fn):
        bad = tmp_path / 'bad'
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(good, bad)
        fn(bad)
        with pytest.raises(CacheError) as e:
            load_token_cache(bad)
        return str(e.value)
    msg = damaged(lambda d: os.truncate(d / 'train.tokens', 100))
    assert 'train.tokens' in msg and '100 bytes' in msg and 'builds it again' in msg
    assert 'val.docs has no file' in damaged(lambda d: os.remove(d / 'val.docs'))
    assert 'train.src' in damaged(lambda d: open(d / 'train.src', 'ab').write(b'\0'))
    assert 'meta.json' in damaged(lambda d: (d / 'meta.json').write_text('{"splits": '))
    assert 'meta.json' in damaged(lambda d: os.remove(d / 'meta.json'))
    def old_format(d):
        m = json.loads((d / 'meta.json').read_text())
        m['format_version'] = 0
        (d / 'meta.json').write_text(json.dumps(m))
    assert 'format 0' in damaged(old_format)
    def bad_offsets(d):
        s = np.fromfile(d / 'train.docs', np.int64)
        s[1] = s[2]
        s.tofile(d / 'train.docs')
    assert 'inconsistent' in damaged(bad_offsets)


def test_failed_build_leaves_old_cache_and_no_temp(tmp_path, tok, docs):
    folder = tmp_path / 'c'
    build_token_cache(docs, tok, folder, val_frac=0.1, progress=False)
    before = (folder / 'train.tokens').read_bytes()
    def broken():
        yield from docs[:5]
        raise RuntimeError('source died')
    with pytest.raises(RuntimeError, match='source died'):
        build_token_cache(broken(), tok, folder, progress=False)
    assert (folder / 'train.tokens').read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ['c']


# ---------------------------------------------------------------- batches
@pytest.fixture(scope='module')
def split(tmp_path_factory, tok, docs):
    folder = tmp_path_factory.mktemp('split') / 'c'
    build_token_cache(docs, tok, folder, val_frac=0, progress=False)
    return load_token_cache(folder)[1]


def test_sample_shapes_shift_and_seed(split):
    x, y = split.sample(16, 24, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (16, 24) and x.dtype == y.dtype == torch.long
    assert x.is_contiguous() and y.is_contiguous() and torch.equal(x[:, 1:], y[:, :-1])
    x2, y2 = split.sample(16, 24, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    st = split.window_starts(16, 25, torch.Generator().manual_seed(0))
    x3, y3 = split.batch_at(st, 24)
    assert torch.equal(x3, x) and torch.equal(y3, y)                     # sample = batch_at(window_starts)
    full = np.asarray(split.tokens)
    assert all(np.array_equal(full[s:s + 25], np.r_[x3[b].numpy(), y3[b, -1].item()]) for b, s in enumerate(st))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 999), min_size=1, max_size=8), st.integers(1, 40))
def test_windows_match_naive_loop(starts, L):
    toks = np.arange(2000, dtype=np.uint16) * 7 % 1631
    sp = TokenSplit(toks)
    assert np.array_equal(sp.windows(starts, L), [[int(toks[s + j]) for j in range(L)] for s in starts])


def test_all_windows_reachable():
    sp = TokenSplit(np.arange(10, dtype=np.uint16), [0, 4, 7])      # documents of 4, 3 and 3 tokens
    g = torch.Generator().manual_seed(0)
    assert set(sp.window_starts(500, 3, g).tolist()) == set(range(8))             # crossing documents: 0..7
    assert set(sp.window_starts(500, 3, g, cross_docs=False).tolist()) == {0, 1, 4, 7}
    assert set(sp.window_starts(500, 4, g, cross_docs=False).tolist()) == {0}
    with pytest.raises(ValueError, match='no document'):
        sp.window_starts(2, 5, g, cross_docs=False)
    with pytest.raises(ValueError, match='fewer than one window'):
        sp.window_starts(2, 11, g)
    with pytest.raises(ValueError):
        TokenSplit(np.zeros(0, np.uint16), np.zeros(0, np.int64), name='val').sample(2, 4)


def test_cross_docs_false_stays_inside(split):
    st = split.window_starts(500, 41, cross_docs=False)
    x, y = split.batch_at(st, 40)
    d = np.searchsorted(split.doc_starts, st, side='right') - 1
    assert (st + 41 <= split.doc_starts[d] + split.doc_lengths()[d]).all()
    assert len(set(d.tolist())) > 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_sample_cuda(split):
    x, y = split.sample(4, 16, device='cuda')
    assert x.device.type == 'cuda' and torch.equal(x[:, 1:], y[:, :-1])


def test_show_chunks_and_plots(split, tok, docs):
    ids = tok.encode(docs[0][1][:60])
    assert show_chunks(tok, ids).replace('|', '') == tok.decode(ids) and show_chunks(tok, ids).count('|') == len(ids) - 1
    assert show_chunks(tok, ids, sep='/').split('/') == tok.chunks(ids)
    st = split.window_starts(4, 41, torch.Generator().manual_seed(0))
    x, y = split.batch_at(st, 40)
    fig = plot_batch(tok, x, st, split, n_rows=3, n_tokens=20)
    assert isinstance(fig, plt.Figure)
    plt.close(fig)
    fig = plot_doc_lengths(split, names=['stories', 'chats', 'sentences'])
    assert isinstance(fig, plt.Figure) and len(fig.axes[0].get_legend().get_texts()) == 3
    plt.close(fig)


# ---------------------------------------------------------------- prepare_data
def test_prepare_data_builds_reuses_rebuilds(tmp_path, tok):
    kw = dict(demo_scale=SMALL, cache_dir=tmp_path, progress=False)
    a = prepare_data('demo', **kw)
    assert isinstance(a, DataBundle) and isinstance(a.train, TokenSplit) and not a.info['reused']
    assert a.info['source_names'] == ['demo:stories', 'demo:chats', 'demo:sentences']
    assert a.info['rows'] == {'demo:stories': {'docs': 80}, 'demo:chats': {'docs': 120}, 'demo:sentences': {'docs': 200}}
    assert a.train.n_docs + a.val.n_docs == 400 and a.val.n_docs > 0 and a.info['dtype'] == 'uint16'
    assert a.info['tokenizer_from'] == 'built'
    b = prepare_data('demo', **kw)
    assert b.info['tokenizer_from'] == 'cache' and b.info['reused'] and b.info['cache'] == a.info['cache'] and b.tokenizer.fingerprint == a.tokenizer.fingerprint
    assert np.array_equal(a.val.tokens, b.val.tokens)
    assert not prepare_data('demo', rebuild=True, **kw).info['reused']
    for change in (dict(val_frac=0.1), dict(seed=1), dict(max_docs=10), dict(weights=[1, 1, 1])):
        c = prepare_data('demo', tokenizer=a.tokenizer, **kw, **change)
        assert c.info['cache'] != a.info['cache'] and not c.info['reused'], change
    other = ChunkTokenizer.build(demo_corpus(scale=SMALL)['chats'], progress=False)
    c = prepare_data('demo', tokenizer=other, **kw)   # another vocabulary, another cache
    assert c.info['cache'] != a.info['cache'] and c.info['tokenizer'] == other.fingerprint != a.info['tokenizer']
    # a damaged cache is reported, never used: load_token_cache refuses it, prepare_data says so and builds it again
    os.truncate(os.path.join(a.info['cache'], 'val.tokens'), 3)
    with pytest.raises(CacheError, match='val.tokens'):
        load_token_cache(a.info['cache'])
    with pytest.warns(UserWarning, match='val.tokens has 3 bytes.*rebuilding it'):
        d = prepare_data('demo', **kw)
    assert not d.info['reused'] and np.array_equal(d.val.tokens, a.val.tokens)
    assert prepare_data('demo', rebuild=True, **kw).val.n_docs == a.val.n_docs
    # ids outside the vocabulary (a cache written for another tokenizer, or tampered with) are caught at load
    with open(os.path.join(d.info['cache'], 'train.tokens'), 'r+b') as f:
        f.write(np.array([d.tokenizer.vocab_size + 5], dtype=np.uint16).tobytes())
    with pytest.raises(CacheError, match='outside the vocabulary'):
        load_token_cache(d.info['cache'], d.tokenizer)


def test_prepare_data_local_files(tmp_path, demo):
    p = tmp_path / 'stories.jsonl'
    p.write_text(''.join(json.dumps({'text': t}) + '\n' for t in demo['stories'] + [None, '']))
    a = prepare_data(str(p), cache_dir=tmp_path / 'c', progress=False, val_frac=0.1)
    assert a.info['rows'] == {'stories.jsonl': {'docs': len(demo['stories']), 'not_text': 1, 'empty': 1}}
    assert prepare_data(str(p), cache_dir=tmp_path / 'c', progress=False, val_frac=0.1).info['reused']
    with open(p, 'a') as f:
        f.write(json.dumps({'text': 'Another story.'}) + '\n')
    assert not prepare_data(str(p), cache_dir=tmp_path / 'c', progress=False, val_frac=0.1).info['reused']


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv('I3_EDU_CACHE', str(tmp_path / 'home_cache'))
    d = prepare_data('demo:sentences', demo_scale=SMALL, progress=False)
    assert d.info['cache'].startswith(str(tmp_path / 'home_cache'))


def test_text_files_split_into_stories_paragraphs_or_lines(tmp_path):
    stories = ['Once upon a time, a cat.\nIt slept.', 'Tom had a red ball.\n\nHe threw it.', 'The end came.']
    ts = tmp_path / 'TinyStories-valid.txt'                        # the hub's own .txt layout
    ts.write_text(''.join(s + '\n<|endoftext|>\n' for s in stories))
    assert text_unit(ts) == 'story'
    assert [r['text'] for r in iter_text_documents(ts)] == stories
    assert [r['text'] for r in iter_text_documents(ts, 'paragraph')][1].startswith('He threw it.')   # blank lines split
    para = tmp_path / 'p.txt.gz'
    with gzip.open(para, 'wt', encoding='utf-8') as f:
        f.write('first para\nstill first\n\n\n\nsecond para\n')
    assert text_unit(para) == 'paragraph'
    assert [r['text'] for r in iter_text_documents(para)] == ['first para\nstill first', 'second para']
    lines = tmp_path / 'l.txt'
    lines.write_text('a sentence.\nanother one.\n')
    assert text_unit(lines) == 'line' and len(list(iter_text_documents(lines))) == 2
    assert [r['text'] for r in iter_text_documents(lines, 'document')] == ['a sentence.\nanother one.\n']
    with pytest.raises(ValueError, match='sample_by'):
        resolve_sources([str(ts)], sample_by='sentence')


def test_tinystories_txt_becomes_one_document_per_story(tmp_path, demo):
    ts = tmp_path / 'TinyStories-train.txt'
    ts.write_text(''.join(s + '\n<|endoftext|>\n' for s in demo['stories']))
    d = prepare_data([str(ts)], cache_dir=tmp_path / 'cache', val_frac=0.1, progress=False)
    assert d.info['rows'][ts.name]['docs'] == len(demo['stories'])
    assert d.train.n_docs + d.val.n_docs == len(demo['stories'])
    assert not any('<|' in c or '|>' in c for c in d.tokenizer.chunk_to_idx)   # the marker is not text
    by_line = prepare_data([str(ts)], cache_dir=tmp_path / 'cache', val_frac=0.1, progress=False, sample_by='line')
    assert by_line.info['rows'][ts.name]['docs'] > len(demo['stories'])


def test_validation_source_is_the_whole_validation_split(tmp_path, demo):
    "TinyStories comes pre-split: val_sources gives the validation documents, all of them and nothing else."
    tr, va = tmp_path / 'TinyStories-train.txt', tmp_path / 'TinyStories-valid.txt'
    tr.write_text(''.join(s + '\n<|endoftext|>\n' for s in demo['stories'][:-10]))
    va.write_text(''.join(s + '\n<|endoftext|>\n' for s in demo['stories'][-10:]))
    d = prepare_data(str(tr), val_sources=str(va), cache_dir=tmp_path / 'cache', progress=False)
    assert (d.train.n_docs, d.val.n_docs) == (len(demo['stories']) - 10, 10) and d.info['val_frac'] == 0
    assert d.info['rows']['val:TinyStories-valid.txt'] == {'docs': 10}
    assert set(d.val.doc_sources) == {1} and set(d.train.doc_sources) == {0}
    # the validation text is exactly the validation file's stories, tokenized
    want = [t for s in demo['stories'][-10:] for t in d.tokenizer.encode(s)]
    assert d.val.tokens[:].tolist() == want
    alone = prepare_data(str(tr), cache_dir=tmp_path / 'cache', progress=False)
    assert alone.tokenizer.fingerprint == d.tokenizer.fingerprint          # built from the training text only
    assert alone.info['cache'] != d.info['cache']
    with pytest.raises(ValueError, match='val_frac=0.1 and val_sources'):
        prepare_data(str(tr), val_frac=0.1, val_sources=str(va), cache_dir=tmp_path / 'cache', progress=False)
    (tmp_path / 'empty.txt').write_text('\n\n')
    with pytest.raises(ValueError, match='val:empty.txt. has no usable text'):
        prepare_data(str(tr), val_sources=str(tmp_path / 'empty.txt'), cache_dir=tmp_path / 'cache', progress=False)


def test_hub_validation_source_offline_fails_before_tokenizing(tmp_path, demo, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    tr = tmp_path / 'train.txt'
    tr.write_text('\n'.join(demo['sentences'][:50]))
    t0 = time.time()
    with pytest.raises(HubUnavailableError, match='roneneldan/TinyStories'):
        prepare_data(str(tr), val_sources='tinystories', cache_dir=tmp_path / 'cache', progress=False)
    assert time.time() - t0 < 5 and not (tmp_path / 'cache' / 'tokenizers').exists()
