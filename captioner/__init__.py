"""captioner: show-and-tell image captioning (VGG fc7 -> LSTM/GRU), trained with Lightning.

The map: one folder per purpose, each saying it in its docstring's first sentence. A module
imports from its own row and the rows above it, never below, never another module's private
names, and no two modules import each other however indirectly (lazily or for type checking
included); tests/unit/test_layout.py holds all three.

    errors, config,   the one-line errors users see; typed settings; atomic files, locks, run
    util, version     folders, the launch facts (util/launch.py) and the device (util/hardware.py)
                      worked out once, guards for torch APIs not every allowed release has
                      (util/torch_api.py), the schema version every result file carries
                      (util/schema.py); the package's version
    data, pages       files on disk to the batches training reads: images, captions, vocabulary,
                      COCO/Karpathy/shapes readers and importers, the objects an instances file
                      annotates | the HTML kit every page is built from, with its plots
    model             the network and what it does to an image: VGG encoder to fc7, recurrent
                      decoder, search, checkpoints, captioning (Captioner), per-word Grad-CAM
                      explanations, the files they are written to and the checks of what they show
    features, serve   the fc7 cache on disk and its extraction | the local web page and JSON API
                      over a Captioner (serve imports only model and the rows above)
    evaluation        how good a checkpoint's captions are: metrics and their intervals,
                      mentions/CHAIR, the report, the diff of two reports, the CIDEr-D reward
    training          fitting the weights: the LightningModule and its validation, the Trainer,
                      every adapter to Lightning in one module (training/adapters.py, each saying
                      why the stock piece does not serve), classifier pretraining and the shipped
                      encoder's use, self-critical training, `train`, `resume`, `finetune`
    compare           RNN vs LSTM vs GRU on the same features, trained and scored side by side
    api, cli          the entry points: the Python API and the command line, which alone
                      imports serve and compare
"""

from captioner.version import __version__


def __getattr__(name: str):
    # Imported lazily so that `import captioner` (and the CLI's start-up) stays cheap.
    if name in ("Captioner", "CaptionResult", "Caption", "Decoding"):
        from captioner import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["Caption", "CaptionResult", "Captioner", "Decoding", "__version__"]
