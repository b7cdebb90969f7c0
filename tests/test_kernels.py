"""The Triton kernels against float64 references, in the interpreter (no GPU here), and compiled for Hopper.

Tolerances (max absolute error against float64, on inputs of unit scale), stated once:
  float32: 2e-5 (different summation order); float16: 3e-3 (10-bit mantissa on inputs and outputs);
  bfloat16: 2.5e-2 (7-bit mantissa). Triton's interpreter miscomputes values cast to bf16 inside a kernel, so under it
  the public functions run bf16 in float32 (llmlab.kernels._bf16_in_interpreter): bf16 here checks the wrappers and the
  output rounding, not bf16 inside the dot products; benchmarks/gpu checks that on a GPU. Raw launches use fp32/fp16.
Every output buffer is poisoned with NaN before a launch and surrounded by guard bands holding a sentinel: an element
the kernel forgot to write stays NaN, a write outside the buffer changes a guard band.
"""
import json, math, os, subprocess, sys
from pathlib import Path
import pytest, torch
from llmlab.core import assert_close
import torch.nn.functional as F

import llmlab.kernels as K   # sets TRITON_INTERPRET=1 on a machine without a GPU, before triton compiles anything
import llmlab.kernels.attention as KA, llmlab.kernels.fused as KF   # the chapters' own modules: private kernels, limits
import triton
from llmlab.attention import eager_attention
from llmlab.model import lm_loss

# With a GPU the same tests run on CUDA tensors through compiled kernels (bf16 inside the kernels then, not in the
# interpreter's float32 stand-in); inputs are drawn on the CPU from seeded generators and moved, so both see the same numbers.
DEVICE = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
needs_gpu = pytest.mark.skipif(DEVICE.type != 'cuda', reason='needs a GPU (runs in benchmarks/gpu/run.py on a lent one)')
# the forward configs this device can run by name: TMA ones need Hopper or newer (the interpreter runs them all)
FWD_CONFIGS = [c for c in K.FWD_CONFIGS if not c.kwargs.get('TMA') or DEVICE.type == 'cpu' or torch.cuda.get_device_capability()[0] >= 9]

# Against float64 on inputs already rounded to the dtype, the error is the kernel's own: float32 accumulation in another
# order (observed <= 1.1e-6 on outputs of magnitude ~1) and one rounding of the output to the dtype, half an ulp: 2^-11 relative
# in fp16 (observed 1.05e-3 absolute), 2^-8 in bf16 (observed 7.7e-3). Bounds: atol + rtol*|ref|, about 3-5x the observed.
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
SENTINEL, GUARD = 1234.5, 64


class Guarded:
    "A tensor of `shape` inside a larger buffer: poisoned with NaN, guard bands of SENTINEL on both sides."
    def __init__(self, shape, dtype):
        n = math.prod(shape)
        self.buf = torch.full((n + 2 * GUARD,), float('nan'), dtype=dtype, device=DEVICE)
        self.buf[:GUARD] = SENTINEL; self.buf[-GUARD:] = SENTINEL
        self.t = self.buf[GUARD:GUARD + n].view(shape)

    def check(self, what=''):
        assert (self.buf[:GUARD] == SENTINEL).all() and (self.buf[-GUARD:] == SENTINEL).all(), f'{what}: write outside the buffer'
        assert not torch.isnan(self.t).any(), f'{what}: {int(torch.isnan(self.t).sum())} elements never written'
        return self.t


def reference_attention(q, k, v, causal=True, mask=None, window=None, doc_ids=None, scale=None):
    "eager attention in float64 with every mask made explicit."
    Tq, Tk = q.shape[2], k.shape[2]
    allowed = torch.ones(q.shape[0], 1, Tq, Tk, dtype=torch.bool, device=q.device)
    i, j = torch.arange(Tq, device=q.device)[:, None] + (Tk - Tq), torch.arange(Tk, device=q.device)[None]
    if window is not None: allowed &= (j > i - window)
    if doc_ids is not None: allowed &= doc_ids[:, None, :, None] == doc_ids[:, None, None, :]
    if mask is not None: allowed &= mask
    return eager_attention(q.double(), k.double(), v.double(), causal=causal, mask=allowed, scale=scale)


def inputs(B, H, KVH, Tq, Tk, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g).to(DEVICE, dtype).requires_grad_()
    return make(B, H, Tq, D), make(B, KVH, Tk, D), make(B, KVH, Tk, D), torch.randn(B, H, Tq, D, generator=g).to(DEVICE, dtype)


