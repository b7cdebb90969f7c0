"""Caches and a patching sweep on SmolLM2-135M-Instruct: llmlab against TransformerLens's TransformerBridge and nnsight, in one run.

All run float32 on the CPU with the same weights. Caches, on 4 prompts of 64 tokens: (a) the 300 hook points that are
module boundaries (what nnsight can read: see benchmarks/peers.py), (b) the residual stream after each layer only,
(c) every hook point (llmlab and TransformerLens; nnsight cannot see inside attention). The sweep: the clean residual
stream entering each layer patched into the corrupted IOI prompt at each position, 30 x 14 runs, each tool its own way
(llmlab's patch_residual, 16 runs per forward; TransformerLens's get_act_patch_resid_pre; nnsight one trace per layer
with an invoke per position). Every result is checked against llmlab's before it is timed. Time is the median of
alternating repeats; peak memory is the growth of the process's resident set during one call (Linux: VmHWM after
resetting it through /proc/self/clear_refs), so it includes the cache itself and every temporary. The script re-runs
itself with MALLOC_MMAP_THRESHOLD_=65536 so that glibc returns every freed buffer of 64 KB or more to the system;
otherwise freed memory is reused without showing in the resident set and later calls seem to cost nothing.

    python benchmarks/bench_interp.py [--repeats 5]
"""
import argparse, gc, json, os, platform, statistics, sys, time
from pathlib import Path

import torch


def rss_kb(field):
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field): return int(line.split()[1])


def peak_extra_mb(fn):
    "Peak resident memory added while `fn` runs, in MB."
    gc.collect()
    Path('/proc/self/clear_refs').write_text('5')      # reset the high-water mark to the current resident set
    before = rss_kb('VmRSS:')
    out = fn()
    peak = rss_kb('VmHWM:')
    del out; gc.collect()
    return (peak - before) / 1024


def median_seconds(fns, repeats):
    "Median wall time of each function in `fns` (a dict), the functions alternating within each repeat."
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter(); fn(); times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    if os.environ.get('MALLOC_MMAP_THRESHOLD_') != '65536':
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '65536'})
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--sweep-repeats', type=int, default=2)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'bench_interp.json'))
    a = ap.parse_args()
    import importlib.metadata, transformers
    import transformer_lens.patching as tl_patching
    versions = {k: importlib.metadata.version(k) for k in ('transformer-lens', 'nnsight')}
    from transformers import AutoModelForCausalLM
    transformers.logging.set_verbosity_error()
    from llmlab.checkpoints import cached_gguf, load_pretrained, load_tokenizer, resolve_source
    from llmlab.interp import bridge, logit_diff_metric, patch_residual, run_with_cache
    sys.path.insert(0, str(Path(__file__).parent))
    import peers

    src = cached_gguf(resolve_source('smollm2-135m-instruct'), progress=False)
    ours = load_pretrained('smollm2-135m-instruct', dtype='float32', progress=False)
    tok = load_tokenizer('smollm2-135m-instruct')
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    tl, lm = bridge(hf), peers.language_model(hf, tok)
    ids = torch.randint(100, 49000, (4, 64), generator=torch.Generator().manual_seed(0))
    modules = [f'blocks.{l}.{p}' for l in range(30) for p in peers.BLOCK_POINTS]
    resid = [f'blocks.{l}.hook_resid_post' for l in range(30)]
    rows = []

    def worst(a_cache, b_cache):
        return max((a_cache[k] - b_cache[k]).abs().max().item() / max(1.0, b_cache[k].abs().max().item()) for k in set(a_cache) & set(b_cache))

    # caches: (label, names, with nnsight?)
    for label, names in (('module boundaries', modules), ('resid_post only', resid), ('all hook points', None)):
        fns = {'llmlab': lambda n=names: run_with_cache(ours, ids, names_filter=n),
               'transformer_lens': lambda n=names: run_with_cache(hf, ids, names_filter=n)}     # the bridge, behind the same function
        if names is not None: fns['nnsight'] = lambda n=names: peers.nnsight_cache(lm, ids, sorted({k.split('.', 2)[2] for k in n}))
        caches = {k: (fn() if k == 'nnsight' else fn()[1]) for k, fn in fns.items()}
        for k in caches:
            if k != 'llmlab': assert worst(caches['llmlab'], caches[k]) < 1e-4, f'caches differ from {k}'
        secs = median_seconds(fns, a.repeats)
        mem = {k: statistics.median(peak_extra_mb(fn) for _ in range(3)) for k, fn in fns.items()}
        fastest_peer = min(v for k, v in secs.items() if k != 'llmlab')
        rows.append(dict(what=f'cache: {label}', points={k: len(c) for k, c in caches.items()}, seconds=secs, peak_mb=mem,
                         speedup_vs_fastest_peer=fastest_peer / secs['llmlab']))

    # the patching sweep: the clean residual stream entering each layer, at each position, into the corrupted IOI prompt
    clean, corrupt = (tok(t, return_tensors='pt').input_ids for t in ("When Mary and John went to the store, John gave a drink to",
                                                                       "When Mary and John went to the store, Mary gave a drink to"))
    mary, john = (tok(t, add_special_tokens=False).input_ids[0] for t in (" Mary", " John"))
    metric = logit_diff_metric(mary, john)
    def tl_sweep():
        with torch.no_grad():
            _, clean_cache = tl.run_with_cache(clean)
            return tl_patching.get_act_patch_resid_pre(tl, corrupt, clean_cache, lambda logits: metric(logits).mean())
    fns = {'llmlab': lambda: patch_residual(ours, clean, corrupt, metric), 'transformer_lens': tl_sweep,
           'nnsight': lambda: peers.nnsight_patch_resid_pre(lm, clean, corrupt, metric)}
    results = {k: fn() for k, fn in fns.items()}
    for k in ('transformer_lens', 'nnsight'): assert (results[k] - results['llmlab']).abs().max() < 1e-3, f'sweeps differ: {k}'
    secs = median_seconds(fns, a.sweep_repeats)
    rows.append(dict(what=f'patching sweep: resid_pre, 30 layers x {clean.shape[1]} positions', runs=30 * clean.shape[1], seconds=secs,
                     speedup_vs_fastest_peer=min(secs['transformer_lens'], secs['nnsight']) / secs['llmlab']))

    print(f"\nSmolLM2-135M-Instruct, float32, CPU, {torch.get_num_threads()} threads; caches: 4 x 64 tokens, median of {a.repeats}; "
          f"sweep: the IOI prompt pair, median of {a.sweep_repeats} (transformer_lens {versions['transformer-lens']}, nnsight {versions['nnsight']}, "
          f"torch {torch.__version__})")
    print(f"{'what':<58} {'llmlab s':>9} {'TL s':>8} {'nnsight s':>10} {'x fastest peer':>15}")
    for r in rows:
        s_ = r['seconds']
        print(f"{r['what']:<58} {s_['llmlab']:>9.3f} {s_['transformer_lens']:>8.3f} {s_.get('nnsight', float('nan')):>10.3f} "
              f"{r['speedup_vs_fastest_peer']:>14.2f}x")
    print("x fastest peer > 1: llmlab faster than the faster of TransformerLens and nnsight")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(dict(benchmark='bench_interp', model='smollm2-135m-instruct', batch=4, tokens=64,
                                           threads=torch.get_num_threads(), repeats=a.repeats, torch=torch.__version__, **versions,
                                           machine=platform.machine(), rows=rows), indent=2))
    print(f"wrote {a.out}")


if __name__ == '__main__':
    main()
