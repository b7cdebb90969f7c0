"""GRPO on this CPU: SmolLM2-135M-Instruct learns single-digit arithmetic from a verifiable reward, and how fast a GRPO step
is against TRL's GRPOTrainer on the same model, task and settings.

The task, built from a seed: "What is a + b? Answer with the number only." for a in 0..19, b in 0..9 (200 problems),
shuffled with seed 0 into 100 training prompts and 100 held-out ones (disjoint). The reward is 1.0 when the last number
in the reply equals a + b (`llmlab.grpo.answer_reward`), else 0.0.

- Learning: `GRPOTask` on the Trainer for `--steps` steps (rollouts by the serving engine), 8 completions per
  prompt, 2 prompts a step (16 completions), at most 24 new tokens, loss `dapo` with DAPO's clip (0.2, 0.28), no KL,
  AdamW at 1e-5 (constant), gradient clipping at 1. Held-out accuracy (greedy, through the same engine) before, every
  `--eval-every` steps, and after; the paired difference with McNemar's exact test and a paired bootstrap interval
  (`llmlab.stats.compare`).
- Speed: seconds per GRPO step (rollout + scoring + the update), median over steps 2..N, llmlab's and TRL's `GRPOTrainer`
  (its transformers `generate` rollouts) with the same settings on the same weights, back to back, each in its own process
  with 2 threads (the learning phase's own step times are reported too, but a busy machine inflates them).

    python benchmarks/bench_grpo.py [--phase learn|speed|all] [--steps 60] [--quick]
"""
import argparse, json, os, platform, random, statistics, subprocess, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
RESULTS = Path(__file__).resolve().parent / 'results'
THREADS = 2
SETTINGS = dict(num_generations=8, prompts_per_step=2, max_completion_length=24, lr=1e-5, epsilon=0.2, epsilon_high=0.28, loss_type='dapo')


def problems(seed:int=0) -> tuple[list[dict], list[dict]]:
    "(train, held-out) rows: chat prompts asking for a + b, with the answer; a deterministic disjoint split."
    rows = [{'prompt': [{'role': 'user', 'content': f'What is {a} + {b}? Answer with the number only.'}], 'answer': str(a + b)}
            for a in range(20) for b in range(10)]
    random.Random(seed).shuffle(rows)
    return rows[:100], rows[100:]


def held_out_correct(model, tok, rows) -> tuple[list[bool], float]:
    "Greedy replies through the engine: which are right, and the mean reply length in tokens."
    from llmlab.engine import LLMEngine, SamplingParams
    from llmlab.grpo import prompt_token_ids, last_number
    ids = [prompt_token_ids(tok, r['prompt']) for r in rows]
    reqs = LLMEngine.for_prompts(model, ids, SETTINGS['max_completion_length'], tok).generate(ids, SamplingParams(max_tokens=SETTINGS['max_completion_length']))
    return [last_number(r.text) == row['answer'] for r, row in zip(reqs, rows)], sum(len(r.output_ids) for r in reqs) / len(reqs)