CASES = [  # B, H, KVH, Tq, Tk, D, causal, extra
    (2, 4, 4, 37, 37, 64, True, {}),
    (2, 4, 2, 37, 37, 128, False, {}),
    (1, 8, 1, 45, 45, 64, True, {}),                                  # multi-query
    (2, 4, 2, 13, 50, 64, True, {}),                                  # queries after a KV cache (bottom-right causal)
    (1, 4, 2, 70, 70, 64, True, {'window': 24}),                      # sliding window
    (2, 2, 1, 40, 40, 64, True, {'doc_ids': 'packed'}),               # packed documents
    (2, 4, 2, 33, 33, 64, False, {'mask': 'padding'}),                # left padding: some queries see nothing
    (1, 2, 2, 21, 21, 96, True, {}),                                  # head_dim that is not a power of two
]


def materialize(extra, B, Tq, Tk):
    extra = dict(extra)
    if extra.get('doc_ids') == 'packed':
        extra['doc_ids'] = torch.tensor([0] * 9 + [1] * 17 + [2] * (Tq - 26), device=DEVICE).expand(B, -1)
    if extra.get('mask') == 'padding':
        m = torch.ones(B, 1, 1, Tk, dtype=torch.bool, device=DEVICE); m[0, ..., :7] = False
        extra['mask'] = m & torch.ones(B, 1, Tq, 1, dtype=torch.bool, device=DEVICE)
        extra['mask'][0, :, :7] = False                               # padded queries attend to nothing: zeros
    return extra


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize('case', CASES, ids=lambda c: f'{c[0]}x{c[1]}/{c[2]}x{c[3]}x{c[4]}x{c[5]}-{"causal" if c[6] else "full"}-{"-".join(c[7]) or "plain"}')
def test_flash_attention_forward_and_backward_match_float64(case, dtype):
    B, H, KVH, Tq, Tk, D, causal, extra = case
    q, k, v, do = inputs(B, H, KVH, Tq, Tk, D, dtype)
    extra = materialize(extra, B, Tq, Tk)
    out = K.flash_attention(q, k, v, causal=causal, **extra)
    ref = reference_attention(q, k, v, causal=causal, **extra)
    tol = TOL[dtype]
    assert out.dtype == dtype
    # observed: fp32 1.1e-6, fp16 1.05e-3, bf16 7.7e-3 (at most 0.15 of the bound)
    assert_close(out, ref, atol=tol, rtol=RTOL[dtype], what=f'attention output, {dtype}')
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do.double())
    for name, a, b in zip('qkv', grads, ref_grads):
        # gradients sum over every query (or key): bounded relative to the gradient's largest entry (observed <= 0.16 of it)
        assert_close(a, b, atol=2 * tol * max(1.0, float(b.abs().max())), what=f'd{name}, {dtype}')


@pytest.mark.parametrize('which', ['fwd', 'dkdv', 'dq'])
def test_every_shipped_config_writes_exactly_its_outputs(which):
    "Each autotune config run through kernel.fn on ragged lengths (not multiples of any block), with guard bands."
    B, H, KVH, T, D = 1, 4, 2, 70, 64
    q, k, v, do = inputs(B, H, KVH, T, T, D, torch.float32, seed=1)
    q, k, v = q.detach(), k.detach(), v.detach()
    configs = {'fwd': FWD_CONFIGS, 'dkdv': K.DKDV_CONFIGS, 'dq': K.DQ_CONFIGS}[which] + K.FP32_CONFIGS[which]
    base_o, base_lse = K.attention_forward(q, k, v, config=K.FWD_CONFIGS[0])
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    ref_out = reference_attention(qd, kd, vd)
    ref_grads = torch.autograd.grad(ref_out, (qd, kd, vd), do.double())
    for config in configs:
        if which == 'fwd':
            o, lse = Guarded(q.shape, q.dtype), Guarded((B, H, T), torch.float32)
            K.attention_forward(q, k, v, config=config, out=(o.t, lse.t))
            # float32: observed 6.7e-7 for every config
            assert_close(o.check(str(config)), ref_out, atol=TOL[torch.float32], what=f'output, config {config}')
            lse.check(str(config))
        else:
            dq, dk, dv = Guarded(q.shape, q.dtype), Guarded(k.shape, k.dtype), Guarded(v.shape, v.dtype)
            K.attention_backward(do, q, k, v, base_o, base_lse, configs={which: config}, out=(dq.t, dk.t, dv.t))
            for name, g, r in zip('qkv', (dq, dk, dv), ref_grads):
                # float32 gradients of magnitude ~1-5: observed <= 2.5e-6 for every config
                assert_close(g.check(f'{config} d{name}'), r, atol=1e-4, what=f'd{name}, config {config}')


