"""From a config to the images, splits and captions it names (generating the shapes set if needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from captioner.config import Config, DataConfig
from captioner.data.coco import ImageRecord, load_records, select_split
from captioner.data.importing.manifest import read_manifest, require_complete
from captioner.data.tokenize import tokenize
from captioner.data.vocab import Vocabulary
from captioner.errors import CaptionerError
from captioner.util.paths import default_cache_dir

SHAPES_FILES = {
    "karpathy_json": "dataset_shapes.json",
    "captions_json": [f"annotations/captions_{s}.json" for s in ("train", "val", "test")],
    "instances_json": [f"annotations/instances_{s}.json" for s in ("train", "val", "test")],
}


def cache_dir(config: Config) -> Path:
    return Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()


def dataset_root(config: Config) -> Path:
    """The dataset folder: the built-in shapes set (generated on first use) or data.root."""
    if config.data.dataset == "shapes" and not config.data.root:
        from captioner.data.shapes import ShapesSpec, ensure_shapes

        return ensure_shapes(ShapesSpec(**asdict(config.data.shapes)), cache_dir(config))
    if not config.data.root:
        raise CaptionerError(f"data.root is not set for dataset {config.data.dataset!r}")
    root = Path(config.data.root).expanduser()
    if not root.is_dir():
        how = (f"fetch COCO with: captioner data coco --root {root}"
               if config.data.dataset == "coco" else
               f"make one with: captioner data import CAPTIONS_FILE --out {root}")
        raise CaptionerError(f"data.root: no such folder {root.resolve()}; {how}")
    return root


@dataclass
class PreparedData:
    root: Path
    records: list[ImageRecord]
    train_splits: Sequence[str]
    instances: list[Path]
    _tokens: dict[int, list[list[str]]] = field(default_factory=dict, repr=False)

    def split(self, name: str) -> list[ImageRecord]:
        """Records of one split; "train" means every split the config trains on (train + restval)."""
        records = select_split(self.records, self.train_splits if name == "train" else [name])
        if not records:
            there = ", ".join(sorted({r.split for r in self.records})) or "none"
            raise CaptionerError(f"split {name!r} has no images in {self.root} (its splits: {there})")
        return records

    def tokens(self, record: ImageRecord) -> list[list[str]]:
        """The record's captions as coco-caption tokens, tokenised once per image (the vocabulary
        and the datasets both need them; tokenising COCO's 600k captions takes a minute)."""
        if record.image_id not in self._tokens:
            self._tokens[record.image_id] = [tokenize(c) for c in record.captions]
        return self._tokens[record.image_id]

    def train_tokens(self) -> list[list[str]]:
        return [tokens for r in self.split("train") for tokens in self.tokens(r)]


def data_files(config: Config, root: Path) -> tuple[str, list[str], list[str]]:
    """The split file, caption files and instance files to read: the ones the config sets, else
    those an imported folder's manifest names, else the shapes set's."""
    data, manifest = config.data, read_manifest(root)
    if manifest is not None:
        require_complete(root, manifest)
        karpathy = manifest.karpathy_json if data.karpathy_json == DataConfig.karpathy_json \
            else data.karpathy_json
        return (karpathy, data.captions_json or manifest.captions_json,
                data.instances_json or manifest.instances_json)
    shapes = data.dataset == "shapes"
    return (data.karpathy_json,
            data.captions_json or (SHAPES_FILES["captions_json"] if shapes else []),
            data.instances_json or (SHAPES_FILES["instances_json"] if shapes else []))


def prepare(config: Config) -> PreparedData:
    root = dataset_root(config)
    karpathy, captions, instances = data_files(config, root)
    records = load_records(root, karpathy, captions)
    return PreparedData(root, records, config.data.train_splits,
                        [root / f for f in instances if (root / f).exists()])


def build_vocab(data: PreparedData, min_count: int) -> Vocabulary:
    return Vocabulary.build(data.train_tokens(), min_count=min_count)
