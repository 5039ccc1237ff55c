"""The Python API (`from captioner import Captioner`) on the session's tiny trained checkpoint:
results, search options, batch invariance, and checkpoints that must be refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import captioner
from captioner.errors import CaptionerError
from captioner.model import search
from captioner.model.checkpoint import load_checkpoint, model_state
from captioner.model.decoder import Decoder
from captioner.model.inference import Captioner
from captioner.model.network import CaptionModel


@pytest.fixture(scope="module")
def trained(best: Path) -> Captioner:
    from captioner import Captioner  # the documented import, resolved lazily

    return Captioner.from_checkpoint(best, device="cpu")


@pytest.fixture(scope="module")
def sensitive(trained: Captioner, images: list[Image.Image]) -> Captioner:
    """The trained encoder with a seeded random decoder whose words depend strongly on the image:
    two training steps teach the tiny model one caption for everything, and its fc7 features
    differ little, so the decoder's initial state amplifies their deviations from the mean."""
    with torch.inference_mode():
        mean = trained.encode(torch.stack([trained.load(im) for im in images])).mean(0)
    torch.manual_seed(0)
    d = trained.config.decoder
    decoder = Decoder(len(trained.vocab), cell=d.cell, embed_dim=d.embed_dim, hidden_dim=d.hidden_dim,
                      num_layers=d.num_layers, pad_id=trained.vocab.pad)
    with torch.no_grad():
        for init in (decoder.init_h, decoder.init_c):
            init.weight *= 60.0
            init.bias.copy_(-init.weight @ mean)
        decoder.out.weight *= 2.0
    model = CaptionModel(trained.model.encoder, decoder)
    return Captioner(model, trained.vocab, trained.config, torch.device("cpu"))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """65 different pictures: blocks of colour on noise, so that fc7 features differ."""
    rng = np.random.default_rng(0)
    pictures = []
    for _ in range(65):
        canvas = rng.integers(0, 80, (48, 48, 3), dtype=np.uint8)
        top, left = rng.integers(0, 24, 2)
        canvas[top:top + 24, left:left + 24] = rng.integers(0, 256, 3)
        pictures.append(Image.fromarray(canvas))
    return pictures


