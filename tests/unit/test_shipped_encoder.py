"""The shapes encoder the package ships: what `captioner pretrain` makes, taken in its place only
for the settings that made it, and small enough to ship."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.cli import TINY

from captioner.config import load_config
from captioner.data.prepare import prepare
from captioner.model.encoder import read_weights, weights_meta
from captioner.model.shipped_encoder import SHIPPED, pack, shipped_meta
from captioner.training import pretrain as pretraining

PACKAGE = Path(pretraining.__file__).parents[1]


class Pretrains(Exception):
    """Raised in place of a pretraining: far enough to know it was chosen."""


def test_the_shipped_encoder_is_what_pretraining_the_default_makes() -> None:
    # A change to the recipe (PRETRAIN_VERSION, a pretrain setting, the shapes generator) changes
    # the key and this fails: rerun data_scripts/ship_shapes_encoder.py and commit the new file.
    meta = shipped_meta()
    assert meta is not None, f"{SHIPPED} is missing"
    assert meta["key"] == pretraining.shapes_recipe(load_config(None, [])), \
        "the default recipe changed since the shipped encoder was made: rerun " \
        "data_scripts/ship_shapes_encoder.py"
    assert meta["made_by"].startswith("captioner pretrain") and meta["val_f1"] > 0.9


def test_the_installed_package_stays_small() -> None:
    files = [p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in files) < 30e6
    assert SHIPPED.stat().st_size < 20e6  # float16 convolutions, no fc6/fc7


def test_other_data_or_weights_have_no_shipped_recipe() -> None:
    assert pretraining.shapes_recipe(load_config(None, ["data.dataset=coco", "data.root=x"])) is None
    assert pretraining.shapes_recipe(load_config(None, ["encoder.weights=none"])) is None
    default = pretraining.shapes_recipe(load_config(None, []))
    for override in ("pretrain.epochs=4", "data.shapes.seed=1", "trainer.seed=1", "encoder.image_size=56",
                     "trainer.limit_train_batches=0.5"):
        assert pretraining.shapes_recipe(load_config(None, [override])) != default, override
    # Where it runs and whether the shipped file is taken do not change the weights.
    assert pretraining.shapes_recipe(load_config(None, ["trainer.precision=32", "pretrain.shipped=false",
                                                        "data.num_workers=2"])) == default


@pytest.fixture(scope="module")
def tiny_shipped(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, Path]:
    """Two `captioner pretrain` runs of the tiny settings, the first packed as a shipped file:
    (the settings, the packed file, the second run's encoder)."""
    work = tmp_path_factory.mktemp("shipped")
    settings = [o for o in TINY if not o.startswith("pretrain.")] + ["pretrain.epochs=1"]
    first = pretraining.pretrain(None, [*settings, f"output_dir={work / 'first'}"])
    second = pretraining.pretrain(None, [*settings, f"output_dir={work / 'second'}"])
    packed = work / "shapes-encoder.pt"
    pack(first.weights, pretraining.shapes_recipe(load_config(None, settings)),
         {"made_by": "captioner pretrain (test)"}, packed)
    return settings, packed, second.weights


def _cached(settings: list[str], packed: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAPTIONER_CACHE", str(cache))
    monkeypatch.setattr(pretraining, "SHIPPED", packed)
    config = load_config(None, settings)
    return pretraining.cached_encoder(config, prepare(config))


@pytest.mark.slow
def test_train_takes_the_shipped_encoder_and_pretrain_reproduces_it(
        tiny_shipped: tuple[list[str], Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, packed, reproduced = tiny_shipped

    def no_pretraining(*args: object, **kwargs: object) -> None:
        raise AssertionError("pretrained although the shipped encoder fits")

    monkeypatch.setattr(pretraining, "run_pretraining", no_pretraining)
    weights = _cached(settings, packed, tmp_path / "cache", monkeypatch)
    taken, again = read_weights(weights, "test"), read_weights(reproduced, "test")
    assert taken.keys() == again.keys()
    for name, value in again.items():
        if name.startswith("classifier."):  # fc6/fc7: drawn again from the seed, exactly
            assert torch.equal(taken[name], value), name
        else:  # a second `captioner pretrain` gives the same weights, up to the float16 of the file
            torch.testing.assert_close(taken[name], value, rtol=2e-3, atol=1e-4, msg=name)
    meta = weights_meta(weights)  # what pretraining records, as `encoder.weights=PATH` reads it
    assert meta["source"] == "shipped with captioner"
    assert {k: meta[k] for k in ("arch", "image_size", "targets")} == \
        {k: weights_meta(reproduced)[k] for k in ("arch", "image_size", "targets")}


@pytest.mark.slow
def test_other_settings_or_a_refusal_pretrain_as_before(
        tiny_shipped: tuple[list[str], Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, packed, _ = tiny_shipped
    calls = []

    def pretraining_run(config: object, data: object, folder: Path, **kwargs: object) -> None:
        calls.append(folder)
        raise Pretrains

    monkeypatch.setattr(pretraining, "run_pretraining", pretraining_run)
    for extra in ("pretrain.shipped=false", "trainer.seed=1"):
        with pytest.raises(Pretrains):
            _cached([*settings, extra], packed, tmp_path / extra, monkeypatch)
    assert len(calls) == 2


@pytest.mark.slow
def test_fc6_fc7_drawn_differently_are_not_taken(
        tiny_shipped: tuple[list[str], Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    settings, packed, _ = tiny_shipped
    saved = torch.load(packed, weights_only=True)
    saved["captioner"]["fc_fingerprint"][0] += 1.0  # as if another torch drew other random numbers
    altered = tmp_path / "altered.pt"
    torch.save(saved, altered)

    def pretraining_run(*args: object, **kwargs: object) -> None:
        raise Pretrains

    monkeypatch.setattr(pretraining, "run_pretraining", pretraining_run)
    with pytest.raises(Pretrains):
        _cached(settings, altered, tmp_path / "cache", monkeypatch)
    assert "draws fc6/fc7 differently" in capsys.readouterr().err
