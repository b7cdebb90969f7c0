"""llmlab's `bleu` metric as an `evaluate` module: Corpus BLEU via sacrebleu."""
import datasets
import evaluate
from llmlab import metrics


class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description='Corpus BLEU via sacrebleu.', citation='', inputs_description='see llmlab.metrics',
                                   features=datasets.Features({'predictions': datasets.Value('string'), 'references': datasets.Sequence(datasets.Value('string'))}))

    def _compute(self, predictions, references):
        return {'bleu': metrics.bleu(predictions, references)}
