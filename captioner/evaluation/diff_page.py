"""The diff's index.html: two evaluations side by side, in the evaluation report's style.

Offline and self-contained like the report: thumbnails beside the page, relative links, every
caption, file name and run setting through `html.escape`, and a Content-Security-Policy that
allows the page's own images and styles only (no script, nothing from the network).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from pathlib import PurePath

from captioner.evaluation.records import DiffResult, MovedImage, PairedDelta, SideCaption, TagChange
from captioner.pages.html import HEADLINE, STYLE, picture, reference_list, section, tag_badges

_NAMES = {**HEADLINE, "chair_i": "CHAIR_i", "chair_s": "CHAIR_s", "object_recall": "object recall"}
_POLICY = "default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'"
_EXTRA_STYLE = """
.pairs { width: 100%; } .pairs td { width: 30%; } .pairs td.picture { width: 220px; }
.pairs img, .pairs .missing { width: 220px; height: 165px; object-fit: contain;
                              background: #1d1d1d; display: block; }
.pairs .missing { color: #bbb; display: flex; align-items: center; justify-content: center; }
.pairs ol { margin: 4px 0 0; padding-left: 20px; font-size: 0.85em; color: #444; }
.caption { font-weight: 600; } .up { color: #1e8449; } .down { color: #c0392b; }
"""


def render_diff_page(result: DiffResult, thumbnails: Mapping[int, str],
                     tags: Mapping[str, str]) -> str:
    """The whole page from what diff.json holds; `thumbnails`: image id -> path beside the page."""
    sections = [
        section("metrics", "Metrics, A and B", _metrics(result)),
        section("better", f"Where B does better: {_images(len(result.b_better))}",
                "<p class=muted>Largest rise in per-image CIDEr-D from A to B first.</p>"
                + _pairs(result.b_better, thumbnails)),
        section("worse", f"Where B does worse: {_images(len(result.b_worse))}",
                "<p class=muted>Largest fall in per-image CIDEr-D from A to B first.</p>"
                + _pairs(result.b_worse, thumbnails)),
        section("tags", "Failure tags", _tags(result.tags, tags)),
        section("files", "Data", '<p><a href="diff.json">diff.json</a> holds every number on '
                "this page and the ids of the images that gained or lost each tag.</p>"),
    ]
    nav = " ".join(f'<a href="#{anchor}">{title}</a>' for anchor, title in (
        ("metrics", "Metrics"), ("better", "B better"), ("worse", "B worse"), ("tags", "Tags"),
        ("files", "Data")))
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">\n'
        '<meta name=viewport content="width=device-width, initial-scale=1">\n'
        f"<title>Caption evaluations compared ({result.images} images)</title>\n"
        f"<style>{STYLE}{_EXTRA_STYLE}</style></head>\n<body>\n"
        f"<h1>Caption evaluations compared</h1>\n{_sides(result)}\n<nav>{nav}</nav>\n"
        + "\n".join(sections) + "\n</body></html>\n"
    )


def _images(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


def _sides(result: DiffResult) -> str:
    lines = []
    for name, side in (("A", result.a), ("B", result.b)):
        settings = "".join(f" · {escape(str(k))}: <b>{escape(str(v))}</b>"
                           for k, v in side.run.items())
        lines.append(f"<b>{name}</b>: {escape(side.folder)}{settings}")
    return (f"<p class=muted>{'<br>'.join(lines)}<br>the same {result.images} images and "
            "references in both</p>")


def _metrics(result: DiffResult) -> str:
    rows = []
    for key, m in result.metrics.items():
        rows.append(
            f"<tr><th>{escape(_NAMES.get(key, key))}</th>{_num(m.a)}{_num(m.b)}"
            f"{_num(m.delta, signed=True)}<td class=num>{_interval(m)}</td>"
            f"<td class=num>{_share(m.b_wins)}</td></tr>")
    b = result.bootstrap
    notes = "".join(f"<li>{escape(n)}</li>" for n in result.notes)
    return (
        "<table class=headline><tr><th>metric</th><th>A</th><th>B</th><th>B − A</th>"
        f"<th>95% interval of B − A</th><th>B better in</th></tr>{''.join(rows)}</table>\n"
        f"<p class=muted>Each of {b.resamples} resamples draws {result.images} images with "
        f"replacement (seed {b.seed}) and scores A and B on that same draw. The interval holds "
        "the middle 95% of B − A; when it contains 0, these images do not tell the two runs apart "
        "on that metric. “B better in” is the share of resamples where B scores better (lower, "
        "for CHAIR); a tie counts one half. CIDEr-D keeps each image's full-set score.</p>"
        + (f"<ul class=notes>{notes}</ul>" if notes else "")
    )


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "<td class=num>n/a</td>"
    return f"<td class=num>{value:+.3f}</td>" if signed else f"<td class=num>{value:.3f}</td>"


def _share(fraction: float | None) -> str:
    return "" if fraction is None else f"{100 * fraction:.1f}%"


def _interval(metric: PairedDelta) -> str:
    """The interval of B - A; n/a where the metric is undefined (CHAIR_i without mentions)."""
    if metric.delta is None:
        return "n/a"
    interval = metric.interval
    return "not resampled" if interval is None else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


def _pairs(pairs: Sequence[MovedImage], thumbnails: Mapping[int, str]) -> str:
    if not pairs:
        return "<p>None.</p>"
    head = "<tr><th>image</th><th>A</th><th>B</th><th>references</th></tr>"
    return f"<table class=pairs>{head}{''.join(_pair(p, thumbnails) for p in pairs)}</table>"


def _pair(pair: MovedImage, thumbnails: Mapping[int, str]) -> str:
    image_id, name = pair.image_id, PurePath(pair.file).name
    change = "up" if pair.cider_delta > 0 else "down"
    return (
        f"<tr><td class=picture>{picture(thumbnails, image_id, name)}<p class=muted>#{image_id} · "
        f'<span title="{escape(pair.file)}">{escape(name)}</span><br>CIDEr-D '
        f"<b class={change}>{pair.cider_delta:+.3f}</b></p></td>"
        f"{_caption(pair.a)}{_caption(pair.b)}<td>{reference_list(pair.references)}</td></tr>"
    )


def _caption(side: SideCaption) -> str:
    return (f"<td><p class=caption>{escape(side.prediction) or '<i>(empty)</i>'}</p>"
            f"<p class=muted>CIDEr-D {side.cider:.3f}</p>{tag_badges(side.to_json())}</td>")


def _tags(changes: Mapping[str, TagChange], meanings: Mapping[str, str]) -> str:
    rows = []
    for tag, change in changes.items():
        rows.append(
            f"<tr><th title=\"{escape(meanings.get(tag, ''))}\">{escape(tag)}</th>"
            f"<td class=num>{change.a}</td><td class=num>{change.b}</td>"
            f"<td>{_ids(change.appeared)}</td><td>{_ids(change.disappeared)}</td></tr>")
    return (
        "<table><tr><th>tag</th><th>A</th><th>B</th><th>appeared in B (images)</th>"
        f"<th>disappeared in B (images)</th></tr>{''.join(rows)}</table>\n"
        "<p class=muted>Images carrying each failure tag in A and in B; hover a tag for what it "
        "means. The image ids of every change are in diff.json.</p>"
    )


def _ids(ids: Sequence[int], shown: int = 12) -> str:
    if not ids:
        return "<span class=muted>none</span>"
    listed = ", ".join(f"#{i}" for i in ids[:shown])
    return f"{len(ids)}: {listed}{', …' if len(ids) > shown else ''}"
