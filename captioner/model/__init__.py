"""The model: the network, and what it does to an image. A torchvision VGG cut after fc7
(encoder.py), the recurrent decoder whose initial state fc7 sets (decoder.py), the two together
(network.py), caption search (search.py), the decoder unrolled step by step for analysis
(unroll.py), reading checkpoints safely (checkpoint.py), captioning images with a trained
checkpoint (inference.py), and per-word Grad-CAM explanations of its captions (explain.py), the
files they are written to (explain_files.py) and the checks of what they show
(explain_checks.py, for benchmarks/pointing_game.py). Imports data, config, errors and util; no
Lightning."""
