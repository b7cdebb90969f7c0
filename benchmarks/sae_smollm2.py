"""A TopK SAE on SmolLM2-135M-Instruct's residual stream, on this CPU: collect, train, measure, save in SAELens's format.

The corpus is the Python standard library's source (llmlab.data.demo_corpus): documents alternate between the training
store and a held-out evaluation set. Reported: explained variance, L0, dead fraction and the next-token loss clean /
with the SAE spliced in / zero-ablated, on held-out tokens; the SAE goes to runs/sae_smollm2/sae (SAELens's format),
the numbers to benchmarks/results/sae_smollm2.json and the training curve to benchmarks/results/sae_smollm2.png.

    python benchmarks/sae_smollm2.py [--layer 12] [--tokens 200000] [--d-sae 4608] [--k 32] [--epochs 2]
"""
import argparse, json, time
from pathlib import Path
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--layer', type=int, default=12)
    ap.add_argument('--tokens', type=int, default=200_000)
    ap.add_argument('--eval-batches', type=int, default=8)
    ap.add_argument('--d-sae', type=int, default=4608)
    ap.add_argument('--k', type=int, default=32)
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--lr', type=float, default=4e-4)
    ap.add_argument('--run-dir', default='runs/sae_smollm2')
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'sae_smollm2.json'))
    a = ap.parse_args()
    from llmlab.checkpoints import load_pretrained, load_tokenizer
    from llmlab.data import demo_corpus
    from llmlab.interp import act_name
    from llmlab.sae import collect_activations, evaluate_sae, save_sae, token_batches, train_sae

    model = load_pretrained('smollm2-135m-instruct', dtype='float32', progress=False)
    tok = load_tokenizer('smollm2-135m-instruct')
    docs = demo_corpus()
    hook = act_name('resid_post', a.layer)
    run = Path(a.run_dir)
    t0 = time.time()
    store = collect_activations(model, token_batches(tok, docs[0::2], seq_len=128, batch_size=8), hook, run / 'store', n_tokens=a.tokens)
    t_collect = time.time() - t0
    t0 = time.time()
    sae, log = train_sae(store, architecture='topk', d_sae=a.d_sae, k=a.k, epochs=a.epochs, lr=a.lr, batch_size=1024, log_every=20)
    t_train = time.time() - t0
    save_sae(sae, run / 'sae')
    eval_batches = [b for _, b in zip(range(a.eval_batches), token_batches(tok, docs[1::2], seq_len=128, batch_size=8))]
    t0 = time.time()
    metrics = evaluate_sae(model, sae, eval_batches)
    t_eval = time.time() - t0
    result = dict(model='SmolLM2-135M-Instruct', hook=hook, store_tokens=len(store), d_in=store.d_in, d_sae=a.d_sae, k=a.k, epochs=a.epochs,
                  lr=a.lr, seconds=dict(collect=round(t_collect, 1), train=round(t_train, 1), evaluate=round(t_eval, 1)),
                  threads=torch.get_num_threads(), held_out=metrics, final_train_log=log[-1])
    print(json.dumps(result, indent=2))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(dict(result, log=log), indent=2))
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(9, 3))
    ax[0].plot([r['tokens'] for r in log], [r['fvu'] for r in log]); ax[0].set_xlabel('training tokens'); ax[0].set_ylabel('fraction of variance unexplained')
    ax[1].plot([r['tokens'] for r in log], [r['dead_fraction'] for r in log]); ax[1].set_xlabel('training tokens'); ax[1].set_ylabel('dead fraction')
    fig.suptitle(f'TopK SAE (d_sae={a.d_sae}, k={a.k}) on SmolLM2 {hook}'); fig.tight_layout()
    fig.savefig(Path(a.out).with_suffix('.png'), dpi=110)


if __name__ == '__main__':
    main()
