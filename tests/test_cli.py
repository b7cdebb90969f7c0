"The `llmlab` command as a user runs it: installed entry point, separate process."
import subprocess, sys
from pathlib import Path
import pytest

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


@pytest.mark.slow
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


def test_train_config_in_sections_reads_as_its_flat_form():
    "The example config writes `train` in sections; the same settings flat (the older form) give the same TrainConfig."
    from llmlab.core import load_config_file
    from llmlab.train import TrainConfig
    d = load_config_file(Path(__file__).parents[1] / 'benchmarks' / 'configs' / 'stdlib_10m.yaml')['train']
    flat = {'run_dir': 'runs/stdlib_10m', 'max_steps': 2000, 'batch_size': 16, 'optimizer': 'adamw', 'lr': 2e-3, 'schedule': 'wsd',
            'warmup_steps': 30, 'decay_fraction': 0.2, 'eval_every': 50, 'eval_batches': 16, 'save_every': 200, 'log_every': 10}
    assert TrainConfig.from_dict(d, prefix='train') == TrainConfig.from_dict(flat, prefix='train')


def test_train_with_a_setting_in_the_wrong_section_says_where_it_belongs(tmp_path):
    cfg = tmp_path / 'run.yaml'
    cfg.write_text("data: {corpus: demo}\ntrain:\n  optimizer: {name: adamw, warmup_steps: 10}\n")
    r = run('train', str(cfg), '--run-dir', str(tmp_path / 'run'))
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert 'train.optimizer.warmup_steps is not a setting of the optimizer section: it belongs in train.schedule' in r.stderr
    assert not (tmp_path / 'run').exists()   # nothing was written


def test_bad_numbers_stop_before_any_work_in_one_line():
    "What a new user tried: a zero shard count, a negative token budget. Exit 2, one line naming the argument and its range."
    for args, expected in ((['plan', '--model', 'llama3-70b', '--fsdp', '0'], 'argument --fsdp: 0 is out of range: an integer from 1 to'),
                           (['generate', 'hi', '--max-new-tokens', '-5'], 'argument --max-new-tokens: -5 is out of range: an integer from 1 to')):
        r = run(*args, timeout=120)
        assert r.returncode == 2 and 'Traceback' not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
        assert expected in r.stderr, r.stderr


def test_export_smollm2_to_gguf_q8_0_reads_back_in_llmlab_and_transformers(smol, tokenizer, tmp_path):
    """`llmlab export smollm2-135m-instruct OUT --format gguf --outtype q8_0`, the whole model: llmlab's reader and transformers'
    GGUF loader give the same logits from the file (the same dequantized weights), close to the float32 model's; the file's
    tokenizer encodes as the original does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from llmlab.checkpoints import load_gguf
    from llmlab.core import assert_close
    out = tmp_path / 'smol-q8_0.gguf'
    r = run('export', 'smollm2-135m-instruct', str(out), '--format', 'gguf', '--outtype', 'q8_0', '--quiet')
    assert r.returncode == 0, r.stderr
    ids = tokenizer('The capital of France is Paris. The capital of Germany is', return_tensors='pt').input_ids
    with torch.no_grad():
        ours, exact = load_gguf(out)(ids), smol(ids)
        theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32)(ids).logits
    # the same dequantized weights in float32 through 30 layers, two implementations of the same operations: observed 0
    assert_close(theirs, ours, atol=1e-4, what="transformers' GGUF loader against llmlab's")
    # q8_0 against float32 (SmolLM2's weights here came from a Q4_1 file; q8_0 rounds them again, 30 layers deep): observed 0.87
    # on logits of magnitude up to 28; the next token is the same
    assert_close(ours, exact, atol=2.0, what='q8_0 logits against float32')
    assert ours[0, -1].argmax() == exact[0, -1].argmax()
    assert AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)('Hello, world!').input_ids == tokenizer('Hello, world!').input_ids
