"""llmlab's `f1` metric as an `evaluate` module: F1 of the positive class (average='binary') or macro F1."""
import datasets
import evaluate
from llmlab import metrics


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="F1 of the positive class (average='binary') or macro F1.", citation='', inputs_description='see llmlab.metrics',
                                   features=datasets.Features({'predictions': datasets.Value('int64'), 'references': datasets.Value('int64')}))

    def _compute(self, predictions, references, average='binary', pos_label=1):
        return {'f1': metrics.f1(predictions, references, average=average, pos_label=pos_label)}
