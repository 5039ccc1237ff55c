"""Broken inputs on the command line: one clear error each while the other images are still
captioned; and a start-up that imports only what captioning needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.cli import run_cli
from helpers.images import broken_inputs as make_broken_inputs
from helpers.images import good_images


@pytest.fixture()
def broken_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    return make_broken_inputs(tmp_path)


def test_broken_inputs_jsonl_one_error_each(trained_run: Path, tmp_path: Path,
                                            broken_inputs: dict[str, tuple[Path, str]]) -> None:
    good = good_images(tmp_path)
    broken = list(broken_inputs.values())
    order = [good[0], *(p for p, _ in broken[:4]), good[1], *(p for p, _ in broken[4:])]
    result = run_cli("caption", *map(str, order), "--format", "jsonl", "--sample", "--seed", "0",
                     "--n-best", "2", cwd=trained_run)
    assert result.returncode == 3, result.stderr  # some images captioned, some not
    assert "Traceback" not in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in records] == [str(p) for p in order]  # input order, one line each
    by_image = {r["image"]: r for r in records}
    for path in good:
        record = by_image[str(path)]
        assert record["caption"] and len(record["n_best"]) == 2 and "error" not in record
        assert record["n_best"][0]["logprob"] >= record["n_best"][1]["logprob"]
    for path, needle in broken:
        assert set(by_image[str(path)]) == {"image", "error"}
        assert needle in by_image[str(path)]["error"], by_image[str(path)]


def test_broken_inputs_text_mode_errors_on_stderr(trained_run: Path, tmp_path: Path,
                                                  broken_inputs: dict[str, tuple[Path, str]]) -> None:
    good = good_images(tmp_path)
    broken = [broken_inputs[k] for k in ("missing", "truncated-jpeg", "bomb")]
    result = run_cli("caption", str(good[0]), *(str(p) for p, _ in broken), str(good[1]),
                     "--n-best", "2", "--checkpoint", "runs/shapes/checkpoints/best.ckpt",
                     cwd=trained_run)
    assert result.returncode == 3
    errors = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == len(broken)
    # The missing path gave no images; the truncated JPEG and the bomb are images that failed.
    assert "2 of 4 images could not be captioned; 1 input gave no images" in result.stderr
    assert all(needle in line for (_, needle), line in zip(broken, errors))
    lines = result.stdout.splitlines()  # per image: its name, then "  logprob  caption" lines
    assert lines[0] == str(good[0]) and lines[3] == str(good[1]) and len(lines) == 6
    assert all(float(line.split()[0]) < 0 for line in lines[1:3] + lines[4:6])


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the message on a machine without CUDA")
def test_cuda_requested_without_cuda_is_one_line(trained_run: Path) -> None:
    result = run_cli("caption", "any.jpg", "--device", "cuda", cwd=trained_run)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: device 'cuda': CUDA is not available on this machine"


def test_caption_imports_only_what_it_needs(trained_run: Path, tmp_path: Path) -> None:
    """Start-up time: no Lightning, plotting or COCO tooling on the way to a caption."""
    image = good_images(tmp_path)[0]
    script = ("import sys; from captioner.cli import main; "
              f"code = main(['caption', {str(image)!r}]); "
              "print(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))); "
              "sys.exit(code)")
    heavy = ["lightning", "pytorch_lightning", "matplotlib", "pycocotools", "pycocoevalcap", "nltk",
             "pandas", "scipy"]
    result = subprocess.run([sys.executable, "-c", script, *heavy], cwd=trained_run,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
