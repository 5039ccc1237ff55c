"""The pointing game and the randomisation check on real generated shapes scenes (pycocotools
reading their instances file), with maps whose right answers are known."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.config import Config
from captioner.data.instances import Scene, load_scenes
from captioner.data.shapes import COLOURS, ShapesSpec, generate_shapes
from captioner.data.vocab import SPECIALS, Vocabulary
from captioner.errors import CaptionerError
from captioner.model.encoder import build_preprocess
from captioner.model.explain import Explainer, Explanation
from captioner.model.explain_checks import (
    inside,
    pointing_game,
    randomised,
    rank_correlations,
    spearman,
    view_to_image,
)
from captioner.model.inference import Captioner
from captioner.model.network import build_model

VIEW = 64  # the model's view: resize 64, crop 64, of 128 px scenes: a 4 x 4 grid of 32 px cells


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> list[Scene]:
    root = generate_shapes(tmp_path_factory.mktemp("shapes"),
                           ShapesSpec(num_train=0, num_val=0, num_test=8, size=128))
    return load_scenes(root / "annotations" / "instances_test.json", root / "images" / "test")


def _cell_centre(cell: int) -> tuple[float, float]:
    """A 4 x 4 grid cell's centre in scene pixels (row-major), worked out by hand: 32 px cells."""
    row, col = divmod(cell, 4)
    return (col + 0.5) * 32, (row + 0.5) * 32


def _peaked_at(cell: int) -> np.ndarray:
    word_map = np.zeros((4, 4), np.float32)
    word_map.flat[cell] = 1.0
    return word_map


def test_pointing_game_on_real_scenes(scenes: list[Scene]) -> None:
    """Per scene: its first object's colour and shape (plural) pointing at a cell inside that
    object; the colour again pointing where nothing of that colour is; a colour not in the
    scene; an all-zero colour map; and "a", which is not scored."""
    used = 0
    explanations: list[Explanation | None] = []
    for scene in scenes:
        colour, shape, box = scene.objects[0]
        on = [c for c in range(16) if inside(_cell_centre(c), [box])]
        off = [c for c in range(16) if not inside(_cell_centre(c), scene.named_boxes(colour))]
        absent = next(c for c in COLOURS if not scene.named_boxes(c))
        if not on or not off:  # an object too small for any cell centre: nothing to score
            explanations.append(None)
            continue
        used += 1
        maps = np.stack([_peaked_at(on[0]), _peaked_at(on[0]), _peaked_at(off[0]),
                         _peaked_at(0), np.zeros((4, 4), np.float32), _peaked_at(5)])
        words = (colour, f"{shape}s", colour, absent, colour, "a")
        explanations.append(Explanation(words, maps, np.zeros(6, np.float32),
                                        np.zeros((VIEW, VIEW, 3), np.uint8)))
    tally = pointing_game(scenes, explanations, resize=VIEW, crop=VIEW)
    assert used >= 4
    assert (tally["colour", "words"], tally["colour", "map"]) == (3 * used, used)
    assert (tally["shape", "words"], tally["shape", "map"]) == (used, used)
    assert tally["colour", "all-zero map"] == used and tally["colour", "names nothing"] == used
    assert tally["colour", "grid ceiling"] == 3 * used  # every scored word has a cell on target
    assert 0 < tally["colour", "random cell"] < tally["colour", "grid ceiling"]


def test_view_points_map_back_through_torchvisions_resize_and_crop() -> None:
    """A white dot on a 200 x 100 image, preprocessed as the captioner does (resize 50, centre
    crop 40): the brightest view pixel maps back onto the dot."""
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[60:64, 120:124] = 255
    view = build_preprocess("vgg11_bn", 40, 50)(Image.fromarray(pixels)).sum(0)
    y, x = divmod(int(view.argmax()), view.shape[1])
    mapped = view_to_image((x + 0.5, y + 0.5), 200, 100, resize=50, crop=40)
    assert abs(mapped[0] - 122) <= 2 and abs(mapped[1] - 62) <= 2


@pytest.fixture(scope="module")
def captioner() -> Captioner:
    vocab = Vocabulary([*SPECIALS, "a", *COLOURS, "circle", "square", "triangle"])
    config = Config()
    config.encoder.image_size = config.encoder.resize_size = VIEW
    config.decoder.embed_dim, config.decoder.hidden_dim = 16, 32
    torch.manual_seed(0)
    model = build_model(config, len(vocab), vocab.pad)
    return Captioner(model, vocab, config, torch.device("cpu"))


@pytest.mark.slow
def test_randomised_weights_change_the_maps(captioner: Captioner, scenes: list[Scene]) -> None:
    images = torch.stack([captioner.load(scene.image) for scene in scenes])
    captions = [["a", colour, shape] for colour, shape, _ in (s.objects[0] for s in scenes)]
    explainer = captioner.explainer()
    trained = explainer.explain(images, captions)
    same = rank_correlations(trained, Explainer(captioner.model, captioner.vocab, captioner.device,
                                                     captioner.preprocess).explain(images, captions))
    assert all(rho == pytest.approx(1.0) or math.isnan(rho) for rho in same)
    for which in ("convs", "all"):
        rhos = rank_correlations(trained, randomised(captioner, which, seed=1).explainer()
                                 .explain(images, captions))
        assert statistics.median(r for r in rhos if not math.isnan(r)) < 0.6
    again = explainer.explain(images, captions)  # the original model is left as it was
    assert all(np.array_equal(a.maps, b.maps) for a, b in zip(trained, again, strict=True))
    with pytest.raises(CaptionerError, match="choose one of"):
        randomised(captioner, "decoder", seed=1)
    with pytest.raises(CaptionerError, match="different captions"):
        rank_correlations(trained[:1], again[1:2])


def test_spearman_gives_ties_their_mean_rank() -> None:
    assert spearman(np.array([0.0, 0.0, 0.5, 1.0]), np.array([0.0, 0.0, 0.2, 0.9])) == 1.0
    assert spearman(np.array([0.0, 1.0, 2.0]), np.array([2.0, 1.0, 0.0])) == -1.0
    # Ranks 1.5, 1.5, 3 against 1, 2, 3: the tie costs a little.
    assert spearman(np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 2.0])) == pytest.approx(0.866, abs=1e-3)
    assert math.isnan(spearman(np.zeros(4), np.arange(4.0)))


def test_a_file_without_boxes_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "instances.json"
    bad.write_text('{"images": [{"id": 1, "file_name": "x.png", "width": 8, "height": 8}], '
                   '"annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}], '
                   '"categories": [{"id": 1, "name": "circle"}]}')
    with pytest.raises(CaptionerError, match="attributes.colour"):
        load_scenes(bad, tmp_path)


def test_the_gallery_explains_wrong_words_and_one_right_word() -> None:
    from captioner.evaluation.gallery_maps import right_word, wrong_words
    from captioner.evaluation.records import ImageRecord, ImageScores

    def record(prediction: str, references: list[str], hallucinated: list[str]) -> ImageRecord:
        return ImageRecord(1, "1.jpg", prediction, references, ImageScores(0.0),
                           hallucinated=hallucinated)

    purple = record("a purple triangle and a red circle",
                    ["a red circle and a blue square", "there is a red circle"], ["purple triangle"])
    assert wrong_words(purple) == [1, 2]  # "purple", "triangle": hallucinated, in no reference
    assert right_word(purple) == [5]  # "red": the first content word the references share
    assert right_word(record("a cat", ["a dog"], [])) == []
    assert wrong_words(record("", ["a dog"], [])) == []