def run_llmlab(steps:int, eval_every:int, out:Path) -> dict:
    import torch
    from llmlab.checkpoints import load_pretrained, load_tokenizer
    from llmlab.grpo import GRPOTask, answer_reward
    from llmlab.stats import compare
    from llmlab.train import Trainer, TrainConfig, read_metrics
    torch.set_num_threads(THREADS)
    model, tok = load_pretrained('smollm2-135m-instruct', progress=False), load_tokenizer('smollm2-135m-instruct')
    train, held = problems()
    before, before_len = held_out_correct(model, tok, held)
    print(f"held-out accuracy before: {sum(before)}/{len(before)} (mean reply {before_len:.1f} tokens)", flush=True)
    walls, curve, t0, step_times = {}, [{'step': 0, 'seconds': 0.0, 'accuracy': sum(before) / len(before)}], None, []

    class Clock:
        def on_step_end(self, trainer, record):
            nonlocal t0
            now = time.perf_counter()
            step_times.append(now - (t0 or start)); t0 = now; walls[record['step']] = now - start
            if record['step'] % eval_every == 0:
                acc, _ = held_out_correct(trainer.model, tok, held)
                curve.append({'step': record['step'], 'seconds': now - start, 'accuracy': sum(acc) / len(acc)})
                print(f"step {record['step']}: reward {record['reward']:.3f}, held-out {sum(acc)}/{len(acc)}", flush=True)
                t0 = time.perf_counter()   # evaluation time is not step time
    s = SETTINGS
    task = GRPOTask(tok, [answer_reward()], num_generations=s['num_generations'], max_completion_length=s['max_completion_length'],
                    loss_type=s['loss_type'], epsilon=s['epsilon'], epsilon_high=s['epsilon_high'])
    cfg = TrainConfig(run_dir=str(out), max_steps=steps, batch_size=s['num_generations'] * s['prompts_per_step'],
                      lr=s['lr'], warmup_steps=0, schedule='constant', weight_decay=0.0, trackers=[], log_every=1, save_every=10**6,
                      progress=False, seed=0)
    start = time.perf_counter()
    Trainer(model, cfg, train, task=task, callbacks=[Clock()]).fit()
    wall = time.perf_counter() - start
    after, after_len = held_out_correct(model, tok, held)
    if curve[-1]['step'] != steps: curve.append({'step': steps, 'seconds': wall, 'accuracy': sum(after) / len(after)})
    c = compare([float(x) for x in before], [float(x) for x in after])
    records = [r for r in read_metrics(out) if 'reward' in r]
    return {'before': {'correct': sum(before), 'n': len(before), 'mean_reply_tokens': before_len},
            'after': {'correct': sum(after), 'n': len(after), 'mean_reply_tokens': after_len},
            'difference': c.mean_difference, 'ci95': [c.ci_low, c.ci_high], 'bootstrap_ci95': [c.bootstrap_ci_low, c.bootstrap_ci_high],
            'mcnemar_p': c.p_mcnemar, 'permutation_p': c.p_permutation, 'steps': len(records), 'wall_minutes': wall / 60,
            'seconds_per_step_median': statistics.median(step_times[1:]) if len(step_times) > 1 else None,
            'rewards': [{'step': r['step'], 'seconds': walls.get(r['step']), 'reward': r['reward'], 'mean_length': r['completions/mean_length']} for r in records],
            'held_out_curve': curve}


TRL_WORKER = r'''
import json, os, statistics, sys, tempfile, time, torch
torch.set_num_threads(int(sys.argv[2]))
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
sys.path.insert(0, sys.argv[4]); from bench_grpo import problems, SETTINGS
from llmlab.grpo import answer_reward
s, d = SETTINGS, sys.argv[1]
model, tok = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32), AutoTokenizer.from_pretrained(d)
train, _ = problems()
times = []
class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw): self.t = time.perf_counter()
    def on_step_end(self, args, state, control, **kw): times.append(time.perf_counter() - self.t)
with tempfile.TemporaryDirectory() as out:
    args = GRPOConfig(output_dir=out, report_to=[], use_cpu=True, bf16=False, num_generations=s['num_generations'],
                      per_device_train_batch_size=s['num_generations'] * s['prompts_per_step'], max_completion_length=s['max_completion_length'],
                      learning_rate=s['lr'], lr_scheduler_type='constant', warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                      loss_type=s['loss_type'], epsilon=s['epsilon'], epsilon_high=s['epsilon_high'], beta=0.0, temperature=1.0,
                      max_steps=int(sys.argv[3]), logging_steps=1, save_strategy='no', seed=0, dataloader_num_workers=0)
    t = GRPOTrainer(model=model, reward_funcs=[answer_reward()], args=args, train_dataset=Dataset.from_list(train), processing_class=tok,
                    callbacks=[Clock()])
    t.train()
    rewards = [h.get('reward') for h in t.state.log_history if 'reward' in h]
print('RESULT' + json.dumps({'step_seconds': times, 'rewards': rewards}))
'''


LLMLAB_WORKER = r'''
import json, sys, tempfile, time, torch
torch.set_num_threads(int(sys.argv[1]))
sys.path.insert(0, sys.argv[3]); from bench_grpo import problems, SETTINGS
from llmlab.checkpoints import load_pretrained, load_tokenizer
from llmlab.grpo import GRPOTask, answer_reward
from llmlab.train import Trainer, TrainConfig
s = SETTINGS
model, tok = load_pretrained('smollm2-135m-instruct', progress=False), load_tokenizer('smollm2-135m-instruct')
train, _ = problems()
times = []
class Clock:
    def __init__(self): self.t = time.perf_counter()
    def on_step_end(self, trainer, record): now = time.perf_counter(); times.append(now - self.t); self.t = now
task = GRPOTask(tok, [answer_reward()], num_generations=s['num_generations'], max_completion_length=s['max_completion_length'],
                loss_type=s['loss_type'], epsilon=s['epsilon'], epsilon_high=s['epsilon_high'])
with tempfile.TemporaryDirectory() as d:
    cfg = TrainConfig(run_dir=d, max_steps=int(sys.argv[2]), batch_size=s['num_generations'] * s['prompts_per_step'], lr=s['lr'],
                      warmup_steps=0, schedule='constant', weight_decay=0.0, trackers=[], log_every=1, save_every=10**6, progress=False, seed=0)
    clock = Clock()
    Trainer(model, cfg, train, task=task, callbacks=[clock]).fit()
print('RESULT' + json.dumps({'step_seconds': times}))
'''


