"""The feature-cache key: one value, built by features.extract.split_key, read by training,
`captioner extract` and evaluation alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from captioner.data.prepare import prepare
from captioner.evaluation.evaluate import evaluate
from captioner.features import cache
from captioner.features.extract import split_features, split_key
from captioner.model.inference import Captioner


def test_evaluation_reads_the_features_a_bf16_run_cached(best: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A run under bf16 autocast caches bf16 features; evaluating it on a device where bf16 is
    not fast reads those same features (evaluation used to key them fp32 there, and extract
    them again in another precision than the model trained on)."""
    captioner = Captioner.from_checkpoint(best, "cpu")
    config = captioner.config
    config.trainer.precision = "bf16-mixed"
    monkeypatch.setattr("captioner.util.hardware.cpu_bf16_units", lambda: False)  # no AMX here
    data = prepare(config)
    records = data.split(config.eval.split)
    key = split_key(config, data, captioner.model.encoder, config.eval.split, records)
    assert key.precision == "bf16"

    # `captioner extract`'s path, and training's
    store = split_features(config, data, captioner.model.encoder, config.eval.split)
    assert json.loads((store.folder / "meta.json").read_text()) == key.to_json()

    def no_second_extraction(*args, **kwargs):
        raise AssertionError("evaluation extracted features the cache holds")

    monkeypatch.setattr(cache, "extract_features", no_second_extraction)
    metrics, _ = evaluate(best, captioner=captioner, out_dir=tmp_path / "eval", explain=False)
    assert metrics.run["images"] == len(store.ids)


def test_the_key_is_what_the_cache_wrote_before(tmp_path: Path) -> None:
    """Folders written before the key was a record still match it: same dict, same folder name."""
    key = cache.FeatureKey(dataset="d", split="test", arch="vgg16", image_size=224, transforms="t",
                           precision="fp32", encoder="e", images="i", count=3)
    as_before = {"version": cache.FORMAT_VERSION, "dataset": "d", "split": "test", "arch": "vgg16",
                 "image_size": 224, "transforms": "t", "precision": "fp32", "encoder": "e",
                 "images": "i", "count": 3}
    assert key.to_json() == as_before
    assert cache.feature_folder(tmp_path, key.to_json()).name.startswith("test-vgg16-224px-")


@pytest.mark.slow  # over a second where bf16 and AVX-512 are missing: out of the fast loop
def test_the_fingerprint_is_recomputed_where_torch_keeps_no_version_counter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The version counter the fingerprint is remembered by is private torch API: without it,
    an encoder changed in place still gets a new fingerprint (and so its own cache)."""
    from captioner.model.encoder import build_encoder

    encoder = build_encoder("vgg11", "none", seed=0)
    monkeypatch.setattr(cache, "version_counter", lambda tensor: None)
    before = cache.encoder_fingerprint(encoder)
    with torch.no_grad():
        encoder.fc[0].bias.add_(1.0)
    assert cache.encoder_fingerprint(encoder) != before
