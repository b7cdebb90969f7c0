"""Peak memory of the fused linear cross-entropy against the plain loss, on the CPU (SmolLM2's output layer).

The plain loss is what a training loop does: logits = hidden @ W.T, F.cross_entropy, backward. The fused loss is
llmlab.kernels.fused_linear_cross_entropy (Triton; on a machine without a GPU it runs in Triton's interpreter). Both
compute the loss and the gradients of the hidden states and of the weight, in float32, for 8,192 tokens, a
49,152-token vocabulary and width 576. Each runs in a fresh process; the figure is the growth of the process's peak
resident memory (ru_maxrss) over its resident memory just before the loss, after the inputs exist. The gradients of
the two are compared too, so the saving is not bought with a wrong answer.

    python benchmarks/bench_kernels.py [--tokens 8192] [--vocab 49152] [--hidden 576]
"""
import argparse, atexit, json, os, platform, shutil, subprocess, sys
from pathlib import Path

CHILD = r'''
import os, resource, sys, time, torch
import torch.nn.functional as F
mode, N, V, H = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if mode == 'fused': import llmlab.kernels as K   # imported (and triton warmed up) before the baseline is taken
g = torch.Generator().manual_seed(0)
hidden = torch.randn(N, H, generator=g).requires_grad_()
weight = (0.02 * torch.randn(V, H, generator=g)).requires_grad_()
labels = torch.randint(0, V, (N,), generator=g)
if mode == 'fused': K.fused_linear_cross_entropy(hidden[:8], weight[:64], labels[:8] % 64)   # compile/interpret once, small
def rss(): return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
before = rss()
t0 = time.perf_counter()
if mode == 'plain': loss = F.cross_entropy(hidden @ weight.t(), labels)
else: loss = K.fused_linear_cross_entropy(hidden, weight, labels, chunk_size=1024)
loss.backward()
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
torch.save({'loss': loss.detach(), 'grad_hidden': hidden.grad, 'grad_weight': weight.grad}, sys.argv[5])
print(f'{peak - before} {seconds}')
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--tokens', type=int, default=8192)
    ap.add_argument('--vocab', type=int, default=49152)
    ap.add_argument('--hidden', type=int, default=576)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'bench_kernels.json'))
    a = ap.parse_args()
    import tempfile, torch
    tmp = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, tmp, True)   # each mode's gradients: hundreds of MB
    results = {}
    for mode in ('plain', 'fused'):
        r = subprocess.run([sys.executable, '-c', CHILD, mode, str(a.tokens), str(a.vocab), str(a.hidden), str(tmp / f'{mode}.pt')],
                           capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '2')})
        if r.returncode: raise SystemExit(r.stderr[-3000:])
        extra, seconds = r.stdout.split()[-2:]
        results[mode] = {'peak_extra_mb': int(extra) / 2**20, 'seconds': float(seconds)}
    plain, fused = torch.load(tmp / 'plain.pt'), torch.load(tmp / 'fused.pt')
    agreement = {k: float((plain[k] - fused[k]).abs().max()) for k in plain}
    ratio = results['plain']['peak_extra_mb'] / results['fused']['peak_extra_mb']
    logits_mb = a.tokens * a.vocab * 4 / 2**20
    print(f"tokens {a.tokens}, vocabulary {a.vocab}, width {a.hidden}, float32; one float32 logits tensor is {logits_mb:.0f} MB")
    print(f"{'':8}{'peak memory over inputs':>26}{'time':>10}")
    for mode in ('plain', 'fused'):
        print(f"{mode:8}{results[mode]['peak_extra_mb']:>23.0f} MB{results[mode]['seconds']:>9.1f}s")
    print(f"fused uses {ratio:.1f}x less memory (time is not comparable here: the fused kernel runs in Triton's interpreter)")
    print('max |plain - fused|: ' + ', '.join(f'{k} {v:.1e}' for k, v in agreement.items()))
    out = {'benchmark': 'fused linear cross-entropy memory', 'tokens': a.tokens, 'vocab': a.vocab, 'hidden': a.hidden,
           'dtype': 'float32', 'results': results, 'memory_ratio': ratio, 'max_abs_difference': agreement,
           'machine': platform.machine(), 'torch': torch.__version__, 'interpreter': not torch.cuda.is_available(),
           'command': 'python benchmarks/bench_kernels.py'}
    Path(a.out).write_text(json.dumps(out, indent=1) + '\n')


if __name__ == '__main__': main()
