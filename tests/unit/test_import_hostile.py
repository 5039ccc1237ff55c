"""`captioner data import` under hostile or careless input (issue 22): nothing of a user's is
removed or copied, two imports do not mix, odd ids and huge rows cost their row only."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from helpers.images import jpegs
from helpers.importing import lines_of

from captioner.data.coco import load_records
from captioner.data.importing import import_dataset
from captioner.data.importing.manifest import MANIFEST_NAME
from captioner.data.importing.write import LOCK_NAME
from captioner.data.tokenize import tokenize
from captioner.errors import CaptionerError
from captioner.util.locks import flock


def three_images(folder: Path) -> Path:
    jpegs(folder, ["a.jpg", "b.jpg", "c.jpg"])
    (folder / "c.csv").write_text("a.jpg,one dog\nb.jpg,two dogs\nc.jpg,three dogs\n")
    return folder / "c.csv"


def test_reimport_never_removes_through_a_symlinked_folder(tmp_path: Path) -> None:
    captions, out = three_images(tmp_path / "src"), tmp_path / "out"
    import_dataset(captions, out, copy=True)
    library = tmp_path / "library"  # the user's own pictures, under the names the copies had
    jpegs(library, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    for copied in (out / "images").iterdir():
        copied.unlink()
    (out / "images").rmdir()
    (out / "images").symlink_to(library)
    import_dataset(captions, out)  # in place: the earlier copies are no longer needed
    assert sorted(p.name for p in library.iterdir()) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert (out / "images").is_symlink()


def test_an_edited_manifest_does_not_widen_what_is_removed(tmp_path: Path) -> None:
    captions, out = three_images(tmp_path / "src"), tmp_path / "out"
    import_dataset(captions, out, copy=True)
    (out / "notes.txt").write_text("a user's notes")
    (out / "images" / "a.jpg").write_bytes(b"\xff\xd8\xff the user's own edit of the copy")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["files"].append("notes.txt")
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    import_dataset(captions, out)  # in place: copies and the listed notes are "stale"
    assert (out / "notes.txt").read_text() == "a user's notes"
    assert (out / "images" / "a.jpg").read_bytes().startswith(b"\xff\xd8\xff the user's")
    assert not (out / "images" / "b.jpg").exists()  # an untouched copy of the import's goes


def test_only_images_inside_the_images_folder_are_taken(tmp_path: Path) -> None:
    images = tmp_path / "data" / "images"
    jpegs(images, ["a.jpg", "b.jpg"])
    jpegs(tmp_path / "elsewhere", ["far.jpg"])
    secret = tmp_path / "secret" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (images / "link.jpg").symlink_to(tmp_path / "elsewhere" / "far.jpg")
    (images / "notes.jpg").write_text("not a picture at all")
    rows = ["a.jpg", "b.jpg", "../../secret/id_rsa", str(secret), "link.jpg", "notes.jpg",
            "../../elsewhere/far.jpg"]
    (tmp_path / "c.csv").write_text("".join(f"{row},a dog {n}\n" for n, row in enumerate(rows)))
    report = import_dataset(tmp_path / "c.csv", tmp_path / "out", images=images, copy=True)
    assert report.images_kept == 2
    assert report.captions_dropped == {"outside_images": 4, "not_an_image": 1}
    assert lines_of(report, "outside_images") == [3, 4, 5, 7]
    assert sorted(p.name for p in (tmp_path / "out" / "images").rglob("*")) == ["a.jpg", "b.jpg"]
    allowed = import_dataset(tmp_path / "c.csv", tmp_path / "out2", images=images, copy=True,
                             allow_outside=True)
    assert allowed.images_kept == 4 and allowed.captions_dropped == {"not_an_image": 3}
    assert not any("id_rsa" in p.name for p in (tmp_path / "out2").rglob("*"))


def test_a_second_import_into_the_same_folder_at_once_is_refused(tmp_path: Path) -> None:
    captions, out = three_images(tmp_path / "src"), tmp_path / "out"
    out.mkdir()
    with flock(out / LOCK_NAME, wait=False) as held:
        assert held
        with pytest.raises(CaptionerError, match="another import into .* is running"):
            import_dataset(captions, out)
    assert import_dataset(captions, out).images_kept == 3  # the lock file is no user's file
    assert import_dataset(captions, out).images_kept == 3


def test_coco_ids_must_be_unique_plain_integers(tmp_path: Path) -> None:
    names = [f"img{i}.jpg" for i in range(6)]
    jpegs(tmp_path / "val2014", names)
    entries = [(0, names[0]), (1, names[1]), (2, names[2]), (0, names[3]), (2 ** 63, names[4]),
               (True, names[5])]
    annotations = [{"id": n, "image_id": i, "caption": f"caption {n} of image {i}"}
                   for n, i in enumerate([0, 1, 2, 2 ** 63, True, 1.5])]
    coco = {"images": [{"id": i, "file_name": name} for i, name in entries],
            "annotations": annotations}
    (tmp_path / "captions_val2014.json").write_text(json.dumps(coco))
    report = import_dataset(tmp_path / "captions_val2014.json", tmp_path / "out")
    records = {r.path.name: (r.image_id, r.captions) for r in
               load_records(tmp_path / "out", "dataset_karpathy.json")}
    assert records == {names[1]: (1, ("caption 1 of image 1",)),
                       names[2]: (2, ("caption 2 of image 2",))}
    assert report.captions_dropped == {"duplicate_id": 3, "malformed": 5}
    problems = {p["entry"]: p["message"] for p in report.problems}
    assert "image id 0" in problems["images[0]"] and "image id 0" in problems["images[3]"]
    assert str(2 ** 63) in problems["images[4]"] and "True" in problems["images[5]"]
    assert {"annotations[3]", "annotations[4]", "annotations[5]"} <= set(problems)


def test_a_huge_caption_is_one_dropped_row(tmp_path: Path) -> None:
    jpegs(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    lines = [json.dumps({"image": "a.jpg", "caption": "one dog"}),
             json.dumps({"image": "b.jpg", "caption": "a dog" + "," * 20_000_000}),
             json.dumps({"image": "c.jpg", "caption": "three dogs"})]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    report = import_dataset(tmp_path / "c.jsonl", tmp_path / "out")
    assert report.images_kept == 2 and report.captions_dropped == {"overlong": 1}
    assert lines_of(report, "overlong") == [2]


def test_a_line_past_the_csv_field_limit_costs_only_its_row(tmp_path: Path) -> None:
    jpegs(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "c.csv").write_text(f'a.jpg,one dog\nb.jpg,"{"x" * 300_000}"\nc.jpg,three dogs\n')
    report = import_dataset(tmp_path / "c.csv", tmp_path / "out")
    assert report.images_kept == 2 and report.captions_dropped == {"overlong": 1}
    assert lines_of(report, "overlong") == [2]


@pytest.mark.slow  # over a second where bf16 and AVX-512 are missing: out of the fast loop
def test_the_fast_tokenizer_path_agrees_with_the_ptb_rules() -> None:
    from captioner.data.tokenize import PUNCTUATION, _treebank

    rng = random.Random(0)
    alphabet = "ab cn0,.9 " + "gonnawannacannot"
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        text = " ".join(text.split())
        expected = [t for t in _treebank().tokenize(text) if t not in PUNCTUATION]
        assert tokenize(text) == expected, text