def test_backward_is_deterministic_and_the_atomic_variant_agrees():
    q, k, v, do = inputs(2, 4, 2, 45, 45, 64, torch.float16, seed=2)
    runs = [torch.autograd.grad(K.flash_attention(q, k, v), (q, k, v), do) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))                      # the same bits twice
    fast = torch.autograd.grad(K.flash_attention(q, k, v, deterministic=False), (q, k, v), do)
    # atomic dQ adds float32 blocks in arrival order, then rounds to fp16 once, as the two-kernel path does: the same
    # float32 sums in another order, so at most an fp16 rounding apart (observed 0 in the interpreter)
    for name, a, b in zip('qkv', runs[0], fast): assert_close(b, a, atol=2e-3, rtol=1e-3, what=f'atomic d{name} vs deterministic')
    # float32 (IEEE dots) always takes the two-kernel path: deterministic=False gives the same bits
    q32, k32, v32, do32 = (t.detach().float().requires_grad_() for t in (q, k, v, do))
    grads = [torch.autograd.grad(K.flash_attention(q32, k32, v32, deterministic=d), (q32, k32, v32), do32) for d in (True, False)]
    assert all(torch.equal(a, b) for a, b in zip(*grads))


UNMASKED_CASES = [  # Tq, Tk, causal, window: long enough that every config has key blocks no query of its block masks
    (260, 260, True, None), (200, 200, False, None), (90, 300, True, None), (240, 240, True, 100)]


@pytest.mark.parametrize('case', UNMASKED_CASES, ids=lambda c: f'{c[0]}x{c[1]}-{"causal" if c[2] else "full"}-window{c[3]}')
def test_masked_and_unmasked_blocks_agree_with_float64_for_every_config(case):
    "The kernels split the key (or query) blocks into masked ones and unmasked interior ones: every config, both kinds."
    Tq, Tk, causal, window = case
    q, k, v, do = inputs(1, 2, 1, Tq, Tk, 64, torch.float32, seed=4)   # two query heads on one key/value head: grouped, and small
    q, k, v = q.detach(), k.detach(), v.detach()
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    ref = reference_attention(qd, kd, vd, causal=causal, window=window)
    ref_grads = torch.autograd.grad(ref, (qd, kd, vd), do.double())
    for config in FWD_CONFIGS + K.FP32_CONFIGS['fwd']:
        o, lse = K.attention_forward(q, k, v, causal=causal, window=window, config=config)
        # float32: observed <= 1e-6 for every config
        assert_close(o, ref, atol=TOL[torch.float32], what=f'output, config {config}')
    for dkdv, dq in zip(K.DKDV_CONFIGS + K.FP32_CONFIGS['dkdv'] * 2, K.DQ_CONFIGS + K.FP32_CONFIGS['dq'] * 2):
        grads = K.attention_backward(do, q, k, v, o, lse, causal=causal, window=window, configs={'dkdv': dkdv, 'dq': dq})
        for name, g, r in zip('qkv', grads, ref_grads):
            # float32 gradients of magnitude ~1-5: observed <= 3e-6
            assert_close(g, r, atol=1e-4, what=f'd{name}, configs {dkdv} / {dq}')


@pytest.mark.parametrize('limit', ['GRID_Y_LIMIT', 'INT32_ROWS'])
def test_batches_past_one_launch_run_as_slices_with_the_same_bits(monkeypatch, limit):
    "Past 65,535 (batch x heads) or 2^31 log-sum-exp rows, one launch per slice of the batch: shown with the limits lowered."
    q, k, v, do = inputs(3, 4, 2, 29, 29, 64, torch.float32, seed=7)
    mask = torch.rand(3, 1, 29, 29, generator=torch.Generator().manual_seed(8)).to(DEVICE) > 0.2
    whole = [K.flash_attention(q, k, v, mask=mask)]
    whole += torch.autograd.grad(whole[0], (q, k, v), do)
    monkeypatch.setattr(KA, limit, 5 if limit == 'GRID_Y_LIMIT' else 4 * 29)   # one batch entry per launch (the launchers' module)
    sliced = [K.flash_attention(q, k, v, mask=mask)]
    sliced += torch.autograd.grad(sliced[0], (q, k, v), do)
    for name, a, b in zip(('output', 'dq', 'dk', 'dv'), sliced, whole):
        assert torch.equal(a, b), f'{name}: sliced launches differ from one launch'   # the same sums in the same order
    monkeypatch.setattr(KA, limit, 3)
    with pytest.raises(ValueError, match='even at batch 1'): K.flash_attention(q, k, v)


def test_mqa_backward_split_over_query_heads_matches_float64():
    "Multi-query attention (8 query heads, 1 key/value head): dK/dV split over 1, 2 or 8 programs per key block agree."
    q, k, v, do = inputs(1, 8, 1, 50, 50, 64, torch.float32, seed=6)
    q, k, v = q.detach(), k.detach(), v.detach()
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    ref_grads = torch.autograd.grad(reference_attention(qd, kd, vd), (qd, kd, vd), do.double())
    o, lse = K.attention_forward(q, k, v)
    for splits in (1, 2, 8):
        for name, g, r in zip('qkv', K.attention_backward(do, q, k, v, o, lse, n_head_splits=splits), ref_grads):
            # float32, partial sums over query heads added afterwards: observed <= 2e-6 on gradients ~1-5
            assert_close(g, r, atol=1e-4, what=f'd{name}, {splits} head splits')
    with pytest.raises(ValueError, match='must divide'): K.attention_backward(do, q, k, v, o, lse, n_head_splits=3)


