"""The training loss of i3-80M's head, on the CPU: the reference `F.cross_entropy` on all logits against
`chunked_cross_entropy` (chapter 05), forward + backward, for N positions of width 512 over 35,560 chunks.

    python bench/loss.py [--positions 4096] [--chunk 1024] [--reps 3]

Each variant runs in its own fresh process, so that its peak resident memory (ru_maxrss) above what the inputs
take is its own; the parent prints both and their ratio, and the time of one forward + backward (best of --reps).
On a GPU, bench/gpu.py measures the same loss inside whole training steps (its last row uses the full loss)."""
import argparse, json, resource, subprocess, sys, time
import torch
import torch.nn.functional as F

def child(variant:str, N:int, chunk:int, reps:int):
    "Run one variant in this process and print its JSON record."
    from i3_edu.model import chunked_cross_entropy
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, 512, generator=g).requires_grad_()                        # (N, D)
    W = (0.02 * torch.randn(35_560, 512, generator=g)).requires_grad_()          # (V, D)
    b = torch.zeros(35_560, requires_grad=True)
    y = torch.randint(0, 35_560, (N,), generator=g)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss                    # KiB, inputs allocated
    best = float('inf')
    for _ in range(reps):
        t = time.perf_counter()
        if variant == 'full':
            loss = F.cross_entropy(h @ W.T + b, y)
        else:
            loss = chunked_cross_entropy(h, W, b, y, chunk)
        loss.backward()
        best = min(best, time.perf_counter() - t)
        h.grad = W.grad = b.grad = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(variant=variant, loss=loss.item(), peak_mib=(peak - base) / 1024, s=best)))

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--positions', type=int, default=4096)
    ap.add_argument('--chunk', type=int, default=1024)
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--child', default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.positions, a.chunk, a.reps)
    res = {}
    for v in ('full', 'chunked'):
        p = subprocess.run([sys.executable, __file__, '--child', v, '--positions', str(a.positions), '--chunk',
                            str(a.chunk), '--reps', str(a.reps)], capture_output=True, text=True, check=True)
        res[v] = json.loads(p.stdout.strip().splitlines()[-1])
    f, c = res['full'], res['chunked']
    print(f"{a.positions} positions x 35,560 chunks, chunk {a.chunk}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'loss':10s} {'value':>10s} {'peak MiB':>9s} {'s (fwd+bwd)':>12s}")
    for r in (f, c):
        print(f"{r['variant']:10s} {r['loss']:10.6f} {r['peak_mib']:9.0f} {r['s']:12.3f}")
    print(f"chunked / full: memory {c['peak_mib'] / f['peak_mib']:.2f}x, time {c['s'] / f['s']:.2f}x; "
          f"full float32 logits alone: {a.positions * 35_560 * 4 / 2**20:.0f} MiB")

if __name__ == '__main__':
    main()
