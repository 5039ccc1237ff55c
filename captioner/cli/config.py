"""`captioner config show`: every setting, its value and what it does, as YAML."""

from __future__ import annotations

import argparse
import dataclasses

from captioner.cli.common import command, config_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "config", "print the resolved settings (defaults, a config file, overrides) "
                               "with each one's meaning, as YAML a config file can start from", [
        "captioner config show",
        "captioner config show --config configs/coco_vgg16_lstm.yaml",
        "captioner config show decoder.cell=gru > mine.yaml",
    ])
    p.add_argument("action", choices=("show",), help="what to do")
    config_arguments(p, "decoder.cell=gru")


def run(args: argparse.Namespace) -> int:
    from captioner.cli.settings import load
    from captioner.config import Config

    print(annotated(load(args.config, args.overrides), Config))
    return 0


def annotated(config: object, cls: type, indent: str = "") -> str:
    """The config as YAML, each setting preceded by its one-sentence meaning as a comment and
    followed by what it accepts, where that is limited ("# between 0 and 0.99")."""
    import yaml

    from captioner.config import accepts

    lines = []
    for field in dataclasses.fields(cls):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            lines += [f"{indent}{field.name}:", annotated(value, type(value), indent + "  ")]
            continue
        if field.metadata.get("help"):
            lines.append(f"{indent}# {field.metadata['help']}")
        dumped = yaml.safe_dump({field.name: value}, default_flow_style=True, width=10_000).strip()
        limits = accepts(field)
        shown = f"{indent}{dumped.removeprefix('{').removesuffix('}')}"
        lines.append(f"{shown}  # {limits}" if limits else shown)
    return "\n".join(lines)