@pytest.mark.parametrize('Tq,window,mask', [(1, None, False), (4, None, False), (1, 150, False), (2, None, True)])
def test_split_kv_decode_matches_float64_for_every_config(Tq, window, mask):
    "Split-KV decoding (GQA 4:1, cache of 600), each config through kernel.fn, outputs poisoned and guarded."
    B, H, KVH, Tk, D = 2, 8, 2, 600, 64
    q, k, v, _ = inputs(B, H, KVH, Tq, Tk, D, torch.float32, seed=5)
    q, k, v = q.detach(), k.detach(), v.detach()
    m = None
    if mask:   # left padding of the cache in the first row
        m = torch.ones(B, 1, Tq, Tk, dtype=torch.bool, device=DEVICE); m[0, ..., :123] = False
    ref = reference_attention(q, k, v, window=window, mask=m)
    for config in K.DECODE_CONFIGS:
        for n_splits in (1, 5):
            o, lse = Guarded(q.shape, q.dtype), Guarded((B, H, Tq), torch.float32)
            K.attention_decode(q, k, v, window=window, mask=m, n_splits=n_splits, config=config, out=(o.t, lse.t))
            # float32, chunked sums merged by their log-sum-exps: observed <= 7e-7
            assert_close(o.check(f'{config} o'), ref, atol=TOL[torch.float32], what=f'decode, {config}, {n_splits} chunks')
            assert_close(lse.check(f'{config} lse'), K.attention_forward(q, k, v, window=window, mask=m)[1], atol=1e-5,
                         what='decode lse vs forward lse')
    with torch.no_grad():   # flash_attention decodes by itself when nothing needs a gradient
        assert_close(K.flash_attention(q, k, v, window=window, mask=m), ref, atol=TOL[torch.float32], what='flash_attention decode path')
    with pytest.raises(ValueError, match='at most 64'):
        K.attention_decode(torch.zeros(1, 8, 9, D, device=DEVICE), k[:1, :1], v[:1, :1])


def test_cu_seqlens_equal_document_ids_and_packed_equals_separate_sequences():
    "Packing three documents into one row gives each document what it gets alone."
    lengths = [11, 30, 19]
    q, k, v, _ = inputs(1, 4, 2, sum(lengths), sum(lengths), 64, torch.float32, seed=3)
    packed = K.flash_attention(q, k, v, cu_seqlens=[0, 11, 41, 60])
    start = 0
    for n in lengths:
        sl = slice(start, start + n)
        alone = K.flash_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl])
        # float32 either way, but the blocks of the online softmax start elsewhere: sums in another order (observed 7.2e-7)
        assert_close(packed[:, :, sl], alone, atol=5e-6, what=f'packed document of {n} tokens vs alone')
        start += n


