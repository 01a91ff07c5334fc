"""The prepared-case record: a pure-Python TFRecord writer and reader, and the record's fields.

``prepare`` runs in worker processes that never import TensorFlow, so the TFRecord framing, its
masked CRC-32C and the ``tf.train.Example`` protobuf are written here with the standard library
and numpy. The bytes are deterministic: features are written in sorted key order (protobuf maps
have no fixed order otherwise), so the same case prepared twice gives the same file.

TFRecord framing (one record)::

    uint64 length (little endian)
    uint32 masked_crc32c(length bytes)
    bytes  data[length]                    # a serialised tf.train.Example
    uint32 masked_crc32c(data)

where ``masked_crc(c) = ((c >> 15 | c << 17) + 0xa282ead8) mod 2**32``.

One shard file holds one case as ONE record (the whole volume; windows are cut in tf.data).
The record's features (`RECORD_FEATURES`):

============================  =========  ==================================================
key                           kind       value
============================  =========  ==================================================
``case_id``                   bytes      the cohort's own case name (never a patient field)
``modality``                  bytes      ``b"ct"`` or ``b"mri"``
``shape``                     int64 x3   ``(K, H, W)``: slices, then the model grid's plane
``image``                     bytes      ``K*H*W`` little-endian values, slice-major (C order
                                         of ``(K, H, W)``), dtype ``image_dtype``
``image_dtype``               bytes      ``b"int16"`` (CT, Hounsfield units, rounded) or
                                         ``b"float16"`` (MRI, the scanner's units times
                                         ``intensity_scale``)
``intensity_scale``           float      MRI: stored = original x scale (1 unless the values
                                         would overflow float16); CT: 1
``percentiles``               float x2   MRI: the robust normalisation's low and high
                                         percentiles of the original volume, in stored units;
                                         CT: the HU window, for reference
``label``                     bytes      ``K*H*W`` uint8 {0, 1}, same layout as ``image``
``pancreas_voxels``           int64 xK   pancreas voxels on each model slice
``body_box``                  int64 x4   ``(h0, h1, w0, w1)``: the body's in-plane box on the
                                         model grid (half-open), from the image alone
``spacing``                   float x3   model grid spacing in mm ``(K, H, W)`` order:
                                         ``(slice, H, W)``
``original_shape``            int64 x3   optional: the original volume's ``(I, J, K)``
``original_label_box``        int64 x6   optional: ``(i0, i1, j0, j1, k0, k1)``, the
                                         pancreas box on the original grid (half-open)
``original_label``            bytes      optional: the binary pancreas label inside that box,
                                         on the original grid, ``np.packbits`` of its C-order
                                         bits; validation scores on it, as ``pancseg
                                         evaluate`` does
============================  =========  ==================================================

The model grid's axes are the geometry module's: ``H`` runs left to right, ``W`` posterior to
anterior, ``K`` inferior to superior (``image[k]`` is one axial slice, i.e. the geometry's
``forward(...)[:, :, k]``). The full geometry plan lives in the case's index entry.
"""

from __future__ import annotations

import io
import os
import pathlib
import struct
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from pancseg_tf.errors import PancsegError

# === CRC-32C (Castagnoli), vectorised over lanes with numpy ===

_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _make_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table[n] = c
    return table


_TABLE = _make_table()
_TABLE_LIST = [int(v) for v in _TABLE]
# Below this many bytes the plain loop is cheaper than numpy's per-call overhead.
_SMALL = 4096


