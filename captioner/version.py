"""The installed package's version, the one fact every stage may stamp on what it writes
(checkpoints, run folders); `captioner.__version__` re-exports it. Imports nothing of the
package, so reading the version never reaches the entry points that captioner/__init__.py
loads lazily."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("captioner")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"
