"""One run of the time-to-loss benchmark: one system, one seed, one wall-clock budget. Started by bench_time_to_loss.py.

It runs under llmlab's venv (systems llmlab-adamw, llmlab-muon, hf-trainer) or the peers' venv (litgpt), so it imports
only torch and numpy at the top. Every system trains through its own loop; the benchmark only
  - hands it the same blocks of tokens (a memory-mapped `tokens.bin`, cut as TokenShards cuts it),
  - keeps one clock: it starts when the loop asks for its first batch and pauses while the benchmark evaluates,
  - evaluates every `eval_every` seconds of that clock, and at the budget, with one loss (float32 cross-entropy of the
    next token on the same validation blocks), and then tells the loop to stop through the loop's own means
    (llmlab: `trainer.should_stop` from a callback; transformers: `control.should_training_stop`; litgpt: the end of its data).

    python benchmarks/time_to_loss_worker.py SYSTEM SPEC.json OUT.json
"""
import json, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class Blocks:
    "Blocks of `block_size + 1` tokens from a shard folder, numbered as llmlab.data.TokenShards numbers them."
    def __init__(self, path, block_size):
        index = json.loads((Path(path) / 'index.json').read_text())
        self.tokens = np.memmap(Path(path) / 'tokens.bin', dtype=index['dtype'], mode='r', shape=(index['n_tokens'],))
        self.block_size = block_size
    def __len__(self): return (len(self.tokens) - 1) // self.block_size
    def __getitem__(self, i):
        s = i * self.block_size
        return torch.from_numpy(self.tokens[s:s + self.block_size + 1].astype(np.int64))


class Clock:
    "Training seconds: from the first batch, less the time the benchmark spent evaluating; evaluates on schedule."
    def __init__(self, spec, val_blocks, logits_fn):
        self.budget, self.every = spec['budget_s'], spec['eval_every_s']
        self.val = torch.stack([val_blocks[i] for i in range(min(len(val_blocks), spec['val_blocks']))])
        self.logits_fn, self.t0, self.paused, self.next_eval = logits_fn, None, 0.0, 0.0
        self.curve, self.tokens, self.done = [], 0, False

    def start(self):
        if self.t0 is None: self.t0 = time.perf_counter()

    def seconds(self): return 0.0 if self.t0 is None else time.perf_counter() - self.t0 - self.paused

    @torch.no_grad()
    def evaluate(self, model):
        t = time.perf_counter()
        was_training = model.training
        model.eval()
        losses = []
        for chunk in self.val.split(8):
            logits = self.logits_fn(model, chunk[:, :-1])
            losses.append(F.cross_entropy(logits.flatten(0, 1).float(), chunk[:, 1:].flatten(), reduction='sum'))
        model.train(was_training)
        loss = float(torch.stack(losses).sum()) / self.val[:, 1:].numel()
        self.paused += time.perf_counter() - t
        return loss

    def probe(self, model, tokens) -> bool:
        "Called between optimizer steps with the tokens trained so far; evaluates when due. True: the budget is spent."
        self.tokens = tokens
        s = self.seconds()
        if s >= self.next_eval or s >= self.budget:
            self.curve.append({'seconds': round(s, 3), 'tokens': tokens, 'val_loss': self.evaluate(model)})
            self.next_eval = self.next_eval + self.every
        self.done = s >= self.budget
        return self.done


# litgpt's pretraining setup where it differs from llmlab's, one difference at a time (bench_adamw_ablation.py): each
# name switches one of litgpt's choices on in an llmlab run, by patching the part of llmlab that makes the choice
LITGPT_CHANGES = {
    'init': "litgpt's weight scale: every Linear and Embedding N(0, sqrt(2 / (5 d)))",
    'proj_init': "litgpt's output projections (o_proj, down_proj) N(0, 1 / (sqrt(d) n_layers))",
    'decay_all': 'weight decay on every parameter (the RMSNorm gains too)',
    'warmup0': "litgpt's warm-up: the first step at lr 0, lr * step / warmup after",
    'compile': 'torch.compile on the model (litgpt compiles)',
}


def apply_litgpt_changes(model, changes):
    "The weight-initialisation changes, on a built llmlab model; the others patch llmlab.train (below)."
    import math
    import torch.nn as nn
    d, L = model.config.hidden_size, model.config.num_hidden_layers
    if 'init' in changes:
        for mod in model.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)): nn.init.normal_(mod.weight, std=math.sqrt(2 / 5 / d))
    if 'proj_init' in changes:
        for block in model.layers:
            for proj in (block.self_attn.o_proj, block.mlp.down_proj): nn.init.normal_(proj.weight, std=1 / math.sqrt(d) / L)


