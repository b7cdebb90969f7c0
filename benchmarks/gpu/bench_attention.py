"""The one prepared script for a lent GPU (H100/H200): correctness first, then speed and memory.

1. Correctness on the GPU: the Triton flash attention (forward and backward, causal and not, GQA, dim 64 and 128,
   fp32/fp16/bf16, a padding mask, packed documents, each shipped config) against float64 on fresh random inputs with
   poisoned outputs; the fused kernels (RMSNorm, RoPE, SwiGLU, linear cross-entropy) likewise. Any failure stops the
   script before timing.
2. Speed at the FlashAttention-3 paper's shapes: batch x seqlen = 16k tokens, seqlen 512..16k, heads x dim = 2048,
   dim 64 and 128, causal and not, bf16. Forward and forward+backward with triton.testing.do_bench (median), for
   llmlab's Triton kernel, PyTorch SDPA's flash backend (FlashAttention-2), its cuDNN backend and FlexAttention.
   TFLOP/s count 4 * B * H * T^2 * D for the forward (half with causal masking) and 2.5x that for the backward.
3. Memory of the fused linear cross-entropy against the plain loss at a 49,152-token vocabulary (peak allocated).

Prints a table last and writes JSON to $OUT (or benchmarks/results/) as bench_gpu_attention.json. Budget: under 6
minutes; the timing loop stops early (and says so) when it runs out of time.

    PYTHONPATH=. python benchmarks/gpu/bench_attention.py [--quick]
"""
import argparse, json, math, os, platform, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

START = time.time()
BUDGET_S = 330


def log(*a): print(f'[{time.time() - START:6.1f}s]', *a, flush=True)


def rel_err(a, b): return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def reference(q, k, v, causal, mask=None):
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = q.double() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    Tq, Tk = q.shape[2], k.shape[2]
    allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
    if causal: allowed = torch.arange(Tk, device=q.device)[None] <= torch.arange(Tq, device=q.device)[:, None] + (Tk - Tq)
    allowed = allowed[None, None] if mask is None else allowed & mask
    return (s.masked_fill(~allowed, float('-inf')).softmax(-1).nan_to_num(0) @ v)


