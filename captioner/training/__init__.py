"""Training: fitting a model's weights. The LightningModule (module.py) with its per-epoch
greedy validation scores (validation.py), the Trainer every run uses (trainer.py), the
adapters where it departs from stock Lightning and why (adapters.py: atomic checkpoints, the
metrics log, progress, interrupts, gradient clipping, gathering captions), learning-rate
schedules, the encoder's classifier pretraining (pretrain.py), self-critical fine-tuning (self_critical.py),
and `captioner train` itself (train.py). Imports evaluation, features, model, pages, data,
config, errors and util."""