def _crc_update_python(crc: int, data: bytes | memoryview) -> int:
    table = _TABLE_LIST
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _zeros_operator(length: int) -> list[list[int]]:
    """Byte-sliced tables of the linear map "feed ``length`` zero bytes" on a CRC register.

    The register update is linear over GF(2), so feeding zeros is a 32x32 bit matrix; it is
    found by running the 32 basis registers through ``length`` zero bytes at once (numpy), and
    stored as four 256-entry tables (one per register byte) for fast application.
    """
    basis = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
    reg = basis.copy()
    for _ in range(length):
        reg = _TABLE[reg & 0xFF] ^ (reg >> 8)
    images = [int(v) for v in reg]
    tables = []
    for byte in range(4):
        table = [0] * 256
        for value in range(1, 256):
            low = value & -value  # lowest set bit: table[value] = table[value - low] ^ image
            table[value] = table[value ^ low] ^ images[byte * 8 + low.bit_length() - 1]
        tables.append(table)
    return tables


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C of ``data`` (initial value and final XOR ``0xFFFFFFFF``), as TFRecord uses.

    Large inputs are split into ``lanes`` equal chunks whose raw CRCs are computed side by
    side with numpy, then chained with the "feed zeros" operator (the CRC is linear), which
    costs about 0.1 s for 16 MB instead of seconds for a byte loop.

    Args:
        data: the bytes.

    Returns:
        The checksum, an int in ``[0, 2**32)``.
    """
    view = memoryview(data).cast("B")
    n = len(view)
    if n < _SMALL:
        return _crc_update_python(0xFFFFFFFF, view) ^ 0xFFFFFFFF
    lanes = int(min(1 << 15, max(64, int((n * 8) ** 0.5))))
    chunk = n // lanes
    body = np.frombuffer(view, dtype=np.uint8, count=lanes * chunk).reshape(lanes, chunk)
    columns = np.ascontiguousarray(body.T)  # (chunk, lanes): one row per step, contiguous
    reg = np.zeros(lanes, dtype=np.uint32)
    for row in columns:
        reg = _TABLE[(reg ^ row) & 0xFF] ^ (reg >> 8)
    t0, t1, t2, t3 = _zeros_operator(chunk)
    crc = 0xFFFFFFFF
    for raw in reg.tolist():
        crc = (
            t0[crc & 0xFF] ^ t1[(crc >> 8) & 0xFF] ^ t2[(crc >> 16) & 0xFF] ^ t3[crc >> 24]
        ) ^ raw
    crc = _crc_update_python(crc, view[lanes * chunk :])
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# === tf.train.Example encoding (protobuf wire format) ===


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 two's complement, as protobuf writes negative int64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


FeatureValue = bytes | str | Sequence[bytes] | Sequence[int] | Sequence[float] | np.ndarray


def _feature(value: FeatureValue) -> bytes:
    """Serialises one ``tf.train.Feature`` (bytes_list = 1, float_list = 2, int64_list = 3)."""
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return _field(1, _field(1, bytes(value)))
    array = np.asarray(value)
    if array.dtype.kind in "SO" or (array.size and isinstance(array.flat[0], bytes)):
        return _field(1, b"".join(_field(1, bytes(v)) for v in array.ravel().tolist()))
    if array.dtype.kind == "f":
        packed = array.astype("<f4").ravel().tobytes()
        return _field(2, _field(1, packed))
    if array.dtype.kind in "iub" or array.size == 0:
        packed = b"".join(_varint(int(v)) for v in array.astype(np.int64).ravel().tolist())
        return _field(3, _field(1, packed))
    raise TypeError(f"cannot store a feature of dtype {array.dtype}")


def encode_example(features: Mapping[str, FeatureValue]) -> bytes:
    """Serialises a ``tf.train.Example`` with its features in sorted key order.

    Args:
        features: key -> ``bytes``/``str`` (a bytes_list of one), a sequence of ``bytes``, or
            a numeric array (float -> float_list as float32; int/bool -> int64_list).

    Returns:
        The serialised Example; equal inputs give equal bytes.
    """
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, _feature(features[key])))
        for key in sorted(features)
    )
    return _field(1, entries)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, memoryview]]:
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        if key & 7 != 2:
            raise ValueError(f"unexpected wire type {key & 7}")
        size, pos = _read_varint(buf, pos)
        yield key >> 3, buf[pos : pos + size]
        pos += size


def decode_example(data: bytes) -> dict[str, list[bytes] | np.ndarray]:
    """Parses a serialised ``tf.train.Example`` (as `encode_example` writes it).

    Returns:
        key -> list of bytes (bytes_list), float32 array (float_list) or int64 array.
    """
    out: dict[str, list[bytes] | np.ndarray] = {}
    for number, features in _fields(memoryview(data)):
        if number != 1:
            continue
        for _, entry in _fields(features):
            key, value = "", memoryview(b"")
            for n, part in _fields(entry):
                if n == 1:
                    key = bytes(part).decode()
                elif n == 2:
                    value = part
            for kind, lst in _fields(value):
                if kind == 1:
                    out[key] = [bytes(v) for _, v in _fields(lst)]
                elif kind == 2:
                    packed = b"".join(bytes(v) for _, v in _fields(lst))
                    out[key] = np.frombuffer(packed, dtype="<f4").copy()
                elif kind == 3:
                    values = []
                    for _, packed in _fields(lst):
                        pos = 0
                        while pos < len(packed):
                            v, pos = _read_varint(packed, pos)
                            values.append(v - (1 << 64) if v >= 1 << 63 else v)
                    out[key] = np.asarray(values, dtype=np.int64)
            if key not in out:
                out[key] = []
    return out


# === TFRecord files ===


def frame_record(data: bytes) -> bytes:
    """One record in TFRecord framing (length, its masked CRC, data, the data's masked CRC)."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def write_tfrecord_atomic(path: str | os.PathLike, records: Sequence[bytes]) -> pathlib.Path:
    """Writes records to a TFRecord file atomically: a temporary name, fsync, then rename.

    A run killed half way leaves only a ``.tmp`` file, never a truncated shard under the final
    name; a failed write (a full disk) removes it.

    Args:
        path: the shard's final path.
        records: serialised records (e.g. from `encode_example`).

    Returns:
        The final path.
    """
    from pancseg_tf.atomic import replacing

    path = pathlib.Path(path)
    with replacing(path) as tmp, open(tmp, "wb") as handle:
        for record in records:
            handle.write(frame_record(record))
        handle.flush()
        os.fsync(handle.fileno())
    return path


def read_tfrecord(path: str | os.PathLike, *, verify: bool = True) -> Iterator[bytes]:
    """Yields the records of a TFRecord file (uncompressed), checking their CRCs.

    Raises:
        PancsegError: on a truncated file or a checksum mismatch (naming the file).
    """
    path = pathlib.Path(path)
    with open(path, "rb") as handle:
        stream = io.BufferedReader(handle)  # type: ignore[arg-type]
        while True:
            header = stream.read(12)
            if not header:
                return
            if len(header) < 12:
                raise PancsegError(f"TFRecord file {path} is truncated (record header)")
            length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
            if verify and masked_crc32c(length_bytes) != length_crc:
                raise PancsegError(f"TFRecord file {path} is corrupt (length checksum)")
            (length,) = struct.unpack("<Q", length_bytes)
            data = stream.read(length)
            footer = stream.read(4)
            if len(data) < length or len(footer) < 4:
                raise PancsegError(f"TFRecord file {path} is truncated (record data)")
            if verify and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise PancsegError(f"TFRecord file {path} is corrupt (data checksum)")
            yield data


# === The prepared-case record ===

RECORD_FEATURES = (
    "body_box",
    "case_id",
    "image",
    "image_dtype",
    "intensity_scale",
    "label",
    "modality",
    "pancreas_voxels",
    "percentiles",
    "shape",
    "spacing",
)


def encode_case(
    *,
    case_id: str,
    modality: str,
    image: np.ndarray,
    label: np.ndarray,
    percentiles: Sequence[float],
    intensity_scale: float,
    body_box: Sequence[int],
    spacing: Sequence[float],
    original_label: np.ndarray | None = None,
) -> bytes:
    """Serialises one prepared case as a ``tf.train.Example`` (see the module's table).

    Args:
        case_id: the cohort's case name.
        modality: ``"ct"`` or ``"mri"``.
        image: ``(K, H, W)`` int16 (CT) or float16 (MRI).
        label: ``(K, H, W)`` uint8 {0, 1}.
        percentiles: ``(low, high)``: MRI normalisation percentiles, or the CT window.
        intensity_scale: stored = original x scale.
        body_box: ``(h0, h1, w0, w1)`` on the model grid.
        spacing: ``(slice, H, W)`` spacing in mm.
        original_label: ``(I, J, K)`` {0, 1} on the original volume's grid, or ``None``; stored
            as its pancreas box, bit-packed (a few kB even at 512 x 512 x 600).

    Returns:
        The serialised Example.
    """
    if image.ndim != 3 or image.shape != label.shape:
        raise ValueError(f"image {image.shape} and label {label.shape} must be the same (K, H, W)")
    if image.dtype not in (np.int16, np.float16) or label.dtype != np.uint8:
        raise ValueError(f"image must be int16 or float16 and label uint8, got {image.dtype}")
    dtype = image.dtype.name
    extra: dict[str, object] = {}
    if original_label is not None:
        binary = np.asarray(original_label) != 0
        box = _nonzero_box(binary)
        crop = binary[box[0] : box[1], box[2] : box[3], box[4] : box[5]]
        extra = {
            "original_shape": np.asarray(binary.shape, np.int64),
            "original_label_box": np.asarray(box, np.int64),
            "original_label": np.packbits(crop, axis=None).tobytes(),
        }
    return encode_example(
        {
            **extra,
            "body_box": np.asarray(body_box, np.int64),
            "case_id": case_id,
            "image": np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<")).tobytes(),
            "image_dtype": dtype,
            "intensity_scale": np.asarray([intensity_scale], np.float32),
            "label": np.ascontiguousarray(label).tobytes(),
            "modality": modality,
            "pancreas_voxels": label.reshape(label.shape[0], -1).sum(axis=1, dtype=np.int64),
            "percentiles": np.asarray(percentiles, np.float32),
            "shape": np.asarray(image.shape, np.int64),
            "spacing": np.asarray(spacing, np.float32),
        }
    )


def decode_case(data: bytes) -> dict[str, object]:
    """Parses a prepared-case record with numpy (no TensorFlow).

    Returns:
        ``case_id`` and ``modality`` (str), ``image`` ``(K, H, W)`` int16 or float16, ``label``
        ``(K, H, W)`` uint8, ``pancreas_voxels`` (K,) int64, ``percentiles`` (2,) float32,
        ``intensity_scale`` float, ``body_box`` (4,) int64, ``spacing`` (3,) float32,
        ``original_label`` ``(I, J, K)`` uint8 on the original grid or ``None`` (not stored).
    """
    raw = decode_example(data)
    missing = [key for key in RECORD_FEATURES if key not in raw]
    if missing:
        raise PancsegError(f"not a prepared-case record: missing features {missing}")
    shape = tuple(int(v) for v in raw["shape"])  # type: ignore[union-attr]
    dtype = np.dtype(raw["image_dtype"][0].decode()).newbyteorder("<")  # type: ignore[index]
    return {
        "case_id": raw["case_id"][0].decode(),  # type: ignore[index]
        "modality": raw["modality"][0].decode(),  # type: ignore[index]
        "image": np.frombuffer(raw["image"][0], dtype=dtype).reshape(shape),  # type: ignore[index]
        "label": np.frombuffer(raw["label"][0], dtype=np.uint8).reshape(shape),  # type: ignore[index]
        "pancreas_voxels": np.asarray(raw["pancreas_voxels"]),
        "percentiles": np.asarray(raw["percentiles"]),
        "intensity_scale": float(raw["intensity_scale"][0]),  # type: ignore[index]
        "body_box": np.asarray(raw["body_box"]),
        "spacing": np.asarray(raw["spacing"]),
        "original_label": _original_label(raw),
    }


def _nonzero_box(mask: np.ndarray) -> list[int]:
    """Half-open ``(i0, i1, j0, j1, k0, k1)`` around the non-zero voxels (empty: all zero)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box += [int(hits[0]), int(hits[-1]) + 1] if hits.size else [0, 0]
    return box


def _original_label(raw: Mapping[str, object]) -> np.ndarray | None:
    """The full original-grid label from its stored box, or ``None`` when not stored."""
    if "original_label_box" not in raw:
        return None
    shape = tuple(int(v) for v in raw["original_shape"])  # type: ignore[union-attr]
    i0, i1, j0, j1, k0, k1 = (int(v) for v in raw["original_label_box"])  # type: ignore[union-attr]
    crop_shape = (i1 - i0, j1 - j0, k1 - k0)
    bits = np.frombuffer(raw["original_label"][0], dtype=np.uint8)  # type: ignore[index]
    crop = np.unpackbits(bits, count=int(np.prod(crop_shape))).reshape(crop_shape)
    out = np.zeros(shape, np.uint8)
    out[i0:i1, j0:j1, k0:k1] = crop
    return out
