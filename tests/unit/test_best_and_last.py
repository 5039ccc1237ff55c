"""best.ckpt keeps the best epoch; last.ckpt always holds the latest state; nothing writes through
a link or across file systems, and a moved run folder still knows its best score."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from captioner.training.adapters import AtomicCheckpointIO, RunCheckpoints

SCORES = [0.3, 0.5, 0.4, 0.45, 0.6, 0.2]  # a validation metric by epoch: best at 1, then at 4


class Scripted(BoringModel):
    def on_validation_epoch_end(self) -> None:
        self.log("val/bleu4", SCORES[self.current_epoch])


def _epoch(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["epoch"]


def _fit(folder: Path, epochs: int, resume: Path | None = None) -> tuple[Path, Path]:
    trainer = L.Trainer(max_epochs=epochs, callbacks=[RunCheckpoints(folder, "val/bleu4")], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_train_batches=2,
                        limit_val_batches=1, num_sanity_val_steps=0, enable_checkpointing=True,
                        plugins=[AtomicCheckpointIO()])
    trainer.fit(Scripted(), ckpt_path=resume)
    return folder / "best.ckpt", folder / "last.ckpt"


def test_last_is_the_latest_epoch_even_when_it_is_not_the_best(tmp_path: Path) -> None:
    best, last = _fit(tmp_path, epochs=3)
    assert _epoch(best) == 1 and _epoch(last) == 2
    assert not last.is_symlink() and not best.is_symlink()


def test_best_is_the_latest_epoch_when_that_is_the_best(tmp_path: Path) -> None:
    best, last = _fit(tmp_path, epochs=5)  # epoch 4 is a new best, after two that were not
    assert _epoch(best) == 4 and _epoch(last) == 4
    assert best.read_bytes() == last.read_bytes()


def test_a_later_worse_epoch_leaves_the_best_file_alone_across_file_systems(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Temporary files in a tmpfs other than the run's disk: a copy-and-rename there followed the
    # link last.ckpt -> best.ckpt and wrote the worse epoch into best.ckpt.
    elsewhere = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path / "other"
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    best, last = _fit(tmp_path / "run", epochs=6)
    assert _epoch(best) == 4 and _epoch(last) == 5


def test_a_link_in_the_way_is_replaced_not_written_through(tmp_path: Path) -> None:
    precious = tmp_path / "precious.ckpt"
    precious.write_bytes(b"a checkpoint the user keeps elsewhere")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.ckpt").symlink_to(precious)  # e.g. left by captioner 0.1
    _, last = _fit(tmp_path / "run", epochs=2)
    assert precious.read_bytes() == b"a checkpoint the user keeps elsewhere"
    assert not last.is_symlink() and _epoch(last) == 1


def test_a_moved_run_folder_resumes_with_its_best_score(tmp_path: Path) -> None:
    _fit(tmp_path / "run", epochs=2)  # best: epoch 1 (0.5)
    shutil.copytree(tmp_path / "run", tmp_path / "moved")
    best, last = _fit(tmp_path / "moved", epochs=4, resume=tmp_path / "moved" / "last.ckpt")
    assert _epoch(best) == 1 and _epoch(last) == 3  # 0.4 and 0.45 did not beat 0.5


def test_early_stopping_state_in_the_checkpoint_is_that_of_its_epoch(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import EarlyStopping

    stopping = EarlyStopping(monitor="val/bleu4", mode="max", patience=5)
    trainer = L.Trainer(max_epochs=3, limit_train_batches=1, limit_val_batches=1,
                        num_sanity_val_steps=0, enable_progress_bar=False, logger=False,
                        enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                        callbacks=[RunCheckpoints(tmp_path, "val/bleu4"), stopping])
    trainer.fit(Scripted())  # 0.3, 0.5, 0.4: the third epoch did not improve
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)["callbacks"]
    state = next(v for k, v in saved.items() if k.startswith("EarlyStopping"))
    assert state["wait_count"] == stopping.wait_count == 1  # a resumed run waits as this one did


def test_best_keeps_the_weights_only_once_a_later_epoch_is_last(tmp_path: Path) -> None:
    best, last = _fit(tmp_path, epochs=3)  # best: epoch 1; last: epoch 2
    saved_best = torch.load(best, map_location="cpu", weights_only=True)
    saved_last = torch.load(last, map_location="cpu", weights_only=True)
    assert "optimizer_states" in saved_last and "optimizer_states" not in saved_best
    for name, value in saved_best["state_dict"].items():  # still epoch 1's weights, whole
        assert value.shape == saved_last["state_dict"][name].shape
    assert saved_best["epoch"] == 1


def test_resuming_a_weights_only_best_names_last(tmp_path: Path) -> None:
    from captioner.errors import CaptionerError
    from captioner.model.checkpoint import refuse_weights_only

    best, last = _fit(tmp_path, epochs=3)
    refuse_weights_only(torch.load(last, map_location="cpu", weights_only=True), last)
    with pytest.raises(CaptionerError, match="resume from .*last.ckpt"):
        refuse_weights_only(torch.load(best, map_location="cpu", weights_only=True), best)


def _killed_at(epoch: int, step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the run die at `step` of `epoch`'s end, as a SIGKILL there would leave the folder."""
    from captioner.training import adapters

    real = getattr(adapters, step)

    def die_at_epoch(*args: object, **kwargs: object) -> None:
        if _epoch(Path(args[0]).with_name("last.ckpt")) == epoch:
            raise RuntimeError("killed")
        real(*args, **kwargs)

    monkeypatch.setattr(adapters, step, die_at_epoch)


@pytest.mark.parametrize("epoch,step", [(4, "same_file"), (5, "keep_weights_only")])
def test_a_kill_between_the_two_files_is_repaired_on_resume(
        epoch: int, step: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22 item 6: killed after last.ckpt's rename and before best.ckpt followed it."""
    with monkeypatch.context() as patch:
        _killed_at(epoch, step, patch)
        torch.manual_seed(0)
        with pytest.raises(RuntimeError, match="killed"):
            _fit(tmp_path, epochs=6)
    best, last = _fit(tmp_path, epochs=6, resume=tmp_path / "last.ckpt")
    assert _epoch(best) == 4 and _epoch(last) == 5  # epoch 4 (0.6) is the best, not epoch 1
    torch.manual_seed(0)
    untouched, _ = _fit(tmp_path / "never-killed", epochs=6)
    saved = torch.load(best, map_location="cpu", weights_only=True)
    assert "optimizer_states" not in saved
    for name, value in torch.load(untouched, map_location="cpu", weights_only=True)["state_dict"].items():
        assert torch.equal(saved["state_dict"][name], value), name
