"""The VGG fc7 encoder and the feature cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.images import random_image_records
from PIL import Image

from captioner.errors import CaptionerError
from captioner.features.cache import feature_key, load_or_extract
from captioner.model.encoder import build_encoder, build_preprocess, encode, export_weights, weights_file


@pytest.fixture(scope="module")
def vgg11() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder("vgg11_bn", "none").eval()


def test_fc7_shape_and_layers(vgg11: torch.nn.Module) -> None:
    features = encode(vgg11, torch.randn(3, 3, 32, 32), bf16=False)
    assert features.shape == (3, 4096) and features.dtype == torch.float32
    assert (features >= 0).all()  # cut after fc7's ReLU
    assert [type(m).__name__ for m in vgg11.fc] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU"]
    assert vgg11.fc[0].in_features == 512 * 7 * 7  # torchvision's real classifier


def test_eval_mode_is_deterministic(vgg11: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(encode(vgg11, x, bf16=False), encode(vgg11, x, bf16=False))


def test_small_grids_fold_the_pool_into_fc6_exactly(vgg11: torch.nn.Module) -> None:
    """At 64 px the conv grid is 2x2; fc6 applied to the folded grid equals fc6 after the pool."""
    def unfolded(x: torch.Tensor) -> torch.Tensor:
        return vgg11.fc(torch.flatten(vgg11.avgpool(vgg11.features(x)), 1))

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(vgg11(x), unfolded(x), rtol=1e-4, atol=1e-5)
        vgg11.fc[0].weight.mul_(-1.0)  # an in-place update must not leave a stale fold behind
        try:
            torch.testing.assert_close(vgg11(x), unfolded(x), rtol=1e-4, atol=1e-5)
        finally:
            vgg11.fc[0].weight.mul_(-1.0)
    # While fc6 trains, the ordinary path runs, so that fc6 gets its gradient.
    fc6 = vgg11.fc[0].weight
    vgg11(x).sum().backward()
    assert fc6.grad is not None and fc6.grad.abs().sum() > 0
    vgg11.zero_grad(set_to_none=True)


@pytest.mark.slow  # over a second where bf16 and AVX-512 are missing: out of the fast loop
def test_vgg16_is_torchvisions_architecture() -> None:
    encoder = build_encoder("vgg16", "none")
    n_params = sum(p.numel() for p in encoder.parameters())
    assert n_params == 138_357_544 - (4096 * 1000 + 1000)  # VGG16 minus fc8


def test_a_narrowed_vgg_is_torchvisions_with_a_fraction_of_the_channels(tmp_path: Path) -> None:
    """vgg11_bn_x0_5: torchvision's VGG11-BN layer for layer, every conv half as wide, fc7 4096-d;
    it saves and loads like any VGG, and asks for no ImageNet weights (there are none)."""
    full, narrow = build_encoder("vgg11_bn", "none"), build_encoder("vgg11_bn_x0_5", "none", seed=3)
    convs = [[m.out_channels for m in e.features if isinstance(m, torch.nn.Conv2d)] for e in (full, narrow)]
    assert convs[1] == [c // 2 for c in convs[0]] == [32, 64, 128, 128, 256, 256, 256, 256]
    assert [type(m) for m in narrow.features] == [type(m) for m in full.features]
    assert narrow.fc[0].in_features == 256 * 7 * 7 and narrow.fc[3].out_features == 4096
    assert encode(narrow.eval(), torch.randn(2, 3, 64, 64), bf16=False).shape == (2, 4096)
    export_weights(narrow, tmp_path / "narrow.pth", {"arch": "vgg11_bn_x0_5"})
    loaded = build_encoder("vgg11_bn_x0_5", str(tmp_path / "narrow.pth"))
    for (name, a), b in zip(narrow.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    again = build_encoder("vgg11_bn_x0_5", "none", seed=3)  # the seed alone draws it
    assert torch.equal(again.fc[0].weight, narrow.fc[0].weight)
    with pytest.raises(CaptionerError, match="does not fit vgg11_bn "):
        build_encoder("vgg11_bn", str(tmp_path / "narrow.pth"))
    with pytest.raises(CaptionerError, match="no ImageNet weights for vgg16_x0_5"):
        build_encoder("vgg16_x0_5", "imagenet")
    for wrong in ("vgg11_bn_x1_5", "vgg11_bn_x0_0", "vgg12_x0_5", "vgg11_bn_half"):
        with pytest.raises(CaptionerError, match=f"encoder.arch='{wrong}': choose one of"):
            build_encoder(wrong, "none")
    with pytest.raises(CaptionerError, match="encoder.arch='vgg11_bn_half': choose one of"):
        build_encoder("vgg11_bn_half", str(tmp_path / "missing.pth"))  # the name, before any file


def test_weights_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CaptionerError, match="no such file"):
        build_encoder("vgg11", str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CaptionerError, match="not a readable weights file"):
        build_encoder("vgg11", str(tmp_path / "junk.pth"))
    with pytest.raises(CaptionerError, match="not a VGG|choose one of"):
        build_encoder("resnet50", "none")
    assert weights_file("vgg16").name == "vgg16-397923af.pth"


@pytest.mark.slow
def test_weights_from_a_file(tmp_path: Path) -> None:
    import torchvision

    vgg = torchvision.models.vgg11(weights=None)
    torch.save(vgg.state_dict(), tmp_path / "vgg11.pth")
    encoder = build_encoder("vgg11", str(tmp_path / "vgg11.pth"))
    assert torch.equal(encoder.fc[3].weight, vgg.classifier[3].weight)
    with pytest.raises(CaptionerError, match="does not fit vgg13"):
        build_encoder("vgg13", str(tmp_path / "vgg11.pth"))


@pytest.mark.slow
def test_an_exported_encoder_loads_without_its_classifier(tmp_path: Path) -> None:
    encoder = build_encoder("vgg11", "none", seed=3)
    export_weights(encoder, tmp_path / "encoder.pth", {"arch": "vgg11"})
    state = torch.load(tmp_path / "encoder.pth", weights_only=True)
    assert not any(k.startswith("classifier.6") for k in state["state_dict"])  # fc8 removed
    loaded = build_encoder("vgg11", str(tmp_path / "encoder.pth"))
    for (name, a), b in zip(encoder.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_feature_cache_reuse_and_invalidation(tmp_path: Path, vgg11: torch.nn.Module) -> None:
    records = random_image_records(tmp_path, 5)
    preprocess = build_preprocess("vgg11_bn", 32, 32)

    def cached(encoder: torch.nn.Module, preprocess=preprocess, bf16: bool = False, **extract):
        key = feature_key(encoder, preprocess, records, split="val", arch="vgg11_bn", image_size=32,
                          dataset="t", bf16=bf16)
        return load_or_extract(encoder, preprocess, records, tmp_path / "cache", key, batch_size=2, **extract)

    store = cached(vgg11, shard_size=2)
    assert store.ids == [1, 2, 3, 4, 5] and store.array.dtype == np.float16
    expected = encode(vgg11, preprocess(Image.open(records[2].path).convert("RGB"))[None], False)[0]
    torch.testing.assert_close(store[3], expected, atol=2e-2, rtol=1e-2)
    folders = list((tmp_path / "cache" / "features").iterdir())

    again = cached(vgg11)
    assert list((tmp_path / "cache" / "features").iterdir()) == folders  # reused
    assert np.array_equal(again.array, store.array)

    changed = build_encoder("vgg11_bn", "none", seed=1).eval()  # other weights: a new cache
    cached(changed)
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 2

    Image.new("RGB", (40, 40), "red").save(records[0].path)  # an edited image: rebuilt
    rebuilt = cached(vgg11)
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 3
    assert not np.array_equal(rebuilt.array[0], store.array[0])

    # Everything else that changes the numbers has its own cache too: the precision and the
    # resize before the crop (the crop size alone would not tell these apart).
    cached(vgg11, bf16=True)
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 4
    resized = build_preprocess("vgg11_bn", 32, 40)
    cached(vgg11, resized)
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 5


def test_extraction_resumes_and_skips_unreadable(tmp_path: Path, vgg11: torch.nn.Module) -> None:
    from captioner.features.cache import extract_features, merge_shards

    records = random_image_records(tmp_path, 5)
    records[3].path.write_bytes(b"broken")
    preprocess = build_preprocess("vgg11_bn", 32, 32)
    folder = tmp_path / "feat"
    extract_features(vgg11, preprocess, records[:4], folder, key={"k": 1}, shard_size=2)
    # A crash after the first shards: finished shards are kept and not recomputed.
    first = (folder / "shard_00000.npy").stat().st_mtime_ns
    extract_features(vgg11, preprocess, records, folder, key={"k": 1}, shard_size=2)
    assert (folder / "shard_00000.npy").stat().st_mtime_ns == first
    store = merge_shards(folder, {"k": 1})
    assert store.ids == [1, 2, 3, 5]  # the unreadable image is reported and skipped
    assert json.loads((folder / "meta.json").read_text()) == {"k": 1}


def test_a_refused_pickle_is_one_line_that_never_suggests_unsafe_loading(tmp_path: Path) -> None:
    """Issue 22 item 18: torch's six-line advice ended in "weights_only=False"."""
    import os

    from captioner.model.encoder import read_weights

    path = tmp_path / "crafted.pth"
    torch.save({"state_dict": {}, "payload": os.getcwd}, path)
    with pytest.raises(CaptionerError) as err:
        read_weights(path, "encoder.weights")
    message = str(err.value)
    assert "\n" not in message and "weights_only" not in message and str(path) in message
    assert "refused" in message and "getcwd" in message
