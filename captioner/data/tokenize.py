"""Caption tokenisation compatible with coco-caption's PTBTokenizer, without Java or nltk data.

coco-caption runs Stanford's PTB tokenizer, lowercases, and drops punctuation tokens. nltk's
TreebankWordTokenizer is a pure-regex port of the same PTB rules (it needs no downloaded data),
so "A man's hat." becomes ["a", "man", "'s", "hat"] here exactly as in the published scores.
"""

from __future__ import annotations

from functools import lru_cache

from nltk.tokenize import TreebankWordTokenizer

# coco-caption/pycocoevalcap/tokenizer/ptbtokenizer.py: PUNCTUATIONS
PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
     "...", ";", "(", ")", "[", "]", "{", "}", '"']
)


@lru_cache(maxsize=1)
def _treebank() -> TreebankWordTokenizer:
    return TreebankWordTokenizer()


def tokenize(text: str) -> list[str]:
    """Lowercased PTB tokens of one caption, punctuation removed."""
    # PTB treats newlines and tabs as spaces; coco-caption does the same before tokenising.
    text = " ".join(text.replace("\n", " ").replace("\t", " ").split()).lower()
    return [t for t in _treebank().tokenize(text) if t not in PUNCTUATION]
