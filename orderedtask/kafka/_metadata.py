"""The commit-metadata codec: which records above the committed offset are handled already.

A commit stores, per partition, the next offset to read and a metadata string. With
``ordering="key"`` or ``"unordered"`` records above that offset may be handled too; the
string lists them so that the next owner of the partition skips them instead of handling them
again. Text (ASCII), one of two encodings, whichever is shorter:

    ot1r:<committed>:<ranges>:<crc>   ranges: "gap.len" per range, base 36, comma-separated;
                                      gap = first - previous end (the committed offset at
                                      first), len = last - first, ".0" left out
    ot1b:<committed>:<bitmap>:<crc>   bit i set = offset committed + 1 + i handled;
                                      zlib-compressed, base64url without padding

``<committed>`` is the offset the string belongs to (base 36): read next to another committed
offset it means nothing. ``<crc>`` is the CRC-32 (hex) of everything before it. A broker keeps
at most 4,096 characters per partition by default (``offset.metadata.max.bytes``), so
``encode`` keeps within ``limit``: if both encodings are longer, it keeps the longest prefix of
ranges that fits (the records left out are merely read and handled again). ``decode`` returns
the ranges, or ``[]`` for anything it cannot verify: unknown version, another committed offset,
a bad checksum, a malformed or unordered list. Not skipping is always safe; skipping what was
not handled never happens.
"""

from __future__ import annotations

import base64
import binascii
import zlib

__all__ = ["METADATA_LIMIT", "decode", "encode"]

METADATA_LIMIT = 4096
_VERSION = "ot1"
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_MAX_BITMAP_BITS = 1 << 16  # wider spans (huge gaps) cost time to build: ranges then


def _b36(number: int) -> str:
    if number == 0:
        return "0"
    out = []
    while number:
        number, digit = divmod(number, 36)
        out.append(_DIGITS[digit])
    return "".join(reversed(out))


def _seal(kind: str, committed: int, payload: str) -> str:
    body = f"{_VERSION}{kind}:{_b36(committed)}:{payload}"
    return f"{body}:{zlib.crc32(body.encode()):08x}"


def _ranges_payload(committed: int, ranges: list[tuple[int, int]]) -> list[str]:
    parts = []
    previous = committed
    for first, last in ranges:
        gap, length = first - previous, last - first
        parts.append(_b36(gap) if length == 0 else f"{_b36(gap)}.{_b36(length)}")
        previous = last
    return parts


def _bitmap_payload(committed: int, ranges: list[tuple[int, int]]) -> str | None:
    span = ranges[-1][1] - committed
    if span > _MAX_BITMAP_BITS:
        return None
    bits = bytearray((span + 7) // 8)
    for first, last in ranges:
        for offset in range(first, last + 1):
            i = offset - committed - 1
            bits[i >> 3] |= 1 << (i & 7)
    return base64.urlsafe_b64encode(zlib.compress(bytes(bits), 9)).rstrip(b"=").decode()


def encode(committed: int, ranges: list[tuple[int, int]], limit: int = METADATA_LIMIT) -> str:
    """The metadata string for a commit of ``committed`` with ``ranges`` handled above it.

    ``ranges``: sorted, disjoint, inclusive ``(first, last)`` pairs, all above ``committed``.
    The result is at most ``limit`` characters; ranges that do not fit are left out, from the
    highest down.
    """
    if limit < 64:
        raise ValueError(f"limit {limit} leaves no room for the header")
    if not ranges:
        return _seal("r", committed, "")
    if ranges[0][0] <= committed:
        raise ValueError(f"range {ranges[0]} is not above the committed offset {committed}")
    parts = _ranges_payload(committed, ranges)
    best = _seal("r", committed, ",".join(parts))
    bitmap = _bitmap_payload(committed, ranges) if len(ranges) > 1 else None
    if bitmap is not None and len(bitmap) < len(best) - 4:
        best = _seal("b", committed, bitmap)
    if len(best) <= limit:
        return best
    # Degrade: the longest prefix of ranges whose text fits (header and checksum included).
    room = limit - len(_seal("r", committed, ""))
    used, count = 0, 0
    for part in parts:
        cost = len(part) + (1 if count else 0)
        if used + cost > room:
            break
        used += cost
        count += 1
    return _seal("r", committed, ",".join(parts[:count]))


def decode(text: str | None, committed: int) -> list[tuple[int, int]]:
    """The handled ranges above ``committed`` that ``text`` records; ``[]`` unless verified."""
    try:
        return _decode(text, committed)
    except (ValueError, IndexError, TypeError, binascii.Error, zlib.error):
        return []


def _decode(text: str | None, committed: int) -> list[tuple[int, int]]:
    if not text or not text.startswith(_VERSION) or len(text) > 1 << 20:
        return []
    body, _, crc = text.rpartition(":")
    if len(crc) != 8 or f"{zlib.crc32(body.encode()):08x}" != crc:
        return []
    head, kind_committed, payload = body.split(":")
    kind = head[len(_VERSION):]
    if int(kind_committed, 36) != committed or committed < 0:
        return []
    ranges: list[tuple[int, int]] = []
    if kind == "r":
        previous = committed
        for part in payload.split(",") if payload else ():
            gap, _, length = part.partition(".")
            first = previous + int(gap, 36)
            last = first + (int(length, 36) if length else 0)
            if first <= previous or last < first:
                return []  # not ascending: not something encode() wrote
            ranges.append((first, last))
            previous = last
        return ranges
    if kind == "b":
        inflate = zlib.decompressobj()
        bits = inflate.decompress(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)),
                                  _MAX_BITMAP_BITS // 8 + 1)
        if inflate.unconsumed_tail or len(bits) * 8 > _MAX_BITMAP_BITS + 8:
            return []
        start = -1
        for byte_index, byte in enumerate(bits):
            if byte == 0xFF and start >= 0 or byte == 0 and start < 0:
                continue  # a whole byte inside a range, or between ranges
            for bit in range(8):
                i = byte_index * 8 + bit
                if byte >> bit & 1:
                    if start < 0:
                        start = i
                elif start >= 0:
                    ranges.append((committed + 1 + start, committed + i))
                    start = -1
        if start >= 0:
            ranges.append((committed + 1 + start, committed + len(bits) * 8))
        return ranges
    return []
