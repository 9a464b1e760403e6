"""The wire format: numpy arrays inside msgpack maps, checked field by field, no pickle."""

from __future__ import annotations

import os
import pickle

import msgpack
import numpy as np
import pytest

from vlm4vla_client.protocol import (
    ProtocolError,
    decode,
    encode,
    parse_predict_request,
    predict_request,
)


def test_arrays_round_trip_with_dtype_shape_and_values() -> None:
    arrays = [
        np.arange(24, dtype=np.uint8).reshape(2, 4, 3),
        np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        np.array([1.5, -2.25], dtype=">f8"),  # big-endian input: little-endian on the wire, same values
        np.zeros((0, 7), dtype=np.float32),
    ]
    decoded = decode(encode({"type": "x", "arrays": arrays, "scalar": np.float32(0.5)}))
    for sent, got in zip(arrays, decoded["arrays"]):
        assert got.shape == sent.shape and np.array_equal(got, sent)
        assert got.dtype == sent.dtype.newbyteorder("<")
    assert decoded["scalar"] == 0.5


def test_the_layout_is_a_plain_msgpack_map_any_msgpack_library_can_write() -> None:
    # Hand-built with msgpack alone (the oracle): what another language's client would send.
    image = bytes(range(12))
    frame = msgpack.packb(
        {
            "type": "predict",
            "id": 3,
            "images": [{"__ndarray__": True, "dtype": "|u1", "shape": [2, 2, 3], "data": image}],
            "instructions": ["open the drawer"],
        },
        use_bin_type=True,
    )
    request_id, images, texts = parse_predict_request(decode(frame))
    assert request_id == 3 and texts == ["open the drawer"]
    assert images[0].tolist() == [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]
    # and what encode writes is that same map
    raw = msgpack.unpackb(encode(predict_request(3, images, texts)), raw=False)
    assert raw["images"][0] == {"__ndarray__": True, "dtype": "|u1", "shape": [2, 2, 3], "data": image}


@pytest.mark.parametrize(
    "frame, needle",
    [
        (b"\xc1\xff\x00garbage", "not a msgpack message"),
        ("text frame", "binary frame"),
        (msgpack.packb([1, 2, 3]), "map with a string 'type'"),
        (msgpack.packb({"__ndarray__": True, "dtype": "|O", "shape": [1], "data": b"x"}), "not allowed"),
        (msgpack.packb({"__ndarray__": True, "dtype": "<f4", "shape": [4], "data": b"\x00" * 15}), "needs 16 bytes"),
        (msgpack.packb({"__ndarray__": True, "dtype": "<f4", "shape": [-1], "data": b""}), "non-negative"),
    ],
)
def test_malformed_frames_are_protocol_errors(frame: object, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        decode(frame)


def test_a_pickle_is_never_unpickled(tmp_path: object) -> None:
    marker = os.path.join(str(tmp_path), "pwned")

    class Exploit:
        def __reduce__(self) -> object:
            return (open, (marker, "w"))

    with pytest.raises(ProtocolError):
        decode(pickle.dumps(Exploit()))
    assert not os.path.exists(marker)


def test_object_arrays_cannot_be_sent() -> None:
    with pytest.raises(ProtocolError, match="numeric dtypes only"):
        encode({"type": "x", "a": np.array([object()], dtype=object)})


@pytest.mark.parametrize(
    "images, texts, needle",
    [
        ([np.zeros((8, 8, 3), np.float32)], ["a"], "expected uint8"),
        ([np.zeros((8, 8), np.uint8)], ["a"], "expected uint8"),
        ([np.zeros((2000, 8, 3), np.uint8)], ["a"], "outside 1..1024"),
        ([np.zeros((8, 8, 3), np.uint8)] * 2, ["a"], "2 images but 1 instructions"),
        ([], [], "non-empty"),
        ([np.zeros((8, 8, 3), np.uint8)], ["x" * 5000], "at most 4096"),
        ([np.zeros((1, 1, 3), np.uint8)] * 257, ["a"] * 257, "257 images in one request; at most 256"),
    ],
)
def test_predict_requests_are_checked(images: list, texts: list, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        parse_predict_request(decode(encode(predict_request(1, images, texts))))
