"""`PolicyServerClient`: a blocking client of ``vlm4vla serve`` (one WebSocket, one request at a time).

It reconnects by itself: when the connection drops (the server restarted, a network blip), it
retries with exponential backoff for up to ``retry_seconds``, checks that the server it reached
serves the *same* bundle (its metadata identity is unchanged) and resends the request, so a
caller sees one slow query instead of an error. What the server refused on purpose (a wrong
token, an oversized or malformed message, a failed forward) is raised at once, never retried.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Sequence

import numpy as np

from vlm4vla_client.protocol import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    DEFAULT_MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    TOKEN_ENV,
    TOKEN_HEADER,
    ProtocolError,
    bearer,
    decode,
    encode,
    predict_request,
)


class PolicyServerError(RuntimeError):
    """The server answered, but refused or failed this request (the message says why)."""


class AuthenticationError(PolicyServerError):
    """The server refused the connection's token (HTTP 401)."""


class ServerUnavailableError(PolicyServerError):
    """No server could be reached at the URL within the retry window (or it stopped answering)."""


class ServerChangedError(PolicyServerError):
    """After a reconnect the server serves another policy than before."""


IDENTITY_FIELDS = ("protocol", "checkpoint", "step", "config", "normalizer_hash", "weights_sha256", "dtype")
"""What makes two servers serve "the same policy": the bundle and its precision. Not where it lives
(path, host), its GPU index, batching, limits or runtime counters, which may differ between
replicas and across a restart without changing an action."""


def metadata_identity(metadata: dict[str, Any]) -> str:
    """A digest of the served policy: `IDENTITY_FIELDS` plus the device type (cpu / cuda)."""
    what = {k: metadata.get(k) for k in IDENTITY_FIELDS}
    what["device_type"] = str(metadata.get("device", "cpu")).split(":")[0]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _close_code(err: Exception) -> int | None:
    frame = getattr(err, "rcvd", None)
    return getattr(frame, "code", None) if frame is not None else None


def _close_reason(err: Exception) -> str:
    frame = getattr(err, "rcvd", None)
    return (getattr(frame, "reason", "") or "") if frame is not None else ""


