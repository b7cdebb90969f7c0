"""Compile every shipped Triton kernel configuration for the H100 (sm_90) on this machine, no GPU needed.

Prints one JSON line per compiled kernel (shared memory, registers, spills, wgmma) and exits 1 if any uses more than
227 KB of shared memory, spills registers, or (attention kernels) does not use wgmma. Run without TRITON_INTERPRET.
"""
import json, os, re, subprocess, sys, tempfile
os.environ['TRITON_INTERPRET'] = '0'
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource
import llmlab.kernels as K

TARGET = GPUTarget('cuda', 90, 32)
SHARED_LIMIT = 227 * 1024
POINTERS = {'LSE': 'fp32', 'DELTA': 'fp32', 'RSTD': 'fp32', 'DW': 'fp32', 'LOSS': 'fp32', 'MASK': 'u8', 'QSEG': 'i32', 'KSEG': 'i32',
            'LABELS': 'i64', 'COS': 'bf16', 'SIN': 'bf16'}
INTS = {'H', 'GROUP', 'M', 'N', 'T'}
FLOATS = {'qk_scale', 'sm_scale', 'eps', 'smoothing', 'z_loss', 'inv_n'}


def compile_one(fn, constexprs:dict, num_warps:int, num_stages:int, dtype:str='bf16'):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs: sig[name] = 'constexpr'
        elif name.isupper() and name not in INTS: sig[name] = '*' + POINTERS.get(name, dtype)
        elif name in FLOATS: sig[name] = 'fp32'
        else: sig[name] = 'i32'
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=TARGET, options=dict(num_warps=num_warps, num_stages=num_stages))


def ptxas_usage(ptx:str) -> dict:
    "Registers and spill bytes as ptxas reports them for sm_90a."
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'k.ptx')
        open(path, 'w').write(ptx)
        ptxas = get_ptxas(90).path                     # the ptxas Triton itself uses (it reads Triton's newer PTX)
        out = subprocess.run([ptxas, '-arch=sm_90a', '-v', path, '-o', os.path.join(d, 'k.cubin')], capture_output=True, text=True)
    if out.returncode: raise RuntimeError(out.stderr)
    regs = int(re.search(r'Used (\d+) registers', out.stderr).group(1))
    spills = sum(int(x) for x in re.findall(r'(\d+) bytes spill (?:stores|loads)', out.stderr))
    return {'registers': regs, 'spill_bytes': spills}


def cases():
    attn = dict(WINDOW=False, HAS_MASK=False, HAS_SEG=False, PRECISION='tf32')
    for D in (64, 128):
        for causal in (True, False):
            base = dict(D=D, BLOCK_D=D, CAUSAL=causal, **attn)
            for c in K.FWD_CONFIGS: yield 'attn_fwd', K.attn_fwd_kernel.fn, {**base, **c.kwargs}, c, True
            for c in K.DKDV_CONFIGS: yield 'attn_bwd_dkdv', K.attn_dkdv_kernel.fn, {**base, **c.kwargs, 'ATOMIC_DQ': False}, c, True
            for c in K.DQ_CONFIGS: yield 'attn_bwd_dq', K.attn_dq_kernel.fn, {**base, **c.kwargs}, c, True
    one = triton.Config({}, num_warps=4, num_stages=1)
    for n in (1024, 4096, 8192):                        # hidden sizes up to 8192 (Llama 3 70B), with the launcher's warps
        rows = triton.Config({}, num_warps=K.row_warps(n), num_stages=1)
        yield 'rmsnorm_fwd', K._rmsnorm_fwd, {'BLOCK': n, 'ROWS': max(1, min(16, 2048 // n))}, rows, False
        yield 'rmsnorm_bwd', K._rmsnorm_bwd, {'BLOCK': n}, rows, False
    yield 'rope', K._rope, {'HALF': 64, 'BLOCK': 64, 'BLOCK_T': 16, 'SIGN': 1}, one, False
    yield 'swiglu_fwd', K._swiglu_fwd, {'BLOCK': 1024}, one, False
    yield 'swiglu_bwd', K._swiglu_bwd, {'BLOCK': 1024}, one, False
    yield 'cross_entropy_rows', K._ce_rows, {'BLOCK': 4096}, one, False


def main():
    failures = 0
    for name, fn, constexprs, config, needs_wgmma in cases():
        k = compile_one(fn, constexprs, config.num_warps, config.num_stages)
        usage = ptxas_usage(k.asm['ptx'])
        wgmma = 'wgmma' in k.asm['ptx']
        problems = ([f"shared memory {k.metadata.shared} B > {SHARED_LIMIT}"] if k.metadata.shared > SHARED_LIMIT else []) + \
                   ([f"{usage['spill_bytes']} bytes of register spills"] if usage['spill_bytes'] else []) + \
                   (["no wgmma"] if needs_wgmma and not wgmma else [])
        failures += bool(problems)
        print(json.dumps({'kernel': name, 'constexprs': {k_: v for k_, v in constexprs.items() if k_ in ('D', 'CAUSAL', 'BLOCK', 'BLOCK_M', 'BLOCK_N')},
                          'num_warps': config.num_warps, 'num_stages': config.num_stages, 'shared': k.metadata.shared,
                          **usage, 'wgmma': wgmma, 'problems': problems}), flush=True)
    sys.exit(1 if failures else 0)


if __name__ == '__main__': main()
