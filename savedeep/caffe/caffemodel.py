"""Read and write Caffe ``.caffemodel`` files: the protobuf wire format, driven by :mod:`savedeep.caffe.schema`.

The decoder turns bytes into :class:`~savedeep.caffe.schema.Message` objects;
fields the schema does not know are skipped, whatever their wire type. Blob
data (packed floats or doubles) becomes a numpy array through
``numpy.frombuffer`` in one step, so a 100 MB model decodes in well under a
second. The encoder writes Messages back, which lets tests and benchmarks make
real caffemodel files without pycaffe (savedeep/caffe/synthetic.py). This module
knows nothing of nets (savedeep/caffe/model.py imports it, never the reverse).
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from savedeep.caffe.schema import BY_NUMBER, ENUMS, VARINT_TYPES, Field, Message, enum_name
from savedeep.errors import ModelError

log = logging.getLogger(__name__)

# Wire types of the protobuf encoding.
VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5

_NP_DTYPES: dict[str, np.dtype[Any]] = {"float": np.dtype("<f4"), "double": np.dtype("<f8")}
_Buffer = bytes | mmap.mmap  # a caffemodel read whole, or mapped


class DecodeError(ValueError):
    """The bytes are not a valid protobuf encoding of the expected message."""


# -- decoding ---------------------------------------------------------------


def _varint(buf: _Buffer, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        try:
            b = buf[pos]
        except IndexError:
            raise DecodeError("truncated varint") from None
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise DecodeError("varint longer than 10 bytes")


def _signed(value: int, bits: int) -> int:
    # int32/int64 negatives travel as 64-bit two's complement
    value &= (1 << 64) - 1
    if value >= 1 << 63:
        value -= 1 << 64
    if bits == 32:
        value = ((value + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
    return value


def _convert_varint(field: Field, raw: int) -> object:
    t = field.type
    if t == "bool":
        return raw != 0
    if t == "int32":
        return _signed(raw, 32)
    if t == "int64":
        return _signed(raw, 64)
    if t == "uint32":
        return raw & 0xFFFFFFFF
    if t == "enum":
        return enum_name(field.named_type, _signed(raw, 32))
    return raw


def _skip_group(buf: _Buffer, pos: int, end: int, number: int) -> int:
    while pos < end:
        key, pos = _varint(buf, pos)
        wire, num = key & 7, key >> 3
        if wire == END_GROUP:
            if num != number:
                raise DecodeError("mismatched end-group")
            return pos
        pos = _skip(buf, pos, end, wire, num)
    raise DecodeError("unterminated group")


def _skip(buf: _Buffer, pos: int, end: int, wire: int, number: int) -> int:
    if wire == VARINT:
        _, pos = _varint(buf, pos)
    elif wire == FIXED64:
        pos += 8
    elif wire == FIXED32:
        pos += 4
    elif wire == LENGTH:
        length, pos = _varint(buf, pos)
        pos += length
    elif wire == START_GROUP:
        pos = _skip_group(buf, pos, end, number)
    else:
        raise DecodeError(f"invalid wire type {wire}")
    if pos > end:
        raise DecodeError("field runs past the end of its message")
    return pos


def _decode_packed(field: Field, buf: _Buffer, start: int, end: int) -> list | np.ndarray:
    if field.type in _NP_DTYPES:
        dtype = _NP_DTYPES[field.type]
        if (end - start) % dtype.itemsize:
            raise DecodeError(f"packed {field.name} length is not a multiple of {dtype.itemsize}")
        arr = np.frombuffer(buf, dtype, (end - start) // dtype.itemsize, start)
        return arr if field.array else arr.tolist()
    values = []
    pos = start
    while pos < end:
        raw, pos = _varint(buf, pos)
        values.append(_convert_varint(field, raw))
    if pos != end:
        raise DecodeError(f"packed {field.name} overruns its length")
    return values


def _decode(buf: _Buffer, start: int, end: int, type_name: str) -> Message:
    msg = Message(type_name)
    values = msg._values
    by_number = BY_NUMBER[type_name]
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        wire, number = key & 7, key >> 3
        field = by_number.get(number)
        if field is None:
            # unknown to our schema (newer Caffe, a fork's extra layer): skip it
            pos = _skip(buf, pos, end, wire, number)
            continue
        t = field.type
        if wire == LENGTH:
            length, pos = _varint(buf, pos)
            stop = pos + length
            if stop > end:
                raise DecodeError(f"{type_name}.{field.name} runs past the end of its message")
            if t == "message":
                child = _decode(buf, pos, stop, field.named_type)
                if field.repeated:
                    values.setdefault(field.name, []).append(child)
                else:
                    old = values.get(field.name)
                    # proto2: a repeated occurrence of an optional message merges into it
                    values[field.name] = _merge(old, child) if old is not None else child
            elif t == "string":
                text = buf[pos:stop].decode("utf-8", errors="replace")
                if field.repeated:
                    values.setdefault(field.name, []).append(text)
                else:
                    values[field.name] = text
            elif t == "bytes":
                if field.repeated:
                    values.setdefault(field.name, []).append(bytes(buf[pos:stop]))
                else:
                    values[field.name] = bytes(buf[pos:stop])
            elif field.repeated:
                decoded = _decode_packed(field, buf, pos, stop)
                old = values.get(field.name)
                if old is None:
                    values[field.name] = decoded
                elif field.array:
                    values[field.name] = np.concatenate([np.asarray(old, _NP_DTYPES[field.type]), decoded])
                else:
                    old.extend(decoded)
            else:
                raise DecodeError(f"{type_name}.{field.name}: length-delimited data for a {t} field")
            pos = stop
            continue
        if wire == VARINT and t in VARINT_TYPES:
            raw, pos = _varint(buf, pos)
            value = _convert_varint(field, raw)
        elif wire == FIXED32 and t == "float":
            value = struct.unpack_from("<f", buf, pos)[0]
            pos += 4
        elif wire == FIXED64 and t == "double":
            value = struct.unpack_from("<d", buf, pos)[0]
            pos += 8
        else:
            # wire type does not fit the schema's type: treat as an unknown field
            pos = _skip(buf, pos, end, wire, number)
            continue
        if pos > end:
            raise DecodeError(f"{type_name}.{field.name} runs past the end of its message")
        if field.repeated:
            # unpacked repeated scalar (allowed for packed fields too)
            old = values.get(field.name)
            if old is None:
                values[field.name] = [value]
            elif isinstance(old, np.ndarray):
                values[field.name] = np.append(old, np.asarray(value, old.dtype))
            else:
                old.append(value)
        else:
            values[field.name] = value
    if pos != end:
        raise DecodeError(f"{type_name} overruns its length")
    # an array field given element by element: turn the list into the array readers expect
    for name, field in ((f.name, f) for f in by_number.values() if f.array):
        if isinstance(values.get(name), list):
            values[name] = np.asarray(values[name], _NP_DTYPES[field.type])
    return msg


def _merge(old: Message, new: Message) -> Message:
    for field, value in new.items():
        if field.repeated:
            prev = old._values.get(field.name)
            if prev is None:
                old._values[field.name] = value
            elif field.array:
                old._values[field.name] = np.concatenate([prev, value])
            else:
                prev.extend(value)
        elif field.type == "message" and field.name in old._values:
            _merge(old._values[field.name], value)
        else:
            old._values[field.name] = value
    return old


def decode_message(data: bytes, type_name: str = "NetParameter") -> Message:
    """Decode protobuf wire-format bytes into a Message of ``type_name``."""
    data = bytes(data)
    return _decode(data, 0, len(data), type_name)


# The largest .caffemodel anything can read: protobuf's hard limit on a message (INT_MAX bytes), which is
# also BVLC Caffe's read limit and, since scripts/patch_caffe_source.sh, the pycaffe build's.
MAX_CAFFEMODEL_BYTES = 2**31 - 1


def read_caffemodel(path: Path, mapped: bool = False) -> Message:
    """Read a .caffemodel file into a NetParameter Message; unreadable or invalid -> ModelError naming it.

    ``mapped``: decode over a read-only memory mapping of the file instead of a copy of it;
    the blobs' arrays are then read-only views of the file, and the pages of the values
    are only read where the arrays are. For a check of the shapes (the parent's
    preflight), which then reads the layers' headers only, not 233 MB for CaffeNet.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_CAFFEMODEL_BYTES:
                raise ModelError(
                    f"{path}: the caffemodel is {size:,} bytes, over the {MAX_CAFFEMODEL_BYTES:,} bytes (2 GiB - 1) "
                    "that a protobuf message can hold and that Caffe reads or writes; no engine can load it: check "
                    "that this file is the model's weights"
                )
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if mapped and size else f.read()
    except FileNotFoundError:
        raise ModelError(f"{path}: caffemodel not found; give the trained weights file (.caffemodel)") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the caffemodel ({exc})") from None
    if not data:
        raise ModelError(
            f"{path}: the caffemodel is empty (0 bytes), as an interrupted download or copy leaves "
            "it; download or copy the trained weights again"
        )
    if path.suffix in (".prototxt", ".txt") or data[:20].lstrip().startswith((b"name:", b"layer", b"input")):
        raise ModelError(
            f"{path}: this looks like a text prototxt, not a binary .caffemodel; give the trained weights file"
        )
    try:
        return _decode(data, 0, len(data), "NetParameter")
    except (DecodeError, struct.error) as exc:
        raise ModelError(
            f"{path}: not a valid binary caffemodel ({exc}, {len(data)} bytes): it is truncated, "
            "as an interrupted download leaves it, or in another format (HDF5 .caffemodel.h5 is not "
            "supported); download or copy the trained weights again"
        ) from None


