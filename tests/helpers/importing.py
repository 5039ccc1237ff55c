"""Inputs for `captioner data import` and reading its report back."""

from __future__ import annotations

# Five captions of one photo, as the Flickr and COCO files give them.
CAPTIONS = ("A dog runs on the grass .", "A brown dog is running outside .", "The dog plays in a field .",
            "An animal running across a lawn .", "A dog in the sun .")


def lines_of(report, reason: str) -> list[int]:
    """The source lines the import report flags for `reason`."""
    return [p["line"] for p in report.problems if p["reason"] == reason]
