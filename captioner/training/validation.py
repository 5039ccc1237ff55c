"""The figures each validation epoch gives: greedy captions of the validation images, scored.

Used by the training loop (captioner.training.module), which picks best.ckpt by one of them. Under
DDP every rank captions its share of the images; the scores are computed from all ranks' captions,
each image once (a DistributedSampler pads its last batch by repeating images).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from captioner.data.vocab import Vocabulary
from captioner.evaluation.metrics import bleu_scores, cider_d
from captioner.model.decoder import Decoder
from captioner.model.search import greedy
from captioner.training.adapters import gathered


class GreedyValidation:
    def __init__(self, vocab: Vocabulary, max_length: int) -> None:
        self.vocab, self.max_length = vocab, max_length
        self._predictions: list[tuple[int, list[str], list[list[str]]]] = []

    def add(self, decoder: Decoder, features: Tensor, image_ids: Sequence[int],
            references: Sequence[list[list[str]]]) -> None:
        """Greedy captions of one batch of fc7 features, kept with their references."""
        hypotheses = greedy(decoder.step, decoder.initial_state(features), bos=self.vocab.start,
                            eos=self.vocab.end, max_length=self.max_length,
                            banned=(self.vocab.pad, self.vocab.start))
        for image_id, hyp, refs in zip(image_ids, hypotheses, references):
            self._predictions.append((int(image_id), self.vocab.decode(hyp.tokens), refs))

    def scores(self) -> dict[str, float]:
        """BLEU-1, BLEU-4, CIDEr-D, the share of distinct captions and the number of images, over
        every rank's captions; then forget them for the next epoch. Empty before any caption."""
        predictions = _gathered(self._predictions)
        self._predictions = []
        if not predictions:
            return {}
        references = {i: refs for i, _, refs in predictions}
        hypotheses = {i: words for i, words, _ in predictions}
        bleu = bleu_scores(references, hypotheses)
        cider, _ = cider_d({i: [" ".join(r) for r in refs] for i, refs in references.items()},
                           {i: " ".join(words) for i, words in hypotheses.items()})
        return {"bleu1": bleu["bleu1"], "bleu4": bleu["bleu4"], "cider": cider,
                "distinct": len({" ".join(w) for w in hypotheses.values()}) / len(hypotheses),
                "images": float(len(hypotheses))}


def _gathered(items: list) -> list:
    """All ranks' predictions, each image once."""
    unique = {item[0]: item for item in gathered(items)}
    return [unique[k] for k in sorted(unique)]
