"""The one script for a lent GPU (H100/H200, torch + triton, nothing else): correctness first, then speed, each result a
JSON line in $OUT/gpu_results.jsonl the moment it exists, so a run cut short keeps what it had.

Phases, each with its own time budget (seconds, checked before every item; the whole run stays under 8 minutes):
  env        the card, driver, torch, triton, python
  tests      the GPU kernel tests (pytest tests/test_kernels.py on CUDA tensors, compiled kernels)          <= 110 s
  attention  forward and forward+backward TFLOP/s, bf16: causal d=128 first, then full, d=64; T 1k-16k at 16k tokens
             per batch, 2048 = heads x dim, GQA 8:1; llmlab's Triton kernel vs SDPA's flash and cuDNN backends and
             FlexAttention, each checked against float32 SDPA (math) on two heads at the timed shape; the autotuner's
             chosen config recorded. Then decode: one query per head, GQA 8:1, cache 4k-32k, split-KV vs SDPA       <= 160 s
  moe        the experts' SwiGLU MLPs of one MoE layer, bf16, forward and forward+backward TFLOP/s: llmlab's Triton
             grouped GEMM vs torch._grouped_mm vs the per-expert loop, each checked against torch._grouped_mm in float32,
             on a Mixtral-8x7B layer (8 experts, top-2) and an OLMoE layer (64 experts, top-8), 8k tokens, routed
             by a random router (unbalanced as a real one is, never forced to balance)                              <= 50 s
  train      training steps of a ~1B-parameter llmlab Llama in bf16, sdpa vs the Triton kernels, eager then compiled:
             tokens/s and MFU (against 989 TFLOP/s, H100/H200 dense bf16)                                            <= 80 s
  serve      the serving engine's decoding: the paged Triton kernel (keys read in place through block tables) against
             gathering each request's keys for SDPA, 64 requests x 1k-4k keys, GQA 4:1, checked against float32; then
             the engine end to end on a ~0.5B llmlab Llama in bf16, 32 requests x 256-token prompts x 64 new tokens,
             greedy: output tokens/s with each backend, and whether they generate the same tokens                       <= 30 s
  cuda       the CUDA C++ kernel built with nvcc (if present; else carry kernels/libllmlab_attn.so built elsewhere),
             self-tested and checked against SDPA, timed against SDPA-flash                                         <= 40 s
TFLOP/s count 4 x B x H x Tq x Tk x D for the forward (half of it causal) and 3.5x that for forward+backward; for the experts
6 x rows x hidden x intermediate forward (three projections) and 3x that for forward+backward.

    PYTHONPATH=. python benchmarks/gpu/run.py              # on the GPU machine
    PYTHONPATH=. python benchmarks/gpu/run.py --dry-run    # here: the interpreter, tiny shapes, every phase (CI runs it)
"""
import argparse, json, os, platform, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START = time.time()
BUDGETS = {'env': 10, 'tests': 110, 'attention': 160, 'moe': 50, 'train': 80, 'serve': 30, 'cuda': 40}


class Results:
    "JSON lines appended and flushed one by one."
    def __init__(self, path:Path):
        self.path = path; path.parent.mkdir(parents=True, exist_ok=True); path.write_text('')

    def __call__(self, phase:str, **row):
        row = {'phase': phase, 't': round(time.time() - START, 1), **row}
        with self.path.open('a') as f: f.write(json.dumps(row) + '\n')
        print(json.dumps(row), flush=True)
        return row


class Budget:
    def __init__(self, seconds): self.end = time.time() + seconds
    def left(self) -> float: return self.end - time.time()
    def __bool__(self): return self.left() > 0


def rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def bench(fn, dry:bool) -> float:
    "Median milliseconds: triton.testing.do_bench on a GPU, one timed call on the CPU (the dry run times nothing real)."
    if dry:
        t = time.perf_counter(); fn(); return (time.perf_counter() - t) * 1e3
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=100)


def phase_env(out, dry):
    import torch, triton
    info = {'torch': torch.__version__, 'triton': triton.__version__, 'python': platform.python_version(), 'dry_run': dry}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1), capability=f'{p.major}.{p.minor}')
        try: info['driver'] = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                             capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception as e: info['driver'] = f'unknown ({e})'
    out('env', **info)


