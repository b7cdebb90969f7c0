"The evaluation pipeline end to end: lm-evaluation-harness agreement, HumanEval in the sandbox, resume after a kill."
import json, os, signal, subprocess, sys, textwrap, time
import pytest, torch
from llmlab.core import assert_close
from llmlab.eval import (EvalModel, builtin_tasks, evaluate_task, load_humaneval, data_loaders, Task)


@pytest.mark.slow
def test_loglikelihoods_match_lm_evaluation_harness(hf_smol_short, smol_short, tokenizer, lm_eval_local, tmp_path):
    """Per item, on the same transformers model object, llmlab's log-likelihoods equal HFLM's; accuracies and perplexities are
    identical. lm-eval reads the questions through its own task files (h_mc, h_ppl: conftest.py's `lm_eval_local`), llmlab
    through its own. On SmolLM2's first layers (conftest.py): the requests, batching and windows are what is compared."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    tasks_dir, _, task_manager = lm_eval_local
    data = tasks_dir.parent                      # mc.jsonl (40 MMLU dev questions), ppl.jsonl (3 pages of CPython's license)
    max_length = 128   # short windows, so the rolling perplexity crosses window boundaries
    ref = simple_evaluate(model=HFLM(pretrained=hf_smol_short, tokenizer=tokenizer, batch_size=8, max_length=max_length),
                          tasks=['h_mc', 'h_ppl'], task_manager=task_manager, log_samples=True)
    ref_mc = {int(s['doc_id']): [r[0] for r in s['filtered_resps']] for s in ref['samples']['h_mc']}
    ref_ppl = {int(s['doc_id']): s['filtered_resps'][0] for s in ref['samples']['h_ppl']}

    (tmp_path / 'mc.yaml').write_text(f'task: mc\nkind: multiple_choice\ndata: {data / "mc.jsonl"}\n')
    (tmp_path / 'ppl.yaml').write_text(f'task: ppl\nkind: perplexity\ndata: {data / "ppl.jsonl"}\n')
    # the same model object as lm-eval's: 1e-4 per item; llmlab's own model on the same weights (SDPA attention, another
    # summation order): 1e-3 per choice and 2e-2 per document (a sum over ~700 tokens)
    for model, tol, doc_tol in ((hf_smol_short, 1e-4, 1e-4), (smol_short, 1e-3, 2e-2)):
        lm = EvalModel(model, tokenizer, batch_size=8, max_length=max_length, progress=False)
        ours_mc = evaluate_task(lm, tmp_path / 'mc.yaml', bootstrap_iters=0, progress=False)
        ours_ppl = evaluate_task(lm, tmp_path / 'ppl.yaml', bootstrap_iters=0, progress=False)
        for it in ours_mc.items:
            # observed on SmolLM2's first 4 layers: at most 1.2e-5 (2.5e-5 with llmlab's model on all 30)
            assert_close(it['loglikelihoods'], ref_mc[it['id']], atol=tol, what=f"choice log-likelihoods, item {it['id']}")
        for it in ours_ppl.items:
            # observed on the first 4 layers: at most 5.5e-4, 0.03 of llmlab's model's bound (1.4e-4 on all 30)
            assert_close(it['scores']['loglikelihood'], ref_ppl[it['id']], atol=doc_tol, what=f"document log-likelihood, item {it['id']}")
        if model is hf_smol_short:
            r = ref['results']
            assert ours_mc.scores['acc'] == r['h_mc']['acc,none'] and ours_mc.scores['acc_norm'] == r['h_mc']['acc_norm,none']
            for k in ('word_perplexity', 'byte_perplexity', 'bits_per_byte'):
                # the same per-document log-likelihoods aggregated by the same formulas in float64: observed 0
                assert_close(ours_ppl.scores[k], r['h_ppl'][f'{k},none'], atol=1e-6, rtol=1e-6, what=k)


class Oracle:
    "An 'model' that answers HumanEval prompts from a table (canonical or deliberately wrong solutions)."
    def __init__(self, answers): self.answers = answers
    def generate_until(self, requests): return [self.answers[prompt] for prompt, _ in requests]


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail(tmp_path):
    problems = load_humaneval()
    assert len(problems) == 164
    canonical = Oracle({p['prompt']: p['canonical_solution'] for p in problems})
    r = evaluate_task(canonical, 'humaneval', tmp_path / 'canonical', bootstrap_iters=0, progress=False)
    assert r.scores['pass@1'] == 1.0, [it['statuses'] for it in r.items if it['statuses'] != ['passed']][:3]
    wrong = Oracle({p['prompt']: '    return None\n' for p in problems[:20]})
    r = evaluate_task(wrong, 'humaneval', tmp_path / 'wrong', limit=20, bootstrap_iters=0, progress=False)
    assert r.scores['pass@1'] == 0.0


SLOW_EVAL = textwrap.dedent('''
    import sys, time
    from llmlab.checkpoints import load_hf_dir, load_tokenizer
    from llmlab.eval import EvalModel, evaluate_task, builtin_tasks
    class Slow(EvalModel):
        def loglikelihood(self, reqs):
            time.sleep(0.2)     # the test has seconds, not milliseconds, to kill it before the end
            return super().loglikelihood(reqs)
    lm = Slow(load_hf_dir(sys.argv[1]), load_tokenizer('smollm2-135m-instruct'), progress=False)
    evaluate_task(lm, builtin_tasks['arithmetic_mc'], sys.argv[2], chunk_size=5, bootstrap_iters=0, progress=False)
''')


@pytest.mark.slow
def test_killed_evaluation_resumes_without_recomputing(tmp_path, tokenizer):
    from llmlab.checkpoints import save_hf_dir, load_hf_dir
    from llmlab.model import Llama, ModelConfig
    torch.manual_seed(0)
    tiny = Llama(ModelConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=512)).eval()
    save_hf_dir(tiny, tmp_path / 'tiny')
    run = tmp_path / 'run'
    p = subprocess.Popen([sys.executable, '-c', SLOW_EVAL, str(tmp_path / 'tiny'), str(run)])
    items = run / 'items' / 'arithmetic_mc.jsonl'
    deadline = time.time() + 120
    while time.time() < deadline and (not items.exists() or len(items.read_text().splitlines()) < 40): time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    finished = len(items.read_text().splitlines())
    assert 40 <= finished < 200, finished

    lm = EvalModel(load_hf_dir(tmp_path / 'tiny'), tokenizer, progress=False)
    asked = []
    real = lm.loglikelihood
    lm.loglikelihood = lambda reqs: asked.extend(reqs) or real(reqs)
    resumed = evaluate_task(lm, builtin_tasks['arithmetic_mc'], run, bootstrap_iters=0, progress=False)
    assert len(asked) == 4 * (200 - finished)           # only the unfinished items, four choices each
    fresh = evaluate_task(EvalModel(tiny, tokenizer, progress=False), builtin_tasks['arithmetic_mc'], tmp_path / 'fresh',
                          bootstrap_iters=0, progress=False)
    assert resumed.scores == fresh.scores
    for a, b in zip(resumed.items, fresh.items):
        assert a['prediction'] == b['prediction']
        # the resumed run batches the remaining items differently (other padding, other float32 sums): observed 3.8e-6 on
        # log-likelihoods of magnitude up to ~30
        assert_close(a['loglikelihoods'], b['loglikelihoods'], atol=1e-5, rtol=1e-5, what='resumed vs fresh log-likelihoods')


def test_standard_format_loaders(tmp_path):
    (tmp_path / 'mmlu.csv').write_text('What is 2+2?,3,4,5,6,B\n"Capital of France, the city?",Rome,Paris,Oslo,Bern,B\n')
    docs = data_loaders['mmlu_csv'](tmp_path / 'mmlu.csv')
    assert docs[1]['target'] == 1 and docs[1]['text'].startswith('Capital of France, the city?\nA. Rome\nB. Paris')
    (tmp_path / 'arc.jsonl').write_text(json.dumps({'question': {'stem': 'Which is a gas?', 'choices': [
        {'text': 'ice', 'label': 'A'}, {'text': 'steam', 'label': 'B'}]}, 'answerKey': 'B'}) + '\n')
    assert data_loaders['arc_jsonl'](tmp_path / 'arc.jsonl') == [{'text': 'Question: Which is a gas?\nAnswer:', 'choices': ['ice', 'steam'], 'target': 1}]
    (tmp_path / 'hs.jsonl').write_text(json.dumps({'ctx': 'He opens the door', 'endings': ['and leaves.', 'and sings.'], 'label': '0'}) + '\n')
    assert data_loaders['hellaswag_jsonl'](tmp_path / 'hs.jsonl')[0]['target'] == 0
    (tmp_path / 'boolq.jsonl').write_text(json.dumps({'passage': 'Cats purr.', 'question': 'do cats purr', 'label': True}) + '\n')
    assert data_loaders['boolq_jsonl'](tmp_path / 'boolq.jsonl')[0]['target'] == 1
    (tmp_path / 'cb.jsonl').write_text(json.dumps({'premise': 'It rained.', 'hypothesis': 'The ground is wet', 'label': 'neutral'}) + '\n')
    assert data_loaders['cb_jsonl'](tmp_path / 'cb.jsonl')[0]['target'] == 2
    (tmp_path / 'copa.jsonl').write_text(json.dumps({'premise': 'The man broke his toe.', 'choice1': 'He dropped a hammer on his foot.',
                                                     'choice2': 'He got a hole in his sock.', 'question': 'cause', 'label': 0}) + '\n')
    copa = data_loaders['copa_jsonl'](tmp_path / 'copa.jsonl')[0]
    assert copa['text'] == 'The man broke his toe because' and copa['choices'][0] == 'he dropped a hammer on his foot.'
    squad = {'data': [{'paragraphs': [{'context': 'Paris is in France.', 'qas': [
        {'id': 'a', 'question': 'Where is Paris?', 'answers': [{'text': 'France', 'answer_start': 12}], 'is_impossible': False},
        {'id': 'b', 'question': 'Where is Rome?', 'answers': [], 'is_impossible': True}]}]}]}
    (tmp_path / 'squad.json').write_text(json.dumps(squad))
    sq = data_loaders['squad_v2_json'](tmp_path / 'squad.json')
    assert [(d['id'], d['answers']) for d in sq] == [('a', ['France']), ('b', [])]
    # a task file that points a loader at local data
    (tmp_path / 'arc.yaml').write_text('task: arc_local\nkind: multiple_choice\nloader: arc_jsonl\ndata: arc.jsonl\n')
    from llmlab.eval import load_task
    t = Task(load_task(tmp_path / 'arc.yaml'))
    assert t.choices(t.docs[0]) == ['ice', 'steam'] and t.target(t.docs[0]) == 1


def test_eval_command_stops_at_an_unknown_task_before_loading_the_model(tmp_path, lm_eval_local):
    """An unknown task stops `llmlab eval` before the model loads (the model named does not exist: an error about it would
    say the model was loaded first), in one line that names the task lists. Through the command's entry point in this
    process, with the session's index of lm-eval's catalogue (conftest.py); `llmlab eval` as installed writes its run folder
    in tests/test_harness.py."""
    import contextlib, io
    from llmlab.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(['eval', '--tasks', 'arithmetic_mc,no_such_task', '--model', str(tmp_path / 'no-such-model'),
                     '--include-path', str(lm_eval_local[0]), '--run-dir', str(tmp_path / 'b'), '--quiet'])
    msg = err.getvalue()
    assert code == 2 and "'no_such_task' is not an lm-eval task, group or tag" in msg and 'arithmetic_mc' in msg, msg
    assert len(msg.splitlines()) == 1 and 'Traceback' not in msg and not (tmp_path / 'b').exists(), msg
