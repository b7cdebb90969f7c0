"""How close each floating-point comparison of the test suite came to its bound, from the log `assert_close` writes.

    LLMLAB_TOLERANCE_LOG=/tmp/tol.jsonl make test      # once or several times (the log is appended to)
    python tools/tolerance_report.py /tmp/tol.jsonl     # worst first; exits 1 if any comparison used more than --max-used

`used` is the largest |actual - expected| / (atol + rtol*|expected|) a comparison saw over all runs: 1.0 touches the bound.
"""
import argparse, json, sys
from collections import defaultdict


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('logs', nargs='+')
    ap.add_argument('--max-used', type=float, default=0.5, help='fail when a comparison used more of its bound than this')
    ap.add_argument('--top', type=int, default=30)
    a = ap.parse_args(argv)
    seen, failed = defaultdict(list), 0
    for path in a.logs:
        for line in open(path):
            if line.strip():
                r = json.loads(line)
                if r['used'] > 1: failed += 1; continue   # raised: in a passing suite, a test_fail that expected it
                seen[(r['source'], r['line'], r['what'])].append(r)
    rows = sorted(((max(x['used'] for x in rs), max(x['max_abs_err'] for x in rs), len(rs), k, rs[0]) for k, rs in seen.items()),
                  key=lambda t: -t[0])
    print(f"{len(rows)} comparisons, {sum(r[2] for r in rows)} checks within their bounds; {failed} over (failures a test expected, if the suite passed)")
    print(f"{'used':>7} {'max err':>9} {'atol':>8} {'rtol':>8} {'n':>4}  where / what")
    for used, err, n, (source, line, what), r in rows[:a.top]:
        print(f"{used:7.3f} {err:9.2e} {r['atol']:8.1e} {r['rtol']:8.1e} {n:4d}  {source}: {what}\n{'':41}{line[:110]}")
    worst = rows[0][0] if rows else 0.0
    return 1 if worst > a.max_used else 0


if __name__ == '__main__':
    sys.exit(main())
