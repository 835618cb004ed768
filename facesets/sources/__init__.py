"""Photo sources behind one small interface (base.PhotoSource): where photos come from.

``open_source`` is the one place that picks a source by kind; ``SOURCES`` is the registry a
new source (Immich, video frames) joins.
"""
from __future__ import annotations

from .base import PhotoSource, SourceItem
from .folder import FolderSource
from .immich import ImmichSource
from .video import VideoSource

SOURCES: dict[str, type[PhotoSource]] = {FolderSource.kind: FolderSource,
                                         ImmichSource.kind: ImmichSource,
                                         VideoSource.kind: VideoSource}


def open_source(location: str, kind: str = "folder") -> PhotoSource:
    """The source of ``kind`` over ``location`` (for a folder: its path)."""
    try:
        cls = SOURCES[kind]
    except KeyError:
        raise ValueError(f"unknown photo source {kind!r}; known: "
                         f"{', '.join(sorted(SOURCES))}") from None
    return cls(location)


__all__ = ["FolderSource", "ImmichSource", "PhotoSource", "SOURCES", "SourceItem", "VideoSource",
           "open_source"]
