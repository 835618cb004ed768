"""Where photos come from: the base every photo source implements.

A source is a plug-in in the manner of PySceneDetect's detectors: a small base class with few
methods, one subclass per kind of library. ``FolderSource`` (sources/folder.py: a folder tree
on disk) is today's only one; an Immich library or the frames of a video are the next.

What a source promises, and what the rest of face-sets relies on:

``list_ids()``
    The items, as stable ids in a stable order (sorted). An id names the same content on every
    run as long as that content is unchanged: the cache records it as the photo's ``path``, so
    a rerun skips what it already has. A folder's ids are absolute file paths; an Immich
    source would use ``immich://<server>/<asset id>``, a video source
    ``<video path>#t=<seconds>`` (any string that is not also a path on disk). Listing is the
    cheap part: it must not read the photos.
``item(item_id)``
    What is known of one item without reading it: size in bytes, modification time in ns (the
    pair that tells an unchanged item from a changed one) and a provenance dict (where it came
    from: for a folder the path; for Immich the asset id, album, owner; for a video the file
    and the frame time). Raises ``OSError`` when the item is gone.
``read_bytes(item_id)``
    The encoded photo (JPEG, PNG...: what ``io.imageio.decode`` reads). Analysis gets its
    pixels only through this, never by opening a path itself, so a source whose items are not
    files (a server, a video decoder) works unchanged. Raise ``FileNotFoundError`` when the
    item vanished, ``PermissionError`` when it may not be read, another ``OSError`` for other
    failures: analysis turns each into the photo's error line and goes on.
``describe()``
    A small JSON-able dict naming the source (``{"kind": "folder", "root": ...}``) for
    manifests and logs.
``skipped_lines()``
    Lines for the embed summary about what the listing passed over (unsupported formats,
    unreadable folders...); empty when nothing was.

Content identity is not the source's business: face-sets hashes the bytes (sha256) itself, so
the same photo reached through two sources, or twice in one, is embedded once.
A new source: subclass ``PhotoSource`` in ``sources/<kind>.py``, give it a ``kind``, and add
it to ``SOURCES`` in ``sources/__init__.py``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterator


@dataclass(frozen=True)
class SourceItem:
    """One photo of a source, as listed (not yet read)."""

    id: str                # stable id (a folder's: the absolute path)
    size: int              # bytes
    mtime_ns: int          # modification time; with size, tells a changed item
    provenance: dict = field(default_factory=dict)   # where it came from (JSON-able)


class PhotoSource(ABC):
    """Base class of photo sources (see the module docstring for the contract)."""

    #: the source's name in ``SOURCES`` and in ``describe()``
    kind: str = ""

    @abstractmethod
    def list_ids(self) -> list[str]:
        """Stable ids of the items, in a stable order; reads no photo."""

    @abstractmethod
    def item(self, item_id: str) -> SourceItem:
        """Size, mtime and provenance of one item; ``OSError`` when it is gone."""

    @abstractmethod
    def read_bytes(self, item_id: str) -> bytes:
        """The encoded photo; ``OSError`` (``FileNotFoundError``...) when it cannot be read."""

    @abstractmethod
    def describe(self) -> dict:
        """A small JSON-able dict naming this source (``kind`` and where it points)."""

    def skipped_lines(self) -> list[str]:
        """Lines about what listing passed over, for the embed summary."""
        return []

    def items(self) -> Iterator[SourceItem]:
        """Every listed item that still exists, in ``list_ids`` order."""
        for item_id in self.list_ids():
            try:
                yield self.item(item_id)
            except OSError:
                continue
