"""Time every mode of the i3 hybrid recurrence against the reference loop, forward and forward+backward.

    python bench/recurrence.py                      # the i3 training sizes, 4x256, 32x256 and 4x1024, on the CPU (minutes)
    python bench/recurrence.py --device cuda        # on a GPU (adds torch.compile of the scan as a mode)
    python bench/recurrence.py --shapes 4x256 --modes loop,scan --rounds 3

All timings of one table come from this one process. After a warm-up, `--rounds` interleaved rounds time every
mode in turn (the loop once per round, the other modes three times) and keep each mode's best time, so that on a
shared machine a busy moment does not land on one mode only. Forward runs under no_grad (prefill); forward+backward
is a training step of the layer. With `--cpu-time` the clock is the CPU time of the calling thread
(time.thread_time) and torch runs on that one thread: a measure of work that other processes on a busy machine
barely disturb (no parallel speed-up, no time spent waiting for a core).

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` during the call. On the CPU, the growth of the peak
resident set (VmHWM, reset through /proc/self/clear_refs after malloc_trim) of a fresh child process over one
forward and one forward+backward of that configuration, with glibc told to mmap every block of 64 KiB or more, so
that freed tensors leave the resident set; it includes allocator overhead.

Last, one attention layer of the same width (i3_edu.attention.FullAttention, H=16) at T=256 for comparison.
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, time
import torch

D_MODEL, D_STATE = 512, 32
SHAPES = [(4, 256), (32, 256), (4, 1024)]

def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()

def make_layer(mode, device):
    "One layer at the i3 sizes (same seed, so the same parameters, for every mode)."
    from i3_edu.recurrence import RWKVMambaHybrid
    torch.manual_seed(0)
    layer = RWKVMambaHybrid(D_MODEL, D_STATE, mode='scan' if mode == 'scan+compile' else mode).to(device)
    layer.check_every = 0
    return torch.compile(layer) if mode == 'scan+compile' else layer

CLOCK = time.perf_counter

def bench_shape(modes, B, T, device, rounds):
    "Interleaved timing of all modes at one shape; returns one dict per mode (ms, and MB on CUDA)."
    x = torch.randn(B, T, D_MODEL, device=device, requires_grad=True)
    fns = {}
    for m in modes:
        layer = make_layer(m, device)
        def fwd(layer=layer):
            with torch.no_grad():
                layer(x)
        def fwd_bwd(layer=layer): layer(x)[0].sum().backward()
        fns[m] = dict(fwd=fwd, fwd_bwd=fwd_bwd)
        fwd()
        fwd_bwd()                                               # warm up (and compile)
    _sync(device)
    res = {m: dict(mode=m, B=B, T=T, fwd=float('inf'), fwd_bwd=float('inf')) for m in modes}
    for _ in range(rounds):
        for m in modes:
            for name, fn in fns[m].items():
                if device.type == 'cuda':
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                for _ in range(1 if m == 'loop' else 3):
                    t0 = CLOCK()
                    fn()
                    _sync(device)
                    res[m][name] = min(res[m][name], 1e3 * (CLOCK() - t0))
                if device.type == 'cuda':
                    res[m][name + '_mb'] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return [res[m] for m in modes]

def peak_rss_child(mode, B, T):
    "Peak RSS growth (MB) of one forward and one forward+backward, measured in a fresh process."
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path), 'MALLOC_MMAP_THRESHOLD_': '65536'}
    out = subprocess.run([sys.executable, __file__, '--child', f'{mode},{B},{T}'], capture_output=True, text=True, env=env)
    if out.returncode:
        return dict(fwd_mb=float('nan'), fwd_bwd_mb=float('nan'))
    return json.loads(out.stdout.strip().splitlines()[-1])

def _status_kb(key):
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ':'))

def _reset_peak():
    "Give freed heap memory back to the OS, then reset the kernel's peak-RSS counter (VmHWM; Linux >= 4.0)."
    import ctypes
    ctypes.CDLL('libc.so.6').malloc_trim(0)
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')

def child(spec):
    mode, B, T = spec.split(',')
    B, T = int(B), int(T)
    layer = make_layer(mode, torch.device('cpu'))
    x = torch.randn(B, T, D_MODEL, requires_grad=True)
    with torch.no_grad():
        layer(x[:, :8])                              # warm up code paths on a tiny input
    layer(x[:, :8])[0].sum().backward()
    layer.zero_grad()
    x.grad = None
    out = {}
    for name in ('fwd', 'fwd_bwd'):
        _reset_peak()
        base = _status_kb('VmRSS')
        if name == 'fwd':
            with torch.no_grad():
                layer(x)
        else:
            layer(x)[0].sum().backward()
        out[name + '_mb'] = (_status_kb('VmHWM') - base) / 1024
    print(json.dumps(out))

def bench_attention(B, T, device, reps):
    "Best fwd+bwd time (ms) of one causal attention layer, reference and fused."
    from i3_edu.attention import FullAttention
    out = {}
    for mode in ('naive', 'sdpa'):
        torch.manual_seed(0)
        attn = FullAttention(D_MODEL, 16, mode=mode).to(device)
        x = torch.randn(B, T, D_MODEL, device=device, requires_grad=True)
        fn = lambda: attn(x)[0].sum().backward()
        fn()
        _sync(device)
        best = float('inf')
        for _ in range(reps):
            t0 = CLOCK()
            fn()
            _sync(device)
            best = min(best, CLOCK() - t0)
        out[mode] = 1e3 * best
    return out

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cpu')
    p.add_argument('--shapes', default=','.join(f'{b}x{t}' for b, t in SHAPES), help='BxT,BxT,...')
    p.add_argument('--modes', default=None, help='comma-separated; default: all of HYBRID_MODES (+ scan+compile on CUDA)')
    p.add_argument('--rounds', type=int, default=4, help='interleaved rounds (loop: 1 call per round, others 3)')
    p.add_argument('--reps', type=int, default=6, help='repeats for the attention comparison')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch default)')
    p.add_argument('--cpu-time', action='store_true', help='one torch thread, timed by its CPU time (busy machines)')
    p.add_argument('--no-mem', action='store_true', help='skip the peak-memory child processes (CPU)')
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    global CLOCK
    if a.cpu_time:
        a.threads, CLOCK = 1, time.thread_time
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.child:
        return child(a.child)
    from i3_edu.recurrence import HYBRID_MODES
    device = torch.device(a.device)
    modes = a.modes.split(',') if a.modes else list(HYBRID_MODES) + (['scan+compile'] if device.type == 'cuda' else [])
    modes = ['loop'] + [m for m in modes if m != 'loop']
    shapes = [tuple(int(v) for v in s.split('x')) for s in a.shapes.split(',')]
    load = lambda: os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, '
          f'load average {load():.1f} at start; clock: {"thread CPU time" if a.cpu_time else "wall"}; '
          f'd_model {D_MODEL}, d_state {D_STATE}; best of {a.rounds} interleaved '
          f'rounds (loop 1 call per round, other modes 3)')
    t_start, rows = time.time(), []
    for B, T in shapes:
        rs = bench_shape(modes, B, T, device, a.rounds)
        for r in rs:
            if device.type == 'cpu' and not a.no_mem:
                r.update(peak_rss_child(r['mode'], B, T))
            r['fwd_x'], r['fwd_bwd_x'] = rs[0]['fwd'] / r['fwd'], rs[0]['fwd_bwd'] / r['fwd_bwd']
            rows.append(r)
            print(f"  {r['mode']:>13} B={B:<3} T={T:<5} fwd {r['fwd']:9.2f} ms  fwd+bwd {r['fwd_bwd']:9.2f} ms", flush=True)
    kind = 'CUDA allocated' if device.type == 'cuda' else 'RSS growth'
    print(f"\n| mode | B | T | fwd ms | fwd vs loop | fwd+bwd ms | fwd+bwd vs loop | peak MB fwd / fwd+bwd ({kind}) |")
    print('|---|---|---|---|---|---|---|---|')
    for r in rows:
        m = f"{r.get('fwd_mb', float('nan')):.0f} / {r.get('fwd_bwd_mb', float('nan')):.0f}"
        print(f"| {r['mode']} | {r['B']} | {r['T']} | {r['fwd']:.2f} | {r['fwd_x']:.1f}x | {r['fwd_bwd']:.2f} | "
              f"{r['fwd_bwd_x']:.1f}x | {m} |")
    try:
        for B in sorted({b for b, t in shapes if t == 256}):
            att = bench_attention(B, 256, device, a.reps)
            scan = next(r['fwd_bwd'] for r in rows if r['mode'] == 'scan' and r['B'] == B and r['T'] == 256)
            print(f"\none attention layer (D={D_MODEL}, H=16), B={B}, T=256, fwd+bwd: naive {att['naive']:.2f} ms, "
                  f"sdpa {att['sdpa']:.2f} ms; hybrid layer (scan) {scan:.2f} ms")
    except (ImportError, StopIteration) as e:
        print('attention comparison skipped:', repr(e))
    print(f'\ntotal {time.time() - t_start:.0f} s; load average {load():.1f} at the end')

if __name__ == '__main__':
    main()
