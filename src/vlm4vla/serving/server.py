"""`PolicyServer`: ``predict_chunk`` over WebSocket, batching the requests of every connected client.

The event loop only moves messages; forwards run one at a time in a single worker thread, so a
slow forward never stalls the sockets (connects, metadata, error frames keep flowing). Every
sample of every request joins one FIFO; a batch is formed from its head as soon as it holds
``max_batch`` samples or the oldest has waited ``max_wait_ms`` (requests larger than
``max_batch`` are split), and each client gets its own rows back. With ``max_batch=1`` every
forward is one sample, as in-process evaluation with one worker.

Faults stay local to their connection: a malformed message gets an error frame and that
connection is closed (1008); an oversized one is refused by the WebSocket layer before it is read
(a close frame 1009 with the reason); a client that disconnects while waiting has its samples
not yet in a forward skipped (those already in one are computed and their reply dropped).
Stopping ends every waiting request's handler (its connection closes 1001, "going away", and the
client reconnects, perhaps to a restarted server), so no handler outlives the server. The protocol is
`vlm4vla_client.protocol` (no pickle).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import numpy as np
from vlm4vla_client.protocol import (
    CLOSE_POLICY_VIOLATION,
    DEFAULT_MAX_IMAGE_SIDE,
    DEFAULT_MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    TOKEN_HEADER,
    ProtocolError,
    actions_reply,
    bearer,
    decode,
    encode,
    error_reply,
    parse_predict_request,
)

PredictFn = Callable[[Sequence[np.ndarray], Sequence[str]], np.ndarray]


@dataclass
class ServerStats:
    """What the server did (for tests, logs and the overhead benchmark)."""

    connections: int = 0
    requests: int = 0
    forwards: int = 0
    samples: int = 0
    rejected: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


@dataclass(eq=False)
class _Pending:
    """One request's samples waiting for (or inside) forwards; done when every row has come back."""

    images: list[np.ndarray]
    texts: list[str]
    rows: list[np.ndarray | None]
    future: asyncio.Future[np.ndarray]
    arrived: float
    remaining: int = 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PolicyServer:
    """Serve ``predict`` to WebSocket clients.

    Args:
        predict: (images, instructions) → (B, N, D) actions.
        metadata: sent to every client on connect (`vlm4vla.serving.bundle_metadata`).
        host, port: where to listen (port 0: a free one, see `port` once started).
        max_batch: largest forward in samples.
        max_wait_ms: how long the oldest waiting sample may wait for others to join its batch.
        token: if set, clients must send it (``Authorization: Bearer``) or are refused (HTTP 401).
        max_message_bytes, max_image_side: bounds of what a client may send.
    """

    def __init__(
        self,
        predict: PredictFn,
        metadata: Mapping[str, Any],
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_batch: int = 8,
        max_wait_ms: float = 2.0,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_image_side: int = DEFAULT_MAX_IMAGE_SIDE,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch: must be ≥ 1, got {max_batch}")
        self.predict = predict
        self.host = host
        self.port = int(port)
        self.max_batch = int(max_batch)
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.token = token or None
        self.max_message_bytes = int(max_message_bytes)
        self.max_image_side = int(max_image_side)
        self.metadata = {
            **dict(metadata),
            "type": "metadata",
            "protocol": PROTOCOL_VERSION,
            "limits": {"max_message_bytes": self.max_message_bytes, "max_image_side": self.max_image_side},
            "batching": {"max_batch": self.max_batch, "max_wait_ms": float(max_wait_ms)},
        }
        self.stats = ServerStats()
        self._queue: deque[tuple[_Pending, int]] = deque()
        self._open: set[_Pending] = set()
        self._wake: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlm4vla-forward")
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    # ---------------------------------------------------------------- connections
    def _check_token(self, connection: Any, request: Any) -> Any:
        if self.token is None:
            return None
        sent = request.headers.get(TOKEN_HEADER, "")
        if hmac.compare_digest(sent.encode(), bearer(self.token).encode()):
            return None
        self.stats.rejected += 1
        return connection.respond(HTTPStatus.UNAUTHORIZED, "vlm4vla serve: missing or wrong token\n")

    async def _handle(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        self.stats.connections += 1
        runtime = {"server": {"started": self._started_at, "connections": self.stats.connections}}
        try:
            await ws.send(encode({**self.metadata, **runtime}))
            async for frame in ws:
                try:
                    request_id, images, texts = parse_predict_request(decode(frame), max_image_side=self.max_image_side)
                except ProtocolError as err:
                    self.stats.rejected += 1
                    await ws.send(encode(error_reply(None, f"malformed message: {err}")))
                    await ws.close(CLOSE_POLICY_VIOLATION, "malformed message")
                    return
                self.stats.requests += 1
                pending = self._enqueue(images, texts)
                closed = asyncio.ensure_future(ws.wait_closed())
                try:
                    await asyncio.wait({pending.future, closed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closed.cancel()
                if not pending.future.done():  # the client left: its rows not yet in a forward are skipped
                    pending.future.cancel()
                    return
                try:
                    actions = pending.future.result()
                except Exception as err:  # the forward (or the batching loop) failed: tell this client
                    await ws.send(encode(error_reply(request_id, f"forward failed: {type(err).__name__}: {err}")))
                    continue
                await ws.send(encode(actions_reply(request_id, actions)))
        except ConnectionClosed:
            pass  # the client went away; its rows (if any) are dropped with its future

    def _enqueue(self, images: list[np.ndarray], texts: list[str]) -> _Pending:
        loop = asyncio.get_running_loop()
        pending = _Pending(images, texts, [None] * len(images), loop.create_future(), time.monotonic(), len(images))
        self._open.add(pending)
        pending.future.add_done_callback(lambda _: self._open.discard(pending))
        self._queue.extend((pending, k) for k in range(len(images)))
        assert self._wake is not None
        self._wake.set()
        return pending

    def _fail_open(self, err: BaseException) -> None:
        """Answer every request still waiting (queued or in a forward) with ``err``."""
        for pending in list(self._open):
            if not pending.future.done():
                pending.future.set_exception(err)

    def _batcher_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.error = task.exception()  # nothing would answer the clients any more: stop, loudly
        print(f"vlm4vla serve: batching failed: {type(self.error).__name__}: {self.error}", file=sys.stderr)
        self._fail_open(ConnectionError("the server's batching loop failed"))
        assert self._stop is not None
        self._stop.set()

    # ---------------------------------------------------------------- batching
    async def _batcher(self) -> None:
        assert self._wake is not None and self._stop is not None
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            oldest = self._queue[0][0].arrived
            wait = oldest + self.max_wait - time.monotonic()
            if len(self._queue) < self.max_batch and wait > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
                continue
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            batch = [(p, k) for p, k in batch if not p.future.done()]  # a cancelled client's rows
            if not batch:
                continue
            images = [p.images[k] for p, k in batch]
            texts = [p.texts[k] for p, k in batch]
            try:
                out = await loop.run_in_executor(self._executor, self._forward, images, texts)
            except Exception as err:
                for p, _ in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            for (p, k), row in zip(batch, out, strict=True):
                p.rows[k] = row
                p.remaining -= 1
                if p.remaining == 0 and not p.future.done():
                    p.future.set_result(np.stack(p.rows))

    def _forward(self, images: list[np.ndarray], texts: list[str]) -> np.ndarray:
        out = np.asarray(self.predict(images, texts), dtype=np.float32)
        if out.ndim != 3 or out.shape[0] != len(images):
            raise ValueError(f"the policy returned actions of shape {out.shape}; expected ({len(images)}, N, D)")
        self.stats.forwards += 1
        self.stats.samples += len(images)
        self.stats.batch_sizes[len(images)] = self.stats.batch_sizes.get(len(images), 0) + 1
        return out

    # ---------------------------------------------------------------- running
    async def serve_async(self, on_listening: Callable[[PolicyServer], None] | None = None) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._started_at = time.time()
        async with serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._check_token,
            max_size=self.max_message_bytes,
            compression=None,
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            batcher = asyncio.ensure_future(self._batcher())
            batcher.add_done_callback(self._batcher_done)
            self._started.set()
            if on_listening is not None:
                on_listening(self)
            await self._stop.wait()
            batcher.cancel()
            # Leaving the block closes every connection (1001): each waiting handler sees its close.
        self._executor.shutdown(wait=False)

    def serve_forever(self, on_listening: Callable[[PolicyServer], None] | None = None) -> None:
        asyncio.run(self.serve_async(on_listening))
        if self.error is not None:
            raise self.error

    def start_in_thread(self, timeout: float = 30.0) -> PolicyServer:
        """Run in a daemon thread (tests, benchmarks); returns once listening."""

        def run() -> None:
            try:
                self.serve_forever()
            except BaseException as err:
                self.error = err
                self._started.set()

        self.thread = threading.Thread(target=run, daemon=True, name="vlm4vla-serve")
        self.thread.start()
        if not self._started.wait(timeout) or self.error is not None:
            raise RuntimeError(f"policy server did not start: {self.error}")
        return self

    def shutdown(self) -> None:
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop has already ended
                pass

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"


def warn_if_exposed(host: str) -> None:
    if not is_loopback(host):
        print(
            f"vlm4vla serve: warning: listening on {host}, reachable from other machines; anyone who can "
            "connect can query the policy (set --token, and keep the port inside your cluster's network)",
            file=sys.stderr,
        )
