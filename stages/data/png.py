"""PNG encode/decode for dataset frames, with no image library required.

Encoding is ours (zlib only): every row uses the PNG "Up" filter, so the same frame always gives
the same bytes (for one zlib build) and our own decoder undoes it with one cumulative sum.

Decoding handles what LeRobot datasets contain: 8- or 16-bit, non-interlaced, grey / grey+alpha /
RGB / RGBA / palette, any of the five row filters. Rows filtered with Average or Paeth (what
Pillow writes by default) need a per-byte recurrence; those images go to Pillow when it is
installed (a C decoder, much faster) and to a pure-Python path otherwise, so Pillow is an optional
accelerator, never a requirement. Output is always uint8 [H, W, 3] (alpha dropped, grey expanded).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
FILTER_NONE, FILTER_SUB, FILTER_UP, FILTER_AVERAGE, FILTER_PAETH = range(5)


class PngError(ValueError):
    """The bytes are not a PNG this module can decode."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray, *, compress_level: int = 6) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes (8-bit RGB, Up filter on every row, deterministic)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
    h, w, _ = image.shape
    rows = np.ascontiguousarray(image).reshape(h, w * 3)
    filtered = np.empty((h, w * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = FILTER_UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps mod 256, as PNG wants
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(filtered.tobytes(), compress_level)) + _chunk(b"IEND", b"")


def _parse(data: bytes) -> tuple[dict, bytes, np.ndarray | None]:
    if not data.startswith(SIGNATURE):
        raise PngError("missing PNG signature")
    pos, header, idat, palette = len(SIGNATURE), None, [], None
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            header = {"width": w, "height": h, "depth": depth, "ctype": ctype, "interlace": interlace}
        elif kind == b"PLTE":
            palette = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise PngError("missing IHDR or IDAT chunk")
    if header["ctype"] not in _CHANNELS or header["depth"] not in (8, 16) or (header["ctype"] == 3 and header["depth"] != 8):
        raise PngError(f"unsupported colour type {header['ctype']} at bit depth {header['depth']}")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise PngError(f"corrupt image data: {exc}") from None
    return header, raw, palette


def _unfilter_slow(kind: int, row: bytearray, prev: bytes, bpp: int) -> None:
    """Average / Paeth: each byte depends on the reconstructed byte to its left (PNG spec §9.2)."""
    for i in range(len(row)):
        left = row[i - bpp] if i >= bpp else 0
        up = prev[i]
        if kind == FILTER_AVERAGE:
            row[i] = (row[i] + ((left + up) >> 1)) & 0xFF
        else:
            up_left = prev[i - bpp] if i >= bpp else 0
            p = left + up - up_left
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
            pred = left if (pa <= pb and pa <= pc) else (up if pb <= pc else up_left)
            row[i] = (row[i] + pred) & 0xFF


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    rows = np.frombuffer(raw, dtype=np.uint8)
    if rows.size != height * (stride + 1):
        raise PngError(f"image data has {rows.size} bytes, expected {height * (stride + 1)}")
    rows = rows.reshape(height, stride + 1)
    kinds, filtered = rows[:, 0], rows[:, 1:]
    if kinds.max(initial=0) > FILTER_PAETH:
        raise PngError(f"unknown row filter {int(kinds.max())}")
    if np.all(kinds == FILTER_UP):  # our own encoder: one vectorised pass
        return np.cumsum(filtered, axis=0, dtype=np.uint8)
    out = np.empty((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind, f = int(kinds[y]), filtered[y]
        if kind == FILTER_NONE:
            out[y] = f
        elif kind == FILTER_SUB:
            out[y] = np.cumsum(f.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == FILTER_UP:
            np.add(f, prev, out=out[y])
        else:
            row = bytearray(f.tobytes())
            _unfilter_slow(kind, row, prev.tobytes(), bpp)
            out[y] = np.frombuffer(bytes(row), dtype=np.uint8)
        prev = out[y]
    return out


def _to_rgb(samples: np.ndarray, header: dict, palette: np.ndarray | None) -> np.ndarray:
    h, w, ctype = header["height"], header["width"], header["ctype"]
    if header["depth"] == 16:
        samples = samples.reshape(h, -1, 2)[:, :, 0]  # big-endian: the high byte is the 8-bit value
    pixels = samples.reshape(h, w, _CHANNELS[ctype])
    if ctype == 3:
        if palette is None:
            raise PngError("palette image without a PLTE chunk")
        index = pixels[:, :, 0]
        if index.max(initial=0) >= len(palette):
            raise PngError("palette index out of range")
        return palette[index]
    if ctype in (0, 4):
        return np.repeat(pixels[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3])


def _decode_with_pillow(data: bytes) -> np.ndarray | None:
    try:
        from PIL import Image
    except ImportError:
        return None
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def decode_png(data: bytes, *, allow_pillow: bool = True) -> np.ndarray:
    """PNG bytes -> uint8 [H, W, 3]. Raises `PngError` for anything it cannot read."""
    header, raw, palette = _parse(bytes(data))
    if header["interlace"]:
        decoded = _decode_with_pillow(bytes(data)) if allow_pillow else None
        if decoded is None:
            raise PngError("interlaced PNG needs Pillow to decode")
        return decoded
    channels = _CHANNELS[header["ctype"]]
    bpp = channels * header["depth"] // 8
    stride = header["width"] * bpp
    if allow_pillow:
        kinds = np.frombuffer(raw, dtype=np.uint8)[:: stride + 1]
        if (kinds >= FILTER_AVERAGE).any():
            decoded = _decode_with_pillow(bytes(data))
            if decoded is not None:
                return decoded
    return _to_rgb(_unfilter(raw, header["height"], stride, bpp), header, palette)


def png_shape(data: bytes) -> tuple[int, int, int]:
    """(H, W, 3) from the IHDR chunk, without decoding."""
    if not bytes(data[:8]) == SIGNATURE or bytes(data[12:16]) != b"IHDR":
        raise PngError("missing PNG signature or IHDR chunk")
    w, h = struct.unpack(">II", bytes(data[16:24]))
    return h, w, 3
