"""Self-critical training: the reward is coco-caption's CIDEr-D, the loss has the derivation's sign
and scale, the model's own CIDEr-D rises under it (and falls with the sign flipped), and a
self-critical run resumes to exactly the weights of an uninterrupted one."""

from __future__ import annotations

import functools
import random
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.cli import TINY
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from pycocoevalcap.cider.cider import Cider

from captioner.config import load_config, to_dict
from captioner.data.vocab import SPECIALS
from captioner.errors import CaptionerError
from captioner.evaluation.cider_reward import CaptionRewards
from captioner.evaluation.mentions import ShapeObjects
from captioner.model.checkpoint import PHASE, SELF_CRITICAL, CheckpointMeta, load_checkpoint
from captioner.model.decoder import Decoder
from captioner.model.search import greedy
from captioner.training.adapters import RunCheckpoints, read_rows
from captioner.training.self_critical import (
    CollapseStop,
    Rollout,
    SelfCriticalModule,
    check,
    object_f1,
    policy_gradient_loss,
    rollout,
    teacher_forcing,
)
from captioner.util.hardware import fast_bf16

WORDS = "a red blue green circle square triangle on the left of big small two".split()


def _corpus(seed: int = 0) -> dict[int, list[list[str]]]:
    rng = random.Random(seed)
    return {7 * i + 3: [[rng.choice(WORDS) for _ in range(rng.randint(1, 9))]
                        for _ in range(rng.randint(1, 5))] for i in range(40)}


