"""i3-80M training throughput on a GPU, in one short run: the fast path (parallel recurrence + fused attention, bf16
autocast, torch.compile) against the reference layers (per-timestep loop + hand-written attention, float32, eager),
with the real trainer (`Learner.train_step`: schedule, forward, backward, clipping, fused AdamW, on-device
non-finite guard; losses read back once per timed block, as `fit` does every `log_every` steps).

    python bench/gpu.py [--out DIR] [--budget 420] [--large 128] [--steps 10] [--no-compile] [--hybrid MODE]

Rows, most important first, so that a run cut short still has the numbers that matter:
  1. compiled fast path, large batch      2. eager fast path, large batch      3. eager fast path, 4 x 256
  4. loop path (reference), 4 x 256       5. compiled fast path, 4 x 256       6. loop path, large batch (1 step)
  7. compiled 'reduce-overhead' (CUDA graphs), 4 x 256, 8. eager 'chunked' recurrence, large batch, and 9. compiled,
  large batch, with the full (not chunked) cross-entropy, if time is left. The fast path uses the i3-80m-fast
  preset's chunked loss (`loss_chunk`, chapter 05) at the large batch; at 4 x 256 it is what `--preset i3-80m` runs.
Each row is appended to DIR/gpu_bench-<time>.jsonl (DIR: --out, else $OUT, else the current folder) and flushed at
once, so a killed run keeps what it measured. A row reports seconds per step (median of timed blocks), tokens/s,
the first-step time (compile + warm-up) and the compile time, peak GPU memory, and the SDPA kernel that really ran
(read from the profiler). Before each compile the remaining budget is checked and the row is skipped if too little
is left. The last line extrapolates the reference recipe (5,000 steps of 4 x 256 with its 10 evaluations, samples and
checkpoints, each timed once here) and the i3-80m-fast preset.

Targets on one H100/H200: >= 400k tokens/s at the large batch, >= 50x the loop path at 4 x 256, the reference recipe
in <= 3 minutes, compile <= 3 minutes. Without a GPU the same rows run at tiny sizes on the CPU (i3 'tiny', compile
with aot_eager), so that CI checks the script itself; those numbers say nothing about GPU speed."""
import argparse, json, math, os, sys, tempfile, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RandomData
from i3_edu.core import set_seed
from i3_edu.learner import Learner, TrainConfig
from i3_edu.model import i3Config, i3Model
from i3_edu.recurrence import HYBRID_MODES
from i3_edu.train import TRAIN_PRESETS

SDPA_KERNELS = (('flash', 'flash_attention'), ('memory-efficient', 'efficient_attention'),
                ('cudnn', 'cudnn_attention'), ('math', 'attention_math'))

def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()

def sdpa_kernel(learn) -> str:
    "The attention kernel(s) that one training step really runs, read from the profiler's op names."
    if learn.model.cfg.attn_mode != 'sdpa':
        return 'none (hand-written attention)'
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        learn.train_step()
        learn.flush()
    names = {e.key for e in prof.key_averages()}
    found = [k for k, pat in SDPA_KERNELS if any(pat in n for n in names)]
    return '+'.join(found) or 'not seen'

def make_learner(preset, device, B, T, hybrid, attn, dtype, compile, mode='default', out_dir='', loss_chunk=0):
    set_seed(0)
    model = i3Model(i3Config.preset(preset, hybrid_mode=hybrid, attn_mode=attn, loss_chunk=loss_chunk))
    cfg = TrainConfig(steps=10**6, batch_size=B, seq_len=T, eval_every=0, sample_every=0, ckpt_every=0, wandb='off',
                      device=str(device), dtype=dtype, compile=compile, compile_mode=mode, out_dir=out_dir,
                      log_every=10**6)
    return Learner(model, RandomData(model.cfg.vocab_size), cfg)

