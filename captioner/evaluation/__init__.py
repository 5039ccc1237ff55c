"""Evaluation: corpus metrics (metrics.py) and their bootstrap intervals (bootstrap.py), the
objects a caption mentions and CHAIR (mentions.py), per-validation-epoch scores
(validation.py), scoring a checkpoint on a split (evaluate.py) into a report (report.py with its
page, plots and shared HTML parts), comparing two evaluations (diff.py), and per-word Grad-CAM
explanations (explain*.py). Imports features, model, data, config, errors and util."""
