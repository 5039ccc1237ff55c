"""The pretrained shapes encoder that ships with the package, as torchvision ships ImageNet weights.

`captioner train` on the built-in shapes set starts by pretraining a VGG classifier, five passes
of a VGG over its training images, on every user's CPU. The package carries the result of exactly
that pretraining (`data_scripts/ship_shapes_encoder.py` runs it and packs it), keyed by every
setting it depends on, and the cache takes it in place of pretraining when the keys are equal.

Only what pretraining learns is shipped: the convolutions and batch norms, the weights in float16
(18 MB, not the 515 MB of the whole VGG). fc6 and fc7 stay at their random initialisation during
pretraining, so they are drawn again from the recorded seed and checked against a fingerprint of
the originals; where this torch draws them differently, the file is not used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captioner.model.encoder import build_encoder, export_weights, weights_meta
from captioner.util.atomic import atomic_path
from captioner.util.console import say

SHIPPED = Path(__file__).parent / "weights" / "shapes-encoder.pt"


def fc_fingerprint(fc: nn.Module) -> Tensor:
    """Sum and sum of squares of each tensor of fc6/fc7 in float64, a chunk at a time (a float64
    copy of fc6 whole would take 0.8 GB): equal fingerprints mean the same random draw."""
    sums = []
    for tensor in fc.state_dict().values():
        total = squares = torch.zeros((), dtype=torch.float64)
        for chunk in tensor.detach().flatten().split(1 << 22):
            chunk = chunk.double()
            total, squares = total + chunk.sum(), squares + chunk.square().sum()
        sums += [total, squares]
    return torch.stack(sums)


def pack(weights: Path, key: dict[str, Any], meta: dict[str, Any], path: Path) -> None:
    """Save the learned layers of the pretrained encoder file `weights` (conv weights in float16)
    with what pretraining recorded beside them, its recipe's `key`, a fingerprint of its fixed
    fc6/fc7 and `meta` (how it was made), atomically."""
    encoder = build_encoder(key["arch"], str(weights))
    state = {name: (value.half() if value.dim() == 4 else value).contiguous()
             for name, value in encoder.features.state_dict().items()}
    # Through JSON: plain values only, which a weights-only load reads back.
    record = _canonical({**weights_meta(weights), "key": key,
                         "fc_fingerprint": fc_fingerprint(encoder.fc).tolist(), **meta})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"features": state, "captioner": record}, tmp)


def shipped_meta(path: Path = SHIPPED) -> dict[str, Any] | None:
    """What the shipped file records (its key, how and where it was made); None without one."""
    return _load(path)["captioner"] if path.is_file() else None


def unpack(key: dict[str, Any], out: Path, meta: dict[str, Any], path: Path = SHIPPED) -> bool:
    """Write the shipped encoder to `out` (a torchvision VGG state dict, as pretraining writes)
    if it was made by the recipe `key` names; whether it was."""
    shipped = _load(path) if path.is_file() else None
    if shipped is None or shipped["captioner"]["key"] != _canonical(key):
        return False
    recorded = shipped["captioner"]
    encoder = build_encoder(key["arch"], "none", seed=key["seed"])
    fingerprint = torch.tensor(recorded["fc_fingerprint"], dtype=torch.float64)
    if not torch.allclose(fc_fingerprint(encoder.fc), fingerprint, rtol=1e-9, atol=0):
        say(f"not using {path}: torch {torch.__version__} draws fc6/fc7 differently from the "
            f"torch {recorded.get('torch', '?')} that made it")
        return False
    encoder.features.load_state_dict({name: value.float() if value.is_floating_point() else value
                                      for name, value in shipped["features"].items()})
    export_weights(encoder, out, {**recorded, **meta})
    return True


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _canonical(key: dict[str, Any]) -> dict[str, Any]:
    """The key as JSON reads it back (tuples as lists), so a saved and a computed key compare."""
    return json.loads(json.dumps(key, sort_keys=True))

