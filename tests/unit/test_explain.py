"""Per-word Grad-CAM on a tiny real VGG11-BN + LSTM: the caption is untouched, maps have the
right shape and range, a hand-built model's maps point where it looks, batches change nothing,
and the files on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from captioner.config import Config
from captioner.data.vocab import SPECIALS, Vocabulary
from captioner.errors import CaptionerError
from captioner.model.decoder import Decoder
from captioner.model.encoder import VGG_ARCHS, VGGEncoder
from captioner.model.explain import Explanation, feature_map_index, grad_cam
from captioner.model.explain_files import folder_names, write_explanation
from captioner.model.inference import Captioner
from captioner.model.network import CaptionModel, build_model

WORDS = "a red green blue circle square left of right".split()
MAX_LENGTH = 6


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary([*SPECIALS, *WORDS])


@pytest.fixture(scope="module")
def config() -> Config:
    config = Config()
    config.encoder.image_size = config.encoder.resize_size = 64  # a 4 x 4 feature map
    config.decoder.embed_dim, config.decoder.hidden_dim = 16, 32
    return config


@pytest.fixture(scope="module")
def captioner(vocab: Vocabulary, config: Config) -> Captioner:
    torch.manual_seed(0)
    model = build_model(config, len(vocab), vocab.pad)
    with torch.no_grad():  # a decoder that listens to the image, so words differ between images
        model.decoder.init_h.weight.mul_(30.0)
        model.decoder.init_c.weight.mul_(30.0)
    return Captioner(model, vocab, config, torch.device("cpu"))


@pytest.fixture(scope="module")
def pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    pictures = []
    for i in range(3):
        pixels = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
        pixels[8 + 8 * i:40 + 8 * i, 8:40, i] = 230  # a block of a different colour in each
        pictures.append(Image.fromarray(pixels))
    return pictures


@pytest.mark.slow
def test_explaining_leaves_captions_and_model_as_they_were(captioner: Captioner,
                                                          pictures: list[Image.Image]) -> None:
    encoder_params = list(captioner.model.encoder.parameters())
    for p in encoder_params:  # as in a frozen run: these must stay without gradients
        p.requires_grad_(False)
    try:
        before = captioner.caption(pictures, beam_size=2, max_length=MAX_LENGTH)
        explanations = captioner.explain(pictures, before)
        after = captioner.caption(pictures, beam_size=2, max_length=MAX_LENGTH)
        assert not captioner.model.training
        assert not any(p.requires_grad for p in encoder_params)
        assert all(p.requires_grad for p in captioner.model.decoder.parameters())
    finally:
        for p in encoder_params:
            p.requires_grad_(True)
    assert [r.captions for r in after] == [r.captions for r in before]
    for picture, result, explanation in zip(pictures, before, explanations, strict=True):
        assert explanation is not None and explanation.words == tuple(result.tokens)
        assert explanation.maps.shape == (len(result.tokens), 4, 4)
        assert explanation.maps.dtype == np.float32 and explanation.view.shape == (64, 64, 3)
        assert ((explanation.maps >= 0) & (explanation.maps <= 1)).all()
        for word_map in explanation.maps:  # scaled to a peak of 1, or nothing to show
            assert word_map.max() == pytest.approx(1.0) or not word_map.any()
        # The teacher-forced words score as the search scored them.
        total = explanation.logprobs.sum() + _end_logprob(captioner, picture, result.tokens)
        assert total == pytest.approx(result.captions[0].logprob, abs=1e-4)


def _end_logprob(captioner: Captioner, picture: Image.Image, words: list[str]) -> float:
    """log p(<end> | image, words), stepping the decoder as the search does; 0 for a caption
    cut at max_length (it has no end token)."""
    if len(words) == MAX_LENGTH:
        return 0.0
    vocab, decoder = captioner.vocab, captioner.model.decoder
    with torch.inference_mode():
        state = decoder.initial_state(captioner.encode(captioner.load(picture)[None]))
        for token in [vocab.start, *(vocab.index[w] for w in words)]:
            log_probs, state = decoder.step(torch.tensor([token]), state)
    return float(log_probs[0, vocab.end])


def test_explaining_works_inside_inference_mode(captioner: Captioner) -> None:
    """Captioner.caption runs under inference mode; explanations must be possible there too."""
    with torch.inference_mode():
        images = torch.randn(2, 3, 64, 64)  # an inference tensor, as Captioner.caption's are
        explanations = captioner.explainer().explain(images, [["a", "red"], ["blue"]])
    assert [e.maps.shape for e in explanations] == [(2, 4, 4), (1, 4, 4)]


def test_batched_equals_one_by_one(captioner: Captioner) -> None:
    torch.manual_seed(1)
    images = torch.randn(3, 3, 64, 64)
    captions = [["a", "red", "circle"], ["a", "blue", "square", "left", "of"], []]
    explainer = captioner.explainer()
    together = explainer.explain(images, captions)
    for n, caption in enumerate(captions):
        (alone,) = explainer.explain(images[n:n + 1], [caption])
        assert alone.words == together[n].words
        np.testing.assert_allclose(alone.maps, together[n].maps, atol=1e-4)
        np.testing.assert_allclose(alone.logprobs, together[n].logprobs, atol=1e-5)
    assert together[2].maps.shape == (0, 4, 4) and together[2].peaks() == []


def test_explanations_run_in_eval_mode_and_leave_each_module_as_it_was(captioner: Captioner) -> None:
    images, captions = torch.randn(2, 3, 64, 64), [["a", "red"], ["blue", "circle"]]
    explainer = captioner.explainer()
    reference = explainer.explain(images, captions)
    captioner.model.decoder.train()  # dropout on, as if a training step were under way
    try:
        again = explainer.explain(images, captions)
        assert captioner.model.decoder.training and not captioner.model.encoder.training
    finally:
        captioner.model.decoder.eval()
    for a, b in zip(reference, again, strict=True):
        np.testing.assert_array_equal(a.maps, b.maps)


@pytest.mark.parametrize(("channel", "rows"), [(0, slice(0, 2)), (1, slice(2, 4))])
def test_maps_point_where_a_hand_built_model_looks(vocab: Vocabulary, config: Config,
                                                   channel: int, rows: slice) -> None:
    """Convolutions that pass colour channels through unchanged and an fc6 that reads only one
    channel in one quadrant of the grid: a red block top left, a green one bottom right. Every
    map must light up the quadrant (and colour) the model reads, and nothing else."""
    captioner = _hand_built(vocab, config, channel, rows)
    image = torch.zeros(1, 3, 64, 64)
    image[0, 0, 4:28, 4:28] = 2.0  # red block: cells [0:2, 0:2] of the 4 x 4 grid
    image[0, 1, 36:60, 36:60] = 2.0  # green block: cells [2:4, 2:4]
    (explanation,) = captioner.explainer().explain(image, [["a", "red", "circle", "left", "of",
                                                           "a", "green", "square"]])
    outside = explanation.maps.copy()
    outside[:, rows, rows] = 0.0
    assert not outside.any()
    lit = [m for m in explanation.maps if m.any()]
    assert lit and all(m[rows, rows].min() > 0 for m in lit)
    peak = (rows.start + 1) * 16.0  # the centre of a cell in that quadrant, give or take 8 px
    assert all(abs(x - peak) <= 8 and abs(y - peak) <= 8
               for x, y in filter(None, explanation.peaks()))


def _hand_built(vocab: Vocabulary, config: Config, channel: int, rows: slice) -> Captioner:
    with torch.device("meta"):
        vgg = torchvision.models.vgg11_bn(weights=None)
    vgg = vgg.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for module in vgg.modules():
            for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
                tensor.zero_()
            if isinstance(module, nn.Conv2d):
                for c in range(3):
                    module.weight[c, c, 1, 1] = 1.0
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.running_var.fill_(1.0)
        # fc6 reads the adaptive pool's 7 x 7 cells; rows/cols 0-2 come from pooled cell 0 of
        # the 2 x 2 grid after the last max-pool alone, 4-6 from cell 1 alone.
        cells = torch.zeros(512, 7, 7, dtype=torch.bool)
        pooled = slice(0, 3) if rows.start == 0 else slice(4, 7)
        cells[channel, pooled, pooled] = True
        fc6, fc7 = vgg.classifier[0], vgg.classifier[3]
        fc6.weight[:, cells.flatten()] = torch.randn(4096, int(cells.sum()))
        fc7.weight.normal_(std=0.05)
    decoder = Decoder(len(vocab), embed_dim=16, hidden_dim=32, pad_id=vocab.pad)
    model = CaptionModel(VGGEncoder(vgg), decoder)
    return Captioner(model, vocab, config, torch.device("cpu"))


def test_grad_cam_by_hand() -> None:
    acts = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]], [[0.0, 3.0], [0.0, 0.0]]]])  # [1, 2, 2, 2]
    weights = torch.tensor([[[1.0, 0.0]], [[-1.0, -1.0]]])  # [2 words, 1 image, 2 channels]
    maps = grad_cam(acts, weights)  # [2 words, 1 image, 2, 2]
    torch.testing.assert_close(maps[0, 0], torch.tensor([[0.5, 0.0], [0.0, 1.0]]))
    assert not maps[1].any()  # every weighted sum negative: nothing to show, not NaN


@pytest.mark.parametrize("arch", VGG_ARCHS)
def test_feature_map_is_the_last_relu_before_the_final_pool(arch: str) -> None:
    with torch.device("meta"):
        features = getattr(torchvision.models, arch)(weights=None).features
    index = feature_map_index(features)
    assert isinstance(features[index], nn.ReLU)
    assert [type(m) for m in features[index + 1:]] == [nn.MaxPool2d]


def test_bad_captions_are_refused(captioner: Captioner) -> None:
    explainer = captioner.explainer()
    with pytest.raises(CaptionerError, match="'zebra'"):
        explainer.explain(torch.zeros(1, 3, 64, 64), [["a", "zebra"]])
    with pytest.raises(CaptionerError, match="N captions"):
        explainer.explain(torch.zeros(2, 3, 64, 64), [["a"]])


def test_files_on_disk(tmp_path: Path) -> None:
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0, 1, 2] = 1.0
    maps[1] = np.linspace(0, 1, 16).reshape(4, 4)
    view = np.full((64, 64, 3), 90, np.uint8)
    explanation = Explanation(("a", "red", "<unk>"), maps, np.array([-0.1, -0.2, -3.0], np.float32),
                              view)
    stretched = explanation.upsampled()
    assert stretched.shape == (3, 64, 64) and stretched.min() >= 0 and stretched.max() <= 1
    assert np.unravel_index(stretched[0].argmax(), (64, 64)) in {(r, c) for r in range(16, 32)
                                                                  for c in range(32, 48)}
    folder = tmp_path / "explain" / "x"
    files = write_explanation(folder, "x.png", explanation)
    assert [p.name for p in files] == ["01-a.png", "02-red.png", "03-unk.png", "strip.png",
                                       "maps.json"]
    assert Image.open(folder / "02-red.png").size == (224, 224)
    assert Image.open(folder / "strip.png").size == (4 * 160, 180)
    record = json.loads((folder / "maps.json").read_text())
    assert record["words"] == ["a", "red", "<unk>"] and record["grid"] == [4, 4]
    assert record["peaks"] == [[40.0, 24.0], [56.0, 56.0], None]
    np.testing.assert_allclose(record["maps"], maps, atol=5e-5)

    shorter = Explanation(("a",), maps[:1], np.array([-0.1], np.float32), view)
    (folder / ".strip.png.k1ll3d.tmp").write_bytes(b"")  # what a killed write leaves behind
    write_explanation(folder, "x.png", shorter)  # a rerun replaces its own files, stale ones go
    assert sorted(p.name for p in folder.iterdir()) == [".captioner-written.json", "01-a.png",
                                                        "maps.json", "strip.png"]

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(CaptionerError, match="not from an earlier explanation"):
        write_explanation(tmp_path / "mine", "y.png", shorter)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"

    record = json.loads((folder / "maps.json").read_text())
    record["files"].append("../../mine/notes.txt")
    (folder / "maps.json").write_text(json.dumps(record))
    with pytest.raises(CaptionerError, match="maps.json is there already"):  # edited: the user's now
        write_explanation(folder, "x.png", shorter)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"

    # Issue 22 item 23: a hand-made maps.json listing a user's file does not make it ours.
    (tmp_path / "hand").mkdir()
    (tmp_path / "hand" / "notes.txt").write_text("keep")
    (tmp_path / "hand" / "maps.json").write_text(json.dumps({"files": ["notes.txt"]}))
    with pytest.raises(CaptionerError, match="is there already and not from an earlier explanation"):
        write_explanation(tmp_path / "hand", "y.png", shorter)
    assert (tmp_path / "hand" / "notes.txt").read_text() == "keep"


def test_folder_names_are_unique() -> None:
    assert folder_names(["a/x.png", "b/x.jpg", "<image 2>", "c d.png"]) == [
        "x", "x-2", "image_2", "c_d"]