class PolicyServerClient:
    """Blocking client of one policy server.

    Args:
        url: ``ws://HOST:PORT``.
        token: the server's shared token; default ``$VLM4VLA_SERVER_TOKEN`` (none if unset).
        connect_timeout: how long the first connection may take (the server may still be loading).
        retry_seconds: how long a dropped connection is retried before `ServerUnavailableError`.
        max_message_bytes: the largest reply accepted.
        reply_timeout: how long one request may wait for its reply (None: forever).
        max_resends: how many times one request is resent after a dropped connection.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        connect_timeout: float = 60.0,
        retry_seconds: float = 60.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        reply_timeout: float | None = 600.0,
        max_resends: int = 5,
    ) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"policy server URL must start with ws:// or wss://, got {url!r}")
        self.url = url
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self.retry_seconds = float(retry_seconds)
        self.max_message_bytes = int(max_message_bytes)
        self.reply_timeout = reply_timeout
        self.max_resends = int(max_resends)
        self.reconnects = 0
        self._ws: Any = None
        self._next_id = 0
        self._metadata: dict[str, Any] = {}
        self._identity = ""
        self._open(deadline=time.monotonic() + float(connect_timeout))

    # ------------------------------------------------------------------ connection
    @property
    def metadata(self) -> dict[str, Any]:
        """The bundle identity the server sent on connect (see `vlm4vla_client.protocol`)."""
        return dict(self._metadata)

    def _connect_once(self) -> dict[str, Any]:
        from websockets.sync.client import connect

        headers = {TOKEN_HEADER: bearer(self.token)} if self.token else None
        # The connection lives as long as this client (closed in `close`): entered by hand, as
        # websockets >= 17.1 asks of a connection not used in a with block.
        ws = connect(
            self.url,
            additional_headers=headers,
            max_size=self.max_message_bytes,
            compression=None,
            open_timeout=10.0,
            close_timeout=1.0,  # closing a hung server's connection must not hang the client
        ).__enter__()
        try:
            metadata = decode(ws.recv(timeout=30.0))
        except BaseException:
            ws.close()
            raise
        if metadata.get("type") == "error":
            ws.close()
            raise PolicyServerError("{}: {}".format(self.url, metadata.get("message")))
        if metadata.get("type") != "metadata" or metadata.get("protocol") != PROTOCOL_VERSION:
            ws.close()
            raise PolicyServerError(
                "{}: not a vlm4vla policy server of protocol {} (first message: type {!r}, protocol {!r})".format(
                    self.url, PROTOCOL_VERSION, metadata.get("type"), metadata.get("protocol")
                )
            )
        self._ws = ws
        return metadata

    def _open(self, deadline: float) -> None:
        """Connect (retrying until ``deadline``) and check the server is the one we had."""
        from websockets.exceptions import InvalidStatus, WebSocketException

        delay = 0.05
        last = ""
        while True:
            try:
                metadata = self._connect_once()
                break
            except InvalidStatus as err:
                status = getattr(getattr(err, "response", None), "status_code", None)
                if status in (401, 403):
                    raise AuthenticationError(
                        f"{self.url}: the server refused the token (HTTP {status}); pass the server's --token or set ${TOKEN_ENV}"
                    ) from None
                last = str(err)
            except (OSError, WebSocketException, TimeoutError, ProtocolError) as err:
                last = f"{type(err).__name__}: {err}"
            if time.monotonic() + delay > deadline:
                raise ServerUnavailableError(f"{self.url}: no policy server reachable ({last})")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        identity = metadata_identity(metadata)
        if self._identity and identity != self._identity:
            self._ws.close()
            raise ServerChangedError(
                "{}: the server now serves checkpoint {!r} (normaliser {}), not the {!r} of this run".format(
                    self.url,
                    metadata.get("checkpoint"),
                    metadata.get("normalizer_hash"),
                    self._metadata.get("checkpoint"),
                )
            )
        self._metadata, self._identity = metadata, identity

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def __enter__(self) -> PolicyServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:  # a live socket does not pickle
        raise TypeError("PolicyServerClient holds a connection; create one per process")

    # ------------------------------------------------------------------ queries
    def predict(self, images: Sequence[np.ndarray], instructions: Sequence[str]) -> np.ndarray:
        """(B, N, D) float32 action chunks for B observations, in one round trip."""
        from websockets.exceptions import ConnectionClosed

        deadline: float | None = None
        resends = 0
        while True:
            self._next_id += 1
            request_id = self._next_id
            try:
                if self._ws is None:
                    raise ConnectionResetError("not connected")
                self._ws.send(encode(predict_request(request_id, images, instructions)))
                reply = decode(self._ws.recv(timeout=self.reply_timeout))
            except TimeoutError:
                self.close()  # a late reply must not be taken for the next request's
                raise ServerUnavailableError(
                    f"{self.url}: no reply within {self.reply_timeout:.0f} s (a hung forward?)"
                ) from None
            except ConnectionClosed as err:
                code = _close_code(err)
                if code in (CLOSE_POLICY_VIOLATION, CLOSE_MESSAGE_TOO_BIG):
                    self.close()
                    raise PolicyServerError(
                        f"{self.url}: the server closed the connection ({code} {_close_reason(err)})"
                    ) from None
                deadline = self._reconnect(deadline, resends)
                resends += 1
                continue
            except OSError:
                deadline = self._reconnect(deadline, resends)
                resends += 1
                continue
            return self._actions(reply, request_id, len(images))

    def _reconnect(self, deadline: float | None, resends: int) -> float:
        self.close()
        if resends >= self.max_resends:  # e.g. a request that crashes a supervised server each time
            raise ServerUnavailableError(
                f"{self.url}: the connection dropped {resends + 1} times during this request; not resending it again"
            )
        if deadline is None:
            deadline = time.monotonic() + self.retry_seconds
        self._open(deadline)
        self.reconnects += 1
        return deadline

    def _actions(self, reply: dict[str, Any], request_id: int, batch: int) -> np.ndarray:
        if reply.get("type") == "error":
            raise PolicyServerError("{}: {}".format(self.url, reply.get("message")))
        if reply.get("type") != "actions" or reply.get("id") != request_id:
            raise PolicyServerError(
                "{}: expected the actions of request {}, got type {!r} id {!r}".format(
                    self.url, request_id, reply.get("type"), reply.get("id")
                )
            )
        actions = reply.get("actions")
        if not isinstance(actions, np.ndarray) or actions.ndim != 3 or actions.shape[0] != batch:
            shape = getattr(actions, "shape", None)
            raise PolicyServerError(f"{self.url}: actions of shape {shape}; expected ({batch}, N, D)")
        return np.array(actions, dtype=np.float32)  # a writable copy
