"lm-eval's own task files run by llmlab, item by item against lm-eval's HF backend; lm-eval's command running llmlab models."
import contextlib, io, json, subprocess, sys
from pathlib import Path
import pytest
from llmlab.core import assert_close


def _responses(out):
    "Per task and document: lm-eval's raw responses (log-likelihood pairs, rolling totals or generations), in request order."
    return {t: {int(s['doc_id']): s['resps'] for s in ss} for t, ss in out['samples'].items()}


def _loglikelihood(resp):
    "A loglikelihood response is [(ll, is_greedy)], a rolling one [ll]."
    return resp[0][0] if isinstance(resp[0], (list, tuple)) else resp[0]


def _run_both(ref_model, models, tokenizer, tasks, local, tmp_path, max_length=1024, gen=None, limit=None):
    """lm-eval's HF backend on `ref_model` (the reference) and llmlab's harness on each of `models` ((model, per-request bound)),
    the same catalogue tasks on the same local data (`local`: the session's lm-eval folders and TaskManager, conftest.py):
    lm-eval's output, and llmlab's results per model."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from llmlab.harness import LlmlabLM, evaluate_harness, local_datasets
    tasks_dir, data, task_manager = local
    with local_datasets(data):
        ref_out = simple_evaluate(model=HFLM(pretrained=ref_model, tokenizer=tokenizer, batch_size=8, max_length=max_length),
                                  tasks=tasks, task_manager=task_manager, gen_kwargs=gen, limit=limit, log_samples=True, verbosity='ERROR',
                                  bootstrap_iters=0)
    ours = {}
    for k, (model, tol) in enumerate(models):
        lm = LlmlabLM(model=model, tokenizer=tokenizer, batch_size=8, max_length=max_length)
        ours[k] = evaluate_harness(lm, tasks, run_dir=tmp_path / f'run_{k}', data_dir=data, gen_kwargs=gen, include_path=tasks_dir,
                                   limit=limit, bootstrap_iters=0)
    return ref_out, ours


def _same_scores(results, ref_out):
    "The same answers give lm-eval's accuracies and exact matches exactly, filters included; perplexities within float32 differences."
    for task, r in results.items():
        for k, v in r.scores.items():
            expected = ref_out['results'][task][k]
            if k.split(',')[0] in ('acc', 'acc_norm', 'exact_match'): assert v == expected, (task, k, v, expected)
            # observed 7e-8 relative (same object), 2e-6 (llmlab's model)
            else: assert v == pytest.approx(expected, rel=1e-5), (task, k, v, expected)


@pytest.mark.slow
def test_catalogue_tasks_match_lm_eval_item_by_item(hf_smol_short, smol_short, tokenizer, lm_eval_local, tmp_path):
    """lm-eval's catalogue definitions as shipped (an MMLU subject 5-shot from its dev split, through a local file that includes
    the catalogue's; HellaSwag with its process_docs; LAMBADA; WikiText rolling with its !function detokenizer; GSM8K-CoT's
    generations) on local data of the same shape: every log-likelihood, greedy flag and generated token equal to lm-eval's HF
    backend's, on the same model object and on llmlab's model of the same weights. SmolLM2's first layers (conftest.py): the prompts, requests, batches and windows are
    what is compared, and they do not depend on depth."""
    tasks = ['mmlu_abstract_algebra_5shot', 'hellaswag', 'lambada_openai', 'wikitext', 'gsm8k_cot']
    # a WikiText page of ~1,500 tokens spans two rolling windows of 1,024; GSM8K-CoT's prompts (~750 tokens) share their 8
    # examples, generated after one shared prefill through both of EvalModel's paths (llmlab's generate, transformers' own)
    # 4 documents a task (the files hold 6 to 10): enough for batches with padding; the rest would add only time
    ref_out, ours = _run_both(hf_smol_short, [(hf_smol_short, 1e-4), (smol_short, 1e-3)], tokenizer, tasks, lm_eval_local, tmp_path,
                              gen={'max_gen_toks': 32}, limit=4)
    ref = _responses(ref_out)
    ref_docs = {int(s['doc_id']): s['arguments'][0][0] for s in ref_out['samples']['wikitext']}
    assert {t: len(v) for t, v in ref.items()} == {'mmlu_abstract_algebra_5shot': 4, 'hellaswag': 4, 'lambada_openai': 4, 'wikitext': 2,
                                                  'gsm8k_cot': 3}
    assert ref_out['samples']['mmlu_abstract_algebra_5shot'][0]['arguments'][0][0].count('\nAnswer:') == 6    # 5 examples + the question
    for k, tol in ((0, 1e-4), (1, 1e-3)):
        got = {t: {it['id']: it for it in r.items} for t, r in ours[k].items()}
        for i, resps in ref['gsm8k_cot'].items():
            assert got['gsm8k_cot'][i]['raw'] == resps, (i, got['gsm8k_cot'][i]['raw'], resps)   # greedy generations, token for token
        for task in tasks[:-1]:
            for i, resps in ref[task].items():
                # observed on SmolLM2's first 4 layers: 3.1e-5 on lm-eval's own model object (llmlab's batches and left padding),
                # 4.6e-5 with llmlab's model (SDPA, another summation order); 5e-5 on all 30 layers
                # a WikiText document's log-likelihood is a float32 sum over ~650-1,500 tokens; lm-eval pads on the right to the batch's
                # longest window, llmlab on the left: the bound grows per 250 tokens (observed on the first 4 layers: 0 on the same
                # object, 4.9e-4 with llmlab's model on a bound of 5.9e-3; on 30 layers 1.2e-4 on 647 tokens, same object)
                n = len(tokenizer(ref_docs[i]).input_ids) if task == 'wikitext' else 0
                assert_close([_loglikelihood(r) for r in got[task][i]['raw']], [_loglikelihood(r) for r in resps],
                             atol=tol * max(1, n / 250), what=f'{task} document {i} log-likelihoods (model {k})')
                if task != 'wikitext':   # and the same greedy flags
                    assert [r[0][1] for r in got[task][i]['raw']] == [r[0][1] for r in resps], (task, i)
        _same_scores(ours[k], ref_out)


@pytest.mark.slow
def test_catalogue_generation_tasks_and_filters_match_lm_eval(hf_smol, smol, tokenizer, lm_eval_local, tmp_path):
    """GSM8K and GSM8K-CoT as shipped, with their regex filters, on the whole SmolLM2, which answers in their formats, so the
    filters have work: every greedy generation equal to lm-eval's HF backend's, token for token, and the filtered exact matches
    equal. (Generation after one shared prefill, GSM8K-CoT's 8 examples, is compared in the test above.)"""
    tasks = ['gsm8k', 'gsm8k_cot']   # every prompt fits 1,024 tokens (GSM8K-CoT's 8 examples: ~750)
    # one question each: SmolLM2 answers the first in each task's format (the others in the files add only time)
    ref_out, ours = _run_both(hf_smol, [(smol, 1e-3)], tokenizer, tasks, lm_eval_local, tmp_path, gen={'max_gen_toks': 64}, limit=1)
    ref = _responses(ref_out)
    assert {t: len(v) for t, v in ref.items()} == {'gsm8k': 1, 'gsm8k_cot': 1}
    assert '#### ' in ref['gsm8k'][0][0][0] and 'The answer is' in ref['gsm8k_cot'][0][0][0], ref
    got = {t: {it['id']: it for it in r.items} for t, r in ours[0].items()}
    for task in tasks:
        for i, resps in ref[task].items():
            assert got[task][i]['raw'] == resps, (task, i, got[task][i]['raw'], resps)   # greedy generations, token for token
    _same_scores(ours[0], ref_out)
    saved = json.loads((tmp_path / 'run_0' / 'results' / 'gsm8k.json').read_text())
    assert saved['primary_metric'] == 'exact_match,strict-match' and 'exact_match,flexible-extract' in saved['scores']


@pytest.mark.slow
def test_lm_eval_command_runs_llmlab_models(smol_short_dir, hf_smol_short, tokenizer, lm_eval_local, tmp_path):
    """`lm_eval --model llmlab` (found through llmlab's .pth hook) gives, item by item, what lm-eval's own HF backend gives on the
    same weights (a Hugging Face folder: SmolLM2's first layers, conftest.py), the backend `lm_eval --model hf` runs."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    tasks_dir, data, task_manager = lm_eval_local
    lm_eval = str(Path(sys.executable).with_name('lm_eval'))
    r = subprocess.run([lm_eval, '--model', 'llmlab', '--model_args', f'pretrained={smol_short_dir}', '--batch_size', '8', '--tasks',
                        'local_lambada', '--include_path', str(tasks_dir), '--output_path', str(tmp_path / 'ours'), '--log_samples'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    samples = next((tmp_path / 'ours').rglob('samples_local_lambada_*.jsonl')).read_text().splitlines()
    ours = {json.loads(s)['doc_id']: json.loads(s)['resps'][0][0] for s in samples}
    out = simple_evaluate(model=HFLM(pretrained=hf_smol_short, tokenizer=tokenizer, batch_size=8), tasks=['local_lambada'],
                          task_manager=task_manager, log_samples=True, verbosity='ERROR')
    ref = {int(s['doc_id']): s['resps'][0][0] for s in out['samples']['local_lambada']}
    assert 'llmlab (' in r.stdout and sorted(ours) == sorted(ref) == list(range(10))
    for i in ref:
        # llmlab's model against transformers' on the same weights: observed 1.5e-5 (first 4 layers), 1e-5 (30 layers)
        assert_close(float(ours[i][0]), float(ref[i][0]), atol=1e-3, what=f'document {i} log-likelihood')
        assert str(ours[i][1]) == str(ref[i][1]), i   # is-greedy (the command's samples file holds it as text)


@pytest.mark.slow
def test_llmlab_eval_runs_lm_eval_tasks_offline_with_clear_errors(tmp_path, smol_short_dir, lm_eval_local):
    """`llmlab eval` (the installed command) mixes built-in and lm-eval tasks in one run folder and prints each score as
    written there; a dataset it cannot find says where to put it."""
    tasks_dir, data, _ = lm_eval_local
    llmlab = str(Path(sys.executable).with_name('llmlab'))
    r = subprocess.run([llmlab, 'eval', '--model', str(smol_short_dir), '--tasks', 'arithmetic_mc,hellaswag,mmlu_abstract_algebra', '--data-dir', str(data), '--limit', '4',
                        '--run-dir', str(tmp_path / 'run'), '--bootstrap-iters', '50', '--quiet'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / 'run' / 'summary.json').read_text())
    assert sorted(summary) == ['arithmetic_mc', 'hellaswag', 'mmlu_abstract_algebra'], summary
    for task in summary:
        assert len((tmp_path / 'run' / 'items' / f'{task}.jsonl').read_text().splitlines()) == 4
        assert task in r.stdout
    assert f"{summary['arithmetic_mc']['scores']['acc']:10.4f}" in r.stdout                # the printed table is the run folder's
    hs = json.loads((tmp_path / 'run' / 'results' / 'hellaswag.json').read_text())
    assert hs['primary_metric'] == 'acc,none' and set(hs['scores']) == {'acc,none', 'acc_norm,none'}
    assert hs['config']['process_docs'] is not None and 'stderr_clt' in hs
    # the refusal, through the same entry point in this process (its catalogue index is the session's: conftest.py)
    from llmlab.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(['eval', '--model', str(smol_short_dir), '--tasks', 'arc_easy', '--include-path', str(tasks_dir), '--data-dir', str(data),
                     '--run-dir', str(tmp_path / 'run2'), '--quiet'])
    assert code == 2 and f'{data}/allenai/ai2_arc/ARC-Easy/<split>.jsonl' in err.getvalue() and len(err.getvalue().splitlines()) == 1, err.getvalue()
