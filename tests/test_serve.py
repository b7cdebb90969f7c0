"llmlab serve with real clients: lm-eval's local-completions on a catalogue MMLU task against llmlab's own harness, and the CLI's server finishing a stream on SIGTERM."
import json, signal, socket, subprocess, sys, time
import httpx, pytest, torch
from llmlab.core import assert_close


def test_lm_eval_local_completions_scores_mmlu_as_llmlab_does(smol_short, tokenizer, lm_eval_local, tmp_path):
    """lm-eval's `local-completions` with `tokenizer_backend=remote`, as a lab scores a served model, on lm-eval's catalogue MMLU
    subject (5-shot, local data): every choice's log-likelihood and greedy flag equal llmlab's harness on the same model object
    (what `llmlab eval` computes), and so do the accuracies."""
    from lm_eval import simple_evaluate
    from llmlab.engine import LLMEngine
    from llmlab.harness import LlmlabLM, evaluate_harness, local_datasets
    from llmlab.serve import OpenAIServer, ServerThread
    tasks_dir, data, task_manager = lm_eval_local
    task = 'mmlu_abstract_algebra_5shot'
    engine = LLMEngine(smol_short, tokenizer, max_model_len=2048, max_num_seqs=8, kv_cache_bytes=2**27)
    with ServerThread(OpenAIServer(engine, 'smol').app) as url, local_datasets(data):
        args = {'base_url': f'{url}/v1/completions', 'model': 'smol', 'tokenizer_backend': 'remote', 'num_concurrent': 4, 'max_retries': 1,
                'max_length': 2048}
        served = simple_evaluate(model='local-completions', model_args=args, tasks=[task], task_manager=task_manager, limit=4,
                                 log_samples=True, verbosity='ERROR', bootstrap_iters=0)
    ours = evaluate_harness(LlmlabLM(model=smol_short, tokenizer=tokenizer, batch_size=8, max_length=2048), [task], run_dir=tmp_path / 'run',
                            data_dir=data, include_path=tasks_dir, limit=4, bootstrap_iters=0)[task]
    got = {it['id']: it['raw'] for it in ours.items}
    samples = served['samples'][task]
    assert len(samples) == 4 and all(s['arguments'][0][0].count('\nAnswer:') == 6 for s in samples)   # 5 examples + the question
    for s in samples:
        ref = got[int(s['doc_id'])]
        # float32 on SmolLM2's first 4 layers, ~700-token prompts, the engine's paged batch against EvalModel's padded one: observed 6.7e-6
        assert_close([r[0][0] for r in s['resps']], [r[0][0] for r in ref], atol=1e-4, what=f"document {s['doc_id']} log-likelihoods")
        assert [r[0][1] for r in s['resps']] == [r[0][1] for r in ref]   # lm-eval's responses: [(log-likelihood, greedy)] per choice
    assert served['results'][task]['acc,none'] == ours.scores['acc,none']


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def test_serve_cli_finishes_the_stream_in_flight_on_sigterm(tmp_path):
    """`llmlab serve DIR` as a process: after SIGTERM it takes no new connections, finishes the stream it is sending (all its
    tokens, `finish_reason` and `[DONE]`), then exits 0."""
    from llmlab.checkpoints import save_hf_dir
    from llmlab.data import demo_corpus, train_tokenizer
    from llmlab.model import Llama, ModelConfig
    tok = train_tokenizer(demo_corpus(max_docs=20), vocab_size=300)
    torch.manual_seed(0)
    save_hf_dir(Llama(ModelConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  max_position_embeddings=512)), tmp_path / 'tiny', tokenizer=tok)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, '-m', 'llmlab.cli', 'serve', str(tmp_path / 'tiny'), '--port', str(port), '--api-key', 'k',
                             '--kv-cache-gib', '0.01'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, headers = f'http://127.0.0.1:{port}', {'Authorization': 'Bearer k'}
    try:
        for _ in range(600):
            try:
                if httpx.get(f'{url}/health').status_code == 200: break
            except httpx.TransportError: pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        events = []
        body = {'prompt': 'def', 'max_tokens': 300, 'ignore_eos': True, 'stream': True, 'stream_options': {'include_usage': True}}
        with httpx.stream('POST', f'{url}/v1/completions', json=body, headers=headers, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith('data: '): events.append(line[6:])
                if len(events) == 2: proc.send_signal(signal.SIGTERM)
        assert events[-1] == '[DONE]', events[-3:]
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[-1]['usage']['completion_tokens'] == 300 and chunks[-2]['choices'][0]['finish_reason'] == 'length'
        assert proc.wait(timeout=60) == 0
        with pytest.raises(httpx.TransportError): httpx.get(f'{url}/health')
    finally:
        if proc.poll() is None: proc.kill()
        proc.wait()
