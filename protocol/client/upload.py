"""A job's upload: the image and the mask as one stream of bytes, sent as far as the credit goes.

Why a stream: SPEC 4.3 counts ``data`` offsets over the image's bytes, then the mask's, and
the server grants credit in bytes of that stream. Chunks are at most ``limits.chunk_bytes``
from the ``welcome``, never past the granted credit, and zero-copy slices of the caller's
arrays. A chunk never spans the image and the mask, and is cut at the credit, so any credit
the server grants can be used.
"""

from __future__ import annotations

from ..codec import BufferDesc

__all__ = ["Upload"]


class Upload:
    """What of one job's bytes has been sent and what the server allows; owned by the
    client's I/O thread."""

    def __init__(self, image: tuple[BufferDesc, bytes | memoryview],
                 mask: tuple[BufferDesc, bytes | memoryview]) -> None:
        (image_desc, image_data), (mask_desc, mask_data) = image, mask
        self._segments = [(0, memoryview(image_data).cast("B")),
                          (image_desc.nbytes, memoryview(mask_data).cast("B"))]
        self._total = image_desc.nbytes + mask_desc.nbytes
        self._sent = 0
        self._credit = 0

    @property
    def finished(self) -> bool:
        """Every byte has been sent."""
        return self._sent >= self._total

    def grant(self, credit: int) -> None:
        """Take the server's credit (SPEC 4.3): the stream may be sent up to this offset."""
        self._credit = max(self._credit, credit)

    def release(self) -> None:
        """Let go of the caller's arrays (the job is over); nothing more will be sent."""
        self._segments = []

    def next_chunk(self, chunk_bytes: int) -> tuple[int, memoryview] | None:
        """The next piece of the stream that fits the credit, with its offset, or None."""
        limit = min(self._credit, self._total)
        if self._sent >= limit:
            return None
        for base, view in reversed(self._segments):
            if self._sent >= base:
                break
        else:  # pragma: no cover - segments cover the whole stream
            return None
        start = self._sent - base
        end = min(len(view), limit - base, start + chunk_bytes)
        if end <= start:
            return None
        piece = view[start:end]
        offset = self._sent
        self._sent += len(piece)
        return offset, piece
