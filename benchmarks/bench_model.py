"""llmlab against transformers on the CPU for SmolLM2-135M-Instruct (float32), in one run.

Measures forward throughput (batch 8 x 256 tokens), greedy generation throughput (batch 1, 64 new tokens) and the
time to load the model from llmlab's safetensors cache, each as the median of several repeats, and prints a table of
ratios (llmlab / transformers for throughput, transformers / llmlab for load time: > 1 means llmlab is faster).

    python benchmarks/bench_model.py [--repeats 5] [--threads N]
"""
import argparse, json, platform, statistics, time
from pathlib import Path

import torch


def median_times(fn_a, fn_b, repeats, warmup=1):
    "Median seconds of `fn_a` and `fn_b`, timed alternately (ABAB...) so drift in machine load hits both alike."
    for _ in range(warmup): fn_a(); fn_b()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, ta), (fn_b, tb)):
            t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'bench_model.json'))
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    import transformers
    from transformers import AutoModelForCausalLM
    transformers.logging.set_verbosity_error()
    from llmlab.checkpoints import cached_gguf, load_pretrained, resolve_source

    src = resolve_source('smollm2-135m-instruct')
    cache_dir = cached_gguf(src, progress=False)
    ours = load_pretrained('smollm2-135m-instruct', dtype='float32', progress=False)
    ref = AutoModelForCausalLM.from_pretrained(cache_dir, dtype=torch.float32).eval()  # sdpa attention, its default
    rows = []

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 49000, (8, 256), generator=g)
    with torch.no_grad():
        assert (ours(ids[:1, :32]) - ref(ids[:1, :32]).logits).abs().max() < 1e-4  # same model, before timing it
        t_ref, t_ours = median_times(lambda: ref(ids).logits, lambda: ours(ids), a.repeats)
    n = ids.numel()
    rows.append(('forward tokens/s (8 x 256)', n / t_ref, n / t_ours, t_ref / t_ours))

    prompt = torch.randint(100, 49000, (1, 16), generator=g)
    new = 64
    with torch.no_grad():
        out_ref = ref.generate(prompt, max_new_tokens=new, do_sample=False, eos_token_id=[], pad_token_id=2)
        out_ours = ours.generate(prompt, max_new_tokens=new, eos_token_id=[])
        assert torch.equal(out_ref, out_ours), 'greedy outputs differ'
        t_ref, t_ours = median_times(
            lambda: ref.generate(prompt, max_new_tokens=new, do_sample=False, eos_token_id=[], pad_token_id=2),
            lambda: ours.generate(prompt, max_new_tokens=new, eos_token_id=[]), a.repeats)
    rows.append((f'greedy generation tokens/s (1 x {new})', new / t_ref, new / t_ours, t_ref / t_ours))

    t_ref, t_ours = median_times(lambda: AutoModelForCausalLM.from_pretrained(cache_dir, dtype=torch.float32),
                                 lambda: load_pretrained('smollm2-135m-instruct', dtype='float32', progress=False), a.repeats)
    rows.append(('cached load seconds (safetensors dir)', t_ref, t_ours, t_ref / t_ours))

    threads = torch.get_num_threads()
    print(f"\nSmolLM2-135M-Instruct, float32, CPU, {threads} threads, median of {a.repeats} alternating repeats "
          f"(torch {torch.__version__}, transformers {transformers.__version__})")
    print(f"{'what':<40} {'transformers':>13} {'llmlab':>10} {'ratio':>7}")
    for what, b, o, r in rows: print(f"{what:<40} {b:>13.2f} {o:>10.2f} {r:>6.2f}x")
    print("ratio > 1: llmlab faster")
    result = dict(benchmark='bench_model', model='smollm2-135m-instruct', dtype='float32', device='cpu', threads=threads,
                  repeats=a.repeats, torch=torch.__version__, transformers=transformers.__version__,
                  machine=platform.machine(), rows=[dict(what=w, transformers=b, llmlab=o, ratio=r) for w, b, o, r in rows])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")


if __name__ == '__main__':
    main()