def phase_tests(out, dry, budget):
    "The kernel tests on the GPU (the dry run runs one quick test, to check the plumbing)."
    select = ['-k', 'cu_seqlens'] if dry else []
    cmd = [sys.executable, '-m', 'pytest', str(ROOT / 'tests' / 'test_kernels.py'), '-q', '-x', '-p', 'no:cacheprovider', *select]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(5, budget.left()), cwd=ROOT)
        out('tests', ok=r.returncode == 0, returncode=r.returncode, summary=(r.stdout.strip().splitlines() or [''])[-1], tail=r.stdout[-2000:])
    except subprocess.TimeoutExpired as e:
        out('tests', ok=None, cut=f'over the {BUDGETS["tests"]} s budget', tail=(e.stdout or b'')[-2000:].decode(errors='replace'))


def _sdpa(q, k, v, causal, backend):
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=k.shape[1] != q.shape[1])


def phase_attention(out, dry, budget):
    import torch
    from torch.nn.attention import SDPBackend
    import llmlab.kernels as K
    dev = 'cuda' if not dry else 'cpu'
    dtype = torch.bfloat16 if not dry else torch.float32
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention) if not dry else flex_attention
    except Exception: flex = None
    tokens, width = (16384, 2048) if not dry else (128, 128)
    seqlens = (1024, 2048, 4096, 8192, 16384) if not dry else (64, 128)
    shapes = [(D, causal, T) for D, causal in ((128, True), (128, False), (64, True), (64, False)) for T in seqlens]
    for D, causal, T in shapes:
        if not budget: out('attention', cut='time budget reached', remaining=f'from D={D} causal={causal} T={T}'); return
        B, H = max(1, tokens // T), width // D
        KVH = max(1, H // 8)
        q = torch.randn(B, H, T, D, device=dev, dtype=dtype, requires_grad=True)
        k, v = (torch.randn(B, KVH, T, D, device=dev, dtype=dtype, requires_grad=True) for _ in range(2))
        do = torch.randn_like(q)
        row = dict(D=D, causal=causal, T=T, B=B, H=H, KVH=KVH)
        # correctness at the timed shape: two query heads (one group) against float32 SDPA math
        o = K.flash_attention(q, k, v, causal=causal)
        ref = _sdpa(q[:1, :2].float(), k[:1, :1].float(), v[:1, :1].float(), causal, SDPBackend.MATH)
        row['rel_err'] = rel_err(o[:1, :2], ref)
        row['ok'] = row['rel_err'] < (2e-2 if dtype == torch.bfloat16 else 1e-5)   # bf16 output rounding ~4e-3
        best = getattr(K.attn_fwd_kernel, 'best_config', None)
        row['fwd_config'] = str(best) if best and not dry else 'interpreter: last usable config'
        fwd_flops = 4 * B * H * T * T * D / (2 if causal else 1)
        # cuDNN's SDPA may not take grouped heads: it gets K/V expanded to every query head (the same FLOPs; the expansion,
        # a copy, is inside its timing, which can only flatter the others)
        expand = lambda t: t.repeat_interleave(H // KVH, 1)
        systems = {'triton': lambda: K.flash_attention(q, k, v, causal=causal),
                   'sdpa_flash': lambda: _sdpa(q, k, v, causal, SDPBackend.FLASH_ATTENTION),
                   'sdpa_cudnn': lambda: _sdpa(q, expand(k), expand(v), causal, SDPBackend.CUDNN_ATTENTION)}
        if flex is not None:
            bm = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, T, T, device=dev) if causal else None
            systems['flex'] = lambda: flex(q, k, v, block_mask=bm, enable_gqa=True)
        for name, f in systems.items():
            if dry and name != 'triton': row[f'{name}_fwd'] = 'not in the dry run (CPU)'; continue
            try:
                ms = bench(f, dry)
                row[f'{name}_fwd_tflops'] = fwd_flops / ms / 1e9
                o = f()
                ms = bench(lambda: torch.autograd.grad(f(), (q, k, v), do), dry)
                row[f'{name}_fwdbwd_tflops'] = 3.5 * fwd_flops / ms / 1e9
            except Exception as e: row[f'{name}_error'] = f'{type(e).__name__}: {str(e)[:200]}'
        for base in ('sdpa_flash', 'sdpa_cudnn'):
            for p in ('fwd', 'fwdbwd'):
                if f'{base}_{p}_tflops' in row and f'triton_{p}_tflops' in row:
                    row[f'triton_over_{base}_{p}'] = row[f'triton_{p}_tflops'] / row[f'{base}_{p}_tflops']
        out('attention', **row)
        q = k = v = do = None   # free the shape's tensors before the next one's
    for Tk in ((4096, 8192, 16384, 32768) if not dry else (300,)):
        if not budget: out('decode', cut='time budget reached', remaining=f'from Tk={Tk}'); return
        B, H, KVH, D = (8, 32, 4, 128) if not dry else (1, 8, 1, 64)
        with torch.no_grad():
            q = torch.randn(B, H, 1, D, device=dev, dtype=dtype)
            k, v = (torch.randn(B, KVH, Tk, D, device=dev, dtype=dtype) for _ in range(2))
            ref = _sdpa(q.float(), k.float(), v.float(), False, SDPBackend.MATH)
            o = K.flash_attention(q, k, v, causal=True)       # one query at the end of the cache sees every key
            row = dict(Tk=Tk, B=B, H=H, KVH=KVH, D=D, rel_err=rel_err(o, ref), n_splits=K.decode_splits(B, KVH, Tk, q.device))
            row['ok'] = row['rel_err'] < (2e-2 if dtype == torch.bfloat16 else 1e-5)
            moved = 2 * k.numel() * k.element_size()
            for name, f in {'triton': lambda: K.flash_attention(q, k, v, causal=True),
                            'sdpa': lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)}.items():
                ms = bench(f, dry)
                row[f'{name}_us'], row[f'{name}_gbps'] = ms * 1e3, moved / ms / 1e6
            row['triton_over_sdpa'] = row['sdpa_us'] / row['triton_us']
        out('decode', **row)


def phase_moe(out, dry, budget):
    import torch
    import llmlab.kernels as K
    from llmlab.moe import dispatch, experts_impls, route
    dev = 'cuda' if not dry else 'cpu'
    dtype = torch.bfloat16 if not dry else torch.float32
    layers = {'mixtral_8x7b': (8, 2, 4096, 14336), 'olmoe_1b_7b': (64, 8, 2048, 1024)} if not dry else {'tiny': (4, 2, 64, 64)}
    tokens = 8192 if not dry else 24
    for name, (E, k, H, I) in layers.items():
        if not budget: out('moe', cut='time budget reached', remaining=f'from {name}'); return
        torch.manual_seed(0)
        x = torch.randn(tokens, H, device=dev, dtype=dtype)
        gate_up = (torch.randn(E, 2 * I, H, device=dev, dtype=dtype) / H ** 0.5).requires_grad_()
        down = (torch.randn(E, H, I, device=dev, dtype=dtype) / I ** 0.5).requires_grad_()
        indices, weights, _ = route(x.float() @ torch.randn(H, E, device=dev), k)
        d = dispatch(indices, weights, E)
        rows = x[d.tokens].requires_grad_()
        row = dict(layer=name, experts=E, top_k=k, hidden=H, intermediate=I, tokens=tokens, rows=len(rows),
                   max_over_mean_load=float(d.counts.max() / d.counts.float().mean()))
        try:
            with torch.no_grad():
                ref = experts_impls['grouped_mm'](gate_up.float(), down.float(), rows.float(), d.counts)
                row['rel_err'] = rel_err(K.experts_triton(gate_up, down, rows, d.counts), ref)
            row['ok'] = row['rel_err'] < (2e-2 if dtype == torch.bfloat16 else 1e-5)   # bf16 rounding of two GEMMs ~5e-3
            dy = torch.randn(len(rows), H, device=dev, dtype=dtype)
            flops = 6 * len(rows) * H * I
            for impl in ('triton', 'grouped_mm', 'loop'):
                f = lambda: experts_impls[impl](gate_up, down, rows, d.counts)
                with torch.no_grad(): row[f'{impl}_fwd_tflops'] = flops / bench(f, dry) / 1e9
                row[f'{impl}_fwdbwd_tflops'] = 3 * flops / bench(lambda: torch.autograd.grad(f(), (rows, gate_up, down), dy), dry) / 1e9
            for p in ('fwd', 'fwdbwd'):
                row[f'triton_over_grouped_mm_{p}'] = row[f'triton_{p}_tflops'] / row[f'grouped_mm_{p}_tflops']
                row[f'triton_over_loop_{p}'] = row[f'triton_{p}_tflops'] / row[f'loop_{p}_tflops']
        except Exception as e: row['error'] = f'{type(e).__name__}: {str(e)[:300]}'
        out('moe', **row)
        x = gate_up = down = rows = dy = None
        if not dry: torch.cuda.empty_cache()


def phase_train(out, dry, budget):
    import torch
    from llmlab.model import Llama, ModelConfig
    from llmlab.memory import model_flops_per_token
    import llmlab.kernels as K
    dev = 'cuda' if not dry else 'cpu'
    cfg = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
               num_key_value_heads=4) if not dry else dict(vocab_size=128, hidden_size=64, intermediate_size=128,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    B, T = (4, 2048) if not dry else (2, 32)
    peak = 989e12 if not dry else None     # H100/H200 SXM dense bf16 tensor-core peak
    runs = [(backend, compiled) for compiled in ((False, True) if not dry else (False,)) for backend in ('sdpa', 'triton')]
    for backend, compiled in runs:   # eager first (quick, always a row), then compiled while the budget lasts
        if not budget or (compiled and budget.left() < 45): out('train', cut='time budget reached', remaining=f'{backend} compiled={compiled}'); return
        try:
            torch.manual_seed(0)
            config = ModelConfig(**cfg, attn_backend=backend)
            model = Llama(config).to(dev, torch.bfloat16 if not dry else torch.float32)
            if backend == 'triton': K.apply_kernels(model, ('rmsnorm', 'rope', 'swiglu'))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=not dry)
            ids = torch.randint(0, config.vocab_size, (B, T), device=dev)
            step = torch.compile(model) if compiled else model
            def one():
                logits = step(ids)
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.flatten())
                loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
                return loss
            t = time.time(); first = float(one()); first_s = time.time() - t
            ms = bench(one, dry)
            tps = B * T / ms * 1e3
            out('train', backend=backend, compiled=compiled, params=sum(p.numel() for p in model.parameters()), batch=B, seq=T,
                first_step_s=round(first_s, 1), loss=first, tokens_per_s=tps,
                mfu=tps * model_flops_per_token(config, T) / peak if peak else None)
        except Exception as e: out('train', backend=backend, compiled=compiled, error=f'{type(e).__name__}: {str(e)[:300]}')
        model = opt = step = None
        if not dry: torch.cuda.empty_cache()


