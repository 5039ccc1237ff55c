"""Visual concepts for the auxiliary loss: merged word forms and annotator agreement."""

from __future__ import annotations

from captioner.concepts import caption_phrases, caption_terms, concept_targets, visual_concepts
from captioner.data.vocab import SPECIALS, Vocabulary

VOCAB = Vocabulary([*SPECIALS, "a", "red", "blue", "circle", "circles", "square", "two", "picture",
                    "small", "of", "above"])


def captions(*texts: str) -> list[list[str]]:
    return [t.split() for t in texts]


IMAGES = [
    captions("a red circle", "a small red circle", "a picture of a red circle"),
    captions("two red circles", "a picture of two red circles", "two small red circles"),
]


def test_terms_are_the_stemmed_vocabulary_words() -> None:
    assert caption_terms("two red circles".split(), VOCAB) == {"two", "red", "circl"}
    assert caption_terms("a green circle <unk>".split(), VOCAB) == {"a", "circl"}


def test_word_forms_merge_and_only_agreed_terms_are_concepts() -> None:
    concepts = visual_concepts(IMAGES * 5, VOCAB, min_agreement=0.9, window=0)
    # "circle" and "circles" are one concept; "picture", "small", "of" (and "a", on the counted
    # image) appear in only some captions of an image
    assert concepts == ["circl", "red", "two"]


def test_phrases_bind_nearby_concept_words_but_not_counts() -> None:
    words = {"two", "red", "blue", "circl", "squar"}
    caption = "two small red circles above a blue square".split()
    # "two red" would be counting by colour; "circl blue" spans two objects (3 positions apart)
    assert caption_phrases(caption, words, window=2) == {"red circl", "blue squar"}
    assert caption_phrases("a red small circle".split(), words, window=1) == set()
    assert caption_phrases("a red small circle".split(), words, window=2) == {"red circl"}


def test_agreed_phrases_follow_the_words() -> None:
    images = IMAGES + [captions("a blue square", "a small blue square", "a picture of a blue square")]
    concepts = visual_concepts(images * 5, VOCAB, min_agreement=0.9, window=2)
    assert concepts == ["blue", "circl", "red", "squar", "two", "blue squar", "red circl"]


def test_a_lower_agreement_admits_more_terms_and_rare_terms_never_count() -> None:
    assert "pictur" in visual_concepts(IMAGES * 5, VOCAB, min_agreement=0.3)
    assert visual_concepts(IMAGES, VOCAB, min_agreement=0.0, min_images=5) == []
    seen_twice = visual_concepts(IMAGES, VOCAB, min_agreement=0.0, min_images=2)
    assert "circl" in seen_twice and "two" not in seen_twice


def test_targets_mark_what_any_caption_of_the_image_names() -> None:
    concepts = ["circl", "red", "two"]
    assert concept_targets(IMAGES[0], concepts, VOCAB).tolist() == [1.0, 1.0, 0.0]
    assert concept_targets(IMAGES[1], concepts, VOCAB).tolist() == [1.0, 1.0, 1.0]
    assert concept_targets(captions("a small picture"), concepts, VOCAB).tolist() == [0.0] * 3


def test_targets_mark_phrases_only_where_the_words_are_bound() -> None:
    concepts = ["blue", "circl", "red", "squar", "blue circl", "red squar"]
    swapped = captions("a red circle above a blue square")
    assert concept_targets(swapped, concepts, VOCAB).tolist() == [1.0] * 4 + [0.0, 0.0]
    bound = captions("a blue circle above a red square")
    assert concept_targets(bound, concepts, VOCAB).tolist() == [1.0] * 6
    assert concept_targets(bound, concepts, VOCAB, window=0).tolist() == [1.0] * 4 + [0.0, 0.0]


def test_the_head_exists_only_while_fine_tuning() -> None:
    from captioner.config import load_config, to_dict
    from captioner.module import CaptionModule

    concepts = ["circl", "red"]
    small = ["encoder.image_size=32", "decoder.hidden_dim=8", "decoder.embed_dim=8"]
    tuned = CaptionModule(to_dict(load_config(None, small)), VOCAB.to_list(), concepts=concepts)
    assert tuned.concept_head.out_features == 2 and tuned.hparams["concepts"] == concepts
    frozen = CaptionModule(to_dict(load_config(None, [*small, "encoder.mode=frozen"])),
                           VOCAB.to_list(), concepts=concepts)
    assert frozen.concept_head is None
