"""The image encoder: a torchvision VGG cut after fc7's ReLU, giving one 4096-d vector per image."""

from __future__ import annotations

import contextlib
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers

from captioner.errors import CaptionerError, one_line
from captioner.util.atomic import atomic_path
from captioner.util.torch_api import version_counter

FEATURE_DIM = 4096
_FC8 = "classifier.6."  # the classification layer, absent from pretrained encoder files
VGG_ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
# torchvision's layer lists (configurations A, B, D, E of Simonyan & Zisserman) by depth.
_LAYERS = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
# A width suffix in torchvision's own style (shufflenet_v2_x0_5): vgg11_bn_x0_5 has half the
# channels in every conv layer, a quarter of the convolutions' arithmetic; fc6/fc7 keep 4096.
_NARROW = re.compile(r"(?P<base>vgg\d+(?:_bn)?)_x(?P<units>\d+)_(?P<fraction>\d+)")


class VGGEncoder(nn.Module):
    """conv blocks -> adaptive pool -> fc6 -> ReLU -> dropout -> fc7 -> ReLU (torchvision's layers)."""

    def __init__(self, vgg: torchvision.models.VGG) -> None:
        super().__init__()
        self.features = vgg.features
        self.avgpool = vgg.avgpool
        # classifier = [fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8]: keep up to fc7's ReLU.
        self.fc = vgg.classifier[:5]
        self._folded: tuple[tuple, Tensor] | None = None  # (key, fc6 weight folded for one grid)

    def forward(self, images: Tensor) -> Tensor:
        x = self.features(images)
        fc6 = self.fc[0]
        grid = x.shape[-2] * x.shape[-1]
        if grid < 49 and not (torch.is_grad_enabled() and fc6.weight.requires_grad):
            # A small image leaves a grid smaller than 7x7, which the adaptive pool only spreads
            # out again: folding that linear spreading into fc6 gives the same product with
            # 49/grid times fewer weights (12x at 64 px), and no per-step bf16 copy of all 103M.
            return self.fc[1:](F.linear(torch.flatten(x, 1), self._fold(x.shape[-2:]), fc6.bias))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def _fold(self, size: torch.Size) -> Tensor:
        """fc6's weight [4096, C*7*7] as a weight [4096, C*h*w] acting on the unpooled h x w grid.

        Cached while fc6 is unchanged (its version counter moves with every in-place update).
        """
        weight = self.fc[0].weight
        version = version_counter(weight)
        key = (tuple(size), weight.device, weight.data_ptr(), version)
        if self._folded is None or self._folded[0] != key or version is None:
            with torch.inference_mode(False), torch.no_grad():
                h, w = size
                # spread[k, o]: how much grid cell k contributes to pooled cell o.
                basis = torch.eye(h * w, device=weight.device).view(h * w, 1, h, w)
                spread = self.avgpool(basis).flatten(1)  # [h*w, 49]
                channels = weight.shape[1] // spread.shape[1]
                folded = weight.view(weight.shape[0], channels, -1) @ spread.T
                self._folded = (key, folded.flatten(1))
        return self._folded[1]


def vgg_arch(arch: str) -> tuple[str, float]:
    """An encoder.arch as (torchvision's VGG name, width): "vgg16" -> ("vgg16", 1.0),
    "vgg11_bn_x0_5" -> ("vgg11_bn", 0.5)."""
    if arch in VGG_ARCHS:
        return arch, 1.0
    narrow = _NARROW.fullmatch(arch)
    width = float(f"{narrow['units']}.{narrow['fraction']}") if narrow else 0.0
    if narrow is None or narrow["base"] not in VGG_ARCHS or not 0 < width < 1:
        raise CaptionerError(f"encoder.arch={arch!r}: choose one of {', '.join(VGG_ARCHS)}, or one "
                             "of them narrowed, with a width below 1 as a suffix: vgg11_bn_x0_5")
    return narrow["base"], width


def _vgg(arch: str) -> torchvision.models.VGG:
    """torchvision's VGG of that name with random weights, narrowed to the arch's width."""
    base, width = vgg_arch(arch)
    if width == 1.0:
        return getattr(torchvision.models, base)(weights=None)
    full = vgg_cfgs[_LAYERS[base.removesuffix("_bn")]]
    layers = [c if c == "M" else max(1, round(c * width)) for c in full]
    vgg = torchvision.models.VGG(make_layers(layers, batch_norm=base.endswith("_bn")))
    # torchvision's fc6 expects 512 channels; the narrow one takes what the last conv gives,
    # initialised as torchvision initialises every VGG linear layer.
    fc6 = nn.Linear(layers[-2] * 7 * 7, FEATURE_DIM)
    nn.init.normal_(fc6.weight, 0, 0.01)
    nn.init.zeros_(fc6.bias)
    vgg.classifier[0] = fc6
    return vgg


def imagenet_weights(arch: str) -> torchvision.models.WeightsEnum:
    """The ImageNet weights of a full-width VGG (a narrow one's transforms are its base's)."""
    return torchvision.models.get_model_weights(vgg_arch(arch)[0]).IMAGENET1K_V1


