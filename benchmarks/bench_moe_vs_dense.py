"""A mixture of experts against the dense model of equal active parameters, at equal wall-clock time, on this machine.

Both are the time-to-loss benchmark's LLaMA (6 layers, width 384, tied embeddings, the Python standard library's source
tokenized with a 4,096-token BPE, batches of 8 x 128 tokens, AdamW 3e-3, float32, 2 threads): the dense model's SwiGLU
MLP has 1,024 hidden units; the MoE's has 8 experts of 512 and routes each token to 2 (OLMoE's recipe: softmax router,
top-k renormalised, Switch's balancing loss 0.01 and router z-loss 0.001), so a token passes through the same MLP
parameters in both (plus the MoE's 3,072-parameter router per layer) while the MoE holds 4x the MLP parameters. Each run is
its own process (time_to_loss_worker.py: one clock, paused while it evaluates; one validation loss). Reported, over seeds
fixed before any result: validation loss at the budget (difference of means, Welch 95% interval, p-value), throughput,
and the time each MoE run takes to reach the dense model's mean final loss.

    python benchmarks/bench_moe_vs_dense.py [--budget 60] [--seeds 0,1,2,3,4]
"""
import argparse, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from bench_time_to_loss import MODEL, OPTIM, common_arguments, prepare_data, welch   # noqa: E402

MOE = dict(mlp='moe', num_experts=8, num_experts_per_tok=2, moe_intermediate_size=MODEL['intermediate_size'] // 2,
           router_aux_loss_coef=0.01, router_z_loss_coef=0.001)
SYSTEMS = {'dense': {}, 'moe': MOE}


def parameter_counts(vocab_size:int, options:dict) -> dict:
    "Every parameter, and those one token passes through (llmlab.memory's count: the MoE's unused experts left out)."
    import llmlab.moe  # noqa: F401 (registers the 'moe' feed-forward kind)
    from llmlab.memory import parameter_counts as counts, unused_parameters_per_token
    from llmlab.model import ModelConfig
    c = ModelConfig(vocab_size=vocab_size, **MODEL, tie_word_embeddings=True, **options)
    total = sum(counts(c).values())
    return {'total': total, 'active': total - unused_parameters_per_token(c)}


def time_to_reach(curve, target):
    "Training seconds at which a run's validation loss first reaches `target` (linear between evaluations; None: never)."
    for a, b in zip(curve, curve[1:]):
        if b['val_loss'] <= target:
            if a['val_loss'] <= target: return a['seconds']
            return a['seconds'] + (a['val_loss'] - target) / (a['val_loss'] - b['val_loss']) * (b['seconds'] - a['seconds'])
    return None


def loss_at_tokens(curve, tokens):
    "A run's validation loss after `tokens` training tokens (linear between evaluations; None: it never saw that many)."
    if tokens > curve[-1]['tokens']: return None
    return float(np.interp(tokens, [p['tokens'] for p in curve], [p['val_loss'] for p in curve]))


def plot(runs, target, path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, system in enumerate(SYSTEMS):
        mine = [r for r in runs if r['system'] == system]
        grid = np.linspace(0, min(r['curve'][-1]['seconds'] for r in mine), 60)
        ys = np.stack([np.interp(grid, [p['seconds'] for p in r['curve']], [p['val_loss'] for p in r['curve']]) for r in mine])
        label = f"{system}: {mine[0]['parameters_active'] / 1e6:.1f}M active of {mine[0]['parameters_total'] / 1e6:.1f}M ({len(mine)} seeds)"
        ax.plot(grid, ys.mean(0), color=f'C{i}', label=label)
        ax.fill_between(grid, ys.min(0), ys.max(0), color=f'C{i}', alpha=0.2)
    ax.axhline(target, color='grey', lw=0.8, ls='--', label="dense's mean loss at the budget")
    ax.set(xlabel='training seconds (2 CPU threads; evaluation excluded)', ylabel='validation loss (nats/token)',
           title='Mixture of experts vs dense at equal active parameters and wall time')
    lo = min(min(p['val_loss'] for p in r['curve']) for r in runs)
    ax.set_ylim(lo - 0.1, min(ax.get_ylim()[1], lo + 2.5)); ax.grid(alpha=0.3); ax.legend()
    fig.savefig(path, dpi=120, bbox_inches='tight')


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(ap)
    ap.add_argument('--seeds', default='0,1,2,3,4', help='the seeds, fixed before looking at any result')
    ap.add_argument('--out', default=str(HERE / 'results' / 'bench_moe_vs_dense.json'))
    ap.add_argument('--from', dest='source', help="a results JSON of this script: analyse its runs again instead of training")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(',')]
    data = prepare_data(Path(a.data), a.vocab_size)
    if a.source:
        saved = json.loads(Path(a.source).read_text())
        runs, seeds, a.budget = saved['runs'], saved['seeds'], saved['budget_s']
        counts = {s: parameter_counts(data['vocab_size'], o) for s, o in SYSTEMS.items()}
    else: runs, counts = train_all(a, seeds, data)
    analyse(a, seeds, data, runs, counts)