def patch_llmlab_train(changes):
    import llmlab.train as T
    if 'decay_all' in changes:
        def every_parameter_decayed(model, c):
            return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=c.lr, betas=c.betas, eps=c.eps,
                                     weight_decay=c.weight_decay)
        T.build_optimizer = every_parameter_decayed
    if 'warmup0' in changes:
        multiplier = T.lr_multiplier
        T.lr_multiplier = lambda step, c: step / c.warmup_steps if c.warmup_steps and step < c.warmup_steps else multiplier(step, c)


def run_llmlab(spec, clock, optimizer):
    from llmlab.model import Llama, ModelConfig
    from llmlab.data import TokenShards
    from llmlab.train import Trainer, TrainConfig
    from llmlab.core import seed_everything
    m, changes = spec['model'], spec.get('changes', [])
    unknown = set(changes) - set(LITGPT_CHANGES)
    if unknown: raise SystemExit(f"unknown changes {sorted(unknown)}; choose from {', '.join(LITGPT_CHANGES)}")
    seed_everything(spec['seed'])
    recipe = spec['muon_recipe'] if optimizer == 'muon' else {}
    model = Llama(ModelConfig(vocab_size=spec['vocab_size'], hidden_size=m['hidden_size'], intermediate_size=m['intermediate_size'],
                              num_hidden_layers=m['num_hidden_layers'], num_attention_heads=m['num_attention_heads'],
                              num_key_value_heads=m['num_key_value_heads'], max_position_embeddings=spec['block_size'],
                              tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0, **recipe, **spec.get('model_options', {})))
    apply_litgpt_changes(model, changes)
    patch_llmlab_train(changes)
    o = spec['optim']

    class Started(TokenShards):
        def __getitem__(self, i): clock.start(); return super().__getitem__(i)

    class Probe:
        def on_step_end(self, trainer, record):
            if clock.probe(trainer.model, trainer.state.tokens): trainer.should_stop = True

    cfg = TrainConfig(run_dir=tempfile.mkdtemp(prefix='llmlab-', dir=spec['scratch']), max_steps=10**6, batch_size=spec['batch_size'], lr=o['lr'],
                      weight_decay=o['weight_decay'], betas=tuple(o['betas']), schedule='constant', warmup_steps=o['warmup_steps'],
                      grad_clip=o['grad_clip'], optimizer=optimizer, muon_lr=o['muon_lr'], eval_every=10**6, save_every=10**6,
                      log_every=10**6, trackers=[], progress=False, seed=spec['seed'], checkpoint_on_signal=False,
                      compile='compile' in changes)
    trainer = Trainer(model, cfg, Started(spec['train_dir'], spec['block_size']), callbacks=[Probe()])
    trainer.fit()
    return sum(p.numel() for p in model.parameters())


def run_hf_trainer(spec, clock):
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments
    transformers.logging.set_verbosity_error()
    m, o = spec['model'], spec['optim']
    transformers.set_seed(spec['seed'])
    model = LlamaForCausalLM(LlamaConfig(vocab_size=spec['vocab_size'], max_position_embeddings=spec['block_size'], tie_word_embeddings=True,
                                         rms_norm_eps=1e-5, rope_theta=10000.0, attn_implementation='sdpa', **m))
    blocks = Blocks(spec['train_dir'], spec['block_size'])

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            order = np.random.default_rng(spec['seed']).permutation(len(blocks))
            for k in range(10**9):
                clock.start()
                b = blocks[int(order[k % len(order)])][:-1]
                yield {'input_ids': b, 'labels': b}   # transformers shifts the labels itself

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if clock.probe(model, state.global_step * spec['batch_size'] * spec['block_size']): control.should_training_stop = True

    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix='hf-', dir=spec['scratch']), per_device_train_batch_size=spec['batch_size'],
                             learning_rate=o['lr'], weight_decay=o['weight_decay'], adam_beta1=o['betas'][0], adam_beta2=o['betas'][1],
                             lr_scheduler_type='constant_with_warmup', warmup_steps=o['warmup_steps'], max_grad_norm=o['grad_clip'],
                             max_steps=10**6, save_strategy='no', eval_strategy='no', logging_strategy='no', report_to=[],
                             dataloader_num_workers=0, use_cpu=True, seed=spec['seed'], disable_tqdm=True, optim='adamw_torch')
    Trainer(model=model, args=args, train_dataset=Stream(), callbacks=[Probe()]).train()
    return sum(p.numel() for p in model.parameters())


class LitgptStream(torch.utils.data.IterableDataset):
    "litgpt's loop ends when its data does (its CycleIterator restarts an exhausted iterable once, then stops)."
    def __init__(self, blocks, clock, model_box, batch_size, seed):
        self.blocks, self.clock, self.model_box, self.batch_size, self.seed = blocks, clock, model_box, batch_size, seed
    def __iter__(self):
        if self.clock.done: return
        order, B = np.random.default_rng(self.seed).permutation(len(self.blocks)), self.batch_size
        for k in range(10**9):
            self.clock.start()
            if k and self.clock.probe(self.model_box['model'], k * B * self.blocks.block_size): return
            yield torch.stack([self.blocks[int(order[(k * B + i) % len(order)])] for i in range(B)])
    def __len__(self): return 10**9
    def __getstate__(self): return {}   # litgpt saves its data loader's state with the final checkpoint; a stream has none to keep


