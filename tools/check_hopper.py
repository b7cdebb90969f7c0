"""Compile every shipped Triton kernel configuration for the H100 (sm_90a) on this machine, no GPU needed, as a real launch
would compile it, and report what the compiler made of it.

A real launch of contiguous tensors gets Triton's 16-byte specialization: pointers, strides and lengths divisible by 16
are marked so, which is what lets the compiler vectorize loads and pipeline them with cp.async. This script marks them
the same way (`--unaligned` compiles without it, as a launch with odd strides or lengths would).

Per kernel it prints one JSON line: the dots in the source and how many became wgmma (Hopper's warpgroup MMA) or stayed
mma.sync/FMA, register transposes (`tt.trans` of a value held in registers: a round trip through shared memory every
iteration), TMA copies (cp.async.bulk.tensor in the PTX), cp.async copies, pipeline stages, shared memory, registers and spill bytes (from ptxas).
Then a table. Exits 1 if any kernel uses more than 227 KB of shared memory, spills registers, or has an attention or
grouped-GEMM dot in bf16/fp16 (or fp32 with tf32) that is not on wgmma.

    python tools/check_hopper.py            # every config x head dim x causal/full in bf16, each variant at d=128
    python tools/check_hopper.py --full     # the whole cross product (a few minutes)
    python tools/check_hopper.py --quick    # one config of each kernel and of each way it loads (TMA, atomic dQ): the test suite's
Run it under another Triton with `make triton36` then `.venv-triton36/bin/python tools/check_hopper.py`.
"""
import argparse, collections, json, multiprocessing, os, re, subprocess, sys, tempfile
os.environ['TRITON_INTERPRET'] = '0'
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource
import llmlab.kernels as K
import llmlab.kernels.decode as KD, llmlab.kernels.fused as KF, llmlab.kernels.grouped as KG   # the chapters' private kernels

TARGET = GPUTarget('cuda', 90, 32)
SHARED_LIMIT = 227 * 1024
POINTERS = {'O_PART': 'fp32', 'LSE_PART': 'fp32', 'LSE': 'fp32', 'DELTA': 'fp32', 'RSTD': 'fp32', 'DW': 'fp32', 'LOSS': 'fp32', 'MASK': 'u8', 'QSEG': 'i32', 'KSEG': 'i32',
            'LABELS': 'i64', 'COS': 'bf16', 'SIN': 'bf16', 'TILE_EXPERT': 'i32', 'TILE_ROW': 'i32', 'ENDS': 'i32',
            'TABLE': 'i32', 'LENS': 'i32'}
INTS = {'H', 'GROUP', 'M', 'N', 'T'}
FLOATS = {'qk_scale', 'sm_scale', 'eps', 'smoothing', 'z_loss', 'inv_n'}
# ints a launch of contiguous tensors at lengths that are multiples of 16 sees divisible by 16: strides and lengths
ALIGNED_INTS = re.compile(r'^(s[a-z]+|Tq|Tk|M|N|n|k|T|chunk)$')
DECODE_ALIGNED_INTS = re.compile(r'^(s[a-z]+|chunk)$')   # decoding: one query, any cache length


def signature(fn, constexprs:dict, dtype:str, aligned:bool, fp32_pointers=()):
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs: sig[name] = 'constexpr'; continue
        if name.isupper() and name not in INTS: sig[name] = '*' + ('fp32' if name in fp32_pointers else POINTERS.get(name, dtype))
        elif name in FLOATS: sig[name] = 'fp32'
        else: sig[name] = 'i32'
        ints = DECODE_ALIGNED_INTS if 'decode' in fn.__name__ else ALIGNED_INTS
        if aligned and (sig[name].startswith('*') or ints.match(name)): attrs[(i,)] = [['tt.divisibility', 16]]
    return sig, attrs


def compile_one(fn, constexprs:dict, num_warps:int, num_stages:int, dtype:str='bf16', aligned:bool=True, fp32_pointers=()):
    # constexpr parameters a config leaves out take their defaults, as in a launch
    constexprs = {**{p.name: p.default for p in fn.params if p.is_constexpr and p.has_default}, **constexprs}
    sig, attrs = signature(fn, constexprs, dtype, aligned, fp32_pointers)
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()}, attrs=attrs)
    return triton.compile(src, target=TARGET, options=dict(num_warps=num_warps, num_stages=num_stages))


def _ptxas() -> str:
    "The ptxas Triton itself uses (it reads Triton's newer PTX); its signature differs between Triton versions."
    try: return get_ptxas(90).path
    except TypeError: return get_ptxas().path


def ptxas_usage(ptx:str) -> dict:
    "Registers and spill bytes as ptxas reports them for sm_90a."
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'k.ptx')
        open(path, 'w').write(ptx)
        out = subprocess.run([_ptxas(), '-arch=sm_90a', '-v', path, '-o', os.path.join(d, 'k.cubin')], capture_output=True, text=True)
    if out.returncode: raise RuntimeError(out.stderr)
    regs = int(re.search(r'Used (\d+) registers', out.stderr).group(1))
    spills = sum(int(x) for x in re.findall(r'(\d+) bytes spill (?:stores|loads)', out.stderr))
    return {'registers': regs, 'spill_bytes': spills}


