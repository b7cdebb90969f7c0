"""llmlab's mixture-of-experts layer against transformers' on the CPU, in one run: the experts' forward + backward.

One MoE layer of a Qwen3-MoE shape scaled to this CPU (hidden 512, 8 experts of width 512, top-2; 2,048 tokens), the same
weights and the same routing in both: llmlab's `SparseMoE` with each of its `experts_impls` (`loop`, `grouped_mm`) and
transformers' `Qwen3MoeSparseMoeBlock` with its experts implementations `eager` and `grouped_mm` (its `batched_mm`, made
for small decode batches on a GPU, takes ~40 s a step here: 0.01x, left out).
Each row is the median of several repeats, timed alternately, and its ratio to transformers' eager loop (> 1: faster).

    python benchmarks/bench_moe.py [--repeats 5] [--threads N] [--tokens 2048]
"""
import argparse, json, platform, statistics, time
from pathlib import Path

import torch


def median_time(fn, repeats):
    fn()   # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--tokens', type=int, default=2048)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'bench_moe.json'))
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    import transformers
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock
    transformers.logging.set_verbosity_error()
    from llmlab.model import ModelConfig
    from llmlab.moe import SparseMoE

    H, E, I, k = 512, 8, 512, 2
    hf_cfg = Qwen3MoeConfig(hidden_size=H, num_experts=E, moe_intermediate_size=I, num_experts_per_tok=k, norm_topk_prob=True)
    torch.manual_seed(0)
    ref = Qwen3MoeSparseMoeBlock(hf_cfg)
    for p in ref.parameters(): torch.nn.init.normal_(p, std=0.05)
    ours = SparseMoE(ModelConfig(hidden_size=H, intermediate_size=I, num_attention_heads=8, mlp='moe', num_experts=E,
                                 num_experts_per_tok=k, moe_intermediate_size=I))
    ours.load_state_dict(ref.state_dict())   # the same names: gate.weight, experts.gate_up_proj, experts.down_proj
    x = torch.randn(1, a.tokens, H)
    grad = torch.randn(1, a.tokens, H)

    def run(module):
        def step():
            xi = x.clone().requires_grad_()
            module(xi).backward(grad)
            module.zero_grad(set_to_none=True)
        return step

    with torch.no_grad(): expected = ref(x)
    impls = {}
    for name in ('eager', 'grouped_mm'):
        hf_cfg._experts_implementation = name
        with torch.no_grad(): assert (ref(x) - expected).abs().max() < 1e-4, name
        impls[f'transformers {name}'] = (lambda name=name: setattr(hf_cfg, '_experts_implementation', name), ref)
    for name in ('loop', 'grouped_mm'):
        ours.config = ours.config.replace(experts_impl=name)
        with torch.no_grad(): assert (ours(x) - expected).abs().max() < 1e-4, name   # the same layer, before timing it
        impls[f'llmlab {name}'] = (lambda name=name: setattr(ours, 'config', ours.config.replace(experts_impl=name)), ours)
    rows = {}
    for name, (select, module) in impls.items():
        select()
        rows[name] = median_time(run(module), a.repeats)
    base = rows['transformers eager']
    result = {'shape': {'hidden': H, 'experts': E, 'expert_width': I, 'top_k': k, 'tokens': a.tokens},
              'threads': torch.get_num_threads(), 'repeats': a.repeats, 'torch': torch.__version__,
              'transformers': transformers.__version__, 'machine': platform.processor() or platform.machine(),
              'forward_backward_ms': {n: round(t * 1e3, 2) for n, t in rows.items()},
              'speedup_vs_transformers_eager': {n: round(base / t, 3) for n, t in rows.items()}}
    print(f"{'implementation':<26}{'fwd+bwd ms':>12}{'vs transformers eager':>24}")
    for n, t in rows.items(): print(f'{n:<26}{t * 1e3:>12.1f}{base / t:>24.2f}')
    Path(a.out).write_text(json.dumps(result, indent=2) + '\n')


if __name__ == '__main__':
    main()