def check_correctness(K):
    "Every check prints its relative error; the limits follow METHOD.md (fp32 via tf32 dots ~3e-4, bf16 ~1e-2)."
    limits = {torch.float32: 2e-3, torch.float16: 5e-3, torch.bfloat16: 2e-2}
    results, failures = [], 0
    dev = 'cuda'
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for D in (64, 128):
            for causal in (True, False):
                B, H, KVH, T = 2, 8, 2, 333                  # ragged length, GQA 4:1
                q, k, v = (torch.randn(B, n, T, D, device=dev, dtype=dtype, requires_grad=True) for n in (H, KVH, KVH))
                do = torch.randn(B, H, T, D, device=dev, dtype=dtype)
                out = K.flash_attention(q, k, v, causal=causal)
                ref = reference(q, k, v, causal)
                grads = torch.autograd.grad(out, (q, k, v), do)
                ref_grads = torch.autograd.grad(ref, (q, k, v), do.double())
                errs = [rel_err(out, ref)] + [rel_err(a, b) for a, b in zip(grads, ref_grads)]
                ok = all(e < limits[dtype] for e in errs) and not any(torch.isnan(t).any() for t in (out, *grads))
                failures += not ok
                results.append({'check': 'attention', 'dtype': str(dtype), 'D': D, 'causal': causal, 'rel_err': errs, 'ok': ok})
    # each shipped config, poisoned outputs, bf16
    q, k, v = (torch.randn(1, n, 1000, 128, device=dev, dtype=torch.bfloat16) for n in (8, 2, 2))
    ref = reference(q, k, v, True)
    for cfg in K.FWD_CONFIGS:
        o = torch.full_like(q, float('nan')); lse = torch.full((1, 8, 1000), float('nan'), device=dev)
        K.attention_forward(q, k, v, config=cfg, out=(o, lse))
        e = rel_err(o, ref); ok = e < 2e-2 and not torch.isnan(o).any() and not torch.isnan(lse).any()
        failures += not ok
        results.append({'check': f'fwd config {cfg}', 'rel_err': e, 'ok': ok})
    # padding mask and packed documents, bf16
    mask = torch.ones(2, 1, 1, 300, dtype=torch.bool, device=dev); mask[0, ..., :50] = False
    q, k, v = (torch.randn(2, n, 300, 64, device=dev, dtype=torch.bfloat16) for n in (4, 4, 4))
    e = rel_err(K.flash_attention(q, k, v, causal=False, mask=mask), reference(q, k, v, False, mask)); failures += e > 2e-2
    results.append({'check': 'padding mask', 'rel_err': e, 'ok': e < 2e-2})
    docs = torch.tensor([0] * 100 + [1] * 120 + [2] * 80, device=dev)[None].expand(2, -1)
    e = rel_err(K.flash_attention(q, k, v, doc_ids=docs), reference(q, k, v, True, docs[:, None, :, None] == docs[:, None, None, :]))
    failures += e > 2e-2
    results.append({'check': 'packed documents', 'rel_err': e, 'ok': e < 2e-2})
    # fused kernels in bf16 against float64
    x = torch.randn(4096, 2048, device=dev, dtype=torch.bfloat16); w = 1 + 0.1 * torch.randn(2048, device=dev, dtype=torch.bfloat16)
    ref = w.double() * x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5)
    e = rel_err(K.rms_norm(x, w), ref); failures += e > 1e-2
    results.append({'check': 'rmsnorm', 'rel_err': e, 'ok': e < 1e-2})
    g, u = torch.randn(2, 2, 4096, 8192, device=dev, dtype=torch.bfloat16)
    e = rel_err(K.swiglu(g, u), F.silu(g.double()) * u.double()); failures += e > 1e-2
    results.append({'check': 'swiglu', 'rel_err': e, 'ok': e < 1e-2})
    h = torch.randn(4096, 576, device=dev, requires_grad=True); W = (0.02 * torch.randn(49152, 576, device=dev)).requires_grad_()
    y = torch.randint(0, 49152, (4096,), device=dev)
    loss = K.fused_linear_cross_entropy(h, W, y)
    ref = F.cross_entropy(h.double() @ W.double().t(), y)
    e = abs(float(loss) - float(ref)) / float(ref); failures += e > 1e-3
    results.append({'check': 'fused linear cross-entropy (fp32, tf32 matmuls)', 'rel_err': e, 'ok': e < 1e-3})
    for r in results: log(json.dumps(r))
    return results, failures


def time_attention(K, quick):
    from triton.testing import do_bench
    from torch.nn.attention import SDPBackend, sdpa_kernel
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention)
    except Exception: flex = None
    rows, dev = [], 'cuda'
    seqlens = (512, 2048, 8192) if quick else (512, 1024, 2048, 4096, 8192, 16384)
    for D in (128, 64):
        for causal in (False, True):
            for T in seqlens:
                if time.time() - START > BUDGET_S:
                    log('time budget reached: remaining shapes skipped'); return rows
                B, H = 16384 // T, 2048 // D
                q, k, v = (torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
                do = torch.randn_like(q)
                fwd_flops = 4 * B * H * T * T * D / (2 if causal else 1)
                def sdpa(backend):
                    def f():
                        with sdpa_kernel(backend): return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    return f
                impls = {'triton': lambda: K.flash_attention(q, k, v, causal=causal),
                         'sdpa_flash': sdpa(SDPBackend.FLASH_ATTENTION), 'sdpa_cudnn': sdpa(SDPBackend.CUDNN_ATTENTION)}
                if flex is not None:
                    bm = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, T, T, device=dev) if causal else None
                    impls['flex'] = lambda: flex(q, k, v, block_mask=bm)
                row = {'D': D, 'causal': causal, 'seqlen': T, 'batch': B, 'heads': H}
                for name, f in impls.items():
                    try:
                        fwd_ms = do_bench(f, warmup=25, rep=100, return_mode='median')
                        def fb():
                            out = f(); torch.autograd.grad(out, (q, k, v), do)
                        fb_ms = do_bench(fb, warmup=25, rep=100, return_mode='median')
                        row[f'{name}_fwd_tflops'] = fwd_flops / fwd_ms / 1e9
                        row[f'{name}_bwd_tflops'] = 2.5 * fwd_flops / max(1e-9, fb_ms - fwd_ms) / 1e9
                        row[f'{name}_fwd_ms'], row[f'{name}_fwdbwd_ms'] = fwd_ms, fb_ms
                    except Exception as e:
                        row[f'{name}_error'] = f'{type(e).__name__}: {str(e)[:120]}'
                log(json.dumps(row))
                rows.append(row)
                del q, k, v, do
                torch.cuda.empty_cache()
    return rows


