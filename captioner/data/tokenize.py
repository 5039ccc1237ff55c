"""Caption tokenisation compatible with coco-caption's PTBTokenizer, without Java or nltk data.

coco-caption runs Stanford's PTB tokenizer, lowercases, and drops punctuation tokens. nltk's
TreebankWordTokenizer is a pure-regex port of the same PTB rules (it needs no downloaded data),
so "A man's hat." becomes ["a", "man", "'s", "hat"] here exactly as in the published scores.
"""

from __future__ import annotations

import re
from functools import lru_cache

from nltk.tokenize import TreebankWordTokenizer

# coco-caption/pycocoevalcap/tokenizer/ptbtokenizer.py: PUNCTUATIONS
PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
     "...", ";", "(", ")", "[", "]", "{", "}", '"']
)


# Most captions are lowercase words, digits, commas and one final period, on which every PTB rule
# but three is a no-op: a comma before a letter or space and a final period become tokens (both then
# dropped as punctuation), and a few words split (cannot, gonna, ...). Such text is split here
# directly, 50x faster than nltk's ~30 regex passes (nltk 3.10 runs each under a timeout);
# tests/unit/test_import_hostile.py checks that both agree.
_PLAIN = re.compile(r"[a-z0-9 ,]*\.?")
_NOT_PLAIN = re.compile(r",[0-9,]|cannot|gimme|gonna|gotta|lemme|wanna")


@lru_cache(maxsize=1)
def _treebank() -> TreebankWordTokenizer:
    return TreebankWordTokenizer()


def _normal(text: str) -> str:
    # PTB treats newlines and tabs as spaces; coco-caption does the same before tokenising.
    return " ".join(text.replace("\n", " ").replace("\t", " ").split()).lower()


def plain_tokens(text: str) -> list[str] | None:
    """tokenize(text) when `text` is plain (see _PLAIN), else None: it needs the PTB regexes."""
    text = _normal(text)
    if _PLAIN.fullmatch(text) and not _NOT_PLAIN.search(text):
        return text.removesuffix(".").replace(",", " ").split()
    return None


def tokenize(text: str) -> list[str]:
    """Lowercased PTB tokens of one caption, punctuation removed."""
    tokens = plain_tokens(text)
    if tokens is None:
        tokens = [t for t in _treebank().tokenize(_normal(text)) if t not in PUNCTUATION]
    return tokens