def ops(ir:str) -> collections.Counter:
    return collections.Counter(re.findall(r'= ((?:tt|ttg|ttng|nvws)\.[a-z_]+)', ir))


def report(k) -> dict:
    ttir, ttgir, ptx = ops(k.asm['ttir']), ops(k.asm['ttgir']), k.asm['ptx']
    return {'dots': ttir['tt.dot'], 'wgmma': ttgir['ttng.warp_group_dot'], 'not_wgmma': ttgir['tt.dot'],
            'register_transposes': ttgir['tt.trans'],
            'tma': ptx.count('cp.async.bulk.tensor'),
            'cp_async': ttgir['ttg.async_copy_global_to_local'], 'shared': k.metadata.shared, **ptxas_usage(ptx)}


def _attention(D, causal, dtype='bf16', **variant):
    return dict(D=D, BLOCK_D=D, CAUSAL=causal, WINDOW=variant.get('window', False), HAS_MASK=variant.get('mask', False),
                HAS_SEG=variant.get('docs', False), PRECISION='ieee' if dtype == 'fp32' else 'tf32')


def _with_tma(kernel, args:dict, dtype:str) -> dict:
    "A launch on an H100 of aligned 2-byte tensors may use the TMA configs: the forward kernel is told so (TMA_OK)."
    return {**args, 'TMA_OK': dtype != 'fp32'} if 'TMA_OK' in kernel.fn.arg_names else args


