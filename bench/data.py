"""Token cache building: speed and peak memory, against the reference's everything-in-RAM list, as the corpus grows.

    python bench/data.py                  # demo corpus at scale 1 (about 4 MB of text) and scale 10 (about 40 MB)
    python bench/data.py --scales 1 10 --files    # also stream the same corpora from JSON Lines files via `datasets`

Each measurement runs in a fresh Python process, so its peak RSS (resource.getrusage, ru_maxrss) belongs to that
measurement alone. Both methods use the same vocabulary (built once from the demo corpus at scale 1) and the same
batched encoder (ChunkTokenizer.encode_batch), so the comparison is about storage, and they must produce the same ids:
  reference  the reference's way: the whole corpus as Python strings in RAM, all ids appended to one Python list
  cache      i3_edu.data.prepare_data: documents generated (or read) one at a time, ids streamed to disk in chunks
Peak RSS includes the interpreter with torch and numpy loaded ('base' column); 'growth' is peak minus base.
Times include generating (or reading) the corpus, which both methods do; each row is the fastest of --reps runs."""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path


REF, CACHE, FILES = 'reference: one list in RAM', 'cache: streamed from generator', 'cache: streamed from jsonl'


def rss_mb() -> float:
    "Current resident set size in MB (Linux /proc; falls back to the peak elsewhere)."
    try:
        for line in open('/proc/self/status'):
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_mb()


def peak_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == 'darwin' else r / 1024   # bytes on macOS, KiB on Linux


def child(method, scale, vocab, work, jsonl):
    "One measurement (in a fresh process): print a JSON line with tokens, seconds, base and peak RSS."
    import numpy as np
    from i3_edu.tokenizer import ChunkTokenizer
    from i3_edu.data import prepare_data
    from i3_edu.demo import demo_corpus, DEMO_STYLES
    tok = ChunkTokenizer.load(vocab)
    if jsonl:
        import datasets  # noqa: F401  (imported before the baseline, like torch)
    base = rss_mb()
    t0 = time.perf_counter()
    if method == 'reference':
        corpus = demo_corpus(scale=scale)                    # the reference holds every text in RAM
        tokens, group = [], []
        def encode():                                        # the same batched encoder as the cache uses
            for ids in tok.encode_batch(group):
                tokens.extend(ids)
            group.clear()
        for docs in corpus.values():
            for t in docs:
                group.append(t)
                if len(group) == 2000:
                    encode()
        encode()
        n = len(tokens)
        check = int(np.asarray(tokens[-1000:]).sum())
    else:
        src = [str(Path(jsonl) / f'{k}.jsonl') for k in DEMO_STYLES] if jsonl else 'demo'
        d = prepare_data(src, val_frac=0, demo_scale=scale, cache_dir=work, tokenizer=tok, progress=False, rebuild=True)
        n = len(d.train)
        check = int(np.asarray(d.train.tokens[-1000:], dtype=np.int64).sum())
    dt = time.perf_counter() - t0
    print(json.dumps(dict(tokens=n, seconds=dt, base=base, peak=peak_mb(), check=check)))


def run(method, scale, vocab, work, jsonl=None):
    cmd = [sys.executable, __file__, '--child', method, str(scale), vocab, work] + ([jsonl] if jsonl else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_jsonl(scale, folder):
    "The demo corpus at `scale` as one JSON Lines file per style, written one document at a time."
    from i3_edu.demo import iter_demo, DEMO_STYLES
    folder.mkdir(parents=True, exist_ok=True)
    for k in DEMO_STYLES:
        with open(folder / f'{k}.jsonl', 'w') as f:
            for t in iter_demo(k, scale=scale):
                f.write(json.dumps({'text': t}) + '\n')
    return str(folder)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == '--child':
        return child(sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6] if len(sys.argv) > 6 else None)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--scales', type=float, nargs='+', default=[1, 10], help='demo corpus scales (first: smallest)')
    ap.add_argument('--files', action='store_true', help='also build from JSON Lines files through datasets')
    ap.add_argument('--reps', type=int, default=2, help='fresh processes per measurement: fastest time, highest peak')
    a = ap.parse_args()
    import platform, torch
    from i3_edu.tokenizer import ChunkTokenizer
    from i3_edu.demo import demo_corpus
    work = Path(tempfile.mkdtemp(prefix='i3_bench_data_'))
    t0 = time.perf_counter()
    tok = ChunkTokenizer.build((t for docs in demo_corpus(scale=1).values() for t in docs), progress=False)
    vocab = str(work / 'vocab.json')
    tok.save(vocab)
    print(f"vocabulary {tok.vocab_size:,} chunks from the demo corpus at scale 1 ({time.perf_counter() - t0:.1f} s); "
          f"Python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.machine()}\n")
    rows, res = [], {}
    for scale in a.scales:
        variants = [('reference', None, REF), ('cache', None, CACHE)]
        if a.files:
            variants.append(('cache', write_jsonl(scale, work / f'files{scale:g}'), FILES))
        for method, jsonl, label in variants:
            rs = [run(method, scale, vocab, str(work / 'cache'), jsonl) for _ in range(a.reps)]
            r = dict(min(rs, key=lambda r: r['seconds']), peak=max(r['peak'] for r in rs))   # best time, worst memory
            res[label, scale] = r
            rows.append((label, scale, r))
    print(f"{'method':34s} {'scale':>5s} {'tokens':>12s} {'seconds':>8s} {'tokens/s':>10s} {'base MB':>8s} "
          f"{'peak MB':>8s} {'growth MB':>9s}")
    for label, scale, r in rows:
        print(f"{label:34s} {scale:5g} {r['tokens']:12,} {r['seconds']:8.1f} {r['tokens'] / r['seconds']:10,.0f} "
              f"{r['base']:8.0f} {r['peak']:8.0f} {r['peak'] - r['base']:9.0f}")
    print()
    lo, hi = min(a.scales), max(a.scales)
    for s in a.scales:
        r, c = res[REF, s], res[CACHE, s]
        assert r['tokens'] == c['tokens'] and r['check'] == c['check'], f"scale {s:g}: cache and reference differ"
        print(f"scale {s:g}: cache / reference tokens/s {r['seconds'] / c['seconds']:.2f}x; growth over base "
              f"{c['peak'] - c['base']:.0f} MB (cache) vs {r['peak'] - r['base']:.0f} MB (reference)")
    if hi > lo:
        for label in [l for l in (REF, CACHE, FILES) if (l, hi) in res]:
            g = res[label, hi]['peak'] - res[label, lo]['peak']
            print(f"{label:34s} peak RSS, scale {hi:g} vs {lo:g}: {g:+5.0f} MB "
                  f"({res[label, hi]['peak'] / res[label, lo]['peak']:.2f}x) for {hi / lo:g}x the corpus")
    import shutil
    shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
