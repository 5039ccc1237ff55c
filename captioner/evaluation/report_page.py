"""The evaluation report's index.html: one self-contained page, readable offline.

Every string that comes from a dataset or a model (captions, file names, run settings) passes
through `html.escape` before it reaches the page, and a Content-Security-Policy forbids anything
but the report's own images and the one inline script, so a caption like
`<script>...</script>` is shown, never run, and nothing is fetched from the network.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import PurePath
from typing import Any

from captioner.evaluation.records import (
    CaptionSummary,
    EvaluationMetrics,
    ImageRecord,
    Resampling,
    WordMap,
)
from captioner.pages.html import (
    HEADLINE,
    STYLE,
    figure,
    interval_text,
    picture,
    reference_list,
    section,
    tag_badges,
)
from captioner.pages.plots import Plot

_DATA_FILES = ("metrics.json", "predictions.json", "per_image.jsonl")
# Records on <body> how many images loaded, so a headless browser can check the gallery.
_SCRIPT = (
    "window.addEventListener('load', function () {"
    " var images = document.querySelectorAll('img'), loaded = 0;"
    " images.forEach(function (i) { if (i.complete && i.naturalWidth > 0) loaded++; });"
    " document.body.dataset.imagesLoaded = loaded;"
    " document.body.dataset.imagesTotal = images.length; });"
)
def render_page(
    metrics: EvaluationMetrics,
    worst: Sequence[ImageRecord],
    best: Sequence[ImageRecord],
    plots: Sequence[Plot],
    thumbnails: Mapping[int, str],
    tags: Mapping[str, str],
) -> str:
    """The whole page; `thumbnails` maps image ids to image paths relative to the page."""
    summary = metrics.summary
    # The two tables side by side, so the worst images are on the first screen or the next.
    sections = [
        "<div class=top>" + section("metrics", "Metrics", _headline(metrics))
        + section("summary", "Captions at a glance",
                  _summary_table(summary, tags, metrics.intervals)) + "</div>",
        section("worst", f"The {len(worst)} worst images by CIDEr-D",
                 "<p class=muted>Lowest per-image CIDEr-D first: where the model fails and "
                 "how (the tags say why).</p>" + _gallery(worst, thumbnails)),
        section("best", f"The {len(best)} best images by CIDEr-D",
                 "<p class=muted>Highest per-image CIDEr-D first: what the model does "
                 "well.</p>" + _gallery(best, thumbnails)),
        section("plots", "Plots", "".join(figure(p) for p in plots)),
        section("files", "Data files", "<ul>" + "".join(
            f'<li><a href="{f}">{f}</a></li>' for f in _DATA_FILES) + "</ul>"),
    ]
    nav = " ".join(f'<a href="#{s}">{t}</a>' for s, t in (
        ("metrics", "Metrics"), ("summary", "Summary"), ("worst", "Worst"), ("best", "Best"),
        ("plots", "Plots"), ("files", "Files")))
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    # 'self' covers file:// pages in Chromium; Firefox gives each local file its own origin.
    policy = (f"default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; "
              f"script-src 'sha256-{digest}'")
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n'
        '<meta name=viewport content="width=device-width, initial-scale=1">\n'
        f"<title>Caption evaluation ({summary.images} images)</title>\n"
        f"<style>{STYLE}</style></head>\n<body>\n"
        f"<h1>Caption evaluation</h1>\n<p class=muted>{summary.images} images"
        f"{_run_line(metrics.run)}</p>\n<nav>{nav}</nav>\n"
        + "\n".join(sections)
        + f"\n<script>{_SCRIPT}</script>\n</body></html>\n"
    )


def _run_line(run: Mapping[str, Any]) -> str:
    return "".join(f" · {escape(str(k))}: <b>{escape(str(v))}</b>" for k, v in run.items())


def _headline(metrics: EvaluationMetrics) -> str:
    intervals = metrics.intervals
    rows = []
    for key, name in HEADLINE.items():
        value = metrics.metrics.get(key)
        cells = ("<td class=num>skipped</td><td></td>" if value is None
                 else f"<td class=num>{value:.3f}</td><td class=num>{100 * value:.1f}</td>")
        if intervals:
            cells += f"<td class=num>{'' if value is None else interval_text(intervals.get(key))}</td>"
        rows.append(f'<tr><th title="{escape(metrics.definitions.get(key, ""))}">{name}</th>'
                    f"{cells}</tr>")
    notes = "".join(f"<li>{escape(n)}</li>" for n in metrics.notes)
    interval_head = "<th>95% interval</th>" if intervals else ""
    return (
        "<table class=headline><tr><th>metric</th><th>score</th><th>×100 (as in papers)</th>"
        f"{interval_head}</tr>{''.join(rows)}</table>\n<p class=muted>Scale: {escape(metrics.scale)}. "
        "Hover a metric's name for its exact definition.</p>"
        + (_interval_meaning(metrics.bootstrap, metrics.summary.images) if intervals else "")
        + (f"<ul class=notes>{notes}</ul>" if notes else "")
    )


def _interval_meaning(bootstrap: Resampling, images: int) -> str:
    excluded = "".join(f" {escape(why)}." for why in (bootstrap.not_resampled or {}).values())
    return (
        f"<p class=muted>The 95% interval is the middle 95% of the score over "
        f"{bootstrap.resamples} resamples of these {images} images, drawn with replacement "
        f"(seed {bootstrap.seed}): how much the score depends on which images were evaluated. "
        "Two runs' intervals may overlap while a comparison on the same images still shows a "
        "clear difference: <code>captioner diff</code> resamples both runs on the same images "
        f"and gives the interval of their difference.{excluded}</p>"
    )


def _summary_table(summary: CaptionSummary, tags: Mapping[str, str],
                   intervals: Mapping[str, Sequence[float] | None]) -> str:
    n = summary.images
    length = summary.caption_length
    novel = summary.novel_captions
    rows = [
        ("images", str(n), "evaluated images, one caption each"),
        ("distinct captions", _percent(summary.distinct_captions),
         "different captions per image; low means the model repeats itself across images"),
        ("novel captions", "not computed" if novel is None else _percent(novel),
         "captions that appear nowhere in the training captions"),
        ("vocabulary used", f"{summary.vocabulary_used} words",
         f"distinct words in the predictions; the references use "
         f"{summary.reference_vocabulary}"),
        ("caption length", f"{length.mean:.1f} tokens",
         f"median {length.median:g}, min {length.min}, max {length.max}; references "
         f"average {summary.reference_length_mean:.1f}"),
    ]
    objects = summary.objects
    if objects is not None:
        rows += [
            ("CHAIR_i", _percent(objects.chair_i) + _percent_interval(intervals, "chair_i"),
             f"hallucinated share of the {objects.object_mentions} object mentions "
             f"({objects.kind} objects, {objects.images_annotated} annotated images)"),
            ("CHAIR_s", _percent(objects.chair_s) + _percent_interval(intervals, "chair_s"),
             "captions that mention at least one object not in their image"),
            ("object recall",
             _percent(objects.object_recall) + _percent_interval(intervals, "object_recall"),
             "annotated objects that the caption mentions"),
        ]
    rows += [(f"tag: {tag}", f"{summary.tags[tag]} ({_percent(summary.tags[tag] / n)})",
              meaning) for tag, meaning in tags.items()]
    body = "".join(f"<tr><th>{escape(name)}</th><td class=num>{escape(value)}</td>"
                   f"<td class=muted>{escape(why)}</td></tr>" for name, value, why in rows)
    return f"<table>{body}</table>"


def _gallery(records: Sequence[ImageRecord], thumbnails: Mapping[int, str]) -> str:
    return "<div class=gallery>" + "".join(_card(r, thumbnails) for r in records) + "</div>"


def _card(record: ImageRecord, thumbnails: Mapping[int, str]) -> str:
    image_id = record.image_id
    file_name = PurePath(record.file).name
    scores = record.scores
    return (
        f"<article class=card>{picture(thumbnails, image_id, file_name)}<div class=text>"
        f'<p class=meta>#{image_id} · <span class=file title="{escape(record.file)}">'
        f"{escape(file_name)}</span></p>"
        f"<p class=prediction>{escape(record.prediction) or '<i>(empty)</i>'}</p>"
        f"<p class=scores>CIDEr-D {scores.cider:.3f} · smoothed BLEU-4 "
        f"{scores.bleu4_smoothed or 0.0:.3f}</p>"
        f"<div>{tag_badges(record.to_json())}</div>{_word_maps(record.maps)}"
        f"{reference_list(record.references)}</div></article>"
    )


def _word_maps(maps: Sequence[WordMap]) -> str:
    """Grad-CAM overlays of the card's chosen words (captioner.evaluation.gallery_maps)."""
    if not maps:
        return ""
    figures = "".join(f'<figure><img src="{escape(m.file)}" alt="map of {escape(m.word)}">'
                      f"<figcaption>{escape(m.word)}{' (none)' if m.empty else ''}"
                      "</figcaption></figure>" for m in maps)
    return ('<div class=wordmaps title="Grad-CAM: where the image drove this word (red: most)">'
            f"<span class=muted>where it looked:</span>{figures}</div>")


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


def _percent_interval(intervals: Mapping[str, Sequence[float] | None], key: str) -> str:
    interval = intervals.get(key)
    return "" if interval is None else f" [{_percent(interval[0])}, {_percent(interval[1])}]"
