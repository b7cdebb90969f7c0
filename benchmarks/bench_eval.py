"""Evaluation speed: llmlab against lm-evaluation-harness's HF backend on lm-eval's own task definitions, in one run.

Two catalogue tasks, run by lm-eval itself (prompts, few-shot examples, filters, metrics) on local data of the real shape:
- multiple choice: the `mmlu` group, 5-shot (each subject's 5 development questions as examples, as lm-eval's YAML says),
  with the other subjects' development questions as test items (273 items, 57 subjects);
- generation: `gsm8k_cot` (8 fixed chain-of-thought examples, greedy until "Q:", its regex filters) on 32 generated
  arithmetic word problems, 64 new tokens at most.
The same SmolLM2-135M-Instruct weights in float32 on the CPU, batch size 16. lm-eval's HFLM and llmlab answer with the
same transformers model object; llmlab also with its own model. The answers must agree (accuracies, generated texts)
before times are compared. Each timing is the median of alternating repeats. `tokens run` counts the positions each
system fed through the model (padding included): where the time goes.

    python benchmarks/bench_eval.py [--repeats 2]
"""
import argparse, json, os, platform, random, statistics, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('HF_DATASETS_OFFLINE', '1'); os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
from harness_data import _write, mmlu_rows   # noqa: E402  the tests' builders of lm-eval-shaped local datasets


def mmlu_5shot_data(root:Path) -> int:
    "cais/mmlu/<subject>/{dev,test}.jsonl: dev = the subject's own 5 questions, test = the next subject's (relabelled)."
    rows = mmlu_rows()
    subjects = sorted(rows)
    for i, s in enumerate(subjects):
        _write(root / 'cais/mmlu' / s, 'dev', rows[s])
        _write(root / 'cais/mmlu' / s, 'test', [dict(r, subject=s) for r in rows[subjects[(i + 1) % len(subjects)]]])
    return sum(len(rows[s]) for s in subjects)


def word_problems(n:int, seed:int=0) -> list[dict]:
    "GSM8K-shaped problems (question, answer ending '#### n') from a few templates."
    rng, out = random.Random(seed), []
    templates = [("{a} birds sit on a tree and {b} more arrive. How many birds are on the tree?", lambda a, b: a + b),
                 ("A shop had {a} apples and sold {b}. How many apples are left?", lambda a, b: a - b),
                 ("Each box holds {a} pens. How many pens are in {b} boxes?", lambda a, b: a * b)]
    for _ in range(n):
        q, f = rng.choice(templates)
        a, b = rng.randint(12, 60), rng.randint(2, 11)
        out.append({'question': q.format(a=a, b=b), 'answer': f'The answer is {f(a, b)}.\n#### {f(a, b)}'})
    return out


class TokenCounter:
    "Counts the positions fed through a model's embedding (padding included)."
    def __init__(self, embedding): self.n = 0; embedding.register_forward_pre_hook(self)
    def __call__(self, module, args): self.n += args[0].numel()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--batch-size', type=int, default=16)
    ap.add_argument('--problems', type=int, default=32)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'bench_eval.json'))
    a = ap.parse_args()
    import importlib.metadata, logging, transformers
    transformers.logging.set_verbosity_error(); logging.getLogger('lm_eval').setLevel(logging.ERROR)
    from transformers import AutoModelForCausalLM
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from llmlab.checkpoints import cached_gguf, load_pretrained, load_tokenizer, resolve_source
    from llmlab.harness import LlmlabLM, _task_manager, local_datasets

    src = cached_gguf(resolve_source('smollm2-135m-instruct'), progress=False)
    tok = load_tokenizer('smollm2-135m-instruct')
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ours = load_pretrained('smollm2-135m-instruct', dtype='float32', progress=False)
    counters = {'hf': TokenCounter(hf.model.embed_tokens), 'llmlab': TokenCounter(ours.embed_tokens)}
    data = Path(tempfile.mkdtemp())
    n_mc = mmlu_5shot_data(data)
    _write(data / 'openai/gsm8k/main', 'test', word_problems(a.problems))
    tm, _ = _task_manager(['mmlu', 'gsm8k_cot'])
    bs = a.batch_size
    systems = {'lm-eval HFLM (transformers model)': (lambda: HFLM(pretrained=hf, tokenizer=tok, batch_size=bs), 'hf'),
               'llmlab (same transformers model)': (lambda: LlmlabLM(model=hf, tokenizer=tok, batch_size=bs), 'hf'),
               'llmlab (llmlab model)': (lambda: LlmlabLM(model=ours, tokenizer=tok, batch_size=bs), 'llmlab')}
    tasks = {'mmlu 5-shot (multiple choice)': ('mmlu', 'acc,none'),
             'gsm8k_cot (generate_until)': ('gsm8k_cot', 'exact_match,strict-match')}

    def run(system, task):
        make, counter = systems[system]
        name, metric = tasks[task]
        before = counters[counter].n
        t = time.perf_counter()
        with local_datasets(data):
            out = simple_evaluate(model=make(), tasks=[name], task_manager=tm, gen_kwargs={'max_gen_toks': 64} if 'gsm8k' in name else None,
                                  log_samples=True, verbosity='ERROR', bootstrap_iters=0)
        seconds = time.perf_counter() - t
        res = out['results'][name]
        answers = sorted((s['doc_id'], str(s['resps'])) for t_, ss in out['samples'].items() for s in ss) if 'gsm8k' in name else None
        return seconds, res[metric], counters[counter].n - before, answers

    timings, results = {(s, t): [] for s in systems for t in tasks}, {}
    for rep in range(a.repeats):
        for task in tasks:
            for system in systems:
                seconds, score, tokens, answers = run(system, task)
                timings[system, task].append(seconds)
                results[system, task] = (score, tokens, answers)
                print(f"  repeat {rep + 1}: {task:<32} {system:<36} {seconds:7.1f}s", flush=True)
    rows = []
    print(f"\nlm-eval's own task definitions, SmolLM2-135M-Instruct float32, CPU, {torch.get_num_threads()} threads, batch {bs}, "
          f"median of {a.repeats} alternating repeats (lm-eval {importlib.metadata.version('lm-eval')})")
    print(f"{'task':<32} {'system':<36} {'seconds':>8} {'speedup':>8} {'score':>7} {'tokens run':>11}")
    for task in tasks:
        base_key = ('lm-eval HFLM (transformers model)', task)
        base = statistics.median(timings[base_key])
        for system in systems:
            score, tokens, answers = results[system, task]
            assert score == results[base_key][0], (task, system, score, results[base_key][0])   # the same answers, or no comparison
            if answers is not None and system != 'llmlab (llmlab model)': assert answers == results[base_key][2], (task, system)
            t = statistics.median(timings[system, task])
            rows.append(dict(task=task, system=system, seconds=t, speedup=base / t, score=score, tokens_run=tokens,
                             repeats=timings[system, task]))
            print(f"{task:<32} {system:<36} {t:>8.1f} {base / t:>7.2f}x {score:>7.3f} {tokens:>11,}")
    print("speedup > 1: faster than lm-eval's HF backend on the same model object")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(dict(benchmark='bench_eval', mc_items=n_mc, problems=a.problems, batch_size=bs,
                                           threads=torch.get_num_threads(), repeats=a.repeats, torch=torch.__version__,
                                           transformers=transformers.__version__, lm_eval=importlib.metadata.version('lm-eval'),
                                           machine=platform.machine(), rows=rows), indent=2))
    print(f"wrote {a.out}")


if __name__ == '__main__':
    main()
