"""Comparing cells: parameter arithmetic, the step-by-step unroll, gradient flow, gates, the CLI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers.cli import TINY

from captioner.compare.records import CellFigures, CellSummary, SeedRun
from captioner.compare.seeds import Difference
from captioner.config import load_config
from captioner.data.prepare import prepare
from captioner.errors import CaptionerError
from captioner.model.decoder import Decoder
from captioner.model.unroll import (
    GATES,
    WEIGHT_SETS,
    gate_trace,
    hidden_gradient_norms,
    initial_state_gradient_norms,
    parameter_counts,
    unroll,
)

VOCAB, FEATURES, EMBED, HIDDEN = 30, 64, 16, 24


def _decoder(cell: str, layers: int = 1) -> Decoder:
    torch.manual_seed(0)
    return Decoder(VOCAB, cell=cell, feature_dim=FEATURES, embed_dim=EMBED, hidden_dim=HIDDEN,
                   num_layers=layers).eval()


@pytest.mark.parametrize(("cell", "sets"), [("lstm", 4), ("gru", 3), ("rnn", 1)])
@pytest.mark.parametrize("layers", [1, 2])
def test_parameter_counts_follow_the_gate_arithmetic(cell: str, sets: int, layers: int) -> None:
    counts = parameter_counts(_decoder(cell, layers))
    # Each weight set: W_ih [H, input], W_hh [H, H], b_ih [H], b_hh [H]; layers above the first
    # read the hidden state of the layer below (input = H).
    first = sets * (HIDDEN * (EMBED + HIDDEN) + 2 * HIDDEN)
    above = sets * (HIDDEN * (HIDDEN + HIDDEN) + 2 * HIDDEN)
    assert counts["recurrent_params"] == first + (layers - 1) * above
    assert counts["weight_sets"] == sets == WEIGHT_SETS[cell]
    init_layers = 2 if cell == "lstm" else 1  # the LSTM's image feature also sets c0
    rest = (VOCAB * EMBED + init_layers * (FEATURES + 1) * layers * HIDDEN + (HIDDEN + 1) * VOCAB)
    assert counts["params"] == counts["recurrent_params"] + rest


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_unroll_matches_the_fused_layer(cell: str, layers: int) -> None:
    decoder = _decoder(cell, layers)
    features, inputs = torch.randn(3, FEATURES), torch.randint(1, VOCAB, (3, 7))  # 0 is the pad id
    with torch.no_grad():
        run = unroll(decoder, features, inputs)
        torch.testing.assert_close(run.logits, decoder(features, inputs))
    assert len(run.hidden) == 7 and all(h.shape == (3, HIDDEN) for h in run.hidden)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_one_gradient_norm_per_time_step(cell: str) -> None:
    decoder = _decoder(cell)
    ids = torch.randint(4, VOCAB, (5, 10))
    norms = hidden_gradient_norms(decoder, torch.randn(5, FEATURES), ids[:, :-1], ids[:, 1:])
    assert len(norms) == 9 and all(n > 0 for n in norms)
    assert not any(p.grad is not None for p in decoder.parameters())  # measuring trains nothing
    assert not decoder.training


def test_gradient_norms_are_what_travels_back_through_time() -> None:
    # Without recurrent weights nothing links the steps: only the last step, whose word makes
    # the loss, gets a gradient.
    decoder = _decoder("rnn")
    with torch.no_grad():
        decoder.rnn.weight_hh_l0.zero_()
    ids = torch.randint(4, VOCAB, (4, 6))
    norms = hidden_gradient_norms(decoder, torch.randn(4, FEATURES), ids[:, :-1], ids[:, 1:])
    assert norms[:-1] == [0.0] * 4 and norms[-1] > 0


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_gradient_to_the_initial_state_matches_the_fused_layer(cell: str, layers: int) -> None:
    decoder = _decoder(cell, layers)
    features, ids = torch.randn(3, FEATURES), torch.randint(4, VOCAB, (3, 7))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    norms = initial_state_gradient_norms(decoder, features, inputs, targets)
    assert not any(p.grad is not None for p in decoder.parameters())
    # The same quantity from torch's fused layer, the initial state made a leaf of the graph.
    state = tuple(s.detach().requires_grad_() for s in decoder.initial_state(features))
    outputs, _ = decoder.rnn(decoder.embed(inputs), state if cell == "lstm" else state[0])
    losses = torch.nn.functional.cross_entropy(decoder.out(outputs).transpose(1, 2), targets,
                                               reduction="none")
    for t, norm in enumerate(norms):
        grads = torch.autograd.grad(losses[:, t].sum(), state, retain_graph=True)
        per_caption = torch.cat([g.transpose(0, 1).flatten(1) for g in grads], dim=1).norm(dim=1)
        assert norm == pytest.approx(per_caption.mean().item(), rel=1e-4)
    assert len(norms) == 6 and all(n > 0 for n in norms)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_gate_values_lie_in_the_unit_interval(cell: str) -> None:
    decoder = _decoder(cell)
    with torch.no_grad():  # large weights push the sigmoids to their limits
        for p in decoder.rnn.parameters():
            p.mul_(50)
    gates = gate_trace(decoder, torch.randn(FEATURES), torch.randint(0, VOCAB, (6,)))
    assert tuple(gates) == GATES[cell]
    for values in gates.values():
        assert values.shape == (6, HIDDEN)
        assert values.min() >= 0 and values.max() <= 1


@pytest.mark.slow  # seconds: beyond the fast loop's budget
def test_encoder_defaults_to_the_configs_without_a_run(tmp_path: Path, monkeypatch) -> None:
    from captioner.compare.encoders import config_encoder, encoder_checkpoint

    monkeypatch.chdir(tmp_path)
    config = load_config(None, TINY)
    assert encoder_checkpoint(config, None) is None
    source = config_encoder(config, prepare(config))
    assert source.checkpoint is None and "the config's encoder" in source.origin
    assert source.image_size == 32


@pytest.mark.slow
def test_encoder_from_a_pretrained_encoder_file(tmp_path: Path) -> None:
    from captioner.compare.encoders import source_encoder
    from captioner.model.encoder import build_encoder, export_weights

    encoder = build_encoder("vgg11", "none", seed=5)
    path = tmp_path / "encoder.pth"
    export_weights(encoder, path, {"arch": "vgg11", "image_size": 48, "resize_size": 56})
    source = source_encoder(path, load_config(None, TINY))  # TINY says vgg11_bn at 32 px
    assert (source.arch, source.image_size, source.resize_size) == ("vgg11", 48, 56)
    assert "captioner pretrain" in source.origin and source.checkpoint is None
    for name, value in encoder.state_dict().items():
        assert torch.equal(source.encoder.state_dict()[name], value), name
    with pytest.raises(CaptionerError, match="encoder file not found"):
        source_encoder(tmp_path / "missing.pth", load_config(None, TINY))


def test_cells_and_the_output_folder_are_checked_before_any_work(tmp_path: Path) -> None:
    from captioner.compare.cells import compare

    with pytest.raises(CaptionerError, match="--cells"):
        compare(load_config(None, TINY), ["lstm", "transformer"], tmp_path)
    assert not any(tmp_path.iterdir())
    report = tmp_path / "eval-test"  # an evaluation's report, not a comparison's
    report.mkdir()
    (report / "index.html").write_text("the user's report")
    with pytest.raises(CaptionerError, match="index.html is there already and not from an earlier compare"):
        compare(load_config(None, TINY), ["rnn"], report)
    assert (report / "index.html").read_text() == "the user's report"
    (report / "compare.json").write_text("{}")  # a file's name proves nothing (issue 22 item 2)
    with pytest.raises(CaptionerError, match="is there already and not from an earlier compare"):
        compare(load_config(None, TINY), ["rnn"], report)
    assert (report / "index.html").read_text() == "the user's report"


@pytest.mark.slow
def test_compare_over_seeds_with_objects_by_position(tmp_path: Path) -> None:
    from captioner.compare.cells import compare

    config = load_config(None, [*TINY, "encoder.weights=none", "data.shapes.max_objects=4",
                                "data.max_length=21", "eval.max_length=21"])
    data = compare(config, ["rnn", "gru"], tmp_path, seeds=2).to_json()
    assert data["settings"]["seeds"] == [0, 1] and data["settings"]["max_objects"] == 4
    positions = data["positions"]["images_by_position"]
    assert positions[0] == 6 and len(positions) <= 4  # each test image holds 1 to 4 objects
    steps = data["grad_flow"]["steps"]
    for cell, run in data["cells"].items():
        assert [r["seed"] for r in run["runs"]] == [0, 1]
        assert (tmp_path / cell / "seed-1" / "logs" / "metrics.csv").is_file()
        for key in ("mention_precision_by_position", "mention_coverage_by_position"):
            assert len(run[key]) == len(run["spread"][key]) == len(positions)
            assert all(v is None or 0 <= v <= 1 for v in run[key])
        assert len(run["grad_to_initial_state"]) == steps and all(v > 0 for v in run["grad_to_initial_state"])
        assert run["test"]["cider"] == pytest.approx(sum(r["test"]["cider"] for r in run["runs"]) / 2)
        assert run["spread"]["test"]["cider"] is not None
    judged = {(d["figure"], d["higher"], d["lower"]) for d in data["differences"]}
    assert any(figure == "test CIDEr-D" for figure, _, _ in judged)
    page = (tmp_path / "index.html").read_text()
    for title in ("How much of each word&#x27;s error reaches the image",
                  "Objects by their place in the caption", "Which differences are real"):
        assert title in page
    assert page.count('src="data:image/png;base64,') >= 7  # 5 plots, 1 gate heatmap, the image


def _difference(higher: str, lower: str, means: tuple[float, float], separated: bool,
                chance: float) -> Difference:
    return Difference("3rd object named: coverage", higher, lower, means[0], means[1], separated,
                      chance)


def test_the_page_says_why_a_complete_separation_is_not_real_and_when_cells_tie() -> None:
    from captioner.compare.page import _differences

    text = _differences(4, [
        _difference("lstm", "rnn", (0.6, 0.2), True, 1 / 35),
        _difference("lstm", "gru", (0.6, 0.2), True, 2 / 35),  # 4 seeds against 3
        _difference("rnn", "gru", (0.0, 0.0), False, 1 / 35),
    ])
    rows = text.split("<tr>")[1:]
    assert "lstm above rnn" in rows[0] and "class=real" in rows[0]
    assert "every seed apart, but by chance 1 time in 18" in rows[1] and "class=real" not in rows[1]
    assert "rnn level with gru" in rows[2] and "above" not in rows[2] and "seeds overlap" in rows[2]


def test_the_table_says_when_a_mean_is_over_fewer_seeds_than_ran() -> None:
    from captioner.compare.page import _table

    def run(precision: list[float | None]) -> CellSummary:
        return CellSummary(
            weight_sets=1, params=10, recurrent_params=5, epoch_seconds=1.0, validation_seconds=0.0,
            epochs=1, val=[], best_epoch=1,
            test=dict.fromkeys(("bleu1", "bleu2", "bleu3", "bleu4", "cider"), 0.5),
            mention_precision_by_position=precision, mention_coverage_by_position=None,
            mentions_by_position=None, grad_norm_per_step={"start": [], "end": []},
            grad_first_over_last={"start": 1.0, "end": 1.0}, grad_to_initial_state=[],
            clip_fraction=None, train_grad_norm=[])

    seeds = [run([0.2, 0.4]), run([0.4, None]), run([0.3, None])]
    spread = replace(run([0.1, None]), test=dict.fromkeys(("bleu1", "bleu2", "bleu3", "bleu4", "cider"), 0.0))
    cell = CellFigures(run([0.3, 0.4]), spread, [0, 1, 2],
                       [SeedRun(seed, s) for seed, s in enumerate(seeds)])
    page = _table({"rnn": cell}, monitor="val/loss", grad_clip=5.0)
    first, second = (page.split(f"{place} object named: precision</th>")[1].split("</tr>")[0]
                     for place in ("1st", "2nd"))
    assert "0.300 ± 0.100<" in first and "seeds" not in first
    assert "0.400 (1 of 3 seeds)" in second