def weights_file(arch: str) -> Path:
    """Where torchvision's weights API looks for (and downloads) the ImageNet file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(imagenet_weights(arch).url)


def _load_imagenet(arch: str) -> dict[str, Tensor]:
    weights = imagenet_weights(arch)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # urllib, hash or unpickling errors all mean the same to a user
        raise CaptionerError(
            f"cannot load ImageNet weights for {arch} ({type(err).__name__}: {err}); offline, put "
            f"{weights_file(arch).name} in {weights_file(arch).parent} (or $TORCH_HOME/hub/"
            "checkpoints), set encoder.weights to the .pth path, or use encoder.weights=none"
        ) from err


def _load_file(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CaptionerError(f"encoder.weights: no such file {path}")
    return read_weights(path, what="encoder.weights")


def read_weights(path: Path, what: str) -> dict[str, Tensor]:
    """A weights file's torchvision state dict (memory-mapped where the format allows); `what`
    names the file's role in the error a bad file gives."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:
        raise CaptionerError(f"{what}: {path} {unreadable(err)}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CaptionerError(f"{what}: {path} holds no state dict of tensors")
    return state


def unreadable(err: Exception) -> str:
    """Why torch.load refused a weights file, in one line: torch's own message runs to six lines
    and ends by suggesting weights_only=False, which would let the file run code."""
    blocked = re.search(r"GLOBAL ([\w.]+)", str(err))
    if blocked is not None:
        return (f"is refused: it needs {blocked.group(1)}, which a weights-only load does not allow "
                "(a weights file holds tensors and plain data; unpickling this one could run code)")
    return f"is not a readable weights file ({one_line(err).split(' weights_only')[0]})"


def encoder_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision VGG state dict under VGGEncoder's names (fc6, fc7 in `fc`; no fc8)."""
    prefixes = {"features.": "features.", "classifier.0.": "fc.0.", "classifier.3.": "fc.3."}
    return {ours + key.removeprefix(theirs): value for key, value in state.items()
            for theirs, ours in prefixes.items() if key.startswith(theirs)}


def weights_meta(path: Path) -> dict[str, Any]:
    """What `export_weights` recorded beside the weights (arch, image size, ...); {} if nothing.
    Memory-mapped where the format allows, so the weights themselves are not read twice."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:
        raise CaptionerError(f"{path} {unreadable(err)}") from None
    meta = saved.get("captioner") if isinstance(saved, dict) else None
    return meta if isinstance(meta, dict) else {}


def build_encoder(arch: str = "vgg16", weights: str = "imagenet", seed: int = 0) -> VGGEncoder:
    """A VGG fc7 extractor. `weights`: "imagenet", "none" (random init) or a path to a .pth.

    Random weights are drawn from `seed` alone, not the global RNG state, so the same config
    always builds the same encoder and the feature cache (keyed by its weights) is reused. A .pth
    may lack the classifier's last layer (fc8), which the encoder does not use.
    """
    width = vgg_arch(arch)[1]  # a wrong name is refused before any file is read
    if weights == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return VGGEncoder(_vgg(arch))
    if weights == "imagenet" and width != 1.0:
        raise CaptionerError(f"encoder.weights=imagenet: there are no ImageNet weights for {arch}, "
                             "a narrowed VGG (torchvision's are full width); use encoder.weights=pretrain")
    state = _load_imagenet(arch) if weights == "imagenet" else _load_file(Path(weights).expanduser())
    # Built on the meta device and given the file's tensors: no seconds spent drawing random
    # weights that would be overwritten.
    with torch.device("meta"):
        vgg = _vgg(arch)
    _check_fits(vgg, state, weights, arch)
    vgg.load_state_dict(state, strict=False, assign=True)
    return VGGEncoder(vgg)


def _check_fits(vgg: torchvision.models.VGG, state: dict[str, Tensor], source: str, arch: str) -> None:
    expected = vgg.state_dict()
    wrong = [k for k, v in state.items() if k not in expected or expected[k].shape != v.shape]
    missing = [k for k in expected if k not in state and not k.startswith(_FC8)]
    if wrong or missing:
        raise CaptionerError(f"encoder.weights: {source} does not fit {arch} "
                             f"({(wrong or missing)[0]} {'does not fit' if wrong else 'is missing'})")


def export_weights(encoder: VGGEncoder, path: Path, meta: dict) -> None:
    """Save the encoder as a torchvision VGG state dict without fc8, plus `meta`, atomically."""
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("fc.")}
    for index in (0, 3):  # VGGEncoder.fc = classifier[:5]: fc6 is classifier.0, fc7 classifier.3
        for name in ("weight", "bias"):
            state[f"classifier.{index}.{name}"] = encoder.fc[index].state_dict()[name]
    with atomic_path(path) as tmp:
        torch.save({"state_dict": {k: v.detach().cpu().contiguous() for k, v in state.items()},
                    "captioner": meta}, tmp)


def build_preprocess(arch: str, image_size: int, resize_size: int) -> Callable[[Image.Image], Tensor]:
    """The weights' own transforms (resize, centre crop, ImageNet normalisation) at our sizes."""
    return imagenet_weights(arch).transforms(crop_size=image_size, resize_size=resize_size)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@torch.inference_mode()
def encode(encoder: VGGEncoder, images: Tensor, bf16: bool) -> Tensor:
    """Features [N, 4096] in fp32 for a preprocessed batch, in channels_last (faster for convs)."""
    device = next(encoder.parameters()).device
    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with autocast(device, bf16):
        return encoder(images).float()
