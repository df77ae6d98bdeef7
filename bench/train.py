"""i3-80M training steps on the CPU: the reference layers (per-timestep loop + hand-written attention) against the
fast path (the model's default layers), timed in the same process with the real trainer (`Learner.train_step`:
schedule, forward, backward, clipping, AdamW).

    python bench/train.py [--batch 4] [--seq 256] [--steps 3] [--threads 0] [--hybrid MODE] [--compile]

Prints tokens/s for each path, their ratio (target >= 1.5x), and the achieved FLOP/s as a share of the sgemm
throughput measured on this machine in the same run (target >= 85%). FLOPs are counted analytically:
6 x (parameters except the two embedding tables) x tokens for the matmuls of forward + backward, plus
12 x T x D per token and attention layer for the scores and the weighted sum (full T x T, causal half not discounted).
Random token ids: the speed does not depend on the text."""
import argparse, math, os, resource, sys, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RandomTokens

from i3_edu.core import set_seed
from i3_edu.learner import Learner, TrainConfig
from i3_edu.model import i3Config, i3Model

def sgemm_flops(n=2048, reps=5):
    "Best float32 matmul throughput (FLOP/s) over `reps` n x n x n products."
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best

def step_matmul_flops(model, M, reps=2):
    "FLOP/s of the Linear matmuls of one step (M tokens; forward, input grad, weight grad) timed alone: this CPU's best on these shapes."
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    mats = {s: (torch.randn(M, s[0]), torch.randn(s[1], s[0]), torch.randn(M, s[1])) for s in set(shapes)}
    def run():
        for s in shapes:
            x, w, g = mats[s]
            x @ w.T
            g @ w
            g.T @ x                                  # forward, grad input, grad weight
    run()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return sum(6 * M * i * o for i, o in shapes) / best

def step_flops(model, B, T):
    "Analytic FLOPs of one training step (forward + backward)."
    cfg = model.cfg
    n = sum(p.numel() for k, p in model.named_parameters() if k not in ('embed.weight', 'pos_embed.weight'))
    return 6 * n * B * T + 12 * cfg.n_attn * B * T * T * cfg.d_model, n

def time_path(learn, steps):
    "Seconds per step, best of `steps` (after one warm-up step), each with its loss read back."
    learn.train_step()
    learn.flush()
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        learn.train_step()
        learn.flush()
        ts.append(time.perf_counter() - t)
    return min(ts), sum(ts) / len(ts)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--seq', type=int, default=256)
    ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--threads', type=int, default=0)
    ap.add_argument('--hybrid', default=None, help='fast-path recurrence mode (default: the model default)')
    ap.add_argument('--compile', action='store_true',
                    help='add a torch.compile row (Inductor generates CPU code: expect minutes of compiling)')
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    B, T = a.batch, a.seq
    set_seed(0)
    model = i3Model(i3Config.preset('i3-80m'))
    fast = (a.hybrid or model.cfg.hybrid_mode, model.cfg.attn_mode)
    flops, n = step_flops(model, B, T)
    cfg = TrainConfig(steps=10**6, batch_size=B, seq_len=T, eval_every=0, sample_every=0, ckpt_every=0, wandb='off',
                      device='cpu')
    learn = Learner(model, RandomTokens(model.cfg.vocab_size), cfg)
    print(f'i3-80M training step on the CPU, batch {B} x {T} = {B*T} tokens, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads, {os.cpu_count()} cores')
    print(f'{sum(p.numel() for p in model.parameters()):,} parameters, {n:,} in matmuls; '
          f'{flops/1e9:.1f} GFLOP per step (analytic)')
    peak = sgemm_flops()
    rows = []
    paths = [('reference (loop + naive)', ('loop', 'naive'), False), (f'fast ({fast[0]} + {fast[1]})', fast, False)]
    if a.compile:
        paths.append((f'fast ({fast[0]} + {fast[1]}) + torch.compile', fast, True))
    for name, (h, at), comp in paths:
        model.set_modes(hybrid=h, attn=at)
        if comp:                                         # the same weights and optimizer, compiled step
            tc = TrainConfig(**{**cfg.__dict__, 'compile': True, 'compile_backend': 'inductor'})
            learn = Learner(model, RandomTokens(model.cfg.vocab_size), tc)
            t = time.perf_counter()
            learn.train_step()                           # compilation
            print(f'torch.compile (inductor) took {time.perf_counter() - t:.0f} s')
        best, mean = time_path(learn, a.steps)
        rows.append((name, best, mean))
        peak = max(peak, sgemm_flops())                  # re-measured between paths: the machine may be shared
    shaped = step_matmul_flops(model, B * T)
    print(f'sgemm throughput (2048^3, best of runs): {peak/1e9:.1f} GFLOP/s; the Linear matmuls of one step, '
          f'timed alone: {shaped/1e9:.1f} GFLOP/s\n')
    print(f"{'path':28s} {'s/step':>8s} {'(mean)':>8s} {'tokens/s':>10s} {'GFLOP/s':>9s} {'% sgemm':>8s} {'speed-up':>9s}")
    for name, best, mean in rows:
        print(f'{name:28s} {best:8.3f} {mean:8.3f} {B*T/best:10,.0f} {flops/best/1e9:9.1f} {100*flops/best/peak:7.1f}% '
              f'{rows[0][1]/best:8.2f}x')
    f = min(rows[1:], key=lambda r: r[1])
    print(f'\nbest fast path ({f[0]}) / reference: {rows[0][1]/f[1]:.2f}x (target >= 1.5x); at '
          f'{100*flops/f[1]/peak:.0f}% of sgemm (target >= 85%), {100*flops/f[1]/shaped:.0f}% of the same matmuls timed '
          f'alone; '
          f'peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20:.2f} GiB')

if __name__ == '__main__':
    main()
