"""Retrieval-augmented generation on this CPU, over the benchmark built from the Python standard library's docstrings
(`llmlab.rag.python_docs_qa`: the modules in `DOCS_QA_MODULES`, 100-word passages, `--questions` questions with seed 0,
half "what is the default of parameter p of f", half "which function is described as ...").

- Retrieval speed (`--phase speed`): indexing time and queries a second, one thread, for bm25s (llmlab's `BM25Retriever`)
  against rank-bm25's `BM25Okapi` (the same tokens), and for faiss (flat and HNSW) against a plain NumPy search (a matrix
  product and `argpartition`) over the same MiniLM embeddings; each with its recall@10 of the supporting document, so
  that speed is compared at the recall it buys (flat and NumPy are both exact).
- Answers (`--phase answers`): SmolLM2-135M-Instruct (float32, greedy, at most `--max-new-tokens` new tokens, FlashRAG's prompt), closed-book
  and with the top 3 passages from BM25, dense MiniLM (flat), their reciprocal-rank fusion, and BM25 read by ITER-RETGEN (2
  rounds). EM, F1 and acc (a golden answer in the reply) with 95% intervals; each retriever against closed-book, paired
  by question (`llmlab.stats.compare`: t interval, bootstrap interval, permutation p, McNemar's exact p).

    python benchmarks/bench_rag.py [--phase speed|answers|all] [--questions 120] [--max-new-tokens 32]
"""
import argparse, json, os, platform, sys, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
RESULTS = Path(__file__).resolve().parent / 'results'


def corpus_and_questions(n:int):
    from llmlab.rag import python_docs_qa
    from llmlab.retrieval import chunk_documents
    docs, qs = python_docs_qa(n_questions=n, seed=0)
    return docs, chunk_documents(docs, words=100), qs


def recall_at(idx_rows, passages, qs, k=10) -> float:
    "The fraction of questions whose supporting document has a passage among the first k."
    hits = [any(i >= 0 and passages[i]['doc_id'] in q['metadata']['supporting_docs'] for i in row[:k]) for row, q in zip(idx_rows, qs)]
    return sum(hits) / len(hits)


def timed(fn, repeat=3):
    best, out = float('inf'), None
    for _ in range(repeat):
        t = time.perf_counter(); out = fn(); best = min(best, time.perf_counter() - t)
    return best, out


def run_speed(n:int) -> dict:
    import numpy as np, torch, faiss
    from rank_bm25 import BM25Okapi
    from llmlab.retrieval import BM25Retriever, DenseRetriever, SentenceEmbedder
    torch.set_num_threads(1); faiss.omp_set_num_threads(1)
    docs, passages, qs = corpus_and_questions(n)
    queries = [q['question'] for q in qs]
    res = {'passages': len(passages), 'documents': len(docs), 'queries': len(queries)}
    # BM25: bm25s vs rank-bm25 on the same word lists
    ours = BM25Retriever()
    t_ours, _ = timed(lambda: ours.index(passages, progress=False))
    tokens = ours.tokenize([p['contents'] for p in passages])
    t_theirs, theirs = timed(lambda: BM25Okapi(tokens))
    q_ours, (_, idx) = timed(lambda: ours.search(queries, 10))
    qtok = ours.tokenize(queries)
    q_theirs, scores = timed(lambda: np.stack([theirs.get_scores(t) for t in qtok]), repeat=1)
    idx_theirs = np.argsort(-scores, axis=1, kind='stable')[:, :10]
    res['bm25'] = {'bm25s': {'index_s': t_ours, 'queries_per_s': len(queries) / q_ours, 'recall@10': recall_at(idx, passages, qs)},
                   'rank_bm25': {'index_s': t_theirs, 'queries_per_s': len(queries) / q_theirs, 'recall@10': recall_at(idx_theirs, passages, qs)}}
    # dense: one embedding of the passages, then each search over it
    emb = SentenceEmbedder()
    t_embed, P = timed(lambda: emb.encode([p['contents'] for p in passages]), repeat=1)
    Q = emb.encode(queries)
    flat, hnsw = DenseRetriever(emb), DenseRetriever(emb, 'hnsw')
    def build(r):
        r.faiss_index = r._new_index(emb.dim); r.faiss_index.add(P); r.passages = passages
    t_flat, _ = timed(lambda: build(flat)); t_hnsw, _ = timed(lambda: build(hnsw), repeat=1)
    hnsw.faiss_index.hnsw.efSearch = hnsw.ef_search
    qf, (_, i_flat) = timed(lambda: flat.faiss_index.search(Q, 10))
    qh, (_, i_hnsw) = timed(lambda: hnsw.faiss_index.search(Q, 10))
    def numpy_search():
        s = Q @ P.T
        top = np.argpartition(-s, 10, axis=1)[:, :10]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), axis=1), 1)
    qn, i_np = timed(numpy_search)
    agree = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i_hnsw, i_flat)]))
    res['dense'] = {'embed_passages_s': t_embed, 'embedder': emb.name,
                    'faiss_flat': {'index_s': t_flat, 'queries_per_s': len(queries) / qf, 'recall@10': recall_at(i_flat, passages, qs)},
                    'faiss_hnsw': {'index_s': t_hnsw, 'queries_per_s': len(queries) / qh, 'recall@10': recall_at(i_hnsw, passages, qs),
                                   'overlap_with_exact@10': agree},
                    'numpy': {'index_s': 0.0, 'queries_per_s': len(queries) / qn, 'recall@10': recall_at(i_np, passages, qs)}}
    return res


