"""Training: fitting a model's weights. The LightningModule (module.py) with its per-epoch
greedy validation scores (validation.py), the Trainer every run uses (trainer.py) with its
atomic checkpoints (checkpoints.py) and metrics log (runlog.py), learning-rate schedules, the
encoder's classifier pretraining (pretrain.py), self-critical fine-tuning (self_critical.py),
and `captioner train` itself (train.py). Imports evaluation, features, model, pages, data,
config, errors and util."""
