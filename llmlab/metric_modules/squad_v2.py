"""llmlab's `squad_v2` metric as an `evaluate` module: SQuAD v2 exact match and F1 with unanswerable questions."""
import datasets
import evaluate
from llmlab import metrics


class SquadV2(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description='SQuAD v2 exact match and F1 with unanswerable questions.', citation='', inputs_description='see llmlab.metrics',
                                   features=datasets.Features({'predictions': {'id': datasets.Value('string'), 'prediction_text': datasets.Value('string')}, 'references': {'id': datasets.Value('string'), 'answers': {'text': datasets.Sequence(datasets.Value('string'))}}}))

    def _compute(self, predictions, references):
        return metrics.squad_v2({p['id']: p['prediction_text'] for p in predictions}, {r['id']: list(r['answers']['text']) for r in references})