def _guarded_launch_rmsnorm(x, w, eps=1e-5):
    M, N = x.shape
    y, rstd = Guarded((M, N), x.dtype), Guarded((M,), torch.float32)
    block = triton.next_power_of_2(N)
    KF._rmsnorm_fwd[(triton.cdiv(M, 4),)](x, w, y.t, rstd.t, x.stride(0), N, M, N, eps, ROWS=4, BLOCK=block)
    return y.check('rmsnorm y'), rstd.check('rmsnorm rstd')


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
def test_fused_rmsnorm_rope_swiglu_match_float64(dtype):
    g = torch.Generator().manual_seed(4)
    tol = TOL[dtype]
    # RMSNorm, 100 features (not a power of two), rows not a multiple of anything
    x = torch.randn(3, 7, 100, generator=g).to(DEVICE, dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(100, generator=g)).to(DEVICE, dtype).requires_grad_()
    ref = lambda x, w: w.double() * x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5)
    y, _ = _guarded_launch_rmsnorm(x.detach().float().reshape(-1, 100), w.detach().float())   # raw launch: float32
    # the raw kernels compute in float32 either way; the bound is the dtype's (observed <= 3.5e-7)
    assert_close(y, ref(x, w).reshape(-1, 100), atol=2 * tol, what=f'rmsnorm, {dtype} inputs')
    dy = torch.randn(3, 7, 100, generator=g).to(DEVICE, dtype)
    for a, b in zip(torch.autograd.grad(K.rms_norm(x, w), (x, w), dy), torch.autograd.grad(ref(x, w), (x, w), dy.double())):
        # relative to the largest gradient entry, as for attention: observed 9.5e-7 in fp32; bf16 gradients are rounded to bf16 (1.6e-2 on entries ~4: 0.08 of the bound)
        assert_close(a, b, atol=2 * tol * max(1.0, float(b.abs().max())), what=f'rmsnorm gradient, {dtype}')
    # rotary embedding on q-shaped input, odd sequence length
    q = torch.randn(2, 3, 11, 64, generator=g).to(DEVICE, dtype).requires_grad_()
    ang = torch.randn(2, 11, 32, generator=g).to(DEVICE).double(); ang = torch.cat([ang, ang], -1)
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
    def ref_rope(x):
        x1, x2 = x.double().chunk(2, -1)
        return x.double() * cos[:, None].double() + torch.cat([-x2, x1], -1) * sin[:, None].double()
    out = Guarded(q.shape, torch.float32)
    KF._rope[(6, 2)](q.detach().float(), cos.float(), sin.float(), out.t, *q.stride()[:3], *out.t.stride()[:3], cos.stride(0), cos.stride(1), 3, 11,
                    HALF=32, BLOCK=32, BLOCK_T=8, SIGN=1)                      # 11 positions in blocks of 8: a ragged last block
    # a rotation in float32: observed <= 2.2e-7
    assert_close(out.check('rope'), ref_rope(q), atol=tol, what=f'rope, {dtype} inputs')
    dy = torch.randn(q.shape, generator=g).to(DEVICE, dtype)
    # observed 0 in fp32; in bf16 the gradient is rounded to bf16, one ulp (1.6e-2) at magnitudes 2-4: hence rtol
    assert_close(torch.autograd.grad(K.rotary(q, cos, sin), q, dy)[0], torch.autograd.grad(ref_rope(q), q, dy.double())[0], atol=2 * tol,
                 rtol=RTOL[dtype], what=f'rope gradient, {dtype}')
    # SwiGLU on 4 x 33 x 100 = 13,200 elements (not a multiple of the 1024 block)
    gate, up = (torch.randn(4, 33, 100, generator=g).to(DEVICE, dtype).requires_grad_() for _ in range(2))
    y = Guarded(up.shape, torch.float32)
    KF._swiglu_fwd[(13,)](gate.detach().float(), up.detach().float(), y.t, up.numel(), BLOCK=1024)
    ref_y = F.silu(gate.double()) * up.double()
    # observed <= 7.5e-7
    assert_close(y.check('swiglu'), ref_y, atol=2 * tol, what=f'swiglu, {dtype} inputs')
    dy = torch.randn(up.shape, generator=g).to(DEVICE, dtype)
    for a, b in zip(torch.autograd.grad(K.swiglu(gate, up), (gate, up), dy), torch.autograd.grad(ref_y, (gate, up), dy.double())):
        # relative to the largest gradient entry: observed 4.8e-7 (fp32), 0 (bf16)
        assert_close(a, b, atol=2 * tol * max(1.0, float(b.abs().max())), what=f'swiglu gradient, {dtype}')


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_grouped_gemm_writes_exactly_each_experts_rows_and_matches_float64(dtype):
    "The experts' grouped GEMM: experts with no rows, one row, and runs ending inside a tile; forward, dX and dW."
    import llmlab.kernels.grouped as KG
    g = torch.Generator().manual_seed(5)
    counts = torch.tensor([19, 0, 1, 70, 0, 33])
    E, M, K_, N = len(counts), int(counts.sum()), 72, 56          # neither a multiple of the tiles
    x = (torch.randn(M, K_, generator=g) / K_ ** 0.25).to(DEVICE, dtype).requires_grad_()   # outputs of unit scale
    w = (torch.randn(E, N, K_, generator=g) / K_ ** 0.25).to(DEVICE, dtype).requires_grad_()
    counts = counts.to(DEVICE)
    ref = lambda x, w: torch.cat([r @ we.T for r, we in zip(x.double().split(counts.tolist()), w.double().unbind(0))])
    if dtype != torch.bfloat16:   # a raw launch into a guarded buffer (bf16 inside the interpreter is not bf16)
        c = KG.grouped_mm_config(dtype)
        expert, first, ends = KG.expert_tiles(counts, c['BLOCK_M'], M)
        y = Guarded((M, N), dtype)
        KG._grouped_mm[(len(expert), triton.cdiv(N, c['BLOCK_N']))](x.detach(), w.detach(), y.t, expert, first, ends, K_, N * K_, K_, N,
                                                                  N, K_, TRANS_W=False, PRECISION=KG._precision(dtype), **c)
        assert_close(y.check('grouped_mm'), ref(x, w), atol=TOL[dtype], rtol=RTOL[dtype], what=f'grouped_mm, {dtype}')
    # one rounding of outputs up to ~4: observed 6.4e-7 (fp32), 9.7e-4 (fp16), 7.8e-3 (bf16)
    assert_close(K.grouped_mm(x, w, counts), ref(x, w), atol=TOL[dtype], rtol=RTOL[dtype], what=f'grouped_mm, {dtype}')
    dy = torch.randn(M, N, generator=g).to(DEVICE, dtype)
    for a, b, name in zip(torch.autograd.grad(K.grouped_mm(x, w, counts), (x, w), dy), torch.autograd.grad(ref(x, w), (x, w), dy.double()),
                          ('dx', 'dw')):
        # relative to the largest entry (~10), as for attention's gradients: observed 1.9e-6 (fp32), 2.0e-3 (fp16), 0 (bf16:
        # both come out rounded to bf16, the reference's through its leaves' dtype)
        assert_close(a, b, atol=2 * TOL[dtype] * max(1.0, float(b.abs().max())), what=f'grouped_mm {name}, {dtype}')


