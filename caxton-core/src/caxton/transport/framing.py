"""Length-prefixed framing over a byte stream, with a maximum frame size.

A frame is a 4-byte big-endian body length followed by the body (one envelope). The
length is checked before any of the body is buffered, so an oversized frame, or garbage
whose first bytes read as a huge length, is refused at once.
"""

from __future__ import annotations

import struct

from caxton.errors import ProtocolError

HEADER = struct.Struct("!I")
HEADER_SIZE = HEADER.size


class FrameTooLarge(ProtocolError):
    """A frame longer than the receiver's ``max_frame_size``."""


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: feed it bytes, get back complete frame bodies."""

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._need = -1  # body length of the frame in progress, -1 while reading a header

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        bodies: list[bytes] = []
        offset = 0
        end = len(buffer)
        while True:
            if self._need < 0:
                if end - offset < HEADER_SIZE:
                    break
                (length,) = HEADER.unpack_from(buffer, offset)
                if length > self.max_frame_size:
                    raise FrameTooLarge(
                        f"frame of {length} bytes exceeds max_frame_size ({self.max_frame_size})"
                    )
                if length == 0:
                    raise ProtocolError("empty frame")
                offset += HEADER_SIZE
                self._need = length
            if end - offset < self._need:
                break
            bodies.append(bytes(buffer[offset : offset + self._need]))
            offset += self._need
            self._need = -1
        if offset:
            del buffer[:offset]
        return bodies

    def truncation(self) -> str | None:
        """Why the stream ended mid-frame, or None if it ended on a frame boundary."""
        if self._need >= 0:
            return f"truncated frame: {len(self._buffer)} of {self._need} bytes received"
        if self._buffer:
            return f"truncated frame header: {len(self._buffer)} of {HEADER_SIZE} bytes"
        return None
