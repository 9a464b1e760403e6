"""TFRecord files without TensorFlow: record framing, CRC32C checks and ``tf.train.Example``.

A record is framed as::

    uint64 length | uint32 masked_crc32c(length bytes) | payload | uint32 masked_crc32c(payload)

The ``tensorflow.Example`` message classes are built at runtime from a ``FileDescriptorProto``
in a private descriptor pool. Reads go through a ``read(size, offset) -> bytes`` callable, so
callers choose how files are opened (the RLDS reader uses ``os.pread`` on per-process descriptors).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crc32c
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from vlm4vla.data.formats.base import DatasetFormatError

HEADER = struct.Struct("<QI")
FOOTER = struct.Struct("<I")
_CRC_MASK_DELTA = 0xA282EAD8

Read = Callable[[int, int], bytes]  # (size, offset) -> at most size bytes


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C: ``((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2**32)."""
    crc = crc32c.crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def pread(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file)."""
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def scan_records(read: Read, size: int, path: Path) -> list[tuple[int, int]]:
    """``(offset, payload length)`` of every record of a file of ``size`` bytes, from the framing
    alone (12 bytes read per record), checking length CRCs and truncation."""
    records: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        header = read(HEADER.size, offset)
        if len(header) < HEADER.size:
            raise DatasetFormatError(f"{path}: truncated record header at offset {offset}")
        length, length_crc = HEADER.unpack(header)
        if masked_crc32c(header[:8]) != length_crc:
            raise DatasetFormatError(f"{path}: record at offset {offset}: length CRC32C mismatch")
        end = offset + HEADER.size + length + FOOTER.size
        if end > size:
            raise DatasetFormatError(
                f"{path}: record at offset {offset} is truncated ({length} payload bytes announced, "
                f"{size - offset - HEADER.size - FOOTER.size} present)"
            )
        records.append((offset, length))
        offset = end
    return records


def read_record(read: Read, offset: int, length: int, path: Path) -> bytes:
    """The payload of the record whose header is at ``offset``, its CRC checked."""
    blob = read(length + FOOTER.size, offset + HEADER.size)
    if len(blob) != length + FOOTER.size:
        raise DatasetFormatError(f"{path}: record at offset {offset} is truncated")
    payload = blob[:length]
    (stored,) = FOOTER.unpack(blob[length:])
    if masked_crc32c(payload) != stored:
        raise DatasetFormatError(f"{path}: record at offset {offset}: payload CRC32C mismatch")
    return payload


def parse_example(payload: bytes, where: str) -> Any:
    """A serialized ``tf.train.Example``; ``where`` names the record in the error."""
    example = Example()
    try:
        example.ParseFromString(payload)
    except Exception as err:  # protobuf raises DecodeError or RuntimeError
        raise DatasetFormatError(f"{where} is not a tf.train.Example ({err})") from err
    return example


# -- tf.train.Example without TensorFlow ------------------------------------------------------
def _example_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """tensorflow/core/example/{feature,example}.proto (package ``tensorflow``), proto3."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="vlm4vla/tensorflow_example.proto", package="tensorflow", syntax="proto3"
    )
    F = descriptor_pb2.FieldDescriptorProto

    def message(name: str, fields: list[tuple[str, int, int, int, str | None]]) -> descriptor_pb2.DescriptorProto:
        msg = fdp.message_type.add(name=name)
        for field_name, number, label, ftype, type_name in fields:
            field = msg.field.add(name=field_name, number=number, label=label, type=ftype)
            if type_name:
                field.type_name = type_name
        return msg

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", [("value", 1, rep, F.TYPE_BYTES, None)])
    message("FloatList", [("value", 1, rep, F.TYPE_FLOAT, None)])
    message("Int64List", [("value", 1, rep, F.TYPE_INT64, None)])
    feature = message(
        "Feature",
        [
            ("bytes_list", 1, opt, F.TYPE_MESSAGE, ".tensorflow.BytesList"),
            ("float_list", 2, opt, F.TYPE_MESSAGE, ".tensorflow.FloatList"),
            ("int64_list", 3, opt, F.TYPE_MESSAGE, ".tensorflow.Int64List"),
        ],
    )
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = message("Features", [("feature", 1, rep, F.TYPE_MESSAGE, ".tensorflow.Features.FeatureEntry")])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, label=opt, type=F.TYPE_STRING)
    entry.field.add(name="value", number=2, label=opt, type=F.TYPE_MESSAGE, type_name=".tensorflow.Feature")
    entry.options.map_entry = True
    message("Example", [("features", 1, opt, F.TYPE_MESSAGE, ".tensorflow.Features")])
    return fdp


def _build_example_classes() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_example_file_descriptor())
    names = ("Example", "Features", "Feature", "BytesList", "FloatList", "Int64List")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{n}")) for n in names}


_EXAMPLE_CLASSES = _build_example_classes()
Example = _EXAMPLE_CLASSES["Example"]
Feature = _EXAMPLE_CLASSES["Feature"]
BytesList = _EXAMPLE_CLASSES["BytesList"]
FloatList = _EXAMPLE_CLASSES["FloatList"]
Int64List = _EXAMPLE_CLASSES["Int64List"]


__all__ = [
    "FOOTER",
    "HEADER",
    "BytesList",
    "Example",
    "Feature",
    "FloatList",
    "Int64List",
    "masked_crc32c",
    "parse_example",
    "pread",
    "read_record",
    "scan_records",
]