@pytest.mark.parametrize('smoothing,z_loss', [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-4), (0.1, 1e-4)])
def test_fused_linear_cross_entropy_matches_float64(smoothing, z_loss):
    g = torch.Generator().manual_seed(5)
    N, Hd, V = 53, 48, 5000                                  # vocabulary not a multiple of the 4096 block
    h = torch.randn(N, Hd, generator=g).to(DEVICE).requires_grad_()
    w = (0.1 * torch.randn(V, Hd, generator=g)).to(DEVICE).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g).to(DEVICE); y[::7] = -100
    loss = K.fused_linear_cross_entropy(h, w, y, label_smoothing=smoothing, z_loss=z_loss, chunk_size=20)
    logits = h.double() @ w.double().t()
    ref = F.cross_entropy(logits, y, label_smoothing=smoothing)
    ref = ref + z_loss * (torch.logsumexp(logits, -1)[y != -100] ** 2).mean()
    # float32 logits summed in chunks vs float64: observed 2.6e-7 on a loss of ~8.5
    assert_close(loss, ref, atol=2e-5, what='fused linear cross-entropy loss')
    for name, a, b in zip(('hidden', 'weight'), torch.autograd.grad(loss, (h, w)), torch.autograd.grad(ref, (h, w))):
        # observed 2.2e-8 on gradients of magnitude ~1e-3
        assert_close(a, b, atol=2e-6, what=f'fused linear cross-entropy d{name}')
    # the row kernel alone: losses written for every row, nothing outside
    logits32 = (h.detach() @ w.detach().t())[:10].contiguous()
    losses = Guarded((10,), torch.float32)
    KF._ce_rows[(10,)](logits32, y[:10].contiguous(), losses.t, logits32.stride(0), V, -100, smoothing, z_loss, 0.1, BLOCK=4096)
    losses.check('cross-entropy rows')
    assert not torch.isnan(logits32).any()                    # every logit was overwritten by its gradient


