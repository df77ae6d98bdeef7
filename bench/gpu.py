"""i3-80M training throughput on a GPU, in one short run (< 10 minutes): the reference layers (per-timestep loop +
hand-written attention, float32, eager) against the fast path (parallel recurrence + fused attention, bf16 autocast,
torch.compile), at the reference batch of 4 x 256 tokens and at a large batch, with the real trainer
(`Learner.train_step`: schedule, forward, backward, clipping, fused AdamW, one loss read-back per step).

    python bench/gpu.py [--large 128] [--steps 10] [--budget 540] [--no-compile]

Prints tokens/s and peak memory per row, the speed-ups, and the wall time of the reference recipe (5,000 steps of
4 x 256) and of the i3-80m-fast preset (5,000 steps of 128 x 256) extrapolated from the measured steps (plus the
measured compile time). Targets on an H100: >= 400k tokens/s at the large batch, >= 50x the loop path, the reference
recipe in <= 3 minutes. Without a GPU it runs a tiny CPU version of the same code (i3 'tiny' preset) so that the
script itself is checked, says so, and exits 0; its numbers mean nothing."""
import argparse, math, os, sys, time
import torch

from i3_edu.core import set_seed
from i3_edu.learner import Learner, TrainConfig
from i3_edu.model import i3Config, i3Model
from i3_edu.recurrence import MODES as HYBRID_MODES

class RandomTokens:
    "A data split of random ids with the TokenSplit.sample interface (speed does not depend on the text)."
    def __init__(self, V): self.V = V
    def __len__(self): return 10**9
    def sample(self, batch_size, seq_len, generator=None, device='cpu', cross_docs=True):
        w = torch.randint(0, self.V, (batch_size, seq_len + 1), generator=generator)
        return w[:, :-1].to(device), w[:, 1:].to(device)

def measure(preset, device, B, T, hybrid, attn, dtype, compile, steps, deadline):
    "(seconds per step, compile/warm-up seconds, peak GiB) of Learner.train_step for one configuration, or a reason."
    if time.time() > deadline: return 'skipped: time budget used up'
    torch._dynamo.reset()
    if device.type == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    set_seed(0)
    model = i3Model(i3Config.preset(preset, hybrid_mode=hybrid, attn_mode=attn))
    cfg = TrainConfig(steps=10**6, batch_size=B, seq_len=T, eval_every=0, sample_every=0, ckpt_every=0, wandb='off',
                      device=str(device), dtype=dtype, compile=compile)
    learn = Learner(model, RandomTokens(model.cfg.vocab_size), cfg)
    try:
        t = time.perf_counter()
        for _ in range(2): learn.train_step()              # compile (if any) and warm-up
        warm = time.perf_counter() - t
        ts = []
        for _ in range(steps):
            t = time.perf_counter(); learn.train_step(); ts.append(time.perf_counter() - t)
            if time.time() > deadline and len(ts) >= 2: break
    except Exception as e:                                  # e.g. a compile failure: report it, keep going
        return f'failed: {type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ""}'
    finally:
        del learn
    ts.sort()
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == 'cuda' else float('nan')
    return ts[len(ts) // 2], warm, mem                       # median step time

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--large', type=int, default=128, help='the large batch (sequences of 256)')
    ap.add_argument('--steps', type=int, default=10, help='timed steps per row (median reported)')
    ap.add_argument('--budget', type=float, default=540, help='seconds; later rows are skipped past it')
    ap.add_argument('--no-compile', action='store_true')
    ap.add_argument('--hybrid', default=None, help=f'fast recurrence mode, one of {HYBRID_MODES} (default: the model default)')
    a = ap.parse_args()
    t_start = time.time(); deadline = t_start + a.budget
    gpu = torch.cuda.is_available()
    if gpu:
        device, preset, T, steps, large = torch.device('cuda'), 'i3-80m', 256, a.steps, a.large
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        print(f'GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}')
    else:
        device, preset, T, steps, large = torch.device('cpu'), 'tiny', 32, 2, 16
        print('NO CUDA GPU on this machine: running a tiny CPU version (i3 "tiny" preset, seq 32) only to check that '
              'the script works. These numbers say nothing about GPU speed; run it on a GPU machine.')
    fast_h = a.hybrid or i3Config().hybrid_mode
    fast_dtype = 'bf16' if (gpu and torch.cuda.is_bf16_supported()) or not gpu else 'fp32'
    comp = not a.no_compile and gpu                        # compile on the CPU smoke run would only cost time
    rows = [('loop + naive, fp32 (reference)', 4, 'loop', 'naive', 'fp32', False, max(3, steps // 3)),
            (f'{fast_h} + sdpa, {fast_dtype}' + (', compiled' if comp else ''), 4, fast_h, 'sdpa', fast_dtype, comp, steps),
            (f'{fast_h} + sdpa, {fast_dtype}' + (', compiled' if comp else ''), large, fast_h, 'sdpa', fast_dtype, comp, steps),
            ('loop + naive, fp32 (reference)', large, 'loop', 'naive', 'fp32', False, max(2, steps // 5)),
            (f'{fast_h} + sdpa, {fast_dtype}, eager', large, fast_h, 'sdpa', fast_dtype, False, steps)]
    res = []
    print(f"\n{'path':36s} {'batch':>9s} {'s/step':>9s} {'tokens/s':>11s} {'warm-up s':>9s} {'peak GiB':>8s}")
    for name, B, h, at, dt, c, n in rows:
        r = measure(preset, device, B, T, h, at, dt, c, n, deadline)
        res.append(r)
        if isinstance(r, str): print(f'{name:36s} {B:4d}x{T:<4d} {r}')
        else: print(f'{name:36s} {B:4d}x{T:<4d} {r[0]:9.4f} {B*T/r[0]:11,.0f} {r[1]:9.1f} {r[2]:8.2f}')
        sys.stdout.flush()
    tok = lambda i, B: B * T / res[i][0] if not isinstance(res[i], str) else float('nan')
    print()
    loop4, fast4, fastL, loopL = tok(0, 4), tok(1, 4), tok(2, large), tok(3, large)
    print(f'fast path vs loop path: {fast4/loop4:.1f}x at 4x{T}, {fastL/loopL:.1f}x at {large}x{T}; '
          f'fast path at {large}x{T} vs the reference loop at 4x{T}: {fastL/loop4:.1f}x')
    for label, i, B in ((f'reference recipe (5,000 steps of 4 x {T}), loop path fp32', 0, 4),
                        (f'reference recipe (5,000 steps of 4 x {T}), fast path', 1, 4),
                        (f'i3-80m-fast preset (5,000 steps of {large} x {T}), fast path', 2, large)):
        if isinstance(res[i], str): print(f'{label}: not measured ({res[i]})'); continue
        wall = 5000 * res[i][0] + res[i][1]
        print(f'{label}: {wall/60:.1f} min extrapolated (5,000 x {res[i][0]:.4f} s + {res[i][1]:.0f} s warm-up)')
    if gpu:
        print(f'targets (H100): >= 400k tokens/s at the large batch: {fastL:,.0f}; >= 50x the loop path: '
              f'{fastL/loop4:.0f}x vs loop at 4x256, {fastL/loopL:.0f}x vs loop at the same batch; reference recipe '
              f'<= 3 min: {(5000*res[1][0]+res[1][1])/60 if not isinstance(res[1], str) else float("nan"):.1f} min')
    print(f'bench took {time.time()-t_start:.0f} s')

if __name__ == '__main__': main()
