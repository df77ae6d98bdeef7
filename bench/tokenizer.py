"""Chunk tokenizer speed: the reference Python walk against the vectorised NumPy path, same process, same text.

    python bench/tokenizer.py                 # demo corpus at scale 1 (about 4 MB per side), 1-3 minutes
    python bench/tokenizer.py --scale 0.25 --repeat 3

The vocabulary is built from the demo corpus (seed 0) and the encoders run on other documents (seed 1), so some
chunks are unknown and the fallback path is exercised too. Every fast result is checked against the reference.
Falls back to a small seeded generator of English-like text when `i3_edu.data` is not available."""
import argparse, platform, random, time
from collections import Counter
from i3_edu.tokenizer import ChunkTokenizer, chunk_text


def fallback_corpus(seed, scale):
    "Seeded English-like documents (about 4 MB at scale 1) for when the data chapter is missing."
    rng = random.Random(seed)
    names = 'Tom Lily Sam Mia Ben Anna Max Zoe'.split()
    words = ('the a cat dog ball tree park house bird cake red big happy little went saw found wanted played with and '
             'then but was very to in on of it he she they said').split()
    def doc():
        s = [' '.join([rng.choice(names)] + [rng.choice(words) for _ in range(rng.randint(3, 14))]) + '.'
             for _ in range(rng.randint(1, 12))]
        return ' '.join(s)
    return {'docs': [doc() for _ in range(int(12000 * scale))]}


def best(f, repeat):
    "Best wall time of `repeat` runs, and the last result."
    t = float('inf')
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = f()
        t = min(t, time.perf_counter() - t0)
    return t, r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--scale', type=float, default=1.0, help='demo corpus scale (1.0: about 4 MB of text)')
    ap.add_argument('--repeat', type=int, default=3, help='runs per measurement; the best is reported (both paths)')
    a = ap.parse_args()
    try:
        from i3_edu.demo import demo_corpus
        source = 'i3_edu.data.demo_corpus'
    except ImportError:
        demo_corpus, source = fallback_corpus, 'fallback generator'
    train = [t for docs in demo_corpus(seed=0, scale=a.scale).values() for t in docs]
    test = [t for docs in demo_corpus(seed=1, scale=a.scale).values() for t in docs]
    text = '\n'.join(test)
    n_train, n_test = sum(map(len, train)), sum(map(len, test))
    print(f'{source} scale {a.scale}: vocabulary from {len(train):,} documents ({n_train / 1e6:.2f} M characters); '
          f'encoding {len(test):,} other documents ({n_test / 1e6:.2f} M characters); {platform.python_version()}, '
          f'{platform.processor() or platform.machine()}, best of {a.repeat}')

    def ref_build():
        counts = Counter()
        for t in train:
            counts.update(chunk_text(t))
        order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return ChunkTokenizer({c: i for i, (c, _) in enumerate(order, 1)})
    rows = []
    t_ref, tok_ref = best(ref_build, a.repeat)
    t_fast, tok = best(lambda: ChunkTokenizer.build(train, progress=False), a.repeat)
    assert tok.chunk_to_idx == tok_ref.chunk_to_idx
    rows.append(('build vocabulary (count chunks)', n_train, t_ref, t_fast))

    t_ref, ids_ref = best(lambda: tok.encode_ref(text), a.repeat)
    t_fast, ids = best(lambda: tok.encode(text), a.repeat)
    assert ids == ids_ref
    rows.append(('encode one long text', len(text), t_ref, t_fast))
    unk = ids.count(0)

    t_ref, ref_docs = best(lambda: [tok.encode_ref(t) for t in test], a.repeat)
    t_fast, docs = best(lambda: tok.encode_batch(test), a.repeat)
    assert docs == ref_docs
    rows.append(('encode documents: encode_batch', n_test, t_ref, t_fast))
    t_fast, docs = best(lambda: [tok.encode(t) for t in test], a.repeat)
    assert docs == ref_docs
    rows.append(('encode documents: encode() each', n_test, t_ref, t_fast))

    print(f'vocabulary {tok.vocab_size:,} chunks; {len(ids):,} tokens, {len(text) / len(ids):.2f} characters per token, '
          f'{unk:,} <UNK> ({unk / len(ids):.3%}); all fast results equal the reference')
    print(f"\n| {'task':34s} | {'characters':>10s} | {'reference MB/s':>14s} | {'fast MB/s':>9s} | {'speed-up':>8s} |")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 16}|{'-' * 11}|{'-' * 10}|")
    for name, n, tr, tf in rows:
        print(f'| {name:34s} | {n:>10,} | {n / tr / 1e6:14.2f} | {n / tf / 1e6:9.2f} | {tr / tf:7.1f}x |')
    print('\nMB/s = million characters per second.')


if __name__ == '__main__':
    main()
