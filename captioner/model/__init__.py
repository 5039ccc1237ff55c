"""The model: a torchvision VGG cut after fc7 (encoder.py), the recurrent decoder whose initial
state fc7 sets (decoder.py), the two together (network.py), caption search (search.py), the
decoder unrolled step by step for analysis (unroll.py), reading checkpoints safely
(checkpoint.py), and captioning images with a trained checkpoint (inference.py). Imports data,
config, errors and util; no Lightning."""