def flce_memory(K):
    out = {}
    for mode in ('plain', 'fused'):
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        h = torch.randn(8192, 576, device='cuda', dtype=torch.bfloat16, requires_grad=True)
        W = (0.02 * torch.randn(49152, 576, device='cuda', dtype=torch.bfloat16)).requires_grad_()
        y = torch.randint(0, 49152, (8192,), device='cuda')
        base = torch.cuda.memory_allocated()
        loss = F.cross_entropy((h @ W.t()).float(), y) if mode == 'plain' else K.fused_linear_cross_entropy(h, W, y)
        loss.backward()
        torch.cuda.synchronize()
        out[mode] = (torch.cuda.max_memory_allocated() - base) / 2**20
        del h, W, y, loss
    out['ratio'] = out['plain'] / out['fused']
    log('linear cross-entropy peak MB over inputs (bf16, 8192 tokens, vocab 49152):', json.dumps(out))
    return out


def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--quick', action='store_true'); a = ap.parse_args()
    assert torch.cuda.is_available(), 'this script needs a GPU'
    import triton
    import llmlab.kernels as K
    info = {'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__, 'triton': triton.__version__,
            'python': platform.python_version()}
    log(json.dumps(info))
    checks, failures = check_correctness(K)
    result = {**info, 'checks': checks}
    out_dir = Path(os.environ.get('OUT') or Path(__file__).parent.parent / 'results')
    if failures:
        (out_dir / 'bench_gpu_attention.json').write_text(json.dumps(result, indent=1))
        sys.exit(f'{failures} correctness checks failed: no timing')
    result['flce_memory_mb'] = flce_memory(K)
    rows = time_attention(K, a.quick)
    result['attention'] = rows
    (out_dir / 'bench_gpu_attention.json').write_text(json.dumps(result, indent=1))
    names = ['triton', 'sdpa_flash', 'sdpa_cudnn', 'flex']
    print(f"\n{info['gpu']}, torch {info['torch']}, triton {info['triton']}; bf16, batch x seqlen = 16k, heads x dim = 2048; TFLOP/s (median)")
    print(f"{'D':>4} {'causal':>6} {'T':>6} | " + ' '.join(f'{n + " fwd":>13}' for n in names) + ' | ' +
          ' '.join(f'{n + " bwd":>13}' for n in names) + ' | triton/flash fwd, bwd')
    for r in rows:
        cell = lambda n, p: f"{r.get(f'{n}_{p}_tflops', float('nan')):13.0f}"
        ratio = lambda p: r.get(f'triton_{p}_tflops', float('nan')) / r.get(f'sdpa_flash_{p}_tflops', float('nan'))
        print(f"{r['D']:>4} {str(r['causal']):>6} {r['seqlen']:>6} | " + ' '.join(cell(n, 'fwd') for n in names) + ' | ' +
              ' '.join(cell(n, 'bwd') for n in names) + f" | {ratio('fwd'):.2f}, {ratio('bwd'):.2f}")
    print(f"fused linear cross-entropy: {result['flce_memory_mb']['ratio']:.1f}x less peak memory than the plain loss")


if __name__ == '__main__': main()
