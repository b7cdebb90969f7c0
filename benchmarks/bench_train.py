"""Training throughput on the CPU: llmlab's Trainer against a plain PyTorch loop around transformers' LlamaForCausalLM.

Same small LLaMA config and initial weights, same blocks of tokens (random ids packed into shards), batch 8 x 256
tokens, AdamW, float32. The baseline is the loop a researcher writes by hand (forward with labels, backward, clip,
step); llmlab runs its full Trainer (accumulation logic, non-finite guard, logging to metrics.jsonl, sampler). Tokens
per second are measured over the steps after a warm-up, alternating the two runs.

    python benchmarks/bench_train.py [--steps 20] [--repeats 2]
"""
import argparse, atexit, json, platform, shutil, statistics, tempfile, time
from pathlib import Path

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'bench_train.json'))
    a = ap.parse_args()
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM
    transformers.logging.set_verbosity_error()
    from llmlab.model import Llama, ModelConfig
    from llmlab.data import TokenShards, pack_stream
    from llmlab.train import Trainer, TrainConfig
    from llmlab.core import write_json_atomic

    cfg = ModelConfig(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True)
    tmp = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, tmp, True)   # the shards and every run's final checkpoint
    g = torch.Generator().manual_seed(0)
    stream, starts = pack_stream([torch.randint(1, 8192, (500,), generator=g).tolist() for _ in range(400)], 0)
    stream.astype(np.uint16).tofile(tmp / 'tokens.bin')   # the shard layout build_shards writes
    np.save(tmp / 'doc_starts.npy', starts)
    write_json_atomic(tmp / 'index.json', {'dtype': 'uint16', 'n_tokens': len(stream), 'vocab_size': 8192, 'fingerprint': 'bench'})
    data = TokenShards(tmp, block_size=256)
    B, total = 8, a.warmup + a.steps

    def hf_loop():
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.to_dict().items() if k != 'attn_backend'}))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95), foreach=True)
        times = []
        for step in range(total):
            t = time.perf_counter()
            batch = torch.stack([data[(step * B + i) % len(data)]['input_ids'] for i in range(B)])
            loss = model(batch, labels=batch).loss
            loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t)
        return B * 256 * a.steps / sum(times[a.warmup:])

    def llmlab_trainer():
        torch.manual_seed(0)
        model = Llama(cfg)
        run = Path(tempfile.mkdtemp(dir=tmp))
        stamps = []
        class Clock:
            def on_step_end(self, trainer, record): stamps.append(time.perf_counter())
        tc = TrainConfig(run_dir=str(run), max_steps=total, batch_size=B, lr=3e-4, warmup_steps=0, schedule='constant',
                         log_every=1, eval_every=10**6, save_every=10**6, progress=False)
        Trainer(model, tc, data, callbacks=[Clock()]).fit()
        return B * 256 * a.steps / (stamps[-1] - stamps[a.warmup - 1])

    res = {'transformers loop': [], 'llmlab Trainer': []}
    for _ in range(a.repeats):
        res['transformers loop'].append(hf_loop()); res['llmlab Trainer'].append(llmlab_trainer())
    base, ours = statistics.median(res['transformers loop']), statistics.median(res['llmlab Trainer'])
    print(f"\nTraining throughput, {sum(p.numel() for p in Llama(cfg).parameters()) / 1e6:.1f}M-parameter LLaMA, batch {B} x 256, "
          f"float32, CPU, {torch.get_num_threads()} threads, {a.steps} timed steps, median of {a.repeats} alternating runs")
    print(f"{'what':<22} {'tokens/s':>10}\n{'transformers loop':<22} {base:>10.0f}\n{'llmlab Trainer':<22} {ours:>10.0f}\nratio {ours / base:.2f}x (> 1: llmlab faster)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(dict(benchmark='bench_train', threads=torch.get_num_threads(), steps=a.steps, repeats=a.repeats,
        torch=torch.__version__, transformers=transformers.__version__, machine=platform.machine(),
        tokens_per_second={'transformers_loop': base, 'llmlab_trainer': ours}, ratio=ours / base), indent=2))
    print(f"wrote {a.out}")


if __name__ == '__main__':
    main()
