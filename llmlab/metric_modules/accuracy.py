"""llmlab's `accuracy` metric as an `evaluate` module: Fraction of predictions equal to their reference."""
import datasets
import evaluate
from llmlab import metrics


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description='Fraction of predictions equal to their reference.', citation='', inputs_description='see llmlab.metrics',
                                   features=datasets.Features({'predictions': datasets.Value('int64'), 'references': datasets.Value('int64')}))

    def _compute(self, predictions, references):
        return {'accuracy': metrics.accuracy(predictions, references)}