def blob_shape(blob: Message) -> tuple[tuple[int, ...], bool]:
    """A BlobProto's shape and whether it is the legacy num/channels/height/width form."""
    if blob.has("shape"):
        return tuple(int(d) for d in blob.shape.dim), False
    if any(blob.has(n) for n in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width), True
    n = len(blob.data) or len(blob.double_data)
    # Caffe writes a 0-d blob (a channel-shared PReLU slope) with an empty shape,
    # which leaves no trace on the wire: one value and no shape means shape ().
    return ((), True) if n == 1 else ((n,), True)


def blob_array(blob: Message, source: str = "", copy: bool = True) -> np.ndarray:
    """A BlobProto's data as a writable float32 array of its declared shape.

    ``copy=False`` only checks the count and returns the stored data as it is (a check, no copy).
    """
    shape, _legacy = blob_shape(blob)
    data = blob.data if blob.has("data") else blob.double_data
    count = int(np.prod(shape, dtype=np.int64))
    if data.size != count:
        raise ModelError(
            f"{source}: a blob declares shape {shape} ({count} values) but holds {data.size}; "
            "the caffemodel is corrupt or truncated: download or copy it again"
        )
    if not copy:
        return data
    return data.astype(np.float32).reshape(shape)


# -- encoding ---------------------------------------------------------------