def test_captioner_is_importable_from_the_package(trained: Captioner, best: Path) -> None:
    assert captioner.Captioner is Captioner
    assert trained.checkpoint == best and trained.precision == "fp32" and not trained.bf16
    assert trained.vocab.words[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert trained.config.decoder.hidden_dim == 32


def test_weights_are_the_checkpoints(trained: Captioner, best: Path) -> None:
    # The model is built on the meta device and filled from the checkpoint: nothing left unset.
    state = model_state(load_checkpoint(best))
    loaded = trained.model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert load_checkpoint(best)["hyper_parameters"]["captioner_version"] == captioner.__version__


def test_paths_and_pil_images_give_full_results(trained: Captioner, images: list[Image.Image],
                                                tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    images[0].save(path)
    by_path, by_image = trained.caption([path, images[0]])
    assert by_path.image == str(path) and by_image.image == "<image 1>"
    assert by_path.error is None and by_path.text and by_path.text == by_image.text
    assert by_path.tokens == by_path.text.split() and isinstance(by_path.score, float)
    assert by_path.score == pytest.approx(by_image.score, abs=1e-5) and by_path.score < 0
    single = trained.caption(images[0])  # one input need not be wrapped in a list
    assert len(single) == 1 and single[0].text == by_image.text


def test_an_unreadable_input_does_not_stop_the_others(trained: Captioner,
                                                      images: list[Image.Image],
                                                      tmp_path: Path) -> None:
    results = trained.caption([images[0], tmp_path / "missing.png", images[1]], batch_size=2)
    assert [r.error is None for r in results] == [True, False, True]
    assert "no such file" in results[1].error and results[1].text is None
    assert results[0].text and results[2].text


def test_beam_of_one_is_greedy(sensitive: Captioner, images: list[Image.Image]) -> None:
    results = sensitive.caption(images[:16], beam_size=1)
    with torch.inference_mode():
        features = sensitive.encode(torch.stack([sensitive.load(im) for im in images[:16]]))
        decoder, vocab = sensitive.model.decoder, sensitive.vocab
        greedy = search.greedy(decoder.step, decoder.initial_state(features), bos=vocab.start,
                               eos=vocab.end, max_length=sensitive.config.eval.max_length,
                               banned=(vocab.pad, vocab.start))
    assert [r.tokens for r in results] == [vocab.decode(h.tokens) for h in greedy]
    assert [r.score for r in results] == pytest.approx([h.logprob for h in greedy], abs=1e-4)
    # Sampling from the single most likely word is greedy too.
    assert [r.text for r in sensitive.caption(images[:16], sample=True, top_k=1)] == \
        [r.text for r in results]


@pytest.mark.slow  # both models come from the tiny training run, fetched by name below
@pytest.mark.parametrize("model", ["trained", "sensitive"])
def test_a_caption_does_not_depend_on_the_rest_of_the_batch(
    model: str, request: pytest.FixtureRequest, images: list[Image.Image]
) -> None:
    captioner_ = request.getfixturevalue(model)
    batch = captioner_.caption(images[:64], batch_size=64, beam_size=3, n_best=2)
    if model == "sensitive":  # otherwise the test could not see a mix-up
        assert len({r.text for r in batch}) > 10
    for position in (0, 37, 63):
        alone = captioner_.caption(images[position], beam_size=3, n_best=2)[0]
        among = batch[position]
        assert [c.tokens for c in alone.captions] == [c.tokens for c in among.captions]
        # fp32 kernels still sum in batch-dependent order: equal up to rounding, not bitwise.
        assert [c.score for c in alone.captions] == pytest.approx(
            [c.score for c in among.captions], abs=1e-4)


def test_n_best_is_sorted_with_log_probs(sensitive: Captioner, images: list[Image.Image]) -> None:
    for result in sensitive.caption(images[:8], beam_size=4, n_best=4):
        scores = [c.score for c in result.captions]
        assert len(result.captions) == 4 and scores == sorted(scores, reverse=True)
        assert len({c.text for c in result.captions}) == 4
        assert all(c.logprob == c.score < 0 for c in result.captions)  # no length penalty
    penalised = sensitive.caption(images[0], beam_size=4, n_best=2, length_penalty=1.0)[0]
    assert all(c.score > c.logprob for c in penalised.captions)


def test_sampling_is_reproducible_with_a_seed(sensitive: Captioner,
                                              images: list[Image.Image]) -> None:
    def draw(seed: int) -> list[list[tuple[str, float]]]:
        results = sensitive.caption(images[:4], sample=True, n_best=5, temperature=2.0, top_k=10,
                                    seed=seed)
        return [[(c.text, c.logprob) for c in r.captions] for r in results]

    first = draw(0)
    assert draw(0) == first and draw(1) != first
    for captions in first:
        logprobs = [lp for _, lp in captions]
        assert len(captions) == 5 and logprobs == sorted(logprobs, reverse=True)


@pytest.mark.parametrize(("options", "needle"), [
    ({"beam_size": 0}, "beam_size must be at least 1"),
    ({"n_best": 4}, "n_best=4 needs beam_size >= 4"),
    ({"sample": True, "temperature": 0.0}, "temperature must be positive"),
    ({"sample": True, "top_k": -1}, r"top_k must be at least 0 \(0: the whole vocabulary\), got -1"),
    ({"max_length": 0}, "max_length must be at least 1"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
])
def test_impossible_options_are_refused(trained: Captioner, options: dict, needle: str) -> None:
    with pytest.raises(CaptionerError, match=needle):
        trained.caption("never-read.png", **options)


def test_bf16_is_an_option_and_devices_are_checked(trained: Captioner, best: Path,
                                                   images: list[Image.Image]) -> None:
    fast = Captioner(trained.model, trained.vocab, trained.config, torch.device("cpu"),
                     precision="bf16")
    assert fast.bf16 and fast.caption(images[0])[0].text
    with pytest.raises(CaptionerError, match="choose one of fp32, bf16"):
        Captioner(trained.model, trained.vocab, trained.config, torch.device("cpu"), precision="fp16")
    with pytest.raises(CaptionerError, match="use cpu, cuda, cuda:N or auto"):
        Captioner.from_checkpoint(best, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(CaptionerError, match="CUDA is not available"):
            Captioner.from_checkpoint(best, device="cuda")


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _noise(seed: int) -> bytes:
    """Random bytes; odd seeds start like a pickle, so the unpickler gets further and fails
    in other ways (IndexError, KeyError, UnicodeDecodeError...)."""
    data = np.random.default_rng(seed).bytes(4096)
    return b"\x80\x02" + data if seed % 2 else data


def _truncated(best: Path, path: Path) -> Path:
    with best.open("rb") as f:
        path.write_bytes(f.read(100_000))
    return path


@pytest.mark.parametrize(("make", "needle"), [
    (lambda best, p: p, "checkpoint not found"),
    (lambda best, p: (p.mkdir(), p)[1], "is a directory, not a checkpoint"),
    *[(lambda best, p, seed=seed: (p.write_bytes(_noise(seed)), p)[1], "not a readable checkpoint")
      for seed in range(4)],
    (lambda best, p: (p.write_bytes(b""), p)[1], "not a readable checkpoint"),
    (_truncated, "not a readable checkpoint"),
    (lambda best, p: (torch.save({"epoch": 3, "weights": torch.ones(2)}, p), p)[1],
     "not a captioner checkpoint"),
    (lambda best, p: (torch.save(torch.nn.Linear(2, 2).state_dict(), p), p)[1],
     "not a captioner checkpoint"),
    (lambda best, p: (torch.save([1, 2, 3], p), p)[1], "not a captioner checkpoint"),
])
def test_bad_checkpoints_are_clear_errors(best: Path, tmp_path: Path, make, needle: str) -> None:
    path = make(best, tmp_path / "model.ckpt")
    with pytest.raises(CaptionerError, match=needle) as caught:
        Captioner.from_checkpoint(path, device="cpu")
    assert "\n" not in str(caught.value)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": _RunsCode(marker)}, path)
    with pytest.raises(CaptionerError, match=r"refused: it needs posix\.system.*could run code"):
        Captioner.from_checkpoint(path, device="cpu")
    assert not marker.exists()
    with path.open("wb") as f:  # a bare pickle, not even a torch zip file
        pickle.dump(_RunsCode(marker), f, protocol=2)
    with pytest.raises(CaptionerError, match="refused: it needs posix.system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoints_from_another_version_say_so(best: Path, tmp_path: Path) -> None:
    hparams = dict(load_checkpoint(best)["hyper_parameters"], captioner_version="9.9")
    config = dict(hparams["config"], decoder=dict(hparams["config"]["decoder"], attention=True))
    torch.save({"state_dict": {}, "hyper_parameters": dict(hparams, config=config)},
               tmp_path / "newer.ckpt")
    with pytest.raises(CaptionerError, match=r"does not fit this captioner \(written by captioner 9\.9"):
        Captioner.from_checkpoint(tmp_path / "newer.ckpt", device="cpu")
    torch.save({"state_dict": {"model.decoder.out.bias": torch.zeros(3)}, "hyper_parameters": hparams},
               tmp_path / "partial.ckpt")
    with pytest.raises(CaptionerError, match="weights do not match its own config.*missing"):
        Captioner.from_checkpoint(tmp_path / "partial.ckpt", device="cpu")


def _rewritten(best: Path, path: Path, **config_changes: dict) -> Path:
    """A copy of `best` whose config has the given sections changed."""
    checkpoint = dict(load_checkpoint(best))
    hparams = dict(checkpoint["hyper_parameters"])
    config = dict(hparams["config"])
    for section, values in config_changes.items():
        config[section] = dict(config[section], **values) if isinstance(config[section], dict) else values
    checkpoint["hyper_parameters"] = dict(hparams, config=config)
    torch.save(checkpoint, path)
    return path


def test_a_config_larger_than_its_weights_is_refused_before_allocating(best: Path, tmp_path: Path) -> None:
    crafted = _rewritten(best, tmp_path / "huge.ckpt", decoder={"hidden_dim": 10**6})
    with pytest.raises(CaptionerError, match=r"decoder.init_h.weight has shape .* the config gives "
                                             r"\(1000000, 4096\)"):
        Captioner.from_checkpoint(crafted, device="cpu")


def test_interpolations_in_a_checkpoint_config_are_refused(best: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET", "hunter2")
    crafted = _rewritten(best, tmp_path / "env.ckpt", name="${oc.env:SECRET}")
    with pytest.raises(CaptionerError, match=r"refused: its config setting name holds an interpolation"):
        Captioner.from_checkpoint(crafted, device="cpu")


def test_a_checkpoint_of_the_earlier_recipe_still_captions(best: Path, tmp_path: Path,
                                                           images: list[Image.Image]) -> None:
    legacy = _rewritten(best, tmp_path / "v01.ckpt",
                        encoder={"fc_lr": 0.0, "freeze_after_epoch": 6},
                        optim={"concept_weight": 3.0, "schedule": "onecycle", "decoder_cooldown": 0.2})
    old = Captioner.from_checkpoint(legacy, device="cpu").caption(images[:2])
    new = Captioner.from_checkpoint(best, device="cpu").caption(images[:2])
    assert [r.text for r in old] == [r.text for r in new]
