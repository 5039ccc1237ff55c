"""A frozen run keeps its encoder once: checkpoints name the file and its hash, and every reader of
a checkpoint gets the whole model back, or a one-line error naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from captioner.config import load_config
from captioner.errors import CaptionerError
from captioner.model.checkpoint import load_checkpoint
from captioner.model.encoder import build_encoder
from captioner.model.inference import Captioner
from captioner.model.stored_encoder import RECORD, sha256


def _raw(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _copy_run(best: Path, tmp_path: Path, source: str = "/nonexistent/encoder.pth") -> Path:
    """A copy of the run folder whose checkpoints can only find the copy's own encoder file."""
    run = shutil.copytree(best.parents[1], tmp_path / "copied", copy_function=shutil.copyfile)
    for checkpoint in (run / "checkpoints").glob("*.ckpt"):
        raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
        raw[RECORD]["source"] = source
        checkpoint.unlink()  # best.ckpt may be a hard link of last.ckpt: write each anew
        torch.save(raw, checkpoint)
    return run


def test_checkpoints_name_the_frozen_encoder_instead_of_holding_it(best: Path) -> None:
    run = best.parents[1]
    for checkpoint in (run / "checkpoints").glob("*.ckpt"):
        raw = _raw(checkpoint)
        assert not any(k.startswith("model.encoder.") for k in raw["state_dict"])
        assert raw[RECORD]["file"] == "encoder.pth"
        assert raw[RECORD]["sha256"] == sha256(run / "encoder.pth")
        # The VGG, even narrowed, is ~0.3 GB (fc6 and fc7): a checkpoint holding it could not be this small.
        assert checkpoint.stat().st_size < 60e6


def test_the_whole_model_comes_back_from_the_encoder_file(best: Path) -> None:
    state = load_checkpoint(best)["state_dict"]
    encoder = build_encoder(load_config(None, []).encoder.arch, str(best.parents[1] / "encoder.pth"))
    for name, value in encoder.state_dict().items():
        assert torch.equal(state[f"model.encoder.{name}"], value), name


def test_the_run_shares_the_cached_pretrained_encoder_and_the_cache_drops_its_checkpoints(
        best: Path, private_cache: Path) -> None:
    stored = best.parents[1] / "encoder.pth"
    cached = [p for p in private_cache.glob("encoders/*/encoder.pth") if p.samefile(stored)]
    assert cached, "the run's encoder.pth should be a hard link to the cache's, not a second copy"
    assert not list(cached[0].parent.glob("checkpoints/*.ckpt"))


def test_a_copied_run_folder_still_captions(best: Path, tmp_path: Path) -> None:
    run = _copy_run(best, tmp_path)
    captioner = Captioner.from_checkpoint(run / "checkpoints" / "best.ckpt", device="cpu")
    original = Captioner.from_checkpoint(best, device="cpu")
    for name, value in original.model.state_dict().items():
        assert torch.equal(captioner.model.state_dict()[name], value), name
    assert captioner.caption(Image.new("RGB", (64, 64), "red"))[0].ok


def test_a_missing_encoder_is_one_line_naming_the_file(best: Path, tmp_path: Path) -> None:
    run = _copy_run(best, tmp_path)
    (run / "encoder.pth").unlink()
    with pytest.raises(CaptionerError, match=r"copied/encoder\.pth: missing") as caught:
        Captioner.from_checkpoint(run / "checkpoints" / "best.ckpt", device="cpu")
    assert "\n" not in str(caught.value)


def test_an_altered_encoder_is_refused_naming_the_file(best: Path, tmp_path: Path) -> None:
    run = _copy_run(best, tmp_path)
    with open(run / "encoder.pth", "r+b") as file:  # one byte of the weights changed
        file.seek(-4096, 2)
        byte = file.read(1)
        file.seek(-4096, 2)
        file.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CaptionerError, match=r"copied/encoder\.pth: this encoder file is not the one"):
        load_checkpoint(run / "checkpoints" / "last.ckpt")


def test_a_record_naming_a_path_is_refused(best: Path, tmp_path: Path) -> None:
    run = _copy_run(best, tmp_path)
    raw = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    raw[RECORD]["file"] = "../../elsewhere.pth"
    torch.save(raw, tmp_path / "crafted.ckpt")
    with pytest.raises(CaptionerError, match="not a file name"):
        load_checkpoint(tmp_path / "crafted.ckpt")


def test_a_symlinked_weights_file_is_stored_as_the_file_it_names(tmp_path: Path) -> None:
    from captioner.model.stored_encoder import store

    real = tmp_path / "weights" / "vgg.pth"
    real.parent.mkdir()
    real.write_bytes(b"weights, as far as this test is concerned")
    (tmp_path / "link.pth").symlink_to(Path("weights") / "vgg.pth")  # relative: breaks if copied
    run = tmp_path / "run"
    run.mkdir()
    stored = store(run, None, tmp_path / "link.pth", {})
    assert not stored.path.is_symlink() and stored.path.read_bytes() == real.read_bytes()
    assert stored.digest == sha256(real) and stored.record()["file"] == "encoder.pth"
