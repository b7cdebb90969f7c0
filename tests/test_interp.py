"llmlab's interpretability tools on SmolLM2 against TransformerLens (TransformerBridge on transformers' model, same weights)."
import sys
from pathlib import Path
import pytest, torch
from llmlab.core import assert_close
from llmlab.interp import (bridge, induction_scores, logit_diff_metric, logit_lens, patch_residual, run_with_cache,
                           direct_logit_attribution)

PROMPTS = ["The capital of France is", "When Mary and John went to the store, John gave a drink to",
           "def add(a, b):\n    return a +", "Water boils at a temperature of"]
IOI_CLEAN = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
sys.path.insert(0, str(Path(__file__).parent.parent / 'benchmarks'))     # benchmarks/peers.py: nnsight, the second peer


def right_padded(tokenizer, texts):
    "Right padding: causal attention never lets a real token see the padding, so no mask is needed on either side."
    side, tokenizer.padding_side = tokenizer.padding_side, 'right'
    enc = tokenizer(texts, return_tensors='pt', padding=True)
    tokenizer.padding_side = side
    return enc.input_ids, enc.attention_mask.bool()


def test_cache_equals_transformer_lens_at_every_hook_point(smol, hf_smol, tokenizer):
    ids, real = right_padded(tokenizer, PROMPTS)
    logits, ours = run_with_cache(smol, ids)
    ref_logits, ref = run_with_cache(hf_smol, ids)       # TransformerBridge under the same API
    common = set(ours) & set(ref)
    assert common == set(ours), f'hook points TransformerLens lacks: {sorted(set(ours) - set(ref))[:5]}'
    layers = {int(k.split('.')[1]) for k in common if k.startswith('blocks.')}
    assert layers == set(range(30)) and len(common) == 603
    for name in sorted(common):
        a, b = ours[name], ref[name]
        assert a.shape == b.shape, name
        if a.ndim == 4 and name.endswith(('hook_pattern', 'hook_attn_scores')):
            keep = (real[:, None, :, None] & real[:, None, None, :]).expand_as(a)
        else: keep = real
        scale = b[keep].abs().max().item()
        # float32 tolerance 1e-4, relative to the point's magnitude where it exceeds 1: SmolLM2's residual stream
        # reaches ~1.4e4 in layers 28-29, where adjacent float32 values are 1e-3 apart
        assert_close(a[keep], b[keep], atol=1e-4 * max(1.0, scale), what=f'{name} (scale {scale:.3g})')
    # llmlab's model vs transformers' under TransformerLens's bridge: float32 in another order (observed 5.5e-5; see test_smollm2)
    assert_close(logits[real], ref_logits[real], atol=3e-4, rtol=3e-5, what='run_with_cache logits vs TransformerBridge')


@torch.no_grad()
def test_bridging_leaves_the_transformers_model_working(hf_smol, tokenizer):
    ids = tokenizer("The capital of France is", return_tensors='pt').input_ids
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=[], pad_token_id=2)
    before = hf_smol.generate(ids, **kw)
    run_with_cache(hf_smol, ids, names_filter='hook_embed')
    assert torch.equal(hf_smol.generate(ids, **kw), before)


def test_induction_heads_stand_out_and_agree_across_backends(smol, hf_smol):
    ours = induction_scores(smol, seq_len=40, batch=4)
    ref = induction_scores(hf_smol, seq_len=40, batch=4)
    # attention probabilities in [0, 1] averaged over heads' diagonals: observed 0 (same weights, same order)
    assert_close(ours, ref, atol=1e-4, what='induction scores, llmlab vs transformers model')
    top = ours.flatten().topk(5).values
    median = ours.flatten().median()
    assert top.min() > 0.5 and median < 0.02, (top, median)   # a handful of heads far above the typical head


def test_logit_lens_finds_paris_at_the_last_layer(smol, hf_smol, tokenizer):
    ids = tokenizer("The capital of France is", return_tensors='pt').input_ids
    paris = tokenizer(" Paris", add_special_tokens=False).input_ids[0]
    lens = logit_lens(smol, ids)
    ranks = lens.rank(paris)
    assert ranks[-1] == 1 and ranks[:20].min() > 100      # absent early, first at the end
    with torch.no_grad(): final = smol(ids)[0, -1].log_softmax(-1)
    # the lens at the last layer is the model's own final norm and head, via another path: observed 2.1e-5 on log-probs ~ -30
    assert_close(lens.log_probs[-1], final, atol=1e-4, rtol=1e-5, what='logit lens at the last layer vs the model')
    # every layer's lens, llmlab vs transformers' model: observed 5.3e-5; log-probs reach -60 in early layers
    assert_close(logit_lens(hf_smol, ids).log_probs, lens.log_probs, atol=1e-3, what='logit lens, transformers vs llmlab')


