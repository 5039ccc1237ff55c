"""Parts every HTML page of the project shares: the style sheet, sections, figures, tag badges.

The report (captioner.evaluation.report_page), the diff of two evaluations and the cell comparison
(captioner.compare.page) are built from these, so they look alike. Every string that comes from
a dataset, a model or a user passes through html.escape here or in the page that uses it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from captioner.pages.plots import Plot

HEADLINE = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4",
            "cider": "CIDEr-D", "rouge_l": "ROUGE-L", "meteor": "METEOR"}
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; color: #222; margin: 0 auto; max-width: 1280px;
       padding: 0 24px 48px; background: #fafafa; }
h1 { margin: 24px 0 4px; } h2 { margin-top: 36px; border-bottom: 2px solid #ddd; }
nav a { margin-right: 14px; } .muted { color: #666; }
.top { display: flex; flex-wrap: wrap; gap: 0 40px; }
.top section:first-child { flex: 0 1 470px; } .top section:last-child { flex: 1 1 560px; }
table { border-collapse: collapse; background: #fff; }
th, td { padding: 5px 12px; border-bottom: 1px solid #e4e4e4; text-align: left;
         vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.headline td.num { font-size: 1.15em; font-weight: 600; } .headline th:first-child { white-space: nowrap; }
.notes li { color: #8a5a00; }
figure { margin: 16px 0; background: #fff; padding: 12px; border: 1px solid #e4e4e4; }
figure img { max-width: 100%; } figcaption { margin-top: 6px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr));
           gap: 14px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; overflow: hidden; }
.card img, .card .missing { display: block; width: 100%; height: 210px; object-fit: contain;
                            background: #1d1d1d; }
.card .missing { color: #bbb; display: flex; align-items: center; justify-content: center; }
.card .text { padding: 8px 12px 10px; }
.card .prediction { font-weight: 600; font-size: 1.05em; margin: 4px 0; }
.card .meta, .card .scores { font-size: 0.85em; color: #666; margin: 2px 0; }
.card .file { word-break: break-all; }
.card ol { margin: 6px 0 0; padding-left: 20px; font-size: 0.85em; color: #444; }
.tag { display: inline-block; font-size: 0.78em; padding: 1px 7px; margin: 3px 4px 0 0;
       border-radius: 10px; color: #fff; background: #777; }
.tag-hallucination { background: #c0392b; } .tag-missed-object { background: #d68910; }
.tag-repetition { background: #7d3c98; } .tag-generic { background: #566573; }
.tag-empty { background: #111; }
.wordmaps { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-end; margin-top: 6px;
            font-size: 0.8em; }
.wordmaps figure { margin: 0; padding: 0; border: 0; background: none; text-align: center; }
.wordmaps img { width: 72px; height: 72px; display: block; }
"""



def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>\n{body}</section>'


def interval_text(interval: Sequence[float] | None) -> str:
    """"[low, high]", or "not resampled" where a metric has no interval."""
    return "not resampled" if interval is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def figure(plot: Plot) -> str:
    return (f'<figure><img src="{escape(plot.file)}" alt="{escape(plot.title)}">'
            f"<figcaption><b>{escape(plot.title)}.</b> {escape(plot.look_for)}</figcaption>"
            "</figure>")


def tag_badges(record: Mapping[str, Any]) -> str:
    """A per_image.jsonl record's failure tags, each saying what triggered it."""
    details = {
        "hallucination": "hallucinated: " + ", ".join(record["hallucinated"]),
        "missed object": "missed: " + ", ".join(record["missed"]),
        "repetition": "repeated: " + ", ".join(record["repeated"]),
        "generic": f"generic: same caption for {record['same_caption_images']} images",
    }
    # The class names only letters, digits and dashes: a tag from a hand-edited per_image.jsonl is
    # data, and must not close the attribute (its text is escaped like every other).
    return "".join(
        f'<span class="tag tag-{re.sub(r"[^a-z0-9-]", "", str(tag).lower().replace(" ", "-"))}">'
        f'{escape(str(details.get(tag, tag)))}</span>'
        for tag in record["tags"]
    )


def picture(thumbnails: Mapping[int, str], image_id: int, file_name: str) -> str:
    """An image's thumbnail (a path relative to the page), or a box saying it could not be read."""
    thumbnail = thumbnails.get(image_id)
    return (f'<img src="{escape(thumbnail)}" alt="{escape(file_name)}">' if thumbnail
            else "<div class=missing>image not readable</div>")


def reference_list(references: Sequence[str]) -> str:
    return "<ol>" + "".join(f"<li>{escape(c)}</li>" for c in references) + "</ol>"
