"""Generation speed: the reference (re-run the context for every token, loop hybrid layers, written-out attention)
against prefill + stateful steps (scan + fused attention for the prompt, then recurrent states and key/value caches),
for the same model, weights and prompt, in one process.

    python bench/generate.py                      # i3-80m, random init, 8-token prompt, 200 new tokens (a few minutes)
    python bench/generate.py --preset demo --new-tokens 100 --vocab 4096

The model is randomly initialised (no trained weights are needed to time it); decoding is greedy (top_k=1) so both
paths must produce the same tokens, which the script checks together with the logits."""
import argparse, platform, time
import torch
from i3_edu.core import set_seed, rel_err
from i3_edu.model import i3Config, i3Model, generate_ids, generation_step_times, param_summary


def run(model, prompt, n, stateful, modes):
    model.set_modes(*modes)
    t0 = time.perf_counter()
    steps = []
    ids = generate_ids(model, prompt, n, top_k=1, stateful=stateful, callback=lambda ids, logits: steps.append(logits))
    logits = torch.stack(steps, 1)                                     # (B, n, V)
    return time.perf_counter() - t0, ids, logits


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--preset', default='i3-80m')
    ap.add_argument('--vocab', type=int, default=None, help='override vocab_size (presets demo/tiny)')
    ap.add_argument('--new-tokens', type=int, default=200)
    ap.add_argument('--prompt-len', type=int, default=8)
    ap.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: PyTorch default)')
    ap.add_argument('--lengths', type=int, nargs='*', default=None, help='context lengths for the per-token table')
    ap.add_argument('--reps', type=int, default=3)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    set_seed(0)
    cfg = i3Config.preset(a.preset, **({'vocab_size': a.vocab} if a.vocab else {}))
    model = i3Model(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, a.prompt_len), generator=torch.Generator().manual_seed(0))
    n, L = a.new_tokens, cfg.max_seq_len
    print(f"model {a.preset}: {param_summary(model).total:,} parameters, random init, float32, CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"prompt {a.prompt_len} tokens, {n} new tokens, batch 1, greedy; context window {L} "
          f"({'stays inside' if a.prompt_len + n <= L else 'runs past'} the window)\n")

    generate_ids(model.set_modes('scan', 'sdpa'), prompt, 2, top_k=1)           # warm-up
    rows = [('reference: re-run every token, loop + naive', False, ('loop', 'naive')),
            ('re-run every token, scan + sdpa', False, ('scan', 'sdpa')),
            ('stateful: prefill + steps (scan + sdpa)', True, ('scan', 'sdpa'))]
    res = {}
    for label, stateful, modes in rows:
        res[label] = run(model, prompt, n, stateful, modes)
    t_ref, ids_ref, logits_ref = res[rows[0][0]]
    print(f"{'path':<46}{'seconds':>9}{'tokens/s':>10}{'speed-up':>10}{'max logits rel err':>20}{'same tokens':>13}")
    for label, _, _ in rows:
        t, ids, logits = res[label]
        err = max(rel_err(logits[:, i], logits_ref[:, i]) for i in range(n))
        print(f"{label:<46}{t:>9.2f}{n / t:>10.2f}{t_ref / t:>9.1f}x{err:>20.1e}{str(torch.equal(ids, ids_ref)):>13}")
        assert torch.equal(ids, ids_ref) and err <= 1e-5, f"{label}: differs from the reference"

    lengths = a.lengths or [t for t in (1, 32, 64, 128, 192, 256) if t <= L]
    variants = {'re-run, loop + naive (ref)': (False, ('loop', 'naive')), 're-run, scan + sdpa': (False, ('scan', 'sdpa')),
                'stateful step': (True, ('scan', 'sdpa'))}
    times = generation_step_times(model, lengths, reps=a.reps, variants=variants)
    print(f"\nms per new token at context length t (best of {a.reps}):")
    print(f"{'t':<28}" + ''.join(f'{t:>9}' for t in lengths))
    for label, ts in times.items():
        print(f"{label:<28}" + ''.join(f'{1e3 * x:>9.2f}' for x in ts))
    st = times['stateful step']
    print(f"stateful step at t={lengths[-1]} / t={lengths[0]}: {st[-1] / st[0]:.2f}x "
          f"(reference re-run: {times['re-run, loop + naive (ref)'][-1] / times['re-run, loop + naive (ref)'][0]:.0f}x)")


if __name__ == '__main__':
    main()
