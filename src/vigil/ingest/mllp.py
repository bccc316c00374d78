"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol): ``0x0B`` + message + ``0x1C 0x0D``.

:class:`Framer` is a pure, incremental state machine: feed it whatever a socket read returned (a frame split
at any byte, several frames at once, garbage between frames) and it returns what became complete. It never
raises on any input and holds at most ``max_bytes`` + 1 bytes.

* bytes outside a frame are :class:`Garbage`, reported once per run (when the next start block arrives, or
  when the run exceeds ``max_bytes``); ``\\r`` / ``\\n`` between frames are ignored, not reported;
* a frame whose body exceeds ``max_bytes`` is reported once as :class:`Oversize` (with its first bytes, to
  find the control id) and skipped up to its end block;
* a start block inside a frame restarts the frame: the partial one is reported as :class:`Garbage`.

>>> f = Framer(max_bytes=1024)
>>> f.feed(b"noise\\x0bMSH|a\\x1c") + f.feed(b"\\r\\x0bMSH|b\\x1c\\r")
[Garbage(data=b'noise'), Frame(data=b'MSH|a'), Frame(data=b'MSH|b')]
>>> frame(b"MSH|x")
b'\\x0bMSH|x\\x1c\\r'
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = ["SB", "EB", "CR", "Frame", "Garbage", "Oversize", "Framer", "frame", "exchange"]

SB = b"\x0b"  # start block
EB = b"\x1c"  # end block
CR = b"\x0d"
_HEAD = 512  # bytes of an oversize frame kept (to read its MSH)


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete message body (without the framing bytes)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Garbage:
    """Bytes that were not inside a frame (or an unfinished frame that a new start block cut short)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Oversize:
    """A frame longer than the limit: ``head`` holds its first bytes, ``size`` how many were seen."""

    head: bytes
    size: int


def frame(message: bytes) -> bytes:
    """Wrap one HL7 message in MLLP framing."""
    return SB + message + EB + CR


class Framer:
    """Incremental MLLP de-framer (see the module docstring)."""

    def __init__(self, max_bytes: int = 1_048_576) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._in_frame = False
        self._skipping = False  # inside an oversize frame, discarding until its end block
        self._skipped = 0
        self._head = b""
        self._noise = bytearray()  # garbage since the last frame, reported when the next frame starts

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held (0 between frames)."""
        return len(self._buf) if self._in_frame else 0

    @property
    def held(self) -> int:
        """Bytes held between calls (an unfinished frame plus unreported garbage): what a slow or malicious
        sender makes this connection keep in memory."""
        return len(self._buf) + len(self._noise)

    @property
    def in_frame(self) -> bool:
        """True while a frame has started and not ended (a disconnect now loses an unfinished message)."""
        return self._in_frame or self._skipping

    def feed(self, data: bytes) -> list[Frame | Garbage | Oversize]:
        """Consume ``data``; return the frames, garbage and oversize reports it completed, in order."""
        out: list[Frame | Garbage | Oversize] = []
        view = bytes(data)
        i, n = 0, len(view)
        while i < n:
            if self._skipping:
                i = self._skip(view, i, out)
            elif not self._in_frame:
                j = view.find(SB, i)
                self._noise += view[i : n if j < 0 else j]
                if j >= 0 or len(self._noise) > self.max_bytes:
                    noise = bytes(self._noise).strip(b"\r\n")
                    self._noise = bytearray()
                    if noise:
                        out.append(Garbage(noise[: self.max_bytes]))
                if j < 0:
                    return out
                self._in_frame, self._buf = True, bytearray()
                i = j + 1
            else:
                i = self._body(view, i, out)
        return out

    def _body(self, view: bytes, i: int, out: list[Frame | Garbage | Oversize]) -> int:
        """Inside a frame: look for the end block (``0x1C 0x0D``) or a new start block."""
        n = len(view)
        # A 0x1C that ended the previous chunk: is it followed by 0x0D?
        if self._buf.endswith(EB) and view[i : i + 1] == CR:
            out.append(Frame(bytes(self._buf[:-1])))
            self._in_frame, self._buf = False, bytearray()
            return i + 1
        j_eb = view.find(EB + CR, i)
        j_sb = view.find(SB, i)
        if j_sb >= 0 and (j_eb < 0 or j_sb < j_eb):
            self._buf += view[i:j_sb]
            if self._buf:
                out.append(Garbage(bytes(self._buf)))
            self._buf = bytearray()
            return j_sb + 1
        end = n if j_eb < 0 else j_eb
        self._buf += view[i:end]
        if len(self._buf) > self.max_bytes + 1:  # +1: a trailing 0x1C may be the end block's first half
            self._head, self._skipped = bytes(self._buf[:_HEAD]), len(self._buf)
            self._in_frame, self._skipping, self._buf = False, True, bytearray()
            return end
        if j_eb < 0:
            return n
        if len(self._buf) > self.max_bytes:
            out.append(Oversize(bytes(self._buf[:_HEAD]), len(self._buf)))
        else:
            out.append(Frame(bytes(self._buf)))
        self._in_frame, self._buf = False, bytearray()
        return j_eb + 2

    def _skip(self, view: bytes, i: int, out: list[Frame | Garbage | Oversize]) -> int:
        """Inside an oversize frame: drop bytes up to its end block (or a new start block)."""
        j_eb = view.find(EB + CR, i)
        j_sb = view.find(SB, i)
        cut = min(j for j in (j_eb, j_sb, len(view)) if j >= 0)
        self._skipped += cut - i
        if cut == len(view):
            return cut
        out.append(Oversize(self._head, self._skipped))
        self._skipping, self._head, self._skipped = False, b"", 0
        return cut + 2 if cut == j_eb else cut


async def exchange(
    host: str, port: int, chunks: list[bytes], n_frames: int = 1, *, timeout: float = 15.0, pause: float = 0.0
) -> list[bytes]:
    """A minimal MLLP client: send ``chunks`` on one connection (raw bytes, framed or not; ``pause`` seconds
    between them so they arrive as separate reads), then read until ``n_frames`` frames came back (the ACKs);
    their bodies, in order. Raises ``ConnectionError`` if the peer closes first, ``TimeoutError`` after
    ``timeout`` seconds without data."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for c in chunks:
            writer.write(c)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        framer, got = Framer(), []
        while len(got) < n_frames:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                msg = f"the peer closed the connection after {len(got)} of {n_frames} frames"
                raise ConnectionError(msg)
            got += [f.data for f in framer.feed(data) if isinstance(f, Frame)]
        return got
    finally:
        writer.close()
