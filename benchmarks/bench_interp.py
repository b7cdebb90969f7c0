"""run_with_cache on SmolLM2-135M-Instruct: llmlab's hooked forward against TransformerLens's TransformerBridge, in one run.

Both run float32 on the CPU with the same weights, on 4 prompts of 64 tokens, caching (a) every hook point and
(b) a filtered set (the residual stream after each layer, what a logit-lens or probe sweep keeps). Time is the median of
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


def main():
    if os.environ.get('MALLOC_MMAP_THRESHOLD_') != '65536':
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '65536'})
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'bench_interp.json'))
    a = ap.parse_args()
    import importlib.metadata, transformers
    tl_version = importlib.metadata.version("transformer-lens")
    from transformers import AutoModelForCausalLM
    transformers.logging.set_verbosity_error()
    from llmlab.checkpoints import cached_gguf, load_pretrained, resolve_source
    from llmlab.interp import bridge, run_with_cache

    src = cached_gguf(resolve_source('smollm2-135m-instruct'), progress=False)
    ours = load_pretrained('smollm2-135m-instruct', dtype='float32', progress=False)
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    tl = bridge(hf)
    ids = torch.randint(100, 49000, (4, 64), generator=torch.Generator().manual_seed(0))
    filters = {'all hook points': None, 'resid_post only': lambda n: n.endswith('hook_resid_post')}

    rows = []
    for label, f in filters.items():
        run_ours = lambda: run_with_cache(ours, ids, names_filter=f)
        run_tl = lambda: run_with_cache(hf, ids, names_filter=f)    # the bridge, behind the same function
        _, c_ours = run_ours(); _, c_tl = run_tl()
        common = set(c_ours) & set(c_tl)
        worst = max((c_ours[k] - c_tl[k]).abs().max().item() / max(1.0, c_tl[k].abs().max().item()) for k in common)
        assert worst < 1e-4, f'caches differ: {worst}'
        t_tl, t_ours = [], []
        for _ in range(a.repeats):
            for fn, ts in ((run_tl, t_tl), (run_ours, t_ours)):
                t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
        m_tl = statistics.median(peak_extra_mb(run_tl) for _ in range(3))
        m_ours = statistics.median(peak_extra_mb(run_ours) for _ in range(3))
        t_tl, t_ours = statistics.median(t_tl), statistics.median(t_ours)
        rows.append(dict(what=label, points_llmlab=len(c_ours), points_tl=len(c_tl), seconds_tl=t_tl, seconds_llmlab=t_ours,
                         speedup=t_tl / t_ours, peak_mb_tl=m_tl, peak_mb_llmlab=m_ours, memory_ratio=m_tl / max(m_ours, 1e-9)))

    print(f"\nrun_with_cache, SmolLM2-135M-Instruct, 4 x 64 tokens, float32, CPU, {torch.get_num_threads()} threads, "
          f"median of {a.repeats} alternating repeats (transformer_lens {tl_version}, torch {torch.__version__})")
    print(f"{'what':<17} {'points TL/llmlab':>17} {'TL s':>7} {'llmlab s':>9} {'speedup':>8} {'TL MB':>7} {'llmlab MB':>10} {'TL/llmlab':>10}")
    for r in rows:
        print(f"{r['what']:<17} {r['points_tl']:>8}/{r['points_llmlab']:<8} {r['seconds_tl']:>7.3f} {r['seconds_llmlab']:>9.3f} "
              f"{r['speedup']:>7.2f}x {r['peak_mb_tl']:>7.0f} {r['peak_mb_llmlab']:>10.0f} {r['memory_ratio']:>9.2f}x")
    print("speedup and TL/llmlab > 1: llmlab faster / leaner")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(dict(benchmark='bench_interp', model='smollm2-135m-instruct', batch=4, tokens=64,
                                           threads=torch.get_num_threads(), repeats=a.repeats, torch=torch.__version__,
                                           transformer_lens=tl_version, machine=platform.machine(),
                                           rows=rows), indent=2))
    print(f"wrote {a.out}")


if __name__ == '__main__':
    main()