def run_answers(n:int, new:int=32) -> dict:
    import numpy as np, torch
    from llmlab.checkpoints import load_pretrained, load_tokenizer
    from llmlab.eval import EvalModel
    from llmlab.rag import IterativePipeline, Pipeline, score_outputs, qa_row
    from llmlab.retrieval import BM25Retriever, DenseRetriever, FusionRetriever, SentenceEmbedder
    from llmlab.stats import clt_stderr, compare
    torch.set_num_threads(2)
    docs, passages, qs = corpus_and_questions(n)
    rows = [qa_row(q, q['id']) for q in qs]
    tok = load_tokenizer('smollm2-135m-instruct')
    lm = EvalModel(load_pretrained('smollm2-135m-instruct'), tok, batch_size=16, progress=True)
    bm25 = BM25Retriever().index(passages, progress=False)
    dense = DenseRetriever(SentenceEmbedder()).index(passages, progress=False)
    pipelines = {'closed-book': Pipeline(max_new_tokens=new), 'bm25': Pipeline(bm25, 3, max_new_tokens=new),
                 'dense (MiniLM, flat)': Pipeline(dense, 3, max_new_tokens=new),
                 'hybrid (RRF)': Pipeline(FusionRetriever([bm25, dense]), 3, max_new_tokens=new),
                 'bm25, ITER-RETGEN x2': IterativePipeline(bm25, 3, 2, max_new_tokens=new)}
    per, out = {}, {}
    for name, pipe in pipelines.items():
        t = time.perf_counter()
        outs = pipe.run(lm, [r['question'] for r in rows])
        scores = score_outputs(outs, rows, 3)
        per[name] = scores
        out[name] = {'seconds': time.perf_counter() - t,
                     'items': [{'id': r['id'], 'reply': o.raw, 'answer': o.answer, 'golden': r['golden_answers'], 'passages': [p['id'] for p in o.passages],
                                'scores': sc} for o, r, sc in zip(outs, rows, scores)]}
        for m in scores[0]:
            v = [s[m] for s in scores]
            out[name][m] = {'mean': float(np.mean(v)), 'ci95': 1.96 * clt_stderr(v)}
        kinds = [q['metadata']['kind'] for q in qs]
        out[name]['acc_by_kind'] = {k: float(np.mean([s['acc'] for s, kk in zip(scores, kinds) if kk == k])) for k in sorted(set(kinds))}
        print(name, {m: round(out[name][m]['mean'], 3) for m in scores[0]}, f"{out[name]['seconds']:.0f} s", flush=True)
    for name in pipelines:
        if name == 'closed-book': continue
        out[name]['vs_closed_book'] = {}
        for m in ('exact_match', 'f1', 'acc'):
            c = compare([s[m] for s in per['closed-book']], [s[m] for s in per[name]])
            out[name]['vs_closed_book'][m] = {'difference': c.mean_difference, 'ci95': [c.ci_low, c.ci_high],
                                              'bootstrap_ci95': [c.bootstrap_ci_low, c.bootstrap_ci_high],
                                              'p_permutation': c.p_permutation, 'p_mcnemar': c.p_mcnemar}
    return {'questions': len(rows), 'passages': len(passages), 'k': 3, 'max_new_tokens': new, 'pipelines': out}


def plot(res:dict, path:Path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = [p for p in ('speed', 'answers') if p in res]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == 'speed':
            s = res['speed']
            names = ['bm25s', 'rank_bm25', 'faiss_flat', 'faiss_hnsw', 'numpy']
            vals = [s['bm25'][k]['queries_per_s'] if k in s['bm25'] else s['dense'][k]['queries_per_s'] for k in names]
            rec = [s['bm25'][k]['recall@10'] if k in s['bm25'] else s['dense'][k]['recall@10'] for k in names]
            ax.bar(names, vals, color=['C0', 'C7', 'C1', 'C1', 'C7'])
            ax.set_yscale('log'); ax.set_ylabel('queries / s (one thread, log)')
            for i, (v, r) in enumerate(zip(vals, rec)): ax.text(i, v, f'R@10 {r:.2f}', ha='center', va='bottom', fontsize=8)
            ax.set_title(f"retrieval over {s['passages']} passages")
        else:
            a = res['answers']['pipelines']
            names = list(a)
            for j, m in enumerate(('exact_match', 'f1', 'acc')):
                ax.bar([i + 0.27 * (j - 1) for i in range(len(names))], [a[n][m]['mean'] for n in names], 0.27,
                       yerr=[a[n][m]['ci95'] for n in names], capsize=2, label=m)
            ax.set_xticks(range(len(names))); ax.set_xticklabels(names, rotation=20, ha='right', fontsize=8)
            ax.set_ylim(0, 1); ax.legend(fontsize=8)
            ax.set_title(f"SmolLM2-135M, {res['answers']['questions']} stdlib questions, top 3 passages")
    fig.tight_layout(); fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--phase', choices=('speed', 'answers', 'all'), default='all')
    ap.add_argument('--questions', type=int, default=120)
    ap.add_argument('--max-new-tokens', type=int, default=32, help='the reply budget (the pipelines\' default; 16 cuts most default-value replies short)')
    a = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / 'bench_rag.json'
    res = json.loads(path.read_text()) if path.exists() else {}
    res['machine'] = {'cpu_count': os.cpu_count(), 'python': sys.version.split()[0], 'platform': platform.platform()}
    if a.phase in ('speed', 'all'): res['speed'] = run_speed(a.questions); print(json.dumps(res['speed'], indent=1))
    if a.phase in ('answers', 'all'): res['answers'] = run_answers(a.questions, a.max_new_tokens)
    path.write_text(json.dumps(res, indent=1))
    plot(res, RESULTS / 'bench_rag.png')
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
