"""Markers in text that grows token by token (tool-call tags, reasoning tags)."""

from __future__ import annotations


def marker_prefix_overlap(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`: the part a
    stream must hold back, since the next token may complete the marker."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