def train_all(a, seeds, data):
    "Every system for every seed, each run its own process."
    base = dict(data, model=MODEL, optim=OPTIM, muon_recipe={}, block_size=128, batch_size=8, budget_s=a.budget,
                eval_every_s=a.budget / 8, val_blocks=64, threads=a.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM='false',
               PYTHONPATH=str(HERE.parent))
    tmp, runs = Path(tempfile.mkdtemp(prefix='moe-vs-dense-')), []
    counts = {s: parameter_counts(data['vocab_size'], o) for s, o in SYSTEMS.items()}
    for seed in seeds:                      # seeds outermost: a drift in the machine's speed touches both systems alike
        for system, options in SYSTEMS.items():
            spec = tmp / 'spec.json'; spec.write_text(json.dumps({**base, 'seed': seed, 'model_options': options}))
            out = tmp / f'{system}-{seed}.json'
            t = time.perf_counter()
            p = subprocess.run([sys.executable, str(HERE / 'time_to_loss_worker.py'), 'llmlab-adamw', str(spec), str(out)],
                               env=env, capture_output=True, text=True)
            if p.returncode: raise SystemExit(f"{system} seed {seed} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
            r = {**json.loads(out.read_text()), 'system': system, 'parameters_total': counts[system]['total'],
                 'parameters_active': counts[system]['active']}
            runs.append(r)
            print(f"{system:<6} seed {seed}: val loss {r['val_loss']:.3f} after {r['seconds']:.0f} s, {r['tokens']:,} tokens "
                  f"({r['tokens_per_second']:.0f} tokens/s); process {time.perf_counter() - t:.0f} s", flush=True)
    return runs, counts


def analyse(a, seeds, data, runs, counts):
    "Summaries, comparisons, the JSON and the plot."
    by = {s: [r for r in runs if r['system'] == s] for s in SYSTEMS}
    target = float(np.mean([r['val_loss'] for r in by['dense']]))
    summary = {s: {'val_loss_mean': float(np.mean([r['val_loss'] for r in rs])), 'val_loss_sd': float(np.std([r['val_loss'] for r in rs], ddof=1)),
                   'tokens_per_second_mean': float(np.mean([r['tokens_per_second'] for r in rs])), **counts[s],
                   'seconds_to_dense_final_loss': [time_to_reach(r['curve'], target) for r in rs]} for s, rs in by.items()}
    comparison = welch([r['val_loss'] for r in by['moe']], [r['val_loss'] for r in by['dense']])
    comparison['tokens_per_second_ratio'] = summary['moe']['tokens_per_second_mean'] / summary['dense']['tokens_per_second_mean']
    # per token rather than per second: each seed's MoE against the same seed's dense run at the tokens the MoE saw
    paired = [(m['val_loss'], loss_at_tokens(d['curve'], m['tokens'])) for m, d in zip(by['moe'], by['dense'])]
    paired = [(m, d) for m, d in paired if d is not None]
    if len(paired) >= 2:
        from scipy import stats
        diff = np.array([m - d for m, d in paired])
        half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
        comparison['at_equal_tokens'] = {'difference': float(diff.mean()), 'ci95': [float(diff.mean() - half), float(diff.mean() + half)],
                                         'p_value': float(stats.ttest_1samp(diff, 0.0).pvalue), 'pairs': len(diff),
                                         'test': "paired t-test, MoE's final loss vs the same seed's dense loss at the MoE's token count"}
    reached = [t for t in summary['moe']['seconds_to_dense_final_loss'] if t is not None]
    comparison['moe_runs_reaching_dense_final_loss'] = f"{len(reached)} of {len(seeds)}"
    comparison['time_to_dense_final_loss_speedup'] = a.budget / float(np.mean(reached)) if len(reached) == len(seeds) else None
    for s, v in summary.items():
        print(f"{s:<6} val loss {v['val_loss_mean']:.3f} +- {v['val_loss_sd']:.3f}, {v['tokens_per_second_mean']:,.0f} tokens/s, "
              f"{v['active'] / 1e6:.2f}M active of {v['total'] / 1e6:.2f}M parameters")
    print(f"moe - dense: val loss {comparison['difference']:+.3f} (95% CI {comparison['ci95'][0]:+.3f} to {comparison['ci95'][1]:+.3f}, "
          f"p={comparison['p_value']:.3g}); tokens/s ratio {comparison['tokens_per_second_ratio']:.2f}; "
          f"reaches dense's final loss in {comparison['moe_runs_reaching_dense_final_loss']} runs")
    if 'at_equal_tokens' in comparison:
        t = comparison['at_equal_tokens']
        print(f"moe - dense at equal tokens: {t['difference']:+.3f} (95% CI {t['ci95'][0]:+.3f} to {t['ci95'][1]:+.3f}, p={t['p_value']:.3g})")
    import torch
    result = dict(budget_s=a.budget, seeds=seeds, threads=a.threads, dense=MODEL, moe={**MODEL, **MOE}, optim=OPTIM, block_size=128,
                  batch_size=8, vocab_size=data['vocab_size'], val_tokens=64 * 128, dense_final_loss=target, summary=summary,
                  comparison=comparison, runs=runs, versions=dict(torch=torch.__version__, python=platform.python_version()),
                  machine=f"{platform.machine()}, {os.cpu_count()} CPUs")
    Path(a.out).write_text(json.dumps(result, indent=1))
    plot(runs, target, Path(a.out).with_suffix('.png'))
    print(f"wrote {a.out} and {Path(a.out).with_suffix('.png')}")


if __name__ == '__main__':
    main()