def run_litgpt(spec, clock):
    import litgpt.pretrain as pretrain
    from litgpt.args import EvalArgs, TrainArgs
    from litgpt.config import Config
    from litgpt.data import DataModule
    m, o, T, B = spec['model'], spec['optim'], spec['block_size'], spec['batch_size']
    config = Config(name='ttl-bench', block_size=T, vocab_size=spec['vocab_size'], padded_vocab_size=spec['vocab_size'],
                    n_layer=m['num_hidden_layers'], n_head=m['num_attention_heads'], n_embd=m['hidden_size'],
                    n_query_groups=m['num_key_value_heads'], rotary_percentage=1.0, parallel_residual=False, bias=False,
                    norm_class_name='RMSNorm', norm_eps=1e-5, mlp_class_name='LLaMAMLP', intermediate_size=m['intermediate_size'],
                    rope_base=10000)
    train_blocks, val_blocks = Blocks(spec['train_dir'], T), Blocks(spec['val_dir'], T)
    model_box = {}

    class Data(DataModule):
        def connect(self, tokenizer=None, batch_size=1, max_seq_length=-1): pass
        def train_dataloader(self): return torch.utils.data.DataLoader(LitgptStream(train_blocks, clock, model_box, B, spec['seed']), batch_size=None)
        def val_dataloader(self):   # litgpt's start-up check only: the benchmark's clock evaluates
            return torch.utils.data.DataLoader([torch.stack([val_blocks[i] for i in range(B)])], batch_size=None)

    fit = pretrain.fit
    def fit_keeping_the_model(*a, **kw):   # the benchmark's clock evaluates the model litgpt builds and compiles
        model_box['model'] = kw['state']['model']
        return fit(*a, **kw)
    pretrain.fit = fit_keeping_the_model
    pretrain.setup('ttl-bench', model_config=config, out_dir=Path(tempfile.mkdtemp(prefix='litgpt-', dir=spec['scratch'])), precision='32-true',
                   data=Data(), logger_name='csv', seed=spec['seed'], devices=1,
                   train=TrainArgs(save_interval=None, log_interval=10**6, global_batch_size=B, micro_batch_size=B, max_tokens=10**12,
                                   max_norm=o['grad_clip'], min_lr=o['lr'], lr_warmup_steps=o['warmup_steps'], tie_embeddings=True),
                   eval=EvalArgs(interval=10**9, max_iters=1, initial_validation=False, final_validation=False),
                   optimizer={'class_path': 'torch.optim.AdamW',
                              'init_args': {'lr': o['lr'], 'weight_decay': o['weight_decay'], 'betas': list(o['betas'])}})
    return sum(p.numel() for p in model_box['model'].parameters())


def main():
    system, spec, out = sys.argv[1], json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3])
    sys.argv = sys.argv[:1] + ['ttl-bench']   # litgpt re-reads the command line as its own to save hyperparameters
    torch.set_num_threads(spec['threads'])
    val = Blocks(spec['val_dir'], spec['block_size'])
    def logits_fn(model, ids):
        y = model(ids)
        return y if isinstance(y, torch.Tensor) else y.logits
    clock = Clock(spec, val, logits_fn)
    t = time.perf_counter()
    runners = {'llmlab-adamw': lambda: run_llmlab(spec, clock, 'adamw'), 'llmlab-muon': lambda: run_llmlab(spec, clock, 'muon'),
               'hf-trainer': lambda: run_hf_trainer(spec, clock), 'litgpt': lambda: run_litgpt(spec, clock)}
    if system not in runners: raise SystemExit(f"unknown system {system!r}")
    # each system's run folder (its final checkpoint: hundreds of MB) lives only as long as the run
    with tempfile.TemporaryDirectory(prefix='ttl-') as scratch:
        spec['scratch'] = scratch
        n = runners[system]()
    if not clock.done: raise SystemExit(f"{system} stopped before the budget ({clock.seconds():.1f} of {spec['budget_s']} s)")
    last = clock.curve[-1]
    half = [p for p in clock.curve if p['seconds'] >= spec['budget_s'] / 2][0]
    out.write_text(json.dumps({
        'system': system, 'seed': spec['seed'], 'parameters': n, 'val_loss': last['val_loss'], 'seconds': last['seconds'],
        'tokens': last['tokens'], 'tokens_per_second': last['tokens'] / last['seconds'],
        # the second half alone: a compiling system (litgpt compiles its model) pays the compile time in the first steps
        'tokens_per_second_second_half': (last['tokens'] - half['tokens']) / max(1e-9, last['seconds'] - half['seconds']),
        'process_seconds': time.perf_counter() - t, 'curve': clock.curve}, indent=1))


if __name__ == '__main__':
    main()
