"""llmlab's `chrf` metric as an `evaluate` module: Corpus chrF via sacrebleu."""
import datasets
import evaluate
from llmlab import metrics


class Chrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description='Corpus chrF via sacrebleu.', citation='', inputs_description='see llmlab.metrics',
                                   features=datasets.Features({'predictions': datasets.Value('string'), 'references': datasets.Sequence(datasets.Value('string'))}))

    def _compute(self, predictions, references):
        return {'chrf': metrics.chrf(predictions, references)}
