"""llmlab's `pass_at_k` metric as an `evaluate` module: Unbiased pass@k; predictions are lists of per-sample pass/fail booleans, one list per problem."""
import datasets
import evaluate
from llmlab import metrics


class PassAtK(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description='Unbiased pass@k; predictions are lists of per-sample pass/fail booleans, one list per problem.', citation='', inputs_description='see llmlab.metrics',
                                   features=datasets.Features({'predictions': datasets.Sequence(datasets.Value('bool')), 'references': datasets.Value('null')}))

    def _compute(self, predictions, references, k=(1,)):
        ks = [k] if isinstance(k, int) else list(k)
        return {f'pass@{kk}': sum(metrics.pass_at_k(len(p), sum(p), kk) for p in predictions) / len(predictions) for kk in ks}
