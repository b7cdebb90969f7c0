"""Why litgpt's plain AdamW reached a lower loss than llmlab's in the time-to-loss benchmark: litgpt's pretraining setup
switched on in llmlab's run one difference at a time (time_to_loss_worker.LITGPT_CHANGES), the same benchmark, the
seeds fixed before any result was seen.

Each row is llmlab's AdamW run with some of litgpt's choices; `llmlab-adamw` is llmlab as it stood before this ablation
(N(0, 0.02) weights, `ModelConfig(init='normal')` since; no decay on norm gains; warm-up from lr/10; eager), `litgpt` litgpt
itself. The ablation found the weights' scale (`init` and `proj_init`, together litgpt's initialisation): llmlab's default
is now that scheme (`init='small'`), and this script pins the old one to stay reproducible. The table
gives each row's validation loss at the budget (mean ± sd over the seeds), its difference from `llmlab-adamw` with a
Welch 95% interval, the share of the llmlab-litgpt gap it closes, and the loss at equal tokens (the fewest any run
reached), which separates learning faster per token from running faster.

    make peers
    python benchmarks/bench_adamw_ablation.py [--seeds 0,1,2] [--budget 60]
"""
import argparse, json, os, platform
from pathlib import Path

import numpy as np

from bench_time_to_loss import HERE, benchmark_spec, common_arguments, run_all, versions, welch
from time_to_loss_worker import LITGPT_CHANGES

BASELINE = 'llmlab-adamw'
VARIANTS = [BASELINE, *(f'{BASELINE}+{c}' for c in LITGPT_CHANGES), f'{BASELINE}+init+proj_init',
            f'{BASELINE}+' + '+'.join(LITGPT_CHANGES), 'litgpt']


def loss_at_tokens(run, tokens):
    "Validation loss interpolated at `tokens` trained tokens along the run's curve."
    return float(np.interp(tokens, [p['tokens'] for p in run['curve']], [p['val_loss'] for p in run['curve']]))


def table(runs):
    by = {v: [r for r in runs if r['system'] == v] for v in dict.fromkeys(r['system'] for r in runs)}
    tokens = min(r['tokens'] for r in runs)
    base, lit = [r['val_loss'] for r in by[BASELINE]], [r['val_loss'] for r in by.get('litgpt', [])]
    gap = np.mean(base) - np.mean(lit) if lit else None
    rows = []
    for v, rs in by.items():
        loss = [r['val_loss'] for r in rs]
        row = dict(variant=v, changes=v.split('+')[1:], val_loss_mean=float(np.mean(loss)), val_loss_sd=float(np.std(loss, ddof=1)),
                   tokens_per_second_mean=float(np.mean([r['tokens_per_second'] for r in rs])),
                   val_loss_at_equal_tokens_mean=float(np.mean([loss_at_tokens(r, tokens) for r in rs])))
        if v != BASELINE:
            row['vs_baseline'] = welch(loss, base)
            if gap: row['share_of_gap'] = float((np.mean(base) - np.mean(loss)) / gap)
        rows.append(row)
    return rows, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(ap)
    ap.add_argument('--seeds', default='0,1,2', help='the seeds, fixed before looking at any result')
    ap.add_argument('--variants', default=','.join(VARIANTS))
    ap.add_argument('--out', default=str(HERE / 'results' / 'bench_adamw_ablation.json'))
    a = ap.parse_args()
    seeds, variants = [int(s) for s in a.seeds.split(',')], a.variants.split(',')
    spec = {**benchmark_spec(a), 'model_options': {'init': 'normal'}}   # the baseline: llmlab's initialisation before this ablation
    runs = run_all(variants, seeds, spec, a.threads)
    rows, tokens = table(runs)
    print(f"\n{'variant':<58} {'val loss':>15} {'vs llmlab-adamw (95% CI, p)':>36} {'gap':>6} {'@' + format(tokens, ',') + ' tok':>12} {'tok/s':>6}")
    for r in rows:
        c = r.get('vs_baseline')
        vs = f"{c['difference']:+.3f} ({c['ci95'][0]:+.3f}..{c['ci95'][1]:+.3f}, p={c['p_value']:.2g})" if c else ''
        share = f"{100 * r['share_of_gap']:.0f}%" if 'share_of_gap' in r else ''
        print(f"{r['variant']:<58} {r['val_loss_mean']:.3f} ± {r['val_loss_sd']:.3f} {vs:>36} {share:>6} "
              f"{r['val_loss_at_equal_tokens_mean']:>12.3f} {r['tokens_per_second_mean']:>6.0f}")
    Path(a.out).write_text(json.dumps(dict(budget_s=a.budget, seeds=seeds, threads=a.threads, changes=LITGPT_CHANGES, equal_tokens=tokens,
                                           baseline_model_options=spec['model_options'],
                                           rows=rows, runs=runs, versions=versions(), machine=f"{platform.machine()}, {os.cpu_count()} CPUs"),
                                      indent=1))
    print(f"wrote {a.out}")


if __name__ == '__main__':
    main()
