"""`PolicyServer` in a thread with a numpy policy: batching across clients, and every fault kept to
the connection that caused it (the server goes on serving the others)."""

from __future__ import annotations

import pickle
import socket
import threading
import time
from collections.abc import Sequence

import msgpack
import numpy as np
import pytest
from vlm4vla_client import AuthenticationError, PolicyServerClient, PolicyServerError
from vlm4vla_client.protocol import decode, encode, predict_request
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from vlm4vla.serving.server import PolicyServer, is_loopback

CHUNK = 3


def oracle(images: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
    """What the policy below returns, recomputed independently per sample."""
    out = np.zeros((len(images), CHUNK, 7), np.float32)
    for b, (image, text) in enumerate(zip(images, texts, strict=True)):
        out[b, :, 0] = image.astype(np.float64).mean()
        out[b, :, 1] = len(text)
    return out


class Policy:
    """Records every forward's batch size; ``gate`` holds forwards until set (a slow GPU)."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(30)
        self.batches.append(len(images))
        return oracle(images, texts)


def image(value: int, side: int = 8) -> np.ndarray:
    return np.full((side, side, 3), value, np.uint8)


@pytest.fixture
def policy() -> Policy:
    return Policy()


def start(policy: Policy, **kwargs: object) -> PolicyServer:
    return PolicyServer(policy, {"checkpoint": "step=000001", "chunk_size": CHUNK}, port=0, **kwargs).start_in_thread()


def raw(server: PolicyServer):  # a bare WebSocket, to send what a well-behaved client never would
    ws = connect(server.url, compression=None, max_size=None).__enter__()
    assert decode(ws.recv(timeout=10))["type"] == "metadata"
    return ws


def test_requests_of_several_clients_share_one_forward_and_each_gets_its_rows(policy: Policy) -> None:
    server = start(policy, max_batch=8, max_wait_ms=2000)
    try:
        clients = [PolicyServerClient(server.url) for _ in range(3)]
        requests = [([image(10 * k), image(10 * k + 1)], [f"task {k}", "x" * k]) for k in range(3)]
        replies: dict[int, np.ndarray] = {}
        threads = [
            threading.Thread(target=lambda k=k: replies.__setitem__(k, clients[k].predict(*requests[k])))
            for k in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert policy.batches == [6]  # 3 clients × 2 samples in one forward (the wait was long enough)
        for k in range(3):
            np.testing.assert_array_equal(replies[k], oracle(*requests[k]))
        for client in clients:
            client.close()
    finally:
        server.shutdown()


def test_max_batch_splits_forwards_and_one_gives_single_sample_forwards(policy: Policy) -> None:
    server = start(policy, max_batch=2, max_wait_ms=0)
    try:
        with PolicyServerClient(server.url) as client:
            images = [image(v) for v in (1, 2, 3, 4, 5)]
            np.testing.assert_array_equal(client.predict(images, ["a"] * 5), oracle(images, ["a"] * 5))
        assert policy.batches == [2, 2, 1]
    finally:
        server.shutdown()
    single = Policy()
    server = start(single, max_batch=1)
    try:
        with PolicyServerClient(server.url) as client:
            client.predict([image(1), image(2)], ["a", "b"])
        assert single.batches == [1, 1]
    finally:
        server.shutdown()


def test_oversized_message_closes_that_connection_1009_and_the_server_serves_on(policy: Policy) -> None:
    server = start(policy, max_message_bytes=64 * 1024)
    try:
        with PolicyServerClient(server.url) as bystander:
            ws = raw(server)
            ws.send(b"\x00" * (65 * 1024))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == 1009
            big = PolicyServerClient(server.url)
            with pytest.raises(PolicyServerError, match="1009"):
                big.predict([image(1, side=160)], ["too big"])  # 160·160·3 B > 64 KiB
            np.testing.assert_array_equal(bystander.predict([image(7)], ["ok"]), oracle([image(7)], ["ok"]))
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "frame, needle",
    [
        (b"\xc1\x00\xffgarbage", "not a msgpack message"),
        ("a text frame", "binary frame"),
        (msgpack.packb({"type": "predict", "id": 1, "images": [], "instructions": []}), "non-empty"),
        (encode(predict_request(1, [image(1, side=2048)], ["huge"])), "outside 1..1024"),
        (encode(predict_request(1, [np.zeros((8, 8, 3), np.float32)], ["float"])), "expected uint8"),
    ],
)
def test_malformed_messages_get_an_error_frame_then_close_1008(policy: Policy, frame: object, needle: str) -> None:
    server = start(policy)
    try:
        ws = raw(server)
        ws.send(frame)
        reply = decode(ws.recv(timeout=10))
        assert reply["type"] == "error" and reply["id"] is None and needle in reply["message"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1008
        with PolicyServerClient(server.url) as client:  # still serving
            np.testing.assert_array_equal(client.predict([image(3)], ["a"]), oracle([image(3)], ["a"]))
        assert policy.batches == [1] and server.stats.rejected == 1
    finally:
        server.shutdown()


def test_a_pickle_sent_to_the_server_is_refused_without_being_unpickled(policy: Policy, tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    server = start(policy)
    try:
        ws = raw(server)
        ws.send(pickle.dumps(Exploit()))
        assert decode(ws.recv(timeout=10))["type"] == "error"
        assert not marker.exists()
    finally:
        server.shutdown()


def test_a_wrong_or_missing_token_is_refused_in_the_handshake(policy: Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLM4VLA_SERVER_TOKEN", raising=False)
    server = start(policy, token="s3cret")
    try:
        for token in ("wrong", None):
            with pytest.raises(AuthenticationError, match="HTTP 401"):
                PolicyServerClient(server.url, token=token, connect_timeout=5)
        with PolicyServerClient(server.url, token="s3cret") as client:
            client.predict([image(1)], ["a"])
        assert server.stats.rejected == 2 and server.stats.connections == 1  # refused before any message
    finally:
        server.shutdown()


def test_a_client_that_disconnects_mid_batch_loses_only_its_rows(policy: Policy) -> None:
    server = start(policy, max_batch=8, max_wait_ms=500)
    try:
        policy.gate.clear()
        leaver = raw(server)
        leaver.send(encode(predict_request(1, [image(50)], ["leaving"])))
        stayer = PolicyServerClient(server.url)
        result: list[np.ndarray] = []
        thread = threading.Thread(target=lambda: result.append(stayer.predict([image(60)], ["staying"])))
        thread.start()
        assert policy.entered.wait(10)  # the batch of both is in the forward now
        leaver.close()
        policy.gate.set()
        thread.join(30)
        assert policy.batches == [2]
        np.testing.assert_array_equal(result[0], oracle([image(60)], ["staying"]))
        np.testing.assert_array_equal(stayer.predict([image(9)], ["again"]), oracle([image(9)], ["again"]))
    finally:
        server.shutdown()


def test_a_failing_forward_is_an_error_reply_to_its_requests_and_the_server_serves_on() -> None:
    calls = []

    def flaky(images: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        calls.append(len(images))
        if texts[0] == "boom":
            raise RuntimeError("CUDA out of memory")
        return oracle(images, texts)

    server = PolicyServer(flaky, {"checkpoint": "c"}, port=0).start_in_thread()
    try:
        with PolicyServerClient(server.url) as client:
            with pytest.raises(PolicyServerError, match="forward failed: RuntimeError: CUDA out of memory"):
                client.predict([image(1)], ["boom"])
            np.testing.assert_array_equal(client.predict([image(2)], ["fine"]), oracle([image(2)], ["fine"]))
    finally:
        server.shutdown()


def test_the_default_binds_loopback_only(policy: Policy) -> None:
    server = start(policy)
    try:
        host = server.url.split("//")[1].rsplit(":", 1)[0]
        assert is_loopback(host)
        addresses = [a for a in socket.getaddrinfo(socket.gethostname(), None) if not a[4][0].startswith("127.")]
        for family, _, _, _, address in addresses[:1]:  # this machine's other address cannot reach it
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                assert sock.connect_ex((address[0], server.port)) != 0
    finally:
        server.shutdown()
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")


def test_metadata_carries_protocol_limits_and_batching(policy: Policy) -> None:
    server = start(policy, max_batch=4, max_wait_ms=3, max_message_bytes=1 << 20, max_image_side=512)
    try:
        with PolicyServerClient(server.url) as client:
            meta = client.metadata
        assert meta["protocol"] == 1 and meta["checkpoint"] == "step=000001"
        assert meta["limits"] == {"max_message_bytes": 1 << 20, "max_image_side": 512}
        assert meta["batching"] == {"max_batch": 4, "max_wait_ms": 3.0}
    finally:
        server.shutdown()


def test_shutdown_during_a_forward_answers_the_waiting_clients_and_ends(policy: Policy) -> None:
    server = start(policy, max_batch=1)
    policy.gate.clear()  # the first forward hangs (a stuck GPU); a second request waits in the queue
    clients = [PolicyServerClient(server.url, retry_seconds=0.2) for _ in range(2)]
    errors: list[BaseException] = []

    def ask(client: PolicyServerClient) -> None:
        try:
            client.predict([image(1)], ["a"])
        except BaseException as err:  # noqa: BLE001 - asserted below
            errors.append(err)

    threads = [threading.Thread(target=ask, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    assert policy.entered.wait(10)
    server.shutdown()
    assert server.thread is not None
    server.thread.join(10)
    assert not server.thread.is_alive()  # the server ended with a forward still running
    policy.gate.set()
    for t in threads:
        t.join(10)
    assert len(errors) == 2 and all(isinstance(e, PolicyServerError) for e in errors)


def test_a_dead_batching_loop_stops_the_server_and_fails_its_clients() -> None:
    def wrong_rows(images: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(images), 2, 7), np.float32)

    server = PolicyServer(wrong_rows, {"checkpoint": "c"}, port=0, max_batch=2, max_wait_ms=200).start_in_thread()
    server._forward = lambda images, texts: []  # a broken batch (no rows): the batcher's zip raises
    with PolicyServerClient(server.url, retry_seconds=0.2) as client:
        with pytest.raises(PolicyServerError):
            client.predict([image(1)], ["a"])
    assert server.thread is not None
    server.thread.join(10)
    assert not server.thread.is_alive() and isinstance(server.error, ValueError)


def test_a_client_that_leaves_while_queued_has_its_samples_skipped(policy: Policy) -> None:
    server = start(policy, max_batch=1)
    try:
        policy.gate.clear()
        busy = PolicyServerClient(server.url)
        first: list[np.ndarray] = []
        thread = threading.Thread(target=lambda: first.append(busy.predict([image(5)], ["first"])))
        thread.start()
        assert policy.entered.wait(10)  # the first forward is running; what comes next waits in the queue
        leaver = raw(server)
        leaver.send(encode(predict_request(1, [image(6), image(7)], ["queued", "queued"])))
        time.sleep(0.3)
        leaver.close()
        time.sleep(0.3)  # the server sees the close while the forward still runs
        policy.gate.set()
        thread.join(30)
        np.testing.assert_array_equal(busy.predict([image(8)], ["next"]), oracle([image(8)], ["next"]))
        assert policy.batches == [1, 1]  # the leaver's two samples never reached the policy
        busy.close()
    finally:
        server.shutdown()