def measure(row, preset, device, T, steps, blocks, deadline, compile_guess) -> dict:
    "Time one row; returns its record (status 'ok', 'skipped: ...' or 'failed: ...')."
    rec = dict(row)
    left = deadline - time.time()
    if left < 5 or (row['compile'] and left < 1.5 * compile_guess):
        rec['status'] = f'skipped: {left:.0f} s of the budget left (compile expected to take ~{compile_guess:.0f} s)'
        return rec
    torch._dynamo.reset()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    learn = None
    try:
        learn = make_learner(preset, device, row['batch'], T, row['hybrid'], row['attn'], row['dtype'], row['compile'],
                             row.get('mode', 'default'), loss_chunk=row['loss_chunk'])
        sync(device)
        t = time.perf_counter()
        learn.train_step()                                  # compile (if any) and the first, slow step
        learn.flush()
        sync(device)
        first = time.perf_counter() - t
        for _ in range(2 if row.get('mode') == 'reduce-overhead' else 1):   # CUDA graphs record on a later call
            learn.train_step()
        learn.flush()
        sync(device)
        per = []
        for _ in range(blocks):                             # median over blocks of `steps` steps, one read-back each
            t = time.perf_counter()
            for _ in range(steps):
                learn.train_step()
            learn.flush()
            sync(device)
            per.append((time.perf_counter() - t) / steps)
            if time.time() > deadline:
                break
        per.sort()
        s = per[len(per) // 2]
        rec.update(status='ok', s_per_step=s, tokens_per_s=row['batch'] * T / s, first_step_s=first,
                   compile_s=max(first - s, 0.0) if row['compile'] else None, timed_steps=steps * len(per),
                   peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device.type == 'cuda' else None,
                   sdpa=sdpa_kernel(learn))
    except Exception as e:                                  # e.g. a compile error or out of memory: report, go on
        rec['status'] = f'failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ""}'
    finally:
        del learn
    return rec

def recipe_extras(preset, device, T, dtype, tmp) -> dict:
    "Seconds for one evaluation (8 batches), one round of 3 samples (50 tokens) and one checkpoint, as in the recipe."
    learn = make_learner(preset, device, 4, T, i3Config().hybrid_mode, 'sdpa', dtype, False, out_dir=tmp)
    learn.cfg.eval_batches, learn.cfg.sample_tokens, learn.cfg.top_k = 8, 50, 50
    learn.train_step()
    out = {}
    for name, f in (('eval_s', learn.evaluate), ('samples_s', learn.sample), ('checkpoint_s', lambda: learn.save('last'))):
        sync(device)
        t = time.perf_counter()
        f()
        sync(device)
        out[name] = time.perf_counter() - t
    return out

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=None, help='folder for the JSON lines (default: $OUT, else the current folder)')
    ap.add_argument('--large', type=int, default=128, help='the large batch (sequences of 256)')
    ap.add_argument('--steps', type=int, default=10, help='steps per timed block')
    ap.add_argument('--blocks', type=int, default=3, help='timed blocks per row (the median block is reported)')
    ap.add_argument('--budget', type=float, default=420, help='seconds; rows that would not fit are skipped')
    ap.add_argument('--no-compile', action='store_true', help='skip the compiled rows')
    ap.add_argument('--hybrid', default=None, help=f'fast recurrence mode, one of {HYBRID_MODES}')
    a = ap.parse_args()
    t_start = time.time()
    deadline = t_start + a.budget
    gpu = torch.cuda.is_available()
    out_dir = Path(a.out or os.environ.get('OUT') or '.')
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir/f"gpu_bench-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    f = open(path, 'a')
    def emit(rec):
        f.write(json.dumps(rec) + '\n')
        f.flush()
        os.fsync(f.fileno())
    if gpu:
        device, preset, T, large, steps, blocks = torch.device('cuda'), 'i3-80m', 256, a.large, a.steps, a.blocks
        compile_guess = 120.0
        head = f'GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}'
    else:
        device, preset, T, large, steps, blocks = torch.device('cpu'), 'tiny', 32, 16, 2, 2
        compile_guess = 10.0
        head = ('NO CUDA GPU on this machine: running the same rows at tiny sizes (i3 "tiny", seq 32, compile with '
                'aot_eager) only to check the script. These numbers say nothing about GPU speed.')
    print(head)
    emit(dict(kind='env', gpu=torch.cuda.get_device_name() if gpu else None, torch=torch.__version__,
              cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if gpu else None, preset=preset, seq=T,
              large=large, budget_s=a.budget, tf32=torch.backends.cuda.matmul.allow_tf32,
              date=time.strftime('%Y-%m-%d %H:%M:%S'), argv=sys.argv[1:]))
    fast_h = a.hybrid or i3Config().hybrid_mode
    bf16 = 'bf16' if not gpu or torch.cuda.is_bf16_supported() else 'fp32'
    comp = not a.no_compile
    chunk = TRAIN_PRESETS['i3-80m-fast']['model_set']['loss_chunk'] if gpu else 96   # several chunks at tiny sizes
    row = lambda name, B, h, at, dt, c, **kw: dict(kind='row', name=name, batch=B, hybrid=h, attn=at, dtype=dt,
                                                   compile=c, loss_chunk=chunk if at == 'sdpa' and B == large else 0,
                                                   **kw)   # batch 4: exactly what --preset i3-80m runs
    rows = [row('fast, compiled', large, fast_h, 'sdpa', bf16, True),
            row('fast, eager', large, fast_h, 'sdpa', bf16, False),
            row('fast, eager', 4, fast_h, 'sdpa', bf16, False),
            row('loop + naive, fp32 (reference)', 4, 'loop', 'naive', 'fp32', False),
            row('fast, compiled', 4, fast_h, 'sdpa', bf16, True),
            row('loop + naive, fp32 (reference)', large, 'loop', 'naive', 'fp32', False, one_step=True),
            row('fast, compiled reduce-overhead', 4, fast_h, 'sdpa', bf16, True, mode='reduce-overhead'),
            row('chunked + sdpa, eager', large, 'chunked', 'sdpa', bf16, False),
            {**row('fast, compiled, full loss', large, fast_h, 'sdpa', bf16, True), 'loss_chunk': 0}]
    if not comp:
        rows = [r for r in rows if not r['compile']]
    print(f"\n{'path':32s} {'batch':>9s} {'s/step':>9s} {'tokens/s':>11s} {'first s':>8s} {'peak GiB':>8s}  sdpa")
    res = {}
    for r in rows:
        one = r.pop('one_step', False)
        rec = measure(r, preset, device, T, 1 if one else steps, 1 if one else blocks, deadline, compile_guess)
        if rec.get('compile_s'):
            compile_guess = rec['compile_s']
        emit(rec)
        res[(r['name'], r['batch'], r.get('mode'))] = rec
        label = f"{r['name']:32s} {r['batch']:4d}x{T:<4d}"
        if rec['status'] != 'ok':
            print(f"{label} {rec['status']}")
        else:
            mem = f"{rec['peak_gib']:8.2f}" if rec['peak_gib'] is not None else f"{'-':>8s}"
            print(f"{label} {rec['s_per_step']:9.4f} {rec['tokens_per_s']:11,.0f} {rec['first_step_s']:8.1f} {mem}  "
                  f"{rec['sdpa']}")
        sys.stdout.flush()
    tok = lambda name, B, mode=None: res.get((name, B, mode), {}).get('tokens_per_s', math.nan)
    step = lambda name, B, mode=None: res.get((name, B, mode), {}).get('s_per_step', math.nan)
    loop4 = tok('loop + naive, fp32 (reference)', 4)
    fastL = max((v for v in (tok('fast, compiled', large), tok('fast, eager', large)) if v == v), default=math.nan)
    best4 = min((s for s in (step('fast, compiled', 4), step('fast, eager', 4),
                             step('fast, compiled reduce-overhead', 4, 'reduce-overhead')) if s == s), default=math.nan)
    extras = {}
    if time.time() < deadline - 10:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                extras = recipe_extras(preset, device, T, bf16, tmp)
        except Exception as e:
            extras = dict(status=f'failed: {type(e).__name__}: {e}')
    # the recipe: 5,000 steps, evaluation and samples every 500 steps and at the end (10 times), a checkpoint each time
    compile_s = res.get(('fast, compiled', 4, None), {}).get('compile_s') or 0.0
    overhead = 10 * sum(extras.get(k, math.nan) for k in ('eval_s', 'samples_s', 'checkpoint_s'))
    summ = dict(kind='summary', fast_large_tokens_per_s=fastL, loop4_tokens_per_s=loop4,
                fast_large_vs_loop4=fastL / loop4, fast4_vs_loop4=(4 * T / best4) / loop4 if best4 == best4 else math.nan,
                recipe_min_fast=(5000 * best4 + overhead + compile_s) / 60,
                recipe_min_loop=(5000 * step('loop + naive, fp32 (reference)', 4) + overhead) / 60,
                fast_preset_min=(5000 * step('fast, compiled', large) + overhead) / 60, extras=extras,
                took_s=time.time() - t_start)
    emit(summ)
    print(f"\nfast path at {large}x{T}: {fastL:,.0f} tokens/s = {summ['fast_large_vs_loop4']:.1f}x the loop path at "
          f"4x{T} ({loop4:,.0f} tokens/s); best fast path at 4x{T}: {summ['fast4_vs_loop4']:.1f}x")
    print(f"evaluation {extras.get('eval_s', math.nan):.2f} s, 3 samples {extras.get('samples_s', math.nan):.2f} s, "
          f"checkpoint {extras.get('checkpoint_s', math.nan):.2f} s (each 10 times in the recipe)")
    print(f"reference recipe (5,000 steps of 4 x {T}, extrapolated): fast path {summ['recipe_min_fast']:.1f} min, "
          f"loop path {summ['recipe_min_loop']:.1f} min; i3-80m-fast preset (5,000 x {large} x {T}): "
          f"{summ['fast_preset_min']:.1f} min")
    if gpu:
        print('targets: >= 400k tokens/s at the large batch, >= 50x the loop path at 4 x 256, recipe <= 3 min')
    print(f'results: {path}; bench took {time.time() - t_start:.0f} s')

if __name__ == '__main__':
    main()
