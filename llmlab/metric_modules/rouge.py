"""llmlab's `rouge` metric as an `evaluate` module: Mean ROUGE F-measures via rouge-score."""
import datasets
import evaluate
from llmlab import metrics


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description='Mean ROUGE F-measures via rouge-score.', citation='', inputs_description='see llmlab.metrics',
                                   features=datasets.Features({'predictions': datasets.Value('string'), 'references': datasets.Value('string')}))

    def _compute(self, predictions, references, rouge_types=('rouge1', 'rouge2', 'rougeL', 'rougeLsum'), use_stemmer=False):
        return metrics.rouge(predictions, references, rouge_types=tuple(rouge_types), use_stemmer=use_stemmer)
