"""Serving under load: `llmlab serve` against transformers' own continuous batching (`transformers serve --continuous-batching`)
and llmlab's one-request-at-a-time baseline (`llmlab serve --max-num-seqs 1`), as `vllm bench serve` measures a server.

The same SmolLM2-135M-Instruct weights in float32 on the CPU, each server in its own process with 2 compute threads, the
same client: streaming `/v1/completions` requests, greedy, arriving as a Poisson process at several rates (and all at
once: saturation), the same prompts and arrival times for every server. Two prompt sets:
- mixed: prompts of 16 to 512 tokens cut from the standard library's source, 64 new tokens each;
- shared prefix: one ~400-token preamble (CPython's licence) followed by a different short question, 32 new tokens each
  (what prefix caching is for: a system prompt, few-shot examples).
Reported per server and rate: request throughput, output tokens/s, time to first token (TTFT), time per output token after
the first (TPOT) and end-to-end latency, each as mean, median and p99. Output tokens are what the server reports in `usage`.

    python benchmarks/bench_serve.py [--quick]
"""
import argparse, asyncio, atexit, json, os, platform, random, signal, socket, subprocess, sys, time
from pathlib import Path

import httpx
import numpy as np

os.environ.setdefault('HF_HUB_OFFLINE', '1')
RESULTS = Path(__file__).resolve().parent / 'results'
THREADS = 2


def model_dir() -> Path:
    from llmlab.checkpoints import cached_gguf, resolve_source
    return cached_gguf(resolve_source('smollm2-135m-instruct'), progress=False)


def prompt_sets(tok, seed:int=0, n_mixed:int=48, n_shared:int=24) -> dict[str, list[tuple[str, int]]]:
    "(prompt text, max_tokens) lists: mixed lengths from stdlib source; a shared ~400-token preamble with distinct questions."
    import argparse as a, asyncio as b, json as c, logging as d, pathlib as e, typing as f
    from llmlab.eval import python_license_text
    rng = random.Random(seed)
    source = ''.join(Path(m.__file__).read_text() for m in (a, b.base_events, c.decoder, d, e, f))
    ids = tok(source).input_ids
    mixed = []
    for _ in range(n_mixed):
        n = int(np.exp(rng.uniform(np.log(16), np.log(512))))     # log-uniform lengths: many short, some long
        start = rng.randrange(len(ids) - n)
        mixed.append((tok.decode(ids[start:start + n]), 64))
    preamble = tok.decode(tok(python_license_text()).input_ids[:400])
    topics = ['the licence', 'Python', 'the PSF', 'CNRI', 'BeOpen', 'Zope', 'copyright', 'warranty', 'derivative works', 'trademarks',
              'the GPL', 'Guido', 'Virginia law', 'binaries', 'source code', 'damages', 'termination', 'notices', 'the agreement', 'CWI',
              'versions', 'history', 'contributors', 'open source']
    shared = [(f'{preamble}\n\nQuestion: what does this text say about {t}?\nAnswer:', 32) for t in topics[:n_shared]]
    return {'mixed': mixed, 'shared prefix': shared}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def start_server(kind:str, directory:Path, port:int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    py = sys.executable
    if kind == 'transformers':
        cmd = [str(Path(py).parent / 'transformers'), 'serve', str(directory), '--continuous-batching', '--port', str(port),
               '--device', 'cpu', '--dtype', 'float32']
    else:
        cmd = [py, '-m', 'llmlab.cli', 'serve', str(directory), '--port', str(port), '--kv-cache-gib', '1', '--log-level', 'warning',
               '--max-num-seqs', '1' if kind == 'llmlab sequential' else '32']
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    atexit.register(lambda: proc.poll() is None and os.killpg(proc.pid, signal.SIGKILL))
    for _ in range(1200):
        try:
            if httpx.get(f'http://127.0.0.1:{port}/health', timeout=1).status_code == 200: return proc
        except httpx.TransportError: pass
        if proc.poll() is not None: raise RuntimeError(f'{kind} server exited with {proc.returncode}: {" ".join(cmd)}')
        time.sleep(0.25)
    raise RuntimeError(f'{kind} server did not start')


def stop_server(proc:subprocess.Popen):
    os.killpg(proc.pid, signal.SIGTERM)
    try: proc.wait(30)
    except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()


async def one_request(client:httpx.AsyncClient, model:str, prompt:str, max_tokens:int, delay:float, t0:float) -> dict:
    "Send at t0 + delay; time the first text chunk and the last; the server's own count of output tokens."
    await asyncio.sleep(max(0.0, t0 + delay - time.perf_counter()))
    sent = time.perf_counter()
    first = last = None; usage = None; chunks = 0
    body = {'model': model, 'prompt': prompt, 'max_tokens': max_tokens, 'temperature': 0, 'stream': True,
            'stream_options': {'include_usage': True}}
    async with client.stream('POST', '/v1/completions', json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith('data: ') or line == 'data: [DONE]': continue
            event = json.loads(line[6:])
            if event.get('usage'): usage = event['usage']
            if any(c.get('text') for c in event.get('choices', [])):
                last = time.perf_counter(); first = first or last; chunks += 1
    done = time.perf_counter()
    n = (usage or {}).get('completion_tokens', chunks)
    return {'sent': sent, 'ttft': first - sent, 'e2e': done - sent, 'n_out': n, 'done': done,
            'tpot': (last - first) / (n - 1) if n > 1 else None}


async def run_load(url:str, model:str, prompts:list, rate:float, seed:int) -> list[dict]:
    "Poisson arrivals at `rate` requests/s (inf: all at once), the same for every server."
    rng = np.random.default_rng(seed)
    gaps = np.zeros(len(prompts)) if rate == float('inf') else rng.exponential(1 / rate, len(prompts))
    delays = np.cumsum(gaps) - gaps[0]
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600)) as client:
        t0 = time.perf_counter()
        return await asyncio.gather(*[one_request(client, model, p, m, float(d), t0) for (p, m), d in zip(prompts, delays)])