def phase_serve(out, dry, budget):
    import torch
    from llmlab.engine import LLMEngine, PagedBatch, SamplingParams, paged_sdpa
    from llmlab.kernels.decode import triton_paged_attention
    from llmlab.model import Llama, ModelConfig
    dev = 'cuda' if not dry else 'cpu'
    dtype = torch.bfloat16 if not dry else torch.float32
    H, KVH, D, page = (32, 8, 128, 16) if not dry else (4, 2, 16, 16)
    for B, ctx in (((64, 1024), (64, 4096)) if not dry else ((3, 40),)):
        if not budget: out('serve', cut='time budget reached', remaining=f'from context {ctx}'); return
        torch.manual_seed(0)
        per = -(-ctx // page)
        k_cache, v_cache = (torch.randn(B * per * page, KVH, D, device=dev, dtype=dtype) for _ in range(2))
        tables = torch.randperm(B * per).view(B, per).tolist()                     # pages scattered over the pool
        pos = torch.arange(ctx)
        slots = torch.tensor(tables)[:, pos // page] * page + pos % page
        batch = PagedBatch(None, slots.to(dev), torch.ones(B, 1, dtype=torch.bool, device=dev), tables=tables, page=page)
        q = torch.randn(B, H, 1, D, device=dev, dtype=dtype)
        with torch.no_grad():
            row = dict(kind='paged decode kernel', requests=B, context=ctx, heads=H, kv_heads=KVH, head_dim=D, page=page,
                       rel_err=rel_err(triton_paged_attention(q, k_cache, v_cache, batch), paged_sdpa(q.float(), k_cache.float(), v_cache.float(), batch)))
            row['ok'] = row['rel_err'] < (2e-2 if dtype == torch.bfloat16 else 1e-5)
            moved = 2 * B * ctx * KVH * D * k_cache.element_size()
            for name, f in (('triton', lambda: triton_paged_attention(q, k_cache, v_cache, batch)),
                            ('sdpa_gather', lambda: paged_sdpa(q, k_cache, v_cache, batch))):
                ms = bench(f, dry)
                row[f'{name}_us'], row[f'{name}_gbps'] = ms * 1e3, moved / ms / 1e6
            row['triton_over_sdpa_gather'] = row['sdpa_gather_us'] / row['triton_us']
        out('serve', **row)
        k_cache = v_cache = None
    cfg = ModelConfig(vocab_size=32000, hidden_size=1536, intermediate_size=4096, num_hidden_layers=16, num_attention_heads=12,
                      num_key_value_heads=4, max_position_embeddings=4096) if not dry else \
          ModelConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    n, P, new = (32, 256, 64) if not dry else (3, 12, 4)
    torch.manual_seed(0)
    model = Llama(cfg).to(dev, dtype).eval()
    prompts = [torch.randint(0, cfg.vocab_size, (P,)).tolist() for _ in range(n)]
    outputs = {}
    for backend in ('triton', 'sdpa'):
        if not budget: out('serve', cut='time budget reached', remaining=f'engine {backend}'); return
        engine = LLMEngine(model, max_num_seqs=n, max_num_batched_tokens=4096, paged_attention=backend)
        engine.generate(prompts[:2], SamplingParams(max_tokens=2, ignore_eos=True))           # warm-up (compiles the kernels)
        if not dry: torch.cuda.synchronize()
        t = time.perf_counter()
        reqs = engine.generate(prompts, SamplingParams(max_tokens=new, ignore_eos=True))
        if not dry: torch.cuda.synchronize()
        dt = time.perf_counter() - t
        outputs[backend] = [r.output_ids for r in reqs]
        out('serve', kind='engine', backend=backend, params=sum(p.numel() for p in model.parameters()), requests=n, prompt=P, new=new,
            seconds=round(dt, 3), output_tokens_per_s=n * new / dt)
    same = sum(a == b for a, b in zip(outputs['triton'], outputs['sdpa']))
    out('serve', kind='engine agreement', same_outputs=same, of=n)   # bf16: a near-tie may turn one greedy token


def phase_cuda(out, dry, budget):
    import torch
    library = ROOT / 'kernels' / 'libllmlab_attn.so'
    if shutil.which('nvcc') is not None:
        r = subprocess.run(['make', '-s', 'kernels'], cwd=ROOT, capture_output=True, text=True, timeout=max(5, budget.left()))
        if r.returncode: out('cuda', built=False, error=r.stderr[-1500:]); return
    elif not library.exists(): out('cuda', skipped='nvcc is not installed and kernels/libllmlab_attn.so was not carried'); return
    if dry or not torch.cuda.is_available(): out('cuda', built=True, ran='no GPU: built only'); return
    import llmlab.kernels as K
    from torch.nn.attention import SDPBackend
    for D in (128, 64):
        B, H, T = 4, 2048 // D, 4096
        q, k, v = (torch.randn(B, H, T, D, device='cuda', dtype=torch.bfloat16) for _ in range(3))
        with torch.no_grad():
            try: o = K.cuda_attention(q, k, v, causal=True)
            except Exception as e: out('cuda', D=D, error=f'{type(e).__name__}: {e}'); continue
            row = dict(D=D, T=T, rel_err=rel_err(o, _sdpa(q.float(), k.float(), v.float(), True, SDPBackend.MATH)))
            flops = 4 * B * H * T * T * D / 2
            row['cuda_tflops'] = flops / bench(lambda: K.cuda_attention(q, k, v, causal=True), dry) / 1e9
            row['sdpa_flash_tflops'] = flops / bench(lambda: _sdpa(q, k, v, True, SDPBackend.FLASH_ATTENTION), dry) / 1e9
            row['cuda_over_sdpa_flash'] = row['cuda_tflops'] / row['sdpa_flash_tflops']
        out('cuda', **row)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--dry-run', action='store_true', help='CPU, Triton interpreter, tiny shapes, every phase')
    ap.add_argument('--phases', default=','.join(BUDGETS), help=f'comma-separated, of {",".join(BUDGETS)}')
    args = ap.parse_args(argv)
    dry = args.dry_run
    if dry: os.environ['TRITON_INTERPRET'] = '1'
    else:
        import torch
        if not torch.cuda.is_available(): sys.exit('no GPU here: run with --dry-run to check the script on the CPU')
    sys.path.insert(0, str(ROOT))
    out = Results(Path(os.environ.get('OUT') or ROOT / 'benchmarks' / 'results' / 'gpu') / 'gpu_results.jsonl')
    phases = {'env': phase_env, 'tests': phase_tests, 'attention': phase_attention, 'moe': phase_moe, 'train': phase_train,
              'serve': phase_serve, 'cuda': phase_cuda}
    for name in args.phases.split(','):
        budget = Budget(BUDGETS[name])
        try:
            if name == 'env': phase_env(out, dry)
            else: phases[name](out, dry, budget)
        except Exception as e:   # one phase failing must not cost the others their time
            out(name, error=f'{type(e).__name__}: {str(e)[:500]}')
    out('done', seconds=round(time.time() - START, 1))


if __name__ == '__main__': main()