def run_worker(code:str, args:list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    p = subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, env=env)
    line = next((l for l in p.stdout.splitlines() if l.startswith('RESULT')), None)
    if line is None: raise RuntimeError(f"worker failed:\n{p.stderr[-3000:]}")
    r = json.loads(line[6:])
    r['seconds_per_step_median'] = statistics.median(r['step_seconds'][1:])
    return r


def run_speed(steps:int) -> dict:
    "llmlab's and TRL's seconds per step, back to back, each in its own process."
    from llmlab.checkpoints import cached_gguf, resolve_source
    d = cached_gguf(resolve_source('smollm2-135m-instruct'), progress=False)
    here = str(Path(__file__).parent)
    ours = run_worker(LLMLAB_WORKER, [str(THREADS), str(steps), here])
    trl = run_worker(TRL_WORKER, [str(d), str(THREADS), str(steps), here])
    return {'steps': steps, 'llmlab': ours, 'trl': trl, 'speedup': trl['seconds_per_step_median'] / ours['seconds_per_step_median']}


def plot(res:dict, path:Path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    g = res['llmlab']
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    mins = [r['seconds'] / 60 for r in g['rewards']]
    rew = [r['reward'] for r in g['rewards']]
    k = 5
    smooth = [sum(rew[max(0, i - k + 1):i + 1]) / len(rew[max(0, i - k + 1):i + 1]) for i in range(len(rew))]
    a.plot(mins, rew, '.', alpha=0.35, label='reward (per step)')
    a.plot(mins, smooth, '-', label=f'reward ({k}-step mean)')
    a.set_xlabel('wall minutes (training + held-out evaluations)'); a.set_ylabel('mean reward (fraction correct, sampled)'); a.legend()
    cur = g['held_out_curve']
    b.plot([c['seconds'] / 60 for c in cur], [c['accuracy'] for c in cur], 'o-')
    b.set_xlabel('wall minutes (training + held-out evaluations)'); b.set_ylabel('held-out accuracy (greedy, 100 problems)')
    b.set_title(f"{g['before']['correct']}% -> {g['after']['correct']}%, McNemar p = {g['mcnemar_p']:.2g}")
    sp = res.get('speed')
    fig.suptitle("GRPO on SmolLM2-135M-Instruct, 2 CPU threads" + (f"; a step takes {1 / sp['speedup']:.2f}x TRL's time" if sp else ''))
    fig.tight_layout(); fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--phase', choices=['learn', 'speed', 'all'], default='all')
    ap.add_argument('--steps', type=int, default=60)
    ap.add_argument('--eval-every', type=int, default=10)
    ap.add_argument('--speed-steps', type=int, default=6)
    ap.add_argument('--quick', action='store_true', help='a smoke run: 4 steps, speed over 3, results not written')
    a = ap.parse_args()
    if a.quick: a.steps, a.speed_steps, a.eval_every = 4, 3, 2
    path = RESULTS / 'bench_grpo.json'
    res = json.loads(path.read_text()) if path.exists() and not a.quick else {}
    res.update({'settings': SETTINGS, 'threads': THREADS, 'machine': platform.processor() or platform.machine()})
    if a.phase in ('learn', 'all'):
        with tempfile.TemporaryDirectory() as d: res['llmlab'] = run_llmlab(a.steps, a.eval_every, Path(d) / 'run')
    if a.phase in ('speed', 'all'): res['speed'] = run_speed(a.speed_steps)
    print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != 'rewards'} if isinstance(v, dict) else v) for k, v in res.items()}, indent=1))
    if a.quick: return
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    if 'llmlab' in res: plot(res, RESULTS / 'bench_grpo.png')


if __name__ == '__main__':
    main()