def summarize(rows:list[dict]) -> dict:
    span = max(r['done'] for r in rows) - min(r['sent'] for r in rows)
    out = {'requests': len(rows), 'duration_s': round(span, 2), 'request_throughput': round(len(rows) / span, 3),
           'output_tokens': sum(r['n_out'] for r in rows), 'output_tokens_per_s': round(sum(r['n_out'] for r in rows) / span, 1)}
    for k in ('ttft', 'tpot', 'e2e'):
        v = np.array([r[k] for r in rows if r[k] is not None]) * 1000
        out[f'{k}_ms'] = {'mean': round(float(v.mean()), 1), 'p50': round(float(np.median(v)), 1), 'p99': round(float(np.percentile(v, 99)), 1)}
    return out


def plot(results:dict, path:Path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    sets = sorted({r['prompts'] for r in results['runs']})
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.2), squeeze=False)
    for ax, s in zip(axes[0], sets):
        for system in results['systems']:
            rs = sorted((r for r in results['runs'] if r['prompts'] == s and r['system'] == system), key=lambda r: float(r['rate']))
            ax.plot([r['output_tokens_per_s'] for r in rs], [r['ttft_ms']['p50'] for r in rs], 'o-', label=system)
            for r in rs: ax.annotate(r['rate'].replace('.0', '') + '/s' if r['rate'] != 'inf' else 'all', (r['output_tokens_per_s'], r['ttft_ms']['p50']),
                                     textcoords='offset points', xytext=(4, 4), fontsize=7)
        ax.set(title=f'{s} prompts (points: arrival rate, requests/s)', xlabel='output tokens/s (achieved)', ylabel='median time to first token (ms)', yscale='log')
        ax.grid(alpha=0.3); ax.legend()
    fig.suptitle(f'SmolLM2-135M on {THREADS} CPU threads: latency against throughput, Poisson arrivals at increasing rates')
    fig.tight_layout(); fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='fewer prompts and rates (a smoke run)')
    ap.add_argument('--rates', default='0.5,1,2,inf', help='requests per second, comma-separated; inf: all at once')
    ap.add_argument('--systems', default='llmlab serve,transformers,llmlab sequential')
    args = ap.parse_args()
    from transformers import AutoTokenizer
    d = model_dir()
    tok = AutoTokenizer.from_pretrained(str(d))
    sets = prompt_sets(tok, n_mixed=12 if args.quick else 48, n_shared=8 if args.quick else 24)
    rates = [float(r) for r in ('2,inf' if args.quick else args.rates).split(',')]
    systems = args.systems.split(',')
    results = {'model': 'SmolLM2-135M-Instruct', 'dtype': 'float32', 'threads': THREADS, 'machine': platform.processor() or platform.machine(),
               'torch': __import__('torch').__version__, 'transformers': __import__('transformers').__version__,
               'systems': systems, 'rates': [str(r) for r in rates], 'runs': []}
    for system in systems:
        port = free_port()
        proc = start_server(system, d, port)
        try:
            name = str(d)
            asyncio.run(run_load(f'http://127.0.0.1:{port}', name, [(p, 4) for p, _ in sets['mixed'][:2]], float('inf'), 0))   # warm up
            for set_name, prompts in sets.items():
                for rate in rates:
                    if system == 'llmlab sequential' and rate not in (rates[0], float('inf')): continue   # its curve is flat: two points
                    rows = asyncio.run(run_load(f'http://127.0.0.1:{port}', name, prompts, rate, seed=1))
                    s = {'system': system, 'prompts': set_name, 'rate': str(rate), **summarize(rows)}
                    results['runs'].append(s)
                    print(f"{system:18s} {set_name:13s} rate {rate:>4}: {s['request_throughput']:6.2f} req/s {s['output_tokens_per_s']:7.1f} tok/s  "
                          f"TTFT p50 {s['ttft_ms']['p50']:8.0f} ms p99 {s['ttft_ms']['p99']:8.0f}  TPOT p50 {s['tpot_ms']['p50']:6.0f} ms  "
                          f"e2e p50 {s['e2e_ms']['p50']:7.0f} ms", flush=True)
        finally:
            stop_server(proc)
    ratios = {}
    for set_name in sets:
        def best(system): return max((r for r in results['runs'] if r['system'] == system and r['prompts'] == set_name),
                                     key=lambda r: r['output_tokens_per_s'], default=None)
        ours, hf, seq = best('llmlab serve'), best('transformers'), best('llmlab sequential')
        ratios[set_name] = {'vs transformers (saturation tok/s)': hf and round(ours['output_tokens_per_s'] / hf['output_tokens_per_s'], 2),
                            'vs sequential (saturation tok/s)': seq and round(ours['output_tokens_per_s'] / seq['output_tokens_per_s'], 2)}
    results['ratios'] = ratios
    print(json.dumps(ratios, indent=1))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ('bench_serve_quick.json' if args.quick else 'bench_serve.json')
    out.write_text(json.dumps(results, indent=1))
    plot(results, out.with_suffix('.png'))
    print(f'wrote {out} and {out.with_suffix(".png")}')


if __name__ == '__main__':
    main()
