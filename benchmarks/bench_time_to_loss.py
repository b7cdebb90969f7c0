"""Time to loss on this machine: llmlab (AdamW; Muon with QK-norm and zero-initialised output projections) against
transformers.Trainer and litgpt's pretraining, at the same wall-clock budget.

All systems train the same model shape (a LLaMA of ~10M non-embedding parameters: 6 layers, width 384, SwiGLU 1024,
tied embeddings) on the same tokens (the Python standard library, split by file into train and validation, tokenized
with a 4,096-token byte-level BPE that `llmlab.data.train_tokenizer` learns from the training files), with the same
batch (8 x 128 tokens), AdamW settings, warm-up then constant learning rate, gradient clipping, float32 and thread
count. Each run is its own process (litgpt's in the peers' venv: `make peers`); time_to_loss_worker.py holds the one
clock and the one validation loss every system is measured with. The comparison is validation loss at the budget over
`--seeds` seeds: for each peer, the difference of means with a Welch 95% confidence interval and p-value.

    make peers    # once: litgpt in .venv-peers (its pins clash with llmlab's huggingface_hub)
    python benchmarks/bench_time_to_loss.py [--budget 60] [--seeds 0,1,2,3,4] [--systems llmlab-muon,llmlab-adamw,hf-trainer,litgpt]
"""
import argparse, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SYSTEMS = ('llmlab-muon', 'llmlab-adamw', 'hf-trainer', 'litgpt')
PEERS_PYTHON = HERE.parent / '.venv-peers' / 'bin' / 'python'
MODEL = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6)
OPTIM = dict(lr=3e-3, weight_decay=0.1, betas=[0.9, 0.95], warmup_steps=10, grad_clip=1.0, muon_lr=0.02)
MUON_RECIPE = dict(qk_norm=True, zero_init_output=True)   # the recipe options llmlab-muon turns on (llmlab.model.ModelConfig)


def prepare_data(root:Path, vocab_size:int) -> dict:
    "Tokenizer and shards, built once under `root`."
    from llmlab.data import build_shards, demo_corpus, split_documents, train_tokenizer
    from transformers import AutoTokenizer
    train_docs, val_docs = split_documents(demo_corpus(), 0.05, 0)
    tok_dir = root / f'tokenizer-{vocab_size}'
    if not (tok_dir / 'tokenizer.json').exists(): train_tokenizer(train_docs, vocab_size, tok_dir)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    return dict(tokenizer_dir=str(tok_dir), vocab_size=len(tok),
                train_dir=str(build_shards(train_docs, tok, root / f'train-{vocab_size}')),
                val_dir=str(build_shards(val_docs, tok, root / f'val-{vocab_size}')))


def welch(a, b):
    "Difference of means a - b, its 95% confidence interval and two-sided p-value (Welch's t-test)."
    from scipy import stats
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se > 0 else len(a) + len(b) - 2
    d = a.mean() - b.mean()
    half = stats.t.ppf(0.975, df) * se
    p = float(2 * stats.t.sf(abs(d) / se, df)) if se > 0 else 0.0
    return {'difference': float(d), 'ci95': [float(d - half), float(d + half)], 'p_value': p, 'df': float(df)}


