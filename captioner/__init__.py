"""captioner: show-and-tell image captioning (VGG fc7 -> LSTM/GRU), trained with Lightning.

The package is laid out by pipeline stage, each a folder whose docstring says what it owns; a
stage imports only the stages listed before it:

    util, config, errors   files, locks, run folders, hardware; typed settings; the error users see
    data                   images, captions, vocabulary, datasets (COCO, Karpathy, shapes, imports)
    model                  VGG encoder, recurrent decoder, search, checkpoints, inference
    features               the fc7 cache and its extraction
    evaluation             metrics, intervals, mentions/CHAIR, explanations, reports, diffs
    training               the LightningModule, checkpoints, logs, pretraining, `train`
    compare, serve         RNN vs LSTM vs GRU; the local web page
    api, cli               the entry points
"""

from captioner.version import __version__


def __getattr__(name: str):
    # Imported lazily so that `import captioner` (and the CLI's start-up) stays cheap.
    if name in ("Captioner", "CaptionResult", "Caption", "Decoding"):
        from captioner import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["Caption", "CaptionResult", "Captioner", "Decoding", "__version__"]
