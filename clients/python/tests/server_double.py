"""A minimal protocol-speaking server for the client's tests, built on the real websockets library.

It answers ``predict`` with a function of the inputs that the tests can recompute (the mean of
each image, the length of each instruction), so every reply is checked against an oracle. The
real server (with batching and a policy) is tested in vlm4vla's own suite.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

import numpy as np

from vlm4vla_client.protocol import (
    PROTOCOL_VERSION,
    actions_reply,
    bearer,
    decode,
    encode,
    error_reply,
    parse_predict_request,
)


def expected_actions(images: list[np.ndarray], texts: list[str], chunk: int = 3) -> np.ndarray:
    out = np.zeros((len(images), chunk, 7), dtype=np.float32)
    for b, (image, text) in enumerate(zip(images, texts)):
        out[b, :, 0] = float(image.mean())
        out[b, :, 1] = float(len(text))
        out[b, :, 2] = np.arange(chunk)
    return out


class ServerDouble:
    """Serves on 127.0.0.1:``port`` in a background thread until `stop`."""

    def __init__(
        self,
        port: int = 0,
        *,
        checkpoint: str = "step=000010",
        token: str | None = None,
        on_predict: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
        max_size: int = 1 << 20,
    ) -> None:
        self.port = port
        self.metadata = {"type": "metadata", "protocol": PROTOCOL_VERSION, "checkpoint": checkpoint, "chunk_size": 3}
        self.token = token
        self.on_predict = on_predict
        self.max_size = max_size
        self.connections = 0
        self.headers: list[str | None] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _auth(self, connection: Any, request: Any) -> Any:
        self.headers.append(request.headers.get("Authorization"))
        if self.token is not None and request.headers.get("Authorization") != bearer(self.token):
            return connection.respond(401, "wrong token\n")
        return None

    async def _handle(self, ws: Any) -> None:
        self.connections += 1
        await ws.send(encode(dict(self.metadata, server={"connections": self.connections})))
        async for frame in ws:
            message = decode(frame)
            if self.on_predict is not None:
                override = self.on_predict(message)
                if override == "drop":
                    await ws.close()
                    return
                if override is not None:
                    await ws.send(encode(override))
                    continue
            request_id, images, texts = parse_predict_request(message)
            await ws.send(encode(actions_reply(request_id, expected_actions(images, texts))))

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with serve(
            self._handle, "127.0.0.1", self.port, process_request=self._auth, max_size=self.max_size, compression=None
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop

    def stop(self) -> None:
        """Close the listening socket and every connection (as a server going away)."""
        assert self._loop is not None and self._stop is not None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
            self._thread.join(10)


__all__ = ["ServerDouble", "error_reply", "expected_actions"]
