"""captioner: show-and-tell image captioning (VGG fc7 -> LSTM/GRU), trained with Lightning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("captioner")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"


def __getattr__(name: str):
    # Imported lazily so that `import captioner` (and the CLI's start-up) stays cheap.
    if name == "Captioner":
        from captioner.inference import Captioner

        return Captioner
    raise AttributeError(name)


__all__ = ["Captioner", "__version__"]
