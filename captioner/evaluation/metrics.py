"""Caption metrics: BLEU from nltk (cheap enough for every validation epoch) and coco-caption's
CIDEr-D, ROUGE-L and METEOR (pycocoevalcap) for the evaluation report.

Both sides are tokenised with `captioner.data.tokenize`, which reproduces coco-caption's PTB
tokenisation without pycocoevalcap's PTBTokenizer (that one writes temporary files into its own
package folder). COCOEvalCap.evaluate() is not used: it always starts SPICE, which downloads
Stanford models; the scorers are called one by one instead.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from captioner.data.tokenize import tokenize
from captioner.errors import CaptionerError

K = TypeVar("K", bound=Hashable)

SCALE = (
    "0-1 (multiply by 100 for the papers' tables); CIDEr-D is 0-10 (coco-caption's x10 "
    "included) and is also multiplied by 100 in the papers"
)
METRIC_DEFINITIONS: dict[str, str] = {
    **{f"bleu{n}": f"BLEU-{n}: nltk corpus_bleu over all references, coco-caption tokens"
       for n in range(1, 5)},
    "cider": "CIDEr-D as coco-caption computes it (pycocoevalcap.cider.Cider: clipped tf-idf "
             "n-grams, Gaussian length penalty sigma=6, x10); idf from this set's references",
    "rouge_l": "ROUGE-L F-measure (beta=1.2), coco-caption",
    "meteor": "METEOR 1.5 (coco-caption's jar, -l en -norm)",
    "bleu4_smoothed": "per image: nltk sentence_bleu BLEU-4, smoothing method1 (epsilon 0.1)",
}

_BLEU_WEIGHTS = [(1.0,), (1 / 2,) * 2, (1 / 3,) * 3, (1 / 4,) * 4]
# Early in training no hypothesis shares a 4-gram with its references; nltk then warns once per
# call, which would fill the log every validation epoch with a message that is expected.
_ZERO_OVERLAP_WARNING = "\nThe hypothesis contains 0 counts of"
_SMOOTHING = SmoothingFunction().method1


@dataclass(frozen=True)
class Scores(Generic[K]):
    """Corpus metrics, per-image scores and notes about what could not be computed."""

    corpus: dict[str, float]  # bleu1..bleu4, cider, rouge_l, meteor (absent when skipped)
    per_image: dict[K, dict[str, float]]  # bleu4_smoothed, cider
    notes: list[str] = field(default_factory=list)


def bleu_scores(
    references: Mapping[K, list[list[str]]], hypotheses: Mapping[K, list[str]]
) -> dict[str, float]:
    """BLEU-1..4 (scale 0-1) of token lists; keys of `hypotheses` select the images."""
    if not hypotheses:
        raise CaptionerError("BLEU: no captions to score")
    keys = list(hypotheses)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ZERO_OVERLAP_WARNING)
        values = corpus_bleu([references[k] for k in keys], [hypotheses[k] for k in keys],
                             weights=_BLEU_WEIGHTS)
    return {f"bleu{n}": float(v) for n, v in enumerate(values, start=1)}


def cider_d(
    references: Mapping[K, list[str]], hypotheses: Mapping[K, str]
) -> tuple[float, dict[K, float]]:
    """Corpus and per-image CIDEr-D of space-joined token strings.

    pycocoevalcap's `Cider` class is coco-caption's CIDEr-D (n-gram clipping and the Gaussian
    length penalty), the variant behind the published COCO numbers, despite its name.
    """
    keys = list(hypotheses)
    gts = {k: list(references[k]) for k in keys}
    res = {k: [hypotheses[k]] for k in keys}
    score, per_image = Cider().compute_score(gts, res)
    return float(score), {k: float(s) for k, s in zip(keys, per_image, strict=True)}


def score_captions(
    references: Mapping[K, Sequence[str]], predictions: Mapping[K, str], *, meteor: bool = True
) -> Scores[K]:
    """All metrics of raw captions; keys of `predictions` select the images."""
    keys = list(predictions)
    if not keys:
        raise CaptionerError("no captions to score")
    unreferenced = [k for k in keys if not references.get(k)]
    if unreferenced:
        raise CaptionerError(
            f"{len(unreferenced)} image(s) have no reference captions, e.g. {unreferenced[0]!r}"
        )
    ref_tokens = {k: [tokenize(r) for r in references[k]] for k in keys}
    hyp_tokens = {k: tokenize(predictions[k]) for k in keys}
    ref_text = {k: [" ".join(t) for t in ref_tokens[k]] for k in keys}
    hyp_text = {k: " ".join(hyp_tokens[k]) for k in keys}

    notes: list[str] = []
    java = shutil.which("java") if meteor else None
    if not meteor:
        notes.append("METEOR skipped: switched off")
    elif java is None:
        notes.append("METEOR skipped: java not found on PATH")
    # Started before the Python metrics: the JVM spends seconds loading METEOR's paraphrase
    # table, and that overlaps with the work below.
    meteor_process = _start_meteor(java, notes) if java else None
    try:
        corpus = bleu_scores(ref_tokens, hyp_tokens)
        corpus["cider"], cider_per_image = cider_d(ref_text, hyp_text)
        corpus["rouge_l"] = _rouge_l(ref_text, hyp_text)
        if meteor_process is not None:
            try:
                corpus["meteor"] = meteor_process.score(ref_text, hyp_text)
            except _MeteorError as error:
                notes.append(f"METEOR failed: {error}")
    finally:
        if meteor_process is not None:
            meteor_process.close()

    per_image = {
        k: {
            "bleu4_smoothed": float(sentence_bleu(ref_tokens[k], hyp_tokens[k],
                                                  smoothing_function=_SMOOTHING)),
            "cider": cider_per_image[k],
        }
        for k in keys
    }
    return Scores(corpus=corpus, per_image=per_image, notes=notes)


def _rouge_l(references: Mapping[K, list[str]], hypotheses: Mapping[K, str]) -> float:
    keys = list(hypotheses)
    # Rouge splits on single spaces: an empty caption is one empty token, which scores 0.
    score, _ = Rouge().compute_score({k: references[k] for k in keys},
                                     {k: [hypotheses[k]] for k in keys})
    return float(score)


class _MeteorError(Exception):
    pass


def _meteor_jar() -> Path:
    import pycocoevalcap.meteor.meteor as module

    return Path(module.__file__).with_name("meteor-1.5.jar")


def _start_meteor(java: str, notes: list[str]) -> _Meteor | None:
    try:
        return _Meteor(java)
    except OSError as error:
        notes.append(f"METEOR failed: could not start {java}: {error}")
        return None


class _Meteor:
    """coco-caption's METEOR 1.5 over stdin/stdout, as pycocoevalcap's `Meteor` drives it.

    Our own driver rather than pycocoevalcap's: that one runs in the package folder, never reads
    the JVM's stderr (a full pipe would hang it) and closes the process only in __del__.
    """

    def __init__(self, java: str) -> None:
        # The jar finds its paraphrase table beside itself and writes nothing, so it runs from
        # a read-only install; stderr goes to a file so a failing JVM can say why.
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [java, "-Xmx2G", "-Dfile.encoding=UTF-8", "-jar", str(_meteor_jar()),
             "-", "-", "-stdio", "-l", "en", "-norm"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
        )

    def score(self, references: Mapping[K, list[str]], hypotheses: Mapping[K, str]) -> float:
        """Corpus METEOR: one SCORE line per image gives its statistics, one EVAL line sums them."""
        stats = []
        for k, hypothesis in hypotheses.items():
            # " ||| " separates fields in METEOR's protocol, so it must not occur in a caption.
            fields = ["SCORE", *(_field(r) for r in references[k]), _field(hypothesis)]
            self._send(" ||| ".join(fields))
            stats.append(self._read())
        self._send(" ||| ".join(["EVAL", *stats]))
        for _ in stats:  # per-image scores come first, the corpus score last
            self._read()
        return float(self._read())

    def close(self) -> None:
        if self._process.stdin is not None:
            try:
                self._process.stdin.close()
            except OSError:  # the JVM already exited; the pipe is broken
                pass
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._stderr.close()

    def _send(self, line: str) -> None:
        try:
            self._process.stdin.write(line.encode("utf-8") + b"\n")
            self._process.stdin.flush()
        except OSError as error:
            raise _MeteorError(self._why(error)) from error

    def _read(self) -> str:
        answer = self._process.stdout.readline().decode("utf-8").strip()
        if not answer:
            raise _MeteorError(self._why("no answer"))
        return answer

    def _why(self, what: object) -> str:
        self._stderr.seek(0)
        lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
        return f"{what}; java said: {lines[-1]}" if lines else str(what)


def _field(text: str) -> str:
    return " ".join(text.replace("|||", " ").split())