def _put_varint(out: bytearray, value: int) -> None:
    if value < 0:
        value += 1 << 64
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _scalar_varint(field: Field, value: Any) -> int:
    if field.type == "enum":
        return value if isinstance(value, int) else ENUMS[field.named_type][value]
    return int(value)


def _encode(msg: Message, out: bytearray) -> None:
    for field, value in msg.items():
        t = field.type
        number = field.number
        if t == "message":
            for child in value if field.repeated else [value]:
                encoded = bytearray()
                _encode(child, encoded)
                _put_varint(out, number << 3 | LENGTH)
                _put_varint(out, len(encoded))
                out += encoded
            continue
        items = value if field.repeated else [value]
        if field.repeated and field.packed:
            if len(items) == 0:
                continue
            if t in _NP_DTYPES:
                body = np.asarray(items, _NP_DTYPES[t]).tobytes()
            else:
                buf = bytearray()
                for v in items:
                    _put_varint(buf, _scalar_varint(field, v))
                body = bytes(buf)
            _put_varint(out, number << 3 | LENGTH)
            _put_varint(out, len(body))
            out += body
            continue
        for v in items:
            if t in ("string", "bytes"):
                data = v.encode("utf-8") if t == "string" else bytes(v)
                _put_varint(out, number << 3 | LENGTH)
                _put_varint(out, len(data))
                out += data
            elif t == "float":
                _put_varint(out, number << 3 | FIXED32)
                out += struct.pack("<f", v)
            elif t == "double":
                _put_varint(out, number << 3 | FIXED64)
                out += struct.pack("<d", v)
            else:
                _put_varint(out, number << 3 | VARINT)
                _put_varint(out, _scalar_varint(field, v))


def encode_message(msg: Message) -> bytes:
    """Encode a Message in the protobuf wire format."""
    out = bytearray()
    _encode(msg, out)
    return bytes(out)


def make_blob(array: np.ndarray) -> Message:
    """A BlobProto holding ``array`` as float32 with an N-d shape."""
    arr = np.asarray(array, dtype=np.float32)  # not ascontiguousarray: it turns a 0-d blob into 1-d
    return Message("BlobProto", shape=Message("BlobShape", dim=list(arr.shape)), data=arr.reshape(-1))
