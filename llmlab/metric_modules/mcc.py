"""llmlab's `mcc` metric as an `evaluate` module: Matthews correlation coefficient."""
import datasets
import evaluate
from llmlab import metrics


class Mcc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description='Matthews correlation coefficient.', citation='', inputs_description='see llmlab.metrics',
                                   features=datasets.Features({'predictions': datasets.Value('int64'), 'references': datasets.Value('int64')}))

    def _compute(self, predictions, references):
        return {'mcc': metrics.matthews_corrcoef(predictions, references)}