def test_smollm2_forward_and_backward_with_triton_attention_and_fused_kernels_match_sdpa(smol_short):
    """The acceptance check on SmolLM2's own weights (its first layers: every block runs the same kernels, so depth adds only
    time), a 2 x 24-token batch: triton backend + all fused kernels vs sdpa + plain loss, forward and every gradient."""
    import copy
    ids = torch.randint(0, smol_short.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    batch = {'input_ids': ids[:, :-1], 'labels': ids[:, 1:]}
    base = copy.deepcopy(smol_short).to(DEVICE); base.set_attn_backend('sdpa')
    fast = K.apply_kernels(copy.deepcopy(smol_short).to(DEVICE))
    assert fast.config.attn_backend == 'triton' and type(fast.norm).__name__ == 'TritonRMSNorm'
    loss_ref = lm_loss(base(batch['input_ids']), batch['labels'])
    loss_fast = K.fused_causal_lm_loss(fast, batch)
    # float32 through other kernels: observed 0 on the first 4 layers (2.9e-6 on a loss of ~14.5 through all 30)
    assert_close(loss_fast, loss_ref, atol=1e-4, what='SmolLM2 loss, triton + fused vs sdpa')
    loss_ref.backward(); loss_fast.backward()
    worst = 0.0
    for (name, a), (_, b) in zip(base.named_parameters(), fast.named_parameters()):
        scale = max(1e-3, float(a.grad.abs().max()))   # errors relative to each gradient's largest entry
        worst = max(worst, float((a.grad - b.grad).abs().max()) / scale)
        # observed at most 9e-6 of each gradient's largest entry on the first 4 layers, 7e-5 on all 30 (0.05 of the bound)
        assert_close(b.grad, a.grad, atol=1e-3 * scale, what=f'gradient of {name}, triton + fused vs sdpa')
    print(f'SmolLM2 triton+fused vs sdpa: loss {float(loss_fast):.6f} vs {float(loss_ref):.6f}, worst relative grad error {worst:.2e}')


def test_hugging_face_model_with_llmlab_triton_attention(hf_smol_short, tokenizer):
    "transformers' SmolLM2 (its first layers) with attn_implementation='llmlab_triton' on a padded batch equals its eager attention."
    batch = tokenizer(['The capital of France is', 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""'],
                      return_tensors='pt', padding=True).to(DEVICE)
    if DEVICE.type == 'cuda':
        import copy
        hf_smol_short = copy.deepcopy(hf_smol_short).to(DEVICE)
    with torch.no_grad():
        expect = hf_smol_short(**batch).logits
        hf_smol_short.set_attn_implementation('llmlab_triton')
        try: got = hf_smol_short(**batch).logits
        finally: hf_smol_short.set_attn_implementation('eager')
    real = batch['attention_mask'].bool()
    # flash attention vs eager: observed 3.1e-5 through the first 4 layers (5.2e-5 through all 30, logits up to ~30)
    assert_close(got[real], expect[real], atol=1e-3, what='transformers SmolLM2, llmlab_triton vs eager logits')


@needs_gpu
def test_attention_past_2_31_elements_on_the_gpu():
    "q, k, v, o of 2^31 elements each (16,384 x 2 heads x 512 x 128, bf16): the last batch entries sit past int32 offsets."
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30: pytest.skip('needs 40 GiB of GPU memory')
    B, H, T, D = 16384, 2, 512, 128
    q, k, v = (torch.randn(B, H, T, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(3))
    out = K.flash_attention(q, k, v)
    for b in (0, B - 1):
        ref = reference_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1])
        # bf16 inside the kernel (P rounded to bf16 before P V): the dtype's bounds, as in the float64 tests above
        assert_close(out[b:b + 1], ref, atol=TOL[torch.bfloat16], rtol=RTOL[torch.bfloat16], what=f'batch entry {b} of {B}')


@needs_gpu
def test_a_few_training_steps_on_the_gpu_with_triton_kernels_follow_sdpa():
    "A small Llama in bf16 on the GPU, 8 AdamW steps: the triton backend and fused kernels track sdpa's losses."
    from llmlab.model import Llama, ModelConfig
    cfg = dict(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    ids = torch.randint(0, 256, (4, 129), generator=torch.Generator().manual_seed(7)).to(DEVICE)
    losses = {}
    for backend in ('sdpa', 'triton'):
        torch.manual_seed(0)
        model = Llama(ModelConfig(**cfg, attn_backend=backend)).to(DEVICE, torch.bfloat16)
        if backend == 'triton': K.apply_kernels(model, ('rmsnorm', 'rope', 'swiglu'))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses[backend] = []
        for _ in range(8):
            loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1).float(), ids[:, 1:].flatten())
            loss.backward(); opt.step(); opt.zero_grad()
            losses[backend].append(float(loss))
    assert losses['triton'][-1] < losses['triton'][0] - 0.5          # it learns (sdpa: ~5.5 -> ~4.5)
    # bf16 training, other kernels: losses drift apart by rounding; 0.05 on losses ~5 leaves room over the ~0.01 expected
    assert_close(torch.tensor(losses['triton']), torch.tensor(losses['sdpa']), atol=0.05, what='losses, triton vs sdpa')


