"""Evaluation: how good a checkpoint's captions are. Corpus metrics (metrics.py) and their
bootstrap intervals (bootstrap.py), the objects a caption mentions against those the image
holds, CHAIR (mentions.py), scoring a checkpoint on a split (evaluate.py) into a report
(report.py, its page report_page.py, the gallery's word maps gallery_maps.py), comparing two
evaluations (diff.py, diff_page.py), the typed records of metrics.json, per_image.jsonl and
diff.json (records.py), and the CIDEr-D reward self-critical training optimises
(cider_reward.py). Imports features, model, pages, data, config, errors and util."""
