"""llmlab's `exact_match` metric as an `evaluate` module: Exact match after SQuAD normalization (mean over examples)."""
import datasets
import evaluate
from llmlab import metrics


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description='Exact match after SQuAD normalization (mean over examples).', citation='', inputs_description='see llmlab.metrics',
                                   features=datasets.Features({'predictions': datasets.Value('string'), 'references': datasets.Value('string')}))

    def _compute(self, predictions, references):
        return {'exact_match': sum(metrics.exact_match(p, r) for p, r in zip(predictions, references)) / len(references)}
