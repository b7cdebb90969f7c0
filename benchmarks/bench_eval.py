"""Multiple-choice scoring speed: llmlab's evaluation runner against lm-evaluation-harness, in one run.

The same items (the 273 MMLU development questions that lm-eval ships, zero-shot, letter choices), the same
SmolLM2-135M-Instruct weights in float32 on the CPU, batch size 16. lm-eval's HFLM scores the transformers model;
llmlab scores the same transformers model object and its own model. Accuracy must agree before times are compared.
Each timing is the median of alternating repeats.

    python benchmarks/bench_eval.py [--repeats 2] [--limit N]
"""
import argparse, json, os, platform, statistics, tempfile, time
from pathlib import Path

os.environ.setdefault('HF_DATASETS_OFFLINE', '1'); os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--limit', type=int, default=None)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'bench_eval.json'))
    a = ap.parse_args()
    import importlib.metadata, logging, transformers
    transformers.logging.set_verbosity_error(); logging.getLogger('lm_eval').setLevel(logging.ERROR)
    from transformers import AutoModelForCausalLM
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from llmlab.checkpoints import cached_gguf, load_pretrained, load_tokenizer, resolve_source
    from llmlab.eval import EvalModel, evaluate_task, load_mmlu_dev

    src = cached_gguf(resolve_source('smollm2-135m-instruct'), progress=False)
    tok = load_tokenizer('smollm2-135m-instruct')
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ours = load_pretrained('smollm2-135m-instruct', dtype='float32', progress=False)
    docs = load_mmlu_dev()[:a.limit]
    d = Path(tempfile.mkdtemp())
    (d / 'mc.jsonl').write_text('\n'.join(json.dumps(x) for x in docs))
    (d / 'bench_mc.yaml').write_text(f'task: bench_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {d / "mc.jsonl"}\n'
                                     'test_split: test\noutput_type: multiple_choice\ndoc_to_text: "{{text}}"\n'
                                     'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{target}}"\nmetric_list:\n  - metric: acc\n')
    (d / 'mc.yaml').write_text('task: mc\nkind: multiple_choice\ndata: mc.jsonl\n')
    tm = TaskManager(include_path=str(d))

    def run_lm_eval():
        r = simple_evaluate(model=HFLM(pretrained=hf, tokenizer=tok, batch_size=16), tasks=['bench_mc'], task_manager=tm,
                            verbosity='ERROR')
        return r['results']['bench_mc']['acc,none']
    def run_llmlab(model):
        return lambda: evaluate_task(EvalModel(model, tok, batch_size=16, progress=False), d / 'mc.yaml', bootstrap_iters=0,
                                     progress=False).scores['acc']
    runs = {'lm-eval HFLM (transformers model)': run_lm_eval, 'llmlab (same transformers model)': run_llmlab(hf),
            'llmlab (llmlab model)': run_llmlab(ours)}
    accs = {k: fn() for k, fn in runs.items()}       # warm-up, and the accuracies must agree
    assert len(set(accs.values())) == 1, accs
    times = {k: [] for k in runs}
    for _ in range(a.repeats):
        for k, fn in runs.items():
            t = time.perf_counter(); fn(); times[k].append(time.perf_counter() - t)
    base = statistics.median(times['lm-eval HFLM (transformers model)'])
    print(f"\nMultiple-choice scoring, {len(docs)} MMLU dev questions x 4 choices, SmolLM2-135M-Instruct float32, CPU, "
          f"{torch.get_num_threads()} threads, median of {a.repeats} alternating repeats (lm-eval {importlib.metadata.version('lm-eval')})")
    print(f"{'what':<36} {'seconds':>8} {'items/s':>8} {'speedup':>8} {'acc':>6}")
    rows = []
    for k in runs:
        t = statistics.median(times[k])
        rows.append(dict(what=k, seconds=t, items_per_second=len(docs) / t, speedup=base / t, acc=accs[k]))
        print(f"{k:<36} {t:>8.2f} {len(docs) / t:>8.2f} {base / t:>7.2f}x {accs[k]:>6.3f}")
    print("speedup > 1: faster than lm-eval")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(dict(benchmark='bench_eval', items=len(docs), threads=torch.get_num_threads(),
                                           repeats=a.repeats, torch=torch.__version__, lm_eval=importlib.metadata.version('lm-eval'),
                                           machine=platform.machine(), rows=rows), indent=2))
    print(f"wrote {a.out}")


if __name__ == '__main__':
    main()
