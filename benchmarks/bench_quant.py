"""Weight-only quantization of SmolLM2-135M on the CPU: perplexity, weight memory and generation speed.

Variants: float32 (the baseline), bfloat16 (weights and activations), int8 (per-row scales) and int4 (groups of 64,
scale and minimum per group), llmlab.quantize.quantize on every linear layer of the decoder blocks (the tied
embedding/output matrix stays in the model's dtype). Perplexity is on a fixed text, the first 512 tokens of this
Python's `textwrap.py`; speed is greedy generation of 32 tokens after a short prompt (median of --repeats, batch 1).

    python benchmarks/bench_quant.py [--repeats 3] [--threads 2]
"""
import argparse, copy, inspect, json, platform, statistics, textwrap, time
from pathlib import Path

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'bench_quant.json'))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from llmlab.checkpoints import load_pretrained, load_tokenizer
    from llmlab.quantize import quantize, weight_bytes
    from llmlab.model import perplexity
    base = load_pretrained('smollm2-135m-instruct', progress=False)
    tok = load_tokenizer('smollm2-135m-instruct')
    ids = tok(inspect.getsource(textwrap), return_tensors='pt').input_ids[:, :512]
    prompt = tok('def fibonacci(n):', return_tensors='pt').input_ids
    variants = {'fp32': base, 'bf16': copy.deepcopy(base).to(torch.bfloat16),
                'int8': quantize(copy.deepcopy(base), 8), 'int4-g64': quantize(copy.deepcopy(base), 4, 64)}
    results = {}
    for name, model in variants.items():
        with torch.no_grad():
            ppl = perplexity(model, ids)
            model.generate(prompt, max_new_tokens=4)                       # warm-up
            times = []
            for _ in range(a.repeats):
                t = time.perf_counter(); model.generate(prompt, max_new_tokens=32, eos_token_id=None); times.append(time.perf_counter() - t)
        results[name] = {'perplexity': float(ppl), 'weights_mb': weight_bytes(model) / 2**20,
                         'block_linear_mb': sum(b.numel() * b.element_size() for n, b in list(model.named_parameters()) + list(model.named_buffers())
                                                if n.startswith('layers.') and ('proj' in n)) / 2**20,
                         'tokens_per_second': 32 / statistics.median(times)}
    f = results['fp32']
    print(f"SmolLM2-135M on the CPU ({a.threads} threads, torch {torch.__version__}); perplexity on 512 tokens of textwrap.py")
    print(f"{'':10}{'perplexity':>11}{'weights MB':>12}{'linear MB':>11}{'tokens/s':>10}{'speed vs fp32':>15}")
    for name, r in results.items():
        print(f"{name:10}{r['perplexity']:>11.3f}{r['weights_mb']:>12.1f}{r['block_linear_mb']:>11.1f}{r['tokens_per_second']:>10.1f}"
              f"{r['tokens_per_second'] / f['tokens_per_second']:>14.2f}x")
    Path(a.out).write_text(json.dumps({'benchmark': 'weight-only quantization, SmolLM2-135M', 'text': 'textwrap.py, first 512 tokens',
                                       'python': platform.python_version(), 'torch': torch.__version__, 'threads': a.threads,
                                       'results': results, 'command': 'python benchmarks/bench_quant.py'}, indent=1) + '\n')


if __name__ == '__main__': main()
