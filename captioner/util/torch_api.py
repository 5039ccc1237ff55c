"""torch internals the package leans on, each behind a guard: a release without one makes the
caller do the slower safe thing instead of raising AttributeError."""

from __future__ import annotations

from torch import Tensor


def version_counter(tensor: Tensor) -> int | None:
    """How many in-place updates `tensor` has seen (torch's private `_version`, in every release
    since 0.4); None where a release lacks it, and a cache keyed by it must then not be trusted."""
    version = getattr(tensor, "_version", None)
    return version if isinstance(version, int) else None
