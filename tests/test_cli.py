"The `llmlab` command as a user runs it: installed entry point, separate process."
import os, subprocess, sys
from pathlib import Path

LLMLAB = str(Path(sys.executable).with_name('llmlab'))


def run(*args, timeout=300):
    return subprocess.run([LLMLAB, *args], capture_output=True, text=True, timeout=timeout)


def test_generate_answers_a_chat_prompt():
    r = run('generate', 'What is the capital of France?', '--max-new-tokens', '12', '--quiet')
    assert r.returncode == 0, r.stderr
    assert 'Paris' in r.stdout


def test_bad_model_name_is_one_clear_line_and_exit_status_2():
    r = run('generate', 'hi', '--model', 'smollm2-135m')
    assert r.returncode == 2
    assert 'Traceback' not in r.stderr
    assert "UnknownNameError: 'smollm2-135m' is neither a known model name" in r.stderr
    assert 'smollm2-135m-instruct' in r.stderr  # names the fix


def test_quickstart_writes_its_run_folder(tmp_path):
    import json
    r = run('quickstart', '--max-new-tokens', '8', '--run-dir', str(tmp_path / 'qs'), '--train-minutes', '0.05')
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / 'qs' / 'summary.json').read_text())
    run_info = json.loads((tmp_path / 'qs' / 'run.json').read_text())
    assert f"{summary['perplexity']:.2f}" in r.stdout
    assert run_info['kind'] == 'quickstart' and run_info['config']['max_new_tokens'] == 8
    train = summary['train']                                   # step 4: a small model trained on the stdlib, own tokenizer
    assert train['step'] >= 1 and 1e6 < train['parameters'] < 10e6 and 0 < train['val_loss'] < 20
    assert (tmp_path / 'qs' / 'train' / 'loss.png').exists() and f"validation loss {train['val_loss']:.3f}" in r.stdout
    from transformers import AutoTokenizer
    from llmlab.cli import QUICKSTART_TRAIN
    test_tok = AutoTokenizer.from_pretrained(train['tokenizer'])
    assert len(test_tok) == QUICKSTART_TRAIN['data']['train_tokenizer']
    assert 0 < train['val_bits_per_byte'] < 8 and f"{train['val_bits_per_byte']:.2f} bits per byte" in r.stdout
    assert train['sample'] and train['sample_prompt'].splitlines()[0] in r.stdout   # the trained model wrote something
