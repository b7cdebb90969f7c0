"""nnsight as a peer: the hook points of llmlab's cache that are module boundaries in transformers' Llama, read and patched
through nnsight's tracing. Used by tests/test_interp.py (values) and benchmarks/bench_interp.py (speed).

nnsight runs the body of a `with model.trace(...)` block from its source file, so these functions live in a file; inside
a trace, module inputs and outputs must be requested in the order the forward pass reaches them, and results leave
the trace through containers made before it.
"""
import torch

# llmlab hook name within block l -> how nnsight reaches it in transformers' LlamaDecoderLayer, in execution order
BLOCK_POINTS = ('hook_resid_pre', 'attn.hook_q', 'attn.hook_k', 'attn.hook_v', 'hook_attn_out', 'mlp.hook_pre', 'mlp.hook_pre_linear',
                'mlp.hook_post', 'hook_mlp_out', 'hook_resid_post')


def language_model(hf_model, tokenizer):
    from nnsight import LanguageModel
    return LanguageModel(hf_model, tokenizer=tokenizer)


def _first(x): return x[0] if isinstance(x, tuple) else x


def nnsight_cache(lm, input_ids, points=BLOCK_POINTS):
    "llmlab-named activations of every block at `points` (a subset of BLOCK_POINTS), read through nnsight: {name: tensor}."
    cfg = lm.config
    H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    wanted = [p for p in BLOCK_POINTS if p in set(points)]
    saved = {}
    with torch.no_grad(), lm.trace(input_ids):
        for l, layer in enumerate(lm.model.layers):
            for p in wanted:
                name = f'blocks.{l}.{p}'
                if p == 'hook_resid_pre': saved[name] = layer.input.save()
                elif p == 'attn.hook_q': saved[name] = layer.self_attn.q_proj.output.save()
                elif p == 'attn.hook_k': saved[name] = layer.self_attn.k_proj.output.save()
                elif p == 'attn.hook_v': saved[name] = layer.self_attn.v_proj.output.save()
                elif p == 'hook_attn_out': saved[name] = layer.self_attn.output[0].save()
                elif p == 'mlp.hook_pre': saved[name] = layer.mlp.gate_proj.output.save()
                elif p == 'mlp.hook_pre_linear': saved[name] = layer.mlp.up_proj.output.save()
                elif p == 'mlp.hook_post': saved[name] = layer.mlp.down_proj.input.save()
                elif p == 'hook_mlp_out': saved[name] = layer.mlp.output.save()
                elif p == 'hook_resid_post': saved[name] = layer.output.save()
    out = {}
    for name, v in saved.items():
        v = _first(v)
        heads = {'attn.hook_q': H, 'attn.hook_k': Hkv, 'attn.hook_v': Hkv}.get(name.split('.', 2)[2])
        out[name] = v.view(*v.shape[:2], heads, D) if heads else v
    return out


def nnsight_patch_resid_pre(lm, clean, corrupted, metric, layers=None):
    """Residual-stream patching through nnsight, the way its documentation batches it: one trace per layer holding one
    invoke per position; each invoke writes the clean residual stream entering that layer at its position. `(layers, positions)`
    (only the rows of `layers` filled when given)."""
    L, T = lm.config.num_hidden_layers, clean.shape[1]
    clean_resid = []                       # filled inside the trace: names first bound there do not reach this function
    with torch.no_grad(), lm.trace(clean):
        for layer in lm.model.layers: clean_resid.append(layer.input.save())
    result = torch.zeros(L, T)
    for l in (range(L) if layers is None else layers):
        values = []
        with torch.no_grad(), lm.trace() as tracer:
            for p in range(T):
                with tracer.invoke(corrupted):
                    lm.model.layers[l].input[:, p] = clean_resid[l][:, p]
                    values.append(metric(lm.output.logits).mean().save())
        result[l] = torch.stack([torch.as_tensor(v) for v in values])
    return result
