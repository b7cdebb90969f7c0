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
import argparse, atexit, json, os, platform, random, shutil, statistics, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('HF_DATASETS_OFFLINE', '1'); os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
from harness_data import _write, mmlu_rows   # noqa: E402  the tests' builders of lm-eval-shaped local datasets


def mmlu_5shot_data(root:Path) -> int:
    "cais/mmlu/<subject>/{dev,test}.jsonl: dev = the subject's own 5 questions, test = the next subject's (relabelled)."
    rows = mmlu_rows()
    have = sorted(s for s in rows if rows[s])
    n = 0
    for s in sorted(rows):
        nxt = next((t for t in have if t > s), have[0])
        prv = next((t for t in reversed(have) if t < s), have[-1])
        test = [dict(r, subject=s) for r in rows[nxt]]
        dev = (rows[s] + rows[prv])[:5]     # MMLU has 5 per subject; the prompts' parse finds 0-5: the previous subject fills up
        _write(root / 'cais/mmlu' / s, 'dev', [dict(r, subject=s) for r in dev]); _write(root / 'cais/mmlu' / s, 'test', test)
        n += len(test)
    return n


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
    ap.add_argument('--subjects', type=int, default=57, help='the first N MMLU subjects (lm-eval on all 57 takes ~8 minutes a repeat here)')
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'bench_eval.json'))
    a = ap.parse_args()
    import importlib.metadata, logging, transformers
    transformers.logging.set_verbosity_error(); logging.getLogger('lm_eval').setLevel(logging.ERROR)
    from transformers import AutoModelForCausalLM
    from lm_eval.models.huggingface import HFLM
    from llmlab.checkpoints import cached_gguf, load_pretrained, load_tokenizer, resolve_source
    from llmlab.harness import LlmlabLM, _task_manager, local_datasets

    src = cached_gguf(resolve_source('smollm2-135m-instruct'), progress=False)
    tok = load_tokenizer('smollm2-135m-instruct')
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ours = load_pretrained('smollm2-135m-instruct', dtype='float32', progress=False)
    counters = {'hf': TokenCounter(hf.model.embed_tokens), 'llmlab': TokenCounter(ours.embed_tokens)}
    data = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, data, True)
    mmlu_5shot_data(data)
    _write(data / 'openai/gsm8k/main', 'test', word_problems(a.problems))
    tm, _ = _task_manager(['mmlu', 'gsm8k_cot'])
    subjects = sorted(n for n in tm.all_tasks if n.startswith('mmlu_') and (data / 'cais/mmlu' / n[5:]).is_dir())[:a.subjects]
    requests = {}   # lm-eval builds every request once (prompts, few-shot examples); each system answers the same list
    with local_datasets(data):
        for task, kind in (('mmlu', 'loglikelihood'), ('gsm8k_cot', 'generate_until')):
            loaded = tm.load(subjects if task == 'mmlu' else [task])['tasks']
            insts = []
            for t in loaded.values():
                if task == 'mmlu': t.set_config(key='num_fewshot', value=5)   # as `--num_fewshot 5`: MMLU's YAML alone is 0-shot
                t.build_all_requests(rank=0, world_size=1)
                insts += t.instances
            if kind == 'generate_until':
                for r in insts: r.arguments = (r.arguments[0], {**r.arguments[1], 'max_gen_toks': 64})
            requests[task] = (kind, insts)
    bs = a.batch_size
    systems = {'lm-eval HFLM (transformers model)': (HFLM(pretrained=hf, tokenizer=tok, batch_size=bs), 'hf'),
               'llmlab (same transformers model)': (LlmlabLM(model=hf, tokenizer=tok, batch_size=bs), 'hf'),
               'llmlab (llmlab model)': (LlmlabLM(model=ours, tokenizer=tok, batch_size=bs), 'llmlab')}
    names = {'mmlu': f'mmlu 5-shot ({len(subjects)} subjects), {len(requests["mmlu"][1])} loglikelihood requests',
             'gsm8k_cot': f'gsm8k_cot, {len(requests["gsm8k_cot"][1])} generations'}

    def run(system, task):
        lm, counter = systems[system]
        kind, insts = requests[task]
        before = counters[counter].n
        t = time.perf_counter()
        answers = getattr(lm, kind)(insts, disable_tqdm=True)
        return time.perf_counter() - t, answers, counters[counter].n - before

    timings, results = {(s, t): [] for s in systems for t in requests}, {}
    for rep in range(a.repeats):
        for task in requests:
            for system in systems:
                seconds, answers, tokens = run(system, task)
                timings[system, task].append(seconds)
                results[system, task] = (answers, tokens)
                print(f"  repeat {rep + 1}: {names[task]:<42} {system:<36} {seconds:7.1f}s", flush=True)
    rows = []
    print(f"\nlm-eval's own requests, SmolLM2-135M-Instruct float32, CPU, {torch.get_num_threads()} threads, batch {bs}, "
          f"median of {a.repeats} alternating repeats (lm-eval {importlib.metadata.version('lm-eval')})")
    print(f"{'requests':<42} {'system':<36} {'seconds':>8} {'speedup':>8} {'tokens run':>11} {'max |d ll|':>10}")
    for task, (kind, insts) in requests.items():
        base_key = ('lm-eval HFLM (transformers model)', task)
        base, ref = statistics.median(timings[base_key]), results[base_key][0]
        for system in systems:
            answers, tokens = results[system, task]
            if kind == 'loglikelihood':
                diff = max(abs(x[0] - y[0]) for x, y in zip(answers, ref))
                # the same answers, or no comparison: 1e-4 on the same model object, 1e-3 on llmlab's model (SDPA, own sums)
                assert diff <= (1e-4 if 'same' in system or 'HFLM' in system else 1e-3), (system, diff)
            else:
                diff = float('nan')
                same = sum(x == y for x, y in zip(answers, ref))
                if 'llmlab model' not in system: assert same == len(ref), (system, same, len(ref))   # greedy: token-identical
            t = statistics.median(timings[system, task])
            rows.append(dict(requests=names[task], system=system, seconds=t, speedup=base / t, tokens_run=tokens, max_loglikelihood_difference=diff,
                             identical_generations=None if kind == 'loglikelihood' else same, repeats=timings[system, task]))
            print(f"{names[task]:<42} {system:<36} {t:>8.1f} {base / t:>7.2f}x {tokens:>11,} {diff:>10.2g}")
    print("speedup > 1: faster than lm-eval's HF backend on the same model object")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(dict(benchmark='bench_eval', mc_subjects=len(subjects), mc_requests=len(requests['mmlu'][1]), problems=a.problems, batch_size=bs,
                                           threads=torch.get_num_threads(), repeats=a.repeats, torch=torch.__version__,
                                           transformers=transformers.__version__, lm_eval=importlib.metadata.version('lm-eval'),
                                           machine=platform.machine(), rows=rows), indent=2))
    print(f"wrote {a.out}")


if __name__ == '__main__':
    main()