def cases(full=False):
    "(kernel, fn, constexprs, config, dtype, float32 pointers, variant name, needs wgmma): each config a launch can use"
    kernels = [('attn_fwd', K.attn_fwd_kernel), ('attn_bwd_dkdv', K.attn_dkdv_kernel), ('attn_bwd_dq', K.attn_dq_kernel)]
    for dtype in ('bf16', 'fp16', 'fp32'):
        for D in (64, 128):
            for causal in (True, False):
                for variant in ('plain', 'window', 'mask', 'docs', 'atomic dQ'):
                    if variant == 'atomic dQ' and dtype == 'fp32': continue        # float32 always takes the two-kernel path
                    if not (full or (dtype == 'bf16' and variant in ('plain', 'atomic dQ'))
                            or (D == 128 and causal and (dtype != 'fp16' or variant == 'plain'))): continue
                    base = _attention(D, causal, dtype, window=variant == 'window', mask=variant == 'mask', docs=variant == 'docs')
                    for name, kernel in kernels:
                        if variant == 'atomic dQ' and name != 'attn_bwd_dkdv': continue
                        args = _with_tma(kernel, {**base, **({'ATOMIC_DQ': variant == 'atomic dQ'} if name == 'attn_bwd_dkdv' else {})}, dtype)
                        for c in K.usable_configs(kernel, args):
                            # IEEE float32 dots have no tensor-core form; atomic dQ accumulates into a float32 buffer
                            yield (name, kernel.fn, {**args, **c.kwargs}, c, dtype, ('DQ',) if variant == 'atomic dQ' else (),
                                   f'{variant} {dtype}', dtype != 'fp32')
    for D in (64, 128):
        for rows in (16, 64):   # one query x GQA 8:1 (padded to 16), and the most a decode program holds
            args = dict(D=D, BLOCK_D=D, BLOCK_R=rows, CAUSAL=True, WINDOW=False, HAS_MASK=False, PRECISION='tf32')
            for c in K.attn_decode_kernel.configs:   # 16 rows are below wgmma's 64: the decode reads keys, it is not dot-bound
                yield 'attn_decode', K.attn_decode_kernel.fn, {**args, **c.kwargs}, c, 'bf16', (), f'decode {rows} rows bf16', rows >= 64
    for D in (64, 128):   # the serving engine's decoding: keys read in place through block tables of 16-slot pages
        args = dict(PAGE=16, D=D, BLOCK_D=D, BLOCK_R=16, BLOCK_N=KD.PAGED_BLOCK_N, PRECISION='tf32')
        yield 'paged_decode', KD._paged_decode, args, triton.Config({}, num_warps=4, num_stages=3), 'bf16', (), 'paged decode bf16', False
    combine = dict(D=128, BLOCK_D=128, BLOCK_S=64)
    yield 'attn_decode_combine', KD._attn_decode_combine, combine, triton.Config({}, num_warps=4, num_stages=1), 'bf16', (), 'bf16', False
    one = triton.Config({}, num_warps=4, num_stages=1)
    for n in (1024, 4096, 8192):                        # hidden sizes up to 8192 (Llama 3 70B), with the launcher's warps
        rows = triton.Config({}, num_warps=K.row_warps(n), num_stages=1)
        yield 'rmsnorm_fwd', KF._rmsnorm_fwd, {'BLOCK': n, 'ROWS': max(1, min(16, 2048 // n))}, rows, 'bf16', (), 'bf16', False
        yield 'rmsnorm_bwd', KF._rmsnorm_bwd, {'BLOCK': n}, rows, 'bf16', (), 'bf16', False
    yield 'rope', KF._rope, {'HALF': 64, 'BLOCK': 64, 'BLOCK_T': 16, 'SIGN': 1}, one, 'bf16', (), 'bf16', False
    yield 'swiglu_fwd', KF._swiglu_fwd, {'BLOCK': 1024}, one, 'bf16', (), 'bf16', False
    yield 'swiglu_bwd', KF._swiglu_bwd, {'BLOCK': 1024}, one, 'bf16', (), 'bf16', False
    yield 'cross_entropy_rows', KF._ce_rows, {'BLOCK': 4096}, one, 'bf16', (), 'bf16', False
    for dtype in ('bf16', 'fp16'):   # the experts' grouped GEMM: forward, dX (weights read transposed), dW; dots on wgmma
        for name, fn, extra, wgrad in (('grouped_mm_fwd', KG._grouped_mm, {'TRANS_W': False}, False),
                                       ('grouped_mm_dx', KG._grouped_mm, {'TRANS_W': True}, False),
                                       ('grouped_mm_wgrad', KG._grouped_mm_wgrad, {}, True)):
            c = KG.grouped_mm_config(torch.bfloat16, weight_grad=wgrad)
            config = triton.Config({}, num_warps=c.pop('num_warps'), num_stages=c.pop('num_stages'))
            yield name, fn, {**c, **extra, 'PRECISION': 'tf32'}, config, dtype, (), dtype, True


def one_per_kind(cases):
    "The first case of each kernel, and of each way it loads its operands (TMA descriptors, atomic dQ): what `--quick` compiles."
    seen = set()
    for case in cases:
        kind = (case[0], bool(case[2].get('TMA')), bool(case[2].get('ATOMIC_DQ')))
        if kind not in seen: seen.add(kind); yield case


def _compile_case(i:int) -> dict:
    name, fn, constexprs, config, dtype, fp32_pointers, variant, needs_wgmma = CASES[i]
    r = report(compile_one(fn, constexprs, config.num_warps, config.num_stages, dtype, ALIGNED, fp32_pointers))
    problems = ([f"shared memory {r['shared']} B > {SHARED_LIMIT}"] if r['shared'] > SHARED_LIMIT else []) + \
               ([f"{r['spill_bytes']} bytes of register spills"] if r['spill_bytes'] else []) + \
               ([f"{r['dots'] - r['wgmma']} of {r['dots']} dots not on wgmma"] if needs_wgmma and r['wgmma'] < r['dots'] else [])
    return {'kernel': name, 'variant': variant,
            'constexprs': {k: v for k, v in constexprs.items() if k in ('D', 'CAUSAL', 'BLOCK', 'BLOCK_M', 'BLOCK_N', 'BLOCK_R', 'TMA', 'WARP_SPEC')},
            'num_warps': config.num_warps, 'num_stages': config.num_stages, **r, 'problems': problems}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--full', action='store_true', help='every variant at every head dim, causal and full')
    ap.add_argument('--quick', action='store_true', help='one config of each kernel and of each way it loads (the test suite\'s check)')
    ap.add_argument('--unaligned', action='store_true', help="without the 16-byte specialization (odd strides or lengths)")
    ap.add_argument('--jobs', type=int, default=os.cpu_count(), help='compile in this many processes')
    args = ap.parse_args(argv)
    print(json.dumps({'triton': triton.__version__, 'target': 'sm_90a', 'aligned': not args.unaligned}), flush=True)
    global CASES, ALIGNED
    CASES, ALIGNED = list(one_per_kind(cases(args.full)) if args.quick else cases(args.full)), not args.unaligned
    with multiprocessing.get_context('fork').Pool(args.jobs) as pool:   # compiling is CPU-bound and independent
        rows = []
        for row in pool.imap(_compile_case, range(len(CASES))):
            rows.append(row); print(json.dumps(row), flush=True)
    failures = sum(bool(r['problems']) for r in rows)
    print("\n| kernel | variant | D | causal | block | warps | stages | dots | wgmma | reg. transposes | TMA | cp.async | shared KB | regs | spills | problems |")
    print('|' + '---|' * 16)
    for r in rows:
        c = r['constexprs']
        block = f"{c['BLOCK_M']}x{c['BLOCK_N']}" + (' TMA' if c.get('TMA') else '') + (' WS' if c.get('WARP_SPEC') else '') if 'BLOCK_M' in c else f"{c['BLOCK_R']}x{c['BLOCK_N']}" if 'BLOCK_R' in c else str(c.get('BLOCK', ''))
        print(f"| {r['kernel']} | {r['variant']} | {c.get('D', '')} | {c.get('CAUSAL', '')} | {block} | {r['num_warps']} | {r['num_stages']} "
              f"| {r['dots']} | {r['wgmma']} | {r['register_transposes']} | {r['tma']} | {r['cp_async']} | {r['shared'] / 1024:.0f} "
              f"| {r['registers']} | {r['spill_bytes']} | {'; '.join(r['problems']) or 'ok'} |")
    print(f"\n{len(rows)} kernels compiled, {failures} with problems (triton {triton.__version__})")
    return 1 if failures else 0


if __name__ == '__main__': sys.exit(main())
