"""Training: the LightningModule (module.py) with its per-epoch greedy validation scores
(validation.py), the Trainer every run uses (trainer.py) with its atomic checkpoints
(checkpoints.py) and metrics log (runlog.py), learning-rate schedules, the encoder's classifier
pretraining (pretrain.py), and `captioner train` itself (train.py).
Imports evaluation, features, model, data, config, errors and util."""