def plot(runs, path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, system in enumerate(dict.fromkeys(r['system'] for r in runs)):
        mine = [r for r in runs if r['system'] == system]
        grid = np.linspace(0, min(r['curve'][-1]['seconds'] for r in mine), 60)
        ys = np.stack([np.interp(grid, [p['seconds'] for p in r['curve']], [p['val_loss'] for p in r['curve']]) for r in mine])
        ax.plot(grid, ys.mean(0), color=f'C{i}', label=f"{system} ({len(mine)} seeds)")
        ax.fill_between(grid, ys.min(0), ys.max(0), color=f'C{i}', alpha=0.2)
    ax.set(xlabel='training seconds (2 CPU threads; evaluation excluded)', ylabel='validation loss (nats/token)',
           title='Time to loss: ~10M-parameter LLaMA on the Python standard library')
    ax.set_ylim(top=min(ax.get_ylim()[1], 8.5)); ax.grid(alpha=0.3); ax.legend()
    fig.savefig(path, dpi=120, bbox_inches='tight')


def parse_system(name:str) -> tuple[str, list[str]]:
    "'llmlab-adamw+init+decay_all' -> ('llmlab-adamw', ['init', 'decay_all']): an llmlab system with some of litgpt's choices."
    system, *changes = name.split('+')
    if system not in SYSTEMS: raise SystemExit(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
    if changes and not system.startswith('llmlab'): raise SystemExit(f"{name}: only llmlab systems take changes")
    return system, changes


def run_all(systems, seeds, spec, threads):
    "Every system for every seed, each run its own process; seeds outermost, so a drift in the machine's speed touches every system alike."
    if any(parse_system(s)[0] == 'litgpt' for s in systems) and not PEERS_PYTHON.exists():
        raise SystemExit(f"litgpt runs in its own venv, {PEERS_PYTHON.parent.parent}, which is missing: run `make peers` first")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM='false',
               PYTHONPATH=str(HERE.parent))
    tmp, runs = Path(tempfile.mkdtemp(prefix='ttl-')), []
    for seed in seeds:
        for name in systems:
            system, changes = parse_system(name)
            (tmp / 'spec.json').write_text(json.dumps({**spec, 'seed': seed, 'changes': changes}))
            out = tmp / f'{name}-{seed}.json'
            python = str(PEERS_PYTHON) if system == 'litgpt' else sys.executable
            t = time.perf_counter()
            p = subprocess.run([python, str(HERE / 'time_to_loss_worker.py'), system, str(tmp / 'spec.json'), str(out)], env=env,
                               capture_output=True, text=True)
            if p.returncode: raise SystemExit(f"{name} seed {seed} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
            r = {**json.loads(out.read_text()), 'system': name}; runs.append(r)
            print(f"{name:<13} seed {seed}: val loss {r['val_loss']:.3f} after {r['seconds']:.0f} s, {r['tokens']:,} tokens "
                  f"({r['tokens_per_second']:.0f} tokens/s; second half {r['tokens_per_second_second_half']:.0f}); "
                  f"process {time.perf_counter() - t:.0f} s", flush=True)
    return runs


def benchmark_spec(a) -> dict:
    data = prepare_data(Path(a.data), a.vocab_size)
    return dict(data, model=MODEL, optim=OPTIM, muon_recipe=MUON_RECIPE, block_size=128, batch_size=8, budget_s=a.budget,
                eval_every_s=a.budget / 8, val_blocks=64, threads=a.threads)


def common_arguments(ap):
    ap.add_argument('--budget', type=float, default=60.0, help='training seconds per run')
    ap.add_argument('--vocab-size', type=int, default=4096)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--data', default=str(HERE / '.cache' / 'time_to_loss'))


def versions() -> dict:
    import torch, transformers
    return dict(torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
                litgpt=subprocess.run([str(PEERS_PYTHON), '-c', 'import importlib.metadata as m; print(m.version("litgpt"))'],
                                      capture_output=True, text=True).stdout.strip() if PEERS_PYTHON.exists() else None)


def summarize(runs, systems):
    """Each system's mean and sd over the seeds, and every llmlab system against every other system (difference of means,
    Welch 95% interval and p-value, tokens/s ratio); printed. (summary, comparisons, the llmlab system with the lowest mean)."""
    by = {s: [r for r in runs if r['system'] == s] for s in systems}
    summary = {s: {'val_loss_mean': float(np.mean([r['val_loss'] for r in rs])), 'val_loss_sd': float(np.std([r['val_loss'] for r in rs], ddof=1)),
                   'tokens_per_second_mean': float(np.mean([r['tokens_per_second'] for r in rs])),
                   'tokens_per_second_second_half_mean': float(np.mean([r['tokens_per_second_second_half'] for r in rs])),
                   'parameters': rs[0]['parameters']} for s, rs in by.items()}
    ours = sorted((s for s in systems if s.startswith('llmlab')), key=lambda s: summary[s]['val_loss_mean'])
    comparisons = {}
    for a in ours:
        for b in systems:
            if b == a or (b in ours and ours.index(b) < ours.index(a)): continue
            c = welch([r['val_loss'] for r in by[a]], [r['val_loss'] for r in by[b]])
            c['tokens_per_second_ratio'] = summary[a]['tokens_per_second_mean'] / summary[b]['tokens_per_second_mean']
            comparisons[f'{a} - {b}'] = c
    for s in systems:
        print(f"{s:<13} val loss {summary[s]['val_loss_mean']:.3f} +- {summary[s]['val_loss_sd']:.3f}, {summary[s]['tokens_per_second_mean']:,.0f} tokens/s")
    for k, c in comparisons.items():
        print(f"{k}: val loss difference {c['difference']:+.3f} (95% CI {c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f}, p={c['p_value']:.3g}); "
              f"tokens/s ratio {c['tokens_per_second_ratio']:.2f}")
    return summary, comparisons, ours[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(ap)
    ap.add_argument('--seeds', default='0,1,2,3,4', help='the seeds, fixed before looking at any result')
    ap.add_argument('--systems', default=','.join(SYSTEMS))
    ap.add_argument('--out', default=str(HERE / 'results' / 'bench_time_to_loss.json'))
    a = ap.parse_args()
    systems = [s.strip() for s in a.systems.split(',') if s.strip()]
    for s in systems: parse_system(s)
    seeds = [int(s) for s in a.seeds.split(',')]
    spec = benchmark_spec(a)
    runs = run_all(systems, seeds, spec, a.threads)
    summary, comparisons, best = summarize(runs, systems)
    result = dict(budget_s=a.budget, seeds=seeds, threads=a.threads, model=MODEL, optim=OPTIM, muon_recipe=MUON_RECIPE,
                  block_size=spec['block_size'], batch_size=spec['batch_size'], vocab_size=spec['vocab_size'], val_tokens=spec['val_blocks'] * 128,
                  best_llmlab=best, summary=summary, comparisons=comparisons, runs=runs, versions=versions(),
                  machine=f"{platform.machine()}, {os.cpu_count()} CPUs")
    Path(a.out).write_text(json.dumps(result, indent=1))
    plot(runs, Path(a.out).with_suffix('.png'))
    print(f"wrote {a.out} and {Path(a.out).with_suffix('.png')}")


if __name__ == '__main__':
    main()