def _encoded(captions: list[list[str]], vocab: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    index = {w: i for i, w in enumerate(vocab)}
    tokens = torch.zeros(len(captions), 12, dtype=torch.long)
    for row, words in enumerate(captions):
        tokens[row, : len(words)] = torch.tensor([index.get(w, 3) for w in words], dtype=torch.long)
    return tokens, torch.tensor([len(c) for c in captions])


def test_rewards_equal_pycocoevalcap_cider_d_and_nltk_bleu4() -> None:
    references = _corpus()
    vocab = [*SPECIALS, *WORDS[:-1], "zebra"]  # "two" becomes <unk>; "zebra" is in no reference
    rng = random.Random(1)
    ids = list(references)
    captions = [list(references[i][0]) for i in ids[:10]]  # equal to one of the references
    captions += [[rng.choice(vocab[3:]) for _ in range(rng.randint(0, 11))] for _ in ids[10:]]
    captions = [[w if w in vocab else "<unk>" for w in c] for c in captions]
    rewards = CaptionRewards(references, vocab)(torch.tensor(ids), *_encoded(captions, vocab))

    # pycocoevalcap scores the same captions of every training image: the same document frequencies.
    _, expected = Cider().compute_score({i: [" ".join(r) for r in references[i]] for i in ids},
                                        {i: [" ".join(c)] for i, c in zip(ids, captions)})
    assert torch.allclose(rewards.cider, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-6)
    assert float(rewards.cider[:10].min()) > 0.5
    smooth = SmoothingFunction().method1
    bleu = [sentence_bleu(references[i], c, smoothing_function=smooth) for i, c in zip(ids, captions)]
    assert torch.allclose(rewards.bleu4, torch.tensor(bleu, dtype=torch.float64), rtol=0, atol=1e-9)


def test_object_f1_scores_the_objects_named_against_the_annotated_ones() -> None:
    vocab = [*SPECIALS, *WORDS, "and", "dark", "background", "with", "purple", "squares"]
    objects = ShapeObjects({1: frozenset({"red circle", "blue square"}), 2: frozenset()})
    cases = [  # (image, caption, F1)
        (1, "a red circle and a blue square", 1.0),
        (1, "two small blue squares and a red circle", 1.0),  # as the report reads mentions
        (1, "a red circle", 2 / 3),  # 1 right of 1 named, 2 present
        (1, "a red circle and a purple triangle", 1 / 2),  # 1 right of 2 named, 2 present
        (1, "a red square and a blue circle", 0.0),  # both misbound: no pair right
        (2, "a dark background", 1.0),  # nothing there, nothing named
        (2, "a red circle", 0.0),
        (9, "a red circle and a blue square", 0.0),  # not annotated: no signal
    ]
    tokens, lengths = _encoded([c.split() for _, c, _ in cases], vocab)
    found = object_f1(objects, vocab, torch.tensor([i for i, _, _ in cases]), tokens, lengths)
    assert found.dtype == torch.float32
    assert found.tolist() == pytest.approx([f for _, _, f in cases])


def test_a_reward_needs_a_weight_and_the_mean_baseline_two_samples() -> None:
    with pytest.raises(CaptionerError, match="all 0: nothing to reward"):
        check(load_config(None, ["scst.cider_weight=0"]))
    check(load_config(None, ["scst.cider_weight=0", "scst.object_weight=1"]))  # objects alone will do
    with pytest.raises(CaptionerError, match="at least 2"):
        check(load_config(None, ["scst.baseline=mean", "scst.samples=1"]))


def test_policy_gradient_loss_has_the_derivations_sign_and_scale() -> None:
    # Two sampled captions over a vocabulary of 3 (pad = 0): [2, 1] and [1, <pad>].
    logits = torch.tensor([[[0.0, 1.0, 2.0], [0.5, 0.0, -1.0]],
                           [[1.0, 0.0, 0.0], [3.0, 3.0, 3.0]]], requires_grad=True)
    targets = torch.tensor([[2, 1], [1, 0]])
    advantage = torch.tensor([2.0, -1.0])  # reward - baseline
    loss, entropy = policy_gradient_loss(logits, targets, advantage, pad=0)

    log_p = torch.log_softmax(logits.detach(), -1)
    caption_log_p = torch.stack([log_p[0, 0, 2] + log_p[0, 1, 1], log_p[1, 0, 1]])
    assert torch.isclose(loss, -(advantage * caption_log_p).mean())
    loss.backward()
    # d loss / d logits[i, t] = -(A_i / N) (onehot(w_it) - softmax), zero where the caption ended.
    expected = torch.zeros_like(logits)
    for i, t in [(0, 0), (0, 1), (1, 0)]:
        onehot = torch.nn.functional.one_hot(targets[i, t], 3).float()
        expected[i, t] = -(advantage[i] / 2) * (onehot - log_p[i, t].exp())
    assert torch.allclose(logits.grad, expected, atol=1e-6)
    # A positive advantage raises the sampled word's logit under gradient descent.
    assert logits.grad[0, 0, 2] < 0 and logits.grad[1, 0, 1] > 0
    words = [log_p[0, 0], log_p[0, 1], log_p[1, 0]]
    assert torch.isclose(entropy, torch.stack([-(w.exp() * w).sum() for w in words]).mean())


@functools.cache
def _module(baseline: str, cell: str = "lstm") -> SelfCriticalModule:
    """A tiny model whose reward knows the references of 8 images (built once: VGG11 is large)."""
    config = load_config(None, [*TINY, f"scst.baseline={baseline}", "scst.samples=5", "eval.max_length=8",
                                f"decoder.cell={cell}"])
    vocab = [*SPECIALS, *WORDS]
    module = SelfCriticalModule(to_dict(config), vocab)
    module.rewards = CaptionRewards(dict(list(_corpus(2).items())[:8]), vocab)
    return module


def _greedy_cider(module: SelfCriticalModule, features: torch.Tensor, ids: torch.Tensor) -> float:
    decoder, v = module.model.decoder, module.vocab
    captions = rollout(decoder.step, decoder.initial_state(features), len(ids), bos=v.start,
                       eos=v.end, max_length=8, banned=(v.pad, v.start))
    return float(module.reward(ids, captions.tokens, captions.lengths).mean())


def _self_critical_steps(baseline: str, sign: float, steps: int = 30,
                         cell: str = "lstm") -> tuple[float, float]:
    """The model's greedy CIDEr-D before and after `steps` self-critical steps on 8 images whose
    features are fixed random vectors; sign=-1 flips the policy gradient."""
    module = _module(baseline, cell)
    ids = module.rewards.image_ids
    torch.manual_seed(0)
    for layer in module.model.decoder.modules():  # the same starting weights for every run
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    features = torch.randn(len(ids), 4096)
    decoder = module.model.decoder.train_without_dropout()  # on-policy, as training_step runs it
    optimiser = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    before = _greedy_cider(module, features, ids)
    for _ in range(steps):
        episode = module.episode(features, ids)
        logits = module.model(features, episode.inputs, repeats=5)
        loss, _ = policy_gradient_loss(logits, episode.targets, sign * (episode.reward - episode.baseline), 0)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return before, _greedy_cider(module, features, ids)


@pytest.mark.slow  # 30 self-critical steps twice per case: seconds each, beyond the fast loop's budget
@pytest.mark.parametrize(("baseline", "cell"), [("greedy", "lstm"), ("mean", "lstm"), ("greedy", "gru"),
                                              ("greedy", "rnn")])
def test_self_critical_steps_raise_the_models_own_cider_and_a_sign_error_does_not(baseline: str,
                                                                                   cell: str) -> None:
    before, after = _self_critical_steps(baseline, sign=1.0, cell=cell)
    assert after > before + 0.3, (before, after)
    _, flipped = _self_critical_steps(baseline, sign=-1.0, cell=cell)
    assert flipped < before, (before, after, flipped)


@pytest.mark.parametrize("cell", [
    pytest.param("lstm", marks=pytest.mark.skipif(
        not fast_bf16(torch.device("cpu")), reason="needs a CPU with bf16 units (AVX512-BF16 or AMX): "
        "oneDNN has no bf16 LSTM on AVX2-only CPUs, and training there runs in fp32")),
    "gru"])
def test_the_self_critical_policy_has_no_dropout_and_cross_entropys_precision(cell: str) -> None:
    """training_step's decoder mode: the same logits on every pass (no dropout anywhere, the
    recurrent layer's between layers included), and under bf16 autocast the recurrent pass runs in
    bf16 as cross-entropy training's does, not in evaluation's fp32."""
    torch.manual_seed(0)
    decoder = Decoder(20, cell=cell, feature_dim=8, embed_dim=8, hidden_dim=16, num_layers=2)
    features, inputs = torch.randn(3, 8), torch.randint(1, 20, (3, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert decoder.train_without_dropout() is decoder and decoder.training
        first, second = decoder(features, inputs), decoder(features, inputs)
        outputs, _ = decoder._run(decoder.embed(inputs), decoder.initial_state(features))
        evaluated, _ = decoder.eval()._run(decoder.embed(inputs), decoder.initial_state(features))
    assert torch.equal(first, second)
    assert outputs.dtype == torch.bfloat16 and evaluated.dtype == torch.float32


def test_one_batched_rollout_gives_the_greedy_captions_and_their_teacher_forcing() -> None:
    module = _module("greedy")
    decoder, v = module.model.decoder.eval(), module.vocab
    torch.manual_seed(1)
    state = decoder.initial_state(torch.randn(4, 4096))
    search = {"bos": v.start, "eos": v.end, "max_length": 8, "banned": (v.pad, v.start)}
    doubled = tuple(torch.cat([s, s], 1) for s in state)  # 4 greedy rows, then 4 sampled ones
    captions = rollout(decoder.step, doubled, 4, **search)
    expected = greedy(decoder.step, state, **search)
    for row, hypothesis in enumerate(expected):
        assert captions.tokens[row, : captions.lengths[row]].tolist() == list(hypothesis.tokens)
        assert bool(captions.finished[row]) == hypothesis.finished
    # A caption of 2 words that ended, one cut at max_length, one that ended at once.
    cut = Rollout(torch.tensor([[5, 6, 2, 2], [5, 6, 7, 8], [2, 2, 2, 2]]), torch.tensor([2, 4, 0]),
                  torch.tensor([True, False, True]))
    inputs, targets = teacher_forcing(cut, start=1, pad=0)
    assert inputs.tolist() == [[1, 5, 6, 0], [1, 5, 6, 7], [1, 0, 0, 0]]
    assert targets.tolist() == [[5, 6, 2, 0], [5, 6, 7, 8], [2, 0, 0, 0]]


class _ScriptedCider(L.LightningModule):
    """A module whose validation CIDEr-D follows a script, one value per epoch."""

    def __init__(self, script: list[float]) -> None:
        super().__init__()
        self.script, self.weight = script, torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return (self.weight - batch[0]).pow(2).mean()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:  # the sanity check's low score must not stop a resumed run
        self.log("val/cider", 0.0 if self.trainer.sanity_checking else self.script[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _epochs_until_stopped(script: list[float], stop: CollapseStop, folder: Path, resume: bool = False) -> int:
    """Epochs a real Trainer ran with the stop and the run's own checkpoints (whose best it reads),
    resuming from folder's last.ckpt where asked."""
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=4)
    trainer = L.Trainer(max_epochs=len(script), accelerator="cpu", logger=False,
                        callbacks=[RunCheckpoints(folder, "val/cider"), stop], enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=1)
    trainer.fit(_ScriptedCider(script), data, data, ckpt_path=folder / "last.ckpt" if resume else None)
    return trainer.current_epoch


def test_a_collapsing_policy_stops_self_critical_training_and_a_plateau_does_not(capsys,
                                                                                tmp_path: Path) -> None:
    """A real Trainer stops at the first epoch below 0.9 of the best, not on a plateau's dips,
    never with 0, and a resumed run compares with the best its checkpoint kept."""
    script = [3.0, 3.3, 3.1, 3.2, 3.0, 2.9, 0.5, 0.3]
    stop = CollapseStop(0.9, "ADVICE; ")
    assert _epochs_until_stopped(script, stop, tmp_path / "a") == 6  # 2.9 < 0.9 x 3.3; 3.0 (0.91 x) is a dip
    assert "warning: self-critical training stopped after epoch 6 of 8: validation CIDEr-D 2.900 is " \
           "below 0.9 x its best (3.300, epoch 2), a collapsed policy; best.ckpt keeps the best epoch. " \
           "ADVICE; scst.stop_below=0 trains on regardless" in capsys.readouterr().err
    assert _epochs_until_stopped([3.0, float("nan"), 2.9, 2.6, 2.5], CollapseStop(0.9), tmp_path / "b") == 4
    assert _epochs_until_stopped(script, CollapseStop(0), tmp_path / "c") == len(script)
    # Resumed after epoch 6 with the best 3.3 restored: 3.1 is not below 0.9 x 3.3, both epochs run;
    # 2.95 is, and stops at once (against a best counted afresh it would be the first).
    shutil.copytree(tmp_path / "a", tmp_path / "a2")
    for folder, epoch_7, epochs in ((tmp_path / "a", 3.1, 8), (tmp_path / "a2", 2.95, 7)):
        resumed = _epochs_until_stopped([*script[:6], epoch_7, 3.2], CollapseStop(0.9), folder, resume=True)
        assert resumed == epochs, epoch_7


@pytest.mark.slow
def test_finetune_runs_logs_and_resumes_exactly(best: Path, tmp_path: Path, monkeypatch) -> None:
    """`captioner finetune`'s path in-process: a 2-epoch run, and a 1-epoch run resumed to 2."""
    from captioner.training.train import _trainer, resume, self_critical_run, train_run

    monkeypatch.chdir(tmp_path)
    common = ["output_dir=runs", "scst.lr=1e-3", "trainer.limit_train_batches=2",
              "trainer.log_every_n_steps=1"]
    whole = train_run(self_critical_run(best, [*common, "scst.epochs=2", "name=whole"]), False)
    first = train_run(self_critical_run(best, [*common, "scst.epochs=1", "name=cut"]), False)
    with pytest.raises(CaptionerError, match="nothing to reward"):  # overrides are checked on resume too
        resume(first.run_dir / "checkpoints" / "last.ckpt", ["scst.epochs=2", "scst.cider_weight=0"])
    resume(first.run_dir / "checkpoints" / "last.ckpt", ["scst.epochs=2"], evaluate_after=False)

    def fingerprint(run: Path) -> tuple[int, list[torch.Tensor]]:
        loaded = load_checkpoint(run / "checkpoints" / "last.ckpt")
        assert loaded[PHASE] == SELF_CRITICAL
        assert CheckpointMeta.from_json(loaded, run).self_critical
        return loaded["global_step"], [loaded["state_dict"][k] for k in sorted(loaded["state_dict"])]

    step, weights = fingerprint(first.run_dir)
    whole_step, whole_weights = fingerprint(whole.run_dir)
    assert step == whole_step == 4
    assert all(torch.equal(a, b) for a, b in zip(weights, whole_weights, strict=True))
    rows = read_rows(whole.run_dir / "logs" / "metrics.csv")
    logged = {k for row in rows for k, v in row.items() if v}
    assert {"train/reward", "train/baseline", "train/entropy", "val/cider"} <= logged
    assert load_checkpoint(whole.best)["callbacks"]["RunCheckpoints"]["monitor"] == "val/cider"
    # The collapse stop is on, reading the best these checkpoints keep and a resume restores.
    start = self_critical_run(best, [*common, "scst.epochs=2", "name=wired"])
    assert any(isinstance(c, CollapseStop) for c in _trainer(start, start.config, start.run_dir).callbacks)
    kept = [load_checkpoint(run / "checkpoints" / "last.ckpt")["callbacks"]["RunCheckpoints"]
            for run in (first.run_dir, whole.run_dir)]
    scores = [float(row["val/cider"]) for row in rows if row.get("val/cider")]
    assert kept[0]["best"] == kept[1]["best"] == max(scores)


@pytest.mark.slow
def test_the_object_reward_reads_the_training_sets_annotations(best: Path, tmp_path: Path,
                                                                 monkeypatch) -> None:
    """scst.object_weight on its own: each sampled caption's reward is its object F1 (0 to 1)
    against the shapes set's instances files, through `captioner finetune`'s path."""
    from captioner.training.train import self_critical_run, train_run

    monkeypatch.chdir(tmp_path)
    run = train_run(self_critical_run(best, [
        "output_dir=runs", "scst.epochs=1", "trainer.limit_train_batches=2", "trainer.log_every_n_steps=1",
        "scst.cider_weight=0", "scst.object_weight=1"]), False)
    rewards = [float(row["train/reward"]) for row in read_rows(run.run_dir / "logs" / "metrics.csv")
               if row.get("train/reward")]
    # F1 is 0 to 1; the trained model names some pairs right, so not all of it is 0.
    assert len(rewards) == 2 and all(0 <= r <= 1 for r in rewards) and max(rewards) > 0, rewards


@pytest.mark.parametrize(("removed", "error"), [
    ("instances_*.json", r"needs the training images' object annotations .*: none found under "),
    ("instances_train.json", r"scst.object_weight: 4 of 4 training images are in no instances file \("),
], ids=["no-instances", "train-split-missing"])
def test_the_object_reward_without_annotations_is_refused_before_training(
        tmp_path: Path, monkeypatch, removed: str, error: str) -> None:
    from captioner.data.shapes import ShapesSpec, generate_shapes
    from captioner.training.train import train

    root = generate_shapes(tmp_path / "shapes", ShapesSpec(num_train=4, num_val=2, num_test=2, size=32))
    for instances in (root / "annotations").glob(removed):
        instances.unlink()
    monkeypatch.chdir(tmp_path)
    config = load_config(None, [f"data.root={root}", "data.min_count=1", "encoder.weights=none",
                                f"cache_dir={tmp_path / 'cache'}", "scst.epochs=1", "scst.object_weight=1"])
    with pytest.raises(CaptionerError, match=error):
        train(config)
    assert not (tmp_path / "cache" / "features").exists()  # refused before any fc7 was extracted


def _val_cider(run: Path) -> list[float]:
    rows = read_rows(run / "logs" / "metrics.csv")
    return [float(row["val/cider"]) for row in rows if row.get("val/cider")]


@pytest.mark.slow
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["as-derived", "sign-flipped"])
def test_self_critical_run_on_tiny_shapes_raises_its_validation_cider(best: Path, tmp_path: Path,
                                                                      monkeypatch, sign: float) -> None:
    """The learning test on real data: a short self-critical run of the tiny shapes model raises its
    own validation CIDEr-D (the one best.ckpt is picked by), and flipping the policy gradient's
    sign lowers it."""
    from captioner.training import self_critical
    from captioner.training.train import self_critical_run, train_run

    def signed(logits, targets, advantage, pad):  # noqa: ANN001, ANN202
        return policy_gradient_loss(logits, targets, sign * advantage, pad)

    monkeypatch.setattr(self_critical, "policy_gradient_loss", signed)
    monkeypatch.chdir(tmp_path)
    before = _val_cider(best.parent.parent)[-1]  # the cross-entropy run's (1 epoch)
    # No collapse stop: on 6 validation images a 10% dip is noise, and this test reads every epoch.
    run = train_run(self_critical_run(best, ["output_dir=runs", "scst.epochs=6", "scst.lr=5e-3",
                                             "scst.stop_below=0"]), False)
    epochs = _val_cider(run.run_dir)
    # CIDEr-D on coco-caption's 0-10 scale. What the run delivers is best.ckpt, the epoch of the
    # highest validation CIDEr-D: that rises; on 6 validation images a single later epoch may fall
    # back. This 1-epoch model starts near 0, at the floor, so a flipped sign cannot show a fall
    # there: the check a sign error must fail is the rise itself, at no epoch reached. The steps
    # test above, which starts higher, holds the fall.
    if sign > 0:
        assert max(epochs) > before + 0.02, (before, epochs)
    else:
        assert max(epochs) < before + 0.02, (before, epochs)
