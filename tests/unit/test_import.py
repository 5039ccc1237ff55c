"""`captioner data import`: each real format, written here with a handful of tiny JPEGs, imports,
and the report counts what was wrong with it; the folder it writes is what training reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import REPO
from helpers.images import jpegs
from helpers.importing import CAPTIONS, lines_of
from pycocotools.coco import COCO

from captioner.config import load_config
from captioner.data.coco import load_records
from captioner.data.importing import import_dataset
from captioner.data.importing.manifest import MANIFEST_NAME
from captioner.data.prepare import prepare
from captioner.errors import CaptionerError


def flickr8k(root: Path) -> list[str]:
    """Flickr8k as distributed: Flickr8k_text/ (token file, split lists) and Flicker8k_Dataset/."""
    names = [f"{1000 + i}_abc.jpg" for i in range(6)]
    jpegs(root / "Flicker8k_Dataset", names)
    text = root / "Flickr8k_text"
    text.mkdir()
    lines = [f"{name}#{k}\t{caption}" for name in names for k, caption in enumerate(CAPTIONS)]
    lines.append(f"{names[0]}.1#0\tA dog .")  # the real file's stray entry: no such image
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    for split, chosen in (("train", names[:3]), ("dev", names[3:4]), ("test", names[4:5])):
        (text / f"Flickr_8k.{split}Images.txt").write_text("\n".join(chosen) + "\n")
    return names  # names[5] is in no list


def test_flickr8k_folder_keeps_its_split_lists(tmp_path: Path) -> None:
    names = flickr8k(tmp_path / "Flickr8k")
    report = import_dataset(tmp_path / "Flickr8k", tmp_path / "out", min_count=1)
    assert report.format == "flickr8k" and report.source.endswith("Flickr8k.token.txt")
    assert report.splits == {"train": 3, "val": 1, "test": 1}
    assert report.split_origin.startswith("Flickr_8k.")
    assert (report.images_listed, report.images_found, report.images_missing) == (7, 6, 1)
    assert report.captions_dropped == {"no_split": 5, "image_missing": 1}
    assert report.captions_kept == 25 and report.captions_read == 31
    [missing] = [p for p in report.problems if p["reason"] == "image_missing"]
    assert missing["line"] == 31 and missing["file"].endswith("Flickr8k.token.txt")
    records = load_records(tmp_path / "out", "dataset_karpathy.json")
    assert {r.path.name for r in records if r.split == "val"} == {names[3]}
    assert all(r.path.is_file() and len(r.captions) == 5 for r in records)


def test_flickr8k_captions_txt_repackaging(tmp_path: Path) -> None:
    # The widespread repackaging: flickr8k/captions.txt (image,caption header) beside Images/.
    names = [f"{2000 + i}_xyz.jpg" for i in range(4)]
    jpegs(tmp_path / "flickr8k" / "Images", names)
    rows = [f'{name},"{caption}"' for name in names for caption in CAPTIONS]
    (tmp_path / "flickr8k" / "captions.txt").write_text("image,caption\n" + "\n".join(rows) + "\n")
    report = import_dataset(tmp_path / "flickr8k", tmp_path / "out")
    assert report.format == "flickr8k" and report.source.endswith("captions.txt")
    assert report.images_kept == 4 and report.captions_kept == 20 and not report.captions_dropped
    assert report.split_origin.startswith("random")


def test_flickr30k_pipe_csv_reports_its_broken_row(tmp_path: Path) -> None:
    # Kaggle's layout: flickr30k_images/results.csv beside flickr30k_images/flickr30k_images/.
    folder = tmp_path / "flickr30k_images"
    names = [f"{100 + i}.jpg" for i in range(4)]
    jpegs(folder / "flickr30k_images", names)
    lines = ["image_name| comment_number| comment"]
    lines += [f"{name}| {k}| {caption}" for name in names for k, caption in enumerate(CAPTIONS)]
    lines[7] = "101.jpg| 1 A dog runs across the grass ."  # as in the real file: a pipe is missing
    (folder / "results.csv").write_text("\n".join(lines) + "\n")
    report = import_dataset(folder / "results.csv", tmp_path / "out", split=(0.5, 0.25, 0.25))
    assert report.format == "flickr30k" and report.images_kept == 4
    assert report.captions_dropped == {"malformed": 1} and lines_of(report, "malformed") == [8]
    assert report.splits == {"train": 2, "val": 1, "test": 1}
    assert report.split_origin == "random 0.5/0.25/0.25, seed 0"


def test_custom_csv_counts_every_problem(tmp_path: Path) -> None:
    jpegs(tmp_path / "photos", ["a.jpg", "b.jpg", "c.jpg"])
    rows = [
        "image,caption",                        # 1: header
        "a.jpg,A red kite over a beach",        # 2
        'b.jpg,"Two cats, asleep on a sofa"',   # 3: quoted comma
        "c.jpg,a bowl of soup, hot",            # 4: unquoted comma: the rest of the row
        "gone.jpg,a picture nobody has",        # 5: missing image
        "a.jpg,",                               # 6: empty caption
        "./a.jpg,A red kite over a beach",      # 7: duplicate row (the same image)
        ",a caption of no image",               # 8: no image name
    ]
    data = ("\n".join(rows) + "\n").encode() + b"b.jpg,caf\xe9 on the corner\n"  # 9: a Latin-1 byte
    (tmp_path / "captions.csv").write_bytes(data)
    report = import_dataset(tmp_path / "captions.csv", tmp_path / "out", images=tmp_path / "photos")
    assert report.format == "csv" and report.images_kept == 3
    reasons = ("image_missing", "empty", "duplicate", "malformed", "encoding")
    assert report.captions_dropped == dict.fromkeys(reasons, 1)
    assert [lines_of(report, r) for r in reasons] == [[5], [6], [7], [8], [9]]
    assert "--encoding" in next(p["message"] for p in report.problems if p["reason"] == "encoding")
    records = {r.path.name: r.captions for r in load_records(tmp_path / "out", "dataset_karpathy.json")}
    assert records["b.jpg"] == ("Two cats, asleep on a sofa",)
    assert records["c.jpg"] == ("a bowl of soup, hot",)
    saved = json.loads((tmp_path / "out" / "import_report.json").read_text())
    assert saved["captions_dropped"] == report.captions_dropped and saved["problems_total"] == 5


def test_encoding_option_and_byte_order_marks(tmp_path: Path) -> None:
    jpegs(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    text = "a.jpg\tun café au lait\nb.jpg\tune crêpe\nc.jpg\tdéjà vu\n"
    (tmp_path / "latin.tsv").write_bytes(text.encode("cp1252"))
    with pytest.raises(CaptionerError, match=r"no usable row \(3 encoding\).*--encoding"):
        import_dataset(tmp_path / "latin.tsv", tmp_path / "out1")
    told = import_dataset(tmp_path / "latin.tsv", tmp_path / "out2", encoding="cp1252")
    assert told.captions_kept == 3 and not told.captions_dropped
    (tmp_path / "excel.tsv").write_bytes(text.encode("utf-16"))  # with its byte-order mark
    excel = import_dataset(tmp_path / "excel.tsv", tmp_path / "out3")
    assert excel.encoding == "utf-16" and excel.captions_kept == 3
    records = load_records(tmp_path / "out3", "dataset_karpathy.json")
    assert "un café au lait" in {c for r in records for c in r.captions}


def test_jsonl_with_lists_of_captions(tmp_path: Path) -> None:
    jpegs(tmp_path / "img", ["x.jpg", "y.jpg", "z.jpg"])
    lines = [json.dumps({"image": "img/x.jpg", "captions": list(CAPTIONS[:3])}),
             json.dumps({"image": "img/y.jpg", "caption": CAPTIONS[3]}),
             "{not json",
             json.dumps({"file_name": "img/z.jpg", "captions": [CAPTIONS[4], 7]})]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    report = import_dataset(tmp_path / "data.jsonl", tmp_path / "out")
    assert report.format == "jsonl" and report.images_kept == 2 and report.captions_kept == 4
    assert report.captions_dropped == {"malformed": 2} and lines_of(report, "malformed") == [3, 4]
    assert report.captions_per_image == {"min": 1, "median": 2.0, "max": 3}


def test_coco_captions_json_keeps_its_ids(tmp_path: Path) -> None:
    names = {42: "COCO_val2014_000000000042.jpg", 7: "COCO_val2014_000000000007.jpg",
             9: "COCO_val2014_000000000009.jpg"}
    jpegs(tmp_path / "val2014", list(names.values()))
    annotations = [{"id": 100 + k, "image_id": i, "caption": c}
                   for i in names for k, c in enumerate(CAPTIONS)]
    annotations.append({"id": 999, "image_id": 5, "caption": "of an image nobody lists"})
    coco = {"info": {}, "licenses": [], "annotations": annotations,
            "images": [{"id": i, "file_name": n, "width": 24, "height": 16} for i, n in names.items()]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2014.json").write_text(json.dumps(coco))
    report = import_dataset(tmp_path, tmp_path / "out", split=(1 / 3, 1 / 3, 1 / 3))
    assert report.format == "coco" and report.images_kept == 3
    assert report.captions_dropped == {"malformed": 1}
    assert report.problems[0]["entry"] == "annotations[15]"
    ids = {r.image_id for r in load_records(tmp_path / "out", "dataset_karpathy.json")}
    assert ids == set(names)


def karpathy_file(path: Path, names: list[str]) -> None:
    splits = ["train", "restval", "val", "test"]
    images = [{"filepath": "pics", "filename": name, "imgid": n, "split": splits[n % 4],
               "sentids": [5 * n + k for k in range(5)],
               "sentences": [{"raw": c, "tokens": c.lower().split(), "imgid": n, "sentid": 5 * n + k}
                             for k, c in enumerate(CAPTIONS)]} for n, name in enumerate(names)]
    images.append({"filepath": "pics", "filename": "broken.jpg"})  # no split, no sentences
    path.write_text(json.dumps({"images": images, "dataset": "flickr8k"}))


def test_karpathy_json_keeps_its_splits_and_trains_from_the_manifest(tmp_path: Path) -> None:
    names = [f"k{i}.jpg" for i in range(4)]
    jpegs(tmp_path / "flickr" / "pics", names)
    karpathy_file(tmp_path / "dataset_flickr8k.json", names)
    report = import_dataset(tmp_path / "dataset_flickr8k.json", tmp_path / "out",
                            images=tmp_path / "flickr", min_count=1)
    assert report.format == "karpathy" and report.split_origin.startswith("dataset_flickr8k.json")
    assert report.splits == {"train": 1, "restval": 1, "val": 1, "test": 1}
    assert report.captions_dropped == {"malformed": 1} and report.problems[0]["entry"] == "images[4]"
    # data.root alone: the manifest names the split and caption files (the default is shapes')
    data = prepare(load_config(None, [f"data.root={tmp_path / 'out'}"]))
    assert len(data.split("train")) == 2 and len(data.split("test")) == 1
    assert data.split("val")[0].path == tmp_path / "flickr" / "pics" / "k2.jpg"
    captions = COCO(str(tmp_path / "out" / "annotations" / "captions_val.json"))
    assert [a["caption"] for a in captions.imgToAnns[data.split("val")[0].image_id]] == list(CAPTIONS)


@pytest.mark.parametrize("name", ["flickr8k", "flickr30k"])
def test_flickr_configs_read_an_imported_karpathy_split(tmp_path: Path, name: str) -> None:
    names = [f"f{i}.jpg" for i in range(4)]
    jpegs(tmp_path / "images" / "pics", names)
    karpathy_file(tmp_path / f"dataset_{name}.json", names)
    import_dataset(tmp_path / f"dataset_{name}.json", tmp_path / "out", images=tmp_path / "images")
    config = load_config(REPO / "configs" / f"{name}_vgg16_lstm.yaml",
                         [f"data.root={tmp_path / 'out'}", "decoder.cell=gru"])
    assert (config.encoder.arch, config.encoder.weights, config.decoder.cell) == ("vgg16", "imagenet", "gru")
    data = prepare(config)
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [2, 1, 1]


def test_copy_puts_the_images_in_the_folder(tmp_path: Path) -> None:
    jpegs(tmp_path / "src" / "sub", ["p.jpg", "q.jpg", "r.jpg"])
    (tmp_path / "src" / "c.csv").write_text("".join(f"sub/{n}.jpg,a photo {n}\n" for n in "pqr"))
    import_dataset(tmp_path / "src" / "c.csv", tmp_path / "out", copy=True)
    shutil.rmtree(tmp_path / "src")  # the dataset no longer needs them
    records = load_records(tmp_path / "out", "dataset_karpathy.json")
    assert sorted(r.path.relative_to(tmp_path / "out").as_posix() for r in records) == \
        ["images/sub/p.jpg", "images/sub/q.jpg", "images/sub/r.jpg"]
    assert all(r.path.is_file() for r in records)


def test_verify_images_decodes_them(tmp_path: Path) -> None:
    jpegs(tmp_path, ["ok.jpg", "cut.jpg", "n1.jpg"])
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # truncated: exists, not empty
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "c.csv").write_text("ok.jpg,a\ncut.jpg,b\nempty.jpg,c\nn1.jpg,d\n")
    quick = import_dataset(tmp_path / "c.csv", tmp_path / "out1")
    assert (quick.images_unreadable, quick.images_kept, quick.images_verified) == (1, 3, False)
    decoded = import_dataset(tmp_path / "c.csv", tmp_path / "out2", verify_images=True)
    assert (decoded.images_unreadable, decoded.images_kept) == (2, 2)
    assert lines_of(decoded, "image_unreadable") == [2, 3]
    captions = json.loads((tmp_path / "out2" / "annotations" / "captions_train.json").read_text())
    assert {(im["width"], im["height"]) for im in captions["images"]} == {(24, 16)}


def test_random_split_is_deterministic(tmp_path: Path) -> None:
    names = [f"{i:02d}.jpg" for i in range(20)]
    jpegs(tmp_path, names)
    (tmp_path / "c.csv").write_text("".join(f"{n},a picture\n" for n in reversed(names)))

    def splits(out: str, seed: int) -> dict[str, str]:
        import_dataset(tmp_path / "c.csv", tmp_path / out, seed=seed)
        return {r.path.name: r.split for r in load_records(tmp_path / out, "dataset_karpathy.json")}

    first, again, other = splits("a", 0), splits("b", 0), splits("c", 1)
    assert first == again and first != other
    assert sorted(first.values()).count("val") == 1 and sorted(first.values()).count("test") == 1


def test_splits_training_cannot_use_are_a_warning_with_the_fix(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    names = [f"{i:02d}.jpg" for i in range(10)]
    jpegs(tmp_path, names)
    (tmp_path / "c.csv").write_text("".join(f"{n},a picture\n" for n in names))
    import_dataset(tmp_path / "c.csv", tmp_path / "all-train", split=(1, 0, 0))
    warning = capsys.readouterr().err.strip().splitlines()[-1]
    assert warning.startswith(f"warning: {tmp_path / 'all-train'} has no val or test images: "
                              "captioner train needs train and val images")
    assert warning.endswith("import again with --split 0.9,0.05,0.05 (any three fractions above 0)")
    import_dataset(tmp_path / "c.csv", tmp_path / "usable")
    assert "warning" not in capsys.readouterr().err


def test_output_folder_is_never_a_users(tmp_path: Path) -> None:
    jpegs(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "c.csv").write_text("a.jpg,one\nb.jpg,two\nc.jpg,three\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(CaptionerError, match="not empty"):
        import_dataset(tmp_path / "c.csv", mine)
    with pytest.raises(CaptionerError, match="Not a directory"):  # an OSError, as one line
        import_dataset(tmp_path / "c.csv", tmp_path / "c.csv" / "out")
    out = tmp_path / "out"
    import_dataset(tmp_path / "c.csv", out, copy=True, split=(1, 0, 0))
    (out / "notes.txt").write_text("mine now")
    import_dataset(tmp_path / "c.csv", out, split=(0.4, 0.3, 0.3))  # again, in place this time
    assert (out / "notes.txt").read_text() == "mine now"
    assert not (out / "images").exists()  # the earlier import's copies are gone with it
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["complete"] and "annotations/captions_val.json" in manifest["files"]
    (out / "dataset_karpathy.json").unlink()
    (out / "dataset_karpathy.json").write_text("a user's file under the import's name")
    (out / MANIFEST_NAME).write_text(json.dumps({**manifest, "files": ["import_report.json"]}))
    with pytest.raises(CaptionerError, match="dataset_karpathy.json exists"):
        import_dataset(tmp_path / "c.csv", out)