@pytest.mark.slow
def test_each_triton_kernel_compiles_for_hopper_without_spills():
    """tools/check_hopper.py --quick: one config of each kernel, and of each way it loads (TMA descriptors, atomic dQ), for
    sm_90 as a real launch compiles it: no spills, dots on wgmma. Every usable config of every variant: .ci/run compiles them
    under triton 3.6 (what the GPU machines run), `make check-hopper` under 3.9 and 3.6."""
    env = {**os.environ, 'TRITON_INTERPRET': '0', 'TRITON_DEFAULT_FP_FUSION': '1'}
    r = subprocess.run([sys.executable, 'tools/check_hopper.py', '--quick'], capture_output=True, text=True, env=env, timeout=900,
                       cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{"kernel"')]
    kernels = {row['kernel'] for row in rows}
    assert kernels == {'attn_fwd', 'attn_bwd_dkdv', 'attn_bwd_dq', 'attn_decode', 'paged_decode', 'attn_decode_combine', 'rmsnorm_fwd', 'rmsnorm_bwd',
                       'rope', 'swiglu_fwd', 'swiglu_bwd', 'cross_entropy_rows', 'grouped_mm_fwd', 'grouped_mm_dx', 'grouped_mm_wgrad'} \
        and ', 0 with problems' in r.stdout, kernels
    tma = [row for row in rows if row['constexprs'].get('TMA')]
    # its copies really go through the TMA unit (with packed documents, their ids still come by cp.async)
    assert tma and all(row['tma'] > 0 for row in tma) and all(row['cp_async'] == 0 for row in tma if row['variant'].startswith('plain'))


REPORT_PROBE = """
import json, sys, triton
sys.path.insert(0, 'tools')
import check_hopper as C, llmlab.kernels as K
fwd = lambda m, n, warps, aligned: C.report(C.compile_one(K.attn_fwd_kernel.fn, {**C._attention(64, True), 'BLOCK_M': m, 'BLOCK_N': n},
                                                          warps, 3, 'bf16', aligned))
print(json.dumps({'shipped': fwd(128, 64, 8, True), 'unaligned': fwd(128, 64, 8, False), 'narrow': fwd(16, 64, 4, True)}))
"""


def test_compile_report_sees_what_the_compiler_made():
    "The report can fail: 16 query rows cannot fill wgmma's 64 (mma.sync), an unaligned launch loses its cp.async pipeline."
    env = {**os.environ, 'TRITON_INTERPRET': '0', 'TRITON_DEFAULT_FP_FUSION': '1'}
    r = subprocess.run([sys.executable, '-c', REPORT_PROBE], capture_output=True, text=True, env=env, timeout=600,
                       cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep['shipped']['wgmma'] == rep['shipped']['dots'] == 6 and rep['shipped']['cp_async'] > 0
    assert rep['unaligned']['cp_async'] == 0 and rep['unaligned']['shared'] < rep['shipped']['shared']
    assert rep['narrow']['not_wgmma'] > 0 and rep['narrow']['wgmma'] < rep['narrow']['dots']


@pytest.mark.slow
def test_gpu_script_dry_run_runs_every_phase(tmp_path):
    "benchmarks/gpu/run.py --dry-run: the interpreter, tiny shapes, every phase writes its JSON lines and finds no error."
    r = subprocess.run([sys.executable, 'benchmarks/gpu/run.py', '--dry-run'], capture_output=True, text=True, timeout=600,
                       cwd=Path(__file__).parent.parent, env={**os.environ, 'OUT': str(tmp_path)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / 'gpu_results.jsonl').read_text().splitlines()]
    assert {row['phase'] for row in rows} >= {'env', 'tests', 'attention', 'decode', 'moe', 'train', 'serve', 'cuda', 'done'}
    assert not [row for row in rows if 'error' in row or row.get('ok') is False], rows
    attention = [row for row in rows if row['phase'] == 'attention']
    assert len(attention) == 8 and all(row['ok'] and 'triton_fwdbwd_tflops' in row for row in attention)
    assert [row['backend'] for row in rows if row['phase'] == 'train'] == ['sdpa', 'triton']
    moe = [row for row in rows if row['phase'] == 'moe']
    assert len(moe) == 1 and moe[0]['ok'] and all(f'{impl}_fwdbwd_tflops' in moe[0] for impl in ('triton', 'grouped_mm', 'loop'))
    serve = [row for row in rows if row['phase'] == 'serve']   # float32 in the dry run: both backends generate the same tokens
    assert [row['kind'] for row in serve] == ['paged decode kernel', 'engine', 'engine', 'engine agreement'] and serve[0]['ok']
    assert serve[-1]['same_outputs'] == serve[-1]['of']


def test_cuda_kernel_compiles_for_sm80_and_sm90a_on_tensor_cores_without_spills(tmp_path):
    "The CUDA C++ kernel: nvcc for sm_80 and sm_90a, no spills; its machine code has tensor-core MMAs, ldmatrix and cp.async."
    import re, shutil
    if shutil.which('nvcc') is None: pytest.skip('nvcc is not installed')
    src = Path(__file__).parent.parent / 'kernels' / 'flash_attn_fwd.cu'
    lib = tmp_path / 'lib.so'
    r = subprocess.run(['nvcc', '-O3', '-shared', '-Xcompiler', '-fPIC', '-gencode=arch=compute_80,code=sm_80',
                        '-gencode=arch=compute_90a,code=sm_90a', '-Xptxas', '-v', '-o', str(lib), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    spills = [int(x) for x in re.findall(r'(\d+) bytes spill (?:stores|loads)', r.stderr)]
    assert len(spills) == 16 and not any(spills), r.stderr[-3000:]   # 2 archs x 2 dtypes x 2 head dims x (stores, loads)
    # the disassembler: the CUDA toolkit's, or the copy Triton ships
    cuobjdump = shutil.which('cuobjdump') or str(Path(triton.__file__).parent / 'backends' / 'nvidia' / 'bin' / 'cuobjdump')
    sass = subprocess.run([cuobjdump, '-sass', str(lib)], capture_output=True, text=True, timeout=300).stdout
    kernels = sass.split('Function : ')[1:]
    assert len(kernels) == 8, f'{len(kernels)} kernels disassembled'
    for code in kernels:
        name = code.split('\n', 1)[0]
        assert re.search(r'\bHMMA\.16816\.F32', code), f'{name}: no tensor-core MMA (HMMA.16816)'
        assert 'LDSM' in code and 'LDGSTS' in code, f'{name}: no ldmatrix (LDSM) or cp.async (LDGSTS)'
        assert not re.search(r'\b(LDL|STL)\b', code), f'{name}: local-memory loads/stores (spills)'
