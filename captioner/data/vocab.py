"""The vocabulary: words seen often enough in training captions, plus four special tokens.

It is saved inside every checkpoint (as a plain list of words), so a model and its vocabulary
can never drift apart the way separately pickled vocabularies do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)


class Vocabulary:
    def __init__(self, words: Sequence[str]) -> None:
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with the special tokens {SPECIALS}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.pad, self.start, self.end, self.unk = (self.index[s] for s in SPECIALS)

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_count: int = 5) -> Vocabulary:
        """From tokenised training captions: words seen at least `min_count` times, most frequent first."""
        counts = Counter(word for tokens in captions for word in tokens)
        kept = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: Sequence[str], max_length: int) -> list[int]:
        """<start> w1..wn <end> with at most `max_length` words; unknown words map to <unk>."""
        ids = [self.index.get(t, self.unk) for t in tokens[:max_length]]
        return [self.start, *ids, self.end]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to the first <end>, special tokens dropped."""
        words = []
        for i in ids:
            if i == self.end:
                break
            if i not in (self.pad, self.start):
                words.append(self.words[i])
        return words

    def to_list(self) -> list[str]:
        return list(self.words)