def test_direct_logit_attribution_adds_up_on_smollm2(smol, tokenizer):
    ids = tokenizer(IOI_CLEAN, return_tensors='pt').input_ids
    mary, john = (tokenizer(t, add_special_tokens=False).input_ids[0] for t in (" Mary", " John"))
    attr = direct_logit_attribution(smol, ids, (mary, john))
    with torch.no_grad(): out = smol(ids)[0, -1]
    # the attribution sums 30 x (heads + MLP) float32 parts of a logit difference of ~2: observed 9.5e-7
    assert_close(attr.total.item(), (out[mary] - out[john]).item(), atol=1e-4, what='DLA total vs logit difference')


@pytest.mark.slow
def test_residual_patching_equals_transformer_lens_patching_utility(smol, smol_short, hf_smol_short, tokenizer):
    """transformer_lens.patching.get_act_patch_resid_pre on the bridge (one run per layer and position) against llmlab's batched
    sweep, on SmolLM2's first layers (the peer's one run per layer and position is what takes time; every layer runs the same
    code); then the sweep on the whole model finds the indirect-object circuit: the names first, the last position late."""
    import transformer_lens.patching as tl_patching
    SHORT_LAYERS = smol_short.config.num_hidden_layers
    clean, corrupt = (tokenizer(t, return_tensors='pt').input_ids for t in (IOI_CLEAN, IOI_CORRUPT))
    assert clean.shape == corrupt.shape
    mary, john = (tokenizer(t, add_special_tokens=False).input_ids[0] for t in (" Mary", " John"))
    metric = logit_diff_metric(mary, john)
    b = bridge(hf_smol_short)
    with torch.no_grad():
        _, clean_cache = b.run_with_cache(clean)
        reference = tl_patching.get_act_patch_resid_pre(b, corrupt, clean_cache, lambda logits: metric(logits).mean())
    ours = patch_residual(smol_short, clean, corrupt, metric)
    assert ours.shape == reference.shape == (SHORT_LAYERS, clean.shape[1])
    # llmlab's model vs transformers' under the bridge, each patched run a float32 forward: observed 3.3e-6 on values ~1
    # (first 4 layers; 1.8e-5 on all 30)
    assert_close(ours, reference, atol=1e-4, what='patch_residual vs get_act_patch_resid_pre')
    # the second peer, nnsight, on the first and last layers (its patched runs batched as one invoke per position)
    peers = pytest.importorskip('peers', reason='benchmarks/peers.py')
    lm = peers.language_model(hf_smol_short, tokenizer)
    theirs = peers.nnsight_patch_resid_pre(lm, clean, corrupt, metric, layers=[0, SHORT_LAYERS - 1])
    # transformers' eager forward under nnsight vs llmlab's batched sweep: observed 1.9e-6 (first 4 layers;
    # 5.7e-6 on values up to 6.3 on all 30)
    assert_close(ours[[0, SHORT_LAYERS - 1]], theirs[[0, SHORT_LAYERS - 1]], atol=1e-4, what='patch_residual vs nnsight patching')
    # the whole model: the answer is where the names differ in the early layers, and moves to the last position late
    whole = patch_residual(smol, clean, corrupt, metric)
    s2 = (clean[0] != corrupt[0]).nonzero().item()
    assert whole.shape == (30, clean.shape[1]) and whole[0].argmax() == s2 and whole[-1].argmax() == clean.shape[1] - 1


def test_cache_equals_nnsight_at_every_module_boundary(smol, hf_smol, tokenizer):
    "nnsight reads module inputs and outputs; every llmlab hook point that is one matches it within 1e-4 of its scale."
    peers = pytest.importorskip('peers', reason='benchmarks/peers.py')
    ids, _ = right_padded(tokenizer, PROMPTS[:2])
    theirs = peers.nnsight_cache(peers.language_model(hf_smol, tokenizer), ids)
    _, ours = run_with_cache(smol, ids, names_filter=list(theirs))
    assert sorted(ours) == sorted(theirs) and len(theirs) == 30 * len(peers.BLOCK_POINTS)
    for name, ref in theirs.items():
        # two float32 implementations of the same model: observed at most 3.2e-6 of each activation's largest magnitude
        assert_close(ours[name], ref, atol=1e-4 * ref.abs().max().item(), what=f'{name} vs nnsight')
