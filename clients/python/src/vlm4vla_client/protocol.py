"""The vlm4vla policy-server protocol: msgpack messages over one WebSocket, numpy arrays inside.

One binary frame per message, a msgpack map with a ``"type"``. Arrays are maps
``{"__ndarray__": True, "dtype": "<u1", "shape": [H, W, 3], "data": <bytes, C order>}`` (the
layout openpi's ``msgpack_numpy`` uses, with string keys). Decoding never runs code: only the
numeric dtypes below are accepted, and the byte count must match the shape. No pickle.

    server → client, on connect:   {"type": "metadata", "protocol": 1, ...bundle identity...}
    client → server:               {"type": "predict", "id": 7, "images": [uint8 (H, W, 3), ...],
                                    "instructions": ["put the bowl ...", ...]}
    server → client:               {"type": "actions", "id": 7, "actions": float32 (B, N, D)}
                                or {"type": "error", "id": 7 | None, "message": "..."}

A malformed message gets an error frame (``"id": None``) and the server closes that connection
(close code 1008); an oversized one is refused by the WebSocket layer (close code 1009). A wrong
or missing token is refused during the handshake (HTTP 401), before any message.

Python >= 3.8, numpy and msgpack only (this module is shared by the server and the client).
"""

from __future__ import annotations

from typing import Any, Sequence

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest WebSocket message either side accepts (16 MiB: 64 LIBERO-sized images)."""
DEFAULT_MAX_IMAGE_SIDE = 1024
"""Largest image height or width the server accepts (every benchmark camera is at most 640)."""
MAX_INSTRUCTION_CHARS = 4096
MAX_IMAGES_PER_REQUEST = 256
"""Observations in one request (the harness sends one per waiting env worker)."""
TOKEN_ENV = "VLM4VLA_SERVER_TOKEN"
TOKEN_HEADER = "Authorization"
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009

_ALLOWED_DTYPES = frozenset(
    np.dtype(t).str for t in ("u1", "i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8", "?")
)


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the text says which field and what was expected."""


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        array = np.ascontiguousarray(obj)
        if array.dtype.kind in "iufb":  # little-endian on the wire
            array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        if array.dtype.str not in _ALLOWED_DTYPES:
            raise ProtocolError(f"cannot send an array of dtype {array.dtype}: numeric dtypes only")
        return {"__ndarray__": True, "dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise ProtocolError(f"cannot send a value of type {type(obj).__name__}")


def _decode_hook(obj: dict[str, Any]) -> Any:
    if obj.get("__ndarray__") is not True:
        return obj
    dtype, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
    if not isinstance(dtype, str) or dtype not in _ALLOWED_DTYPES:
        raise ProtocolError(f"array dtype {dtype!r} is not allowed: numeric dtypes only")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ProtocolError(f"array shape must be a list of non-negative ints, got {shape!r}")
    if not isinstance(data, bytes):
        raise ProtocolError("array data must be bytes")
    count = 1
    for n in shape:
        count *= n
    if count * np.dtype(dtype).itemsize != len(data):
        raise ProtocolError(
            f"array of shape {shape} and dtype {dtype} needs {count * np.dtype(dtype).itemsize} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def encode(message: dict[str, Any]) -> bytes:
    """One message as a msgpack frame (numpy arrays and scalars included)."""
    return msgpack.packb(message, default=_encode_default, use_bin_type=True)


def decode(frame: Any) -> dict[str, Any]:
    """A frame back into a message map; `ProtocolError` for anything that is not one."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise ProtocolError("expected a binary frame (msgpack), got a text frame")
    try:
        message = msgpack.unpackb(bytes(frame), object_hook=_decode_hook, raw=False, strict_map_key=True)
    except ProtocolError:
        raise
    except Exception as err:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"not a msgpack message ({type(err).__name__}: {err})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("expected a map with a string 'type'")
    return message


def predict_request(request_id: int, images: Sequence[np.ndarray], instructions: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "predict",
        "id": int(request_id),
        "images": [np.asarray(image) for image in images],
        "instructions": [str(text) for text in instructions],
    }


def parse_predict_request(
    message: dict[str, Any], *, max_image_side: int = DEFAULT_MAX_IMAGE_SIDE
) -> tuple[int, list[np.ndarray], list[str]]:
    """``(id, images, instructions)`` of a predict request, every field checked."""
    if message.get("type") != "predict":
        raise ProtocolError("expected a 'predict' message, got type {!r}".format(message.get("type")))
    request_id = message.get("id")
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        raise ProtocolError("'id' must be an int")
    images, texts = message.get("images"), message.get("instructions")
    if not isinstance(images, list) or not isinstance(texts, list) or not images:
        raise ProtocolError("'images' and 'instructions' must be non-empty lists")
    if len(images) > MAX_IMAGES_PER_REQUEST:
        raise ProtocolError(f"{len(images)} images in one request; at most {MAX_IMAGES_PER_REQUEST}")
    if len(images) != len(texts):
        raise ProtocolError(f"{len(images)} images but {len(texts)} instructions")
    for k, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ProtocolError(f"images[{k}]: expected uint8 (H, W, 3), got {got}")
        if max(image.shape[:2]) > max_image_side or min(image.shape[:2]) < 1:
            raise ProtocolError(
                f"images[{k}]: {image.shape[0]}x{image.shape[1]} is outside 1..{max_image_side} pixels per side"
            )
    for k, text in enumerate(texts):
        if not isinstance(text, str) or len(text) > MAX_INSTRUCTION_CHARS:
            raise ProtocolError(f"instructions[{k}]: expected a string of at most {MAX_INSTRUCTION_CHARS} characters")
    return request_id, images, texts


def actions_reply(request_id: int, actions: np.ndarray) -> dict[str, Any]:
    return {"type": "actions", "id": int(request_id), "actions": np.asarray(actions, dtype=np.float32)}


def error_reply(request_id: int | None, text: str) -> dict[str, Any]:
    return {"type": "error", "id": request_id, "message": str(text)}


def bearer(token: str) -> str:
    return "Bearer " + token
