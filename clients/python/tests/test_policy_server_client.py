"""`PolicyServerClient` against a protocol-speaking server double (the real websockets library)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from server_double import ServerDouble, error_reply, expected_actions

from vlm4vla_client import (
    AuthenticationError,
    PolicyServerClient,
    PolicyServerError,
    ServerChangedError,
    ServerUnavailableError,
)

IMAGES = [np.full((6, 5, 3), 10, np.uint8), np.full((6, 5, 3), 200, np.uint8)]
TEXTS = ["open", "close the drawer"]


@pytest.fixture
def server():
    srv = ServerDouble()
    yield srv
    srv.stop()


def test_metadata_on_connect_and_actions_per_observation(server: ServerDouble) -> None:
    with PolicyServerClient(server.url) as client:
        assert client.metadata["checkpoint"] == "step=000010" and client.metadata["chunk_size"] == 3
        actions = client.predict(IMAGES, TEXTS)
    assert actions.dtype == np.float32 and actions.flags.writeable
    np.testing.assert_array_equal(actions, expected_actions(IMAGES, TEXTS))
    assert actions[1, 0, 0] == 200.0 and actions[1, 0, 1] == len("close the drawer")


def test_the_token_goes_in_the_handshake_and_a_wrong_one_is_refused_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    srv = ServerDouble(token="s3cret")
    try:
        monkeypatch.setenv("VLM4VLA_SERVER_TOKEN", "s3cret")
        with PolicyServerClient(srv.url) as client:  # from the environment
            client.predict(IMAGES[:1], TEXTS[:1])
        assert srv.headers[-1] == "Bearer s3cret"
        start = time.monotonic()
        with pytest.raises(AuthenticationError, match="refused the token"):
            PolicyServerClient(srv.url, token="wrong", connect_timeout=30)
        assert time.monotonic() - start < 5  # not retried until the timeout
        monkeypatch.delenv("VLM4VLA_SERVER_TOKEN")
        with pytest.raises(AuthenticationError):
            PolicyServerClient(srv.url, connect_timeout=30)
    finally:
        srv.stop()


def test_a_restarted_server_of_the_same_bundle_is_reconnected_and_the_request_resent(server: ServerDouble) -> None:
    client = PolicyServerClient(server.url, retry_seconds=20)
    client.predict(IMAGES, TEXTS)
    port = server.port
    server.stop()
    restarted: list[ServerDouble] = []
    timer = threading.Timer(0.8, lambda: restarted.append(ServerDouble(port)))
    timer.start()
    try:
        actions = client.predict(IMAGES, TEXTS)  # blocks through the outage
        np.testing.assert_array_equal(actions, expected_actions(IMAGES, TEXTS))
        assert client.reconnects == 1 and restarted[0].connections == 1
    finally:
        timer.join()
        client.close()
        for srv in restarted:
            srv.stop()


def test_a_restarted_server_of_another_bundle_is_refused(server: ServerDouble) -> None:
    client = PolicyServerClient(server.url, retry_seconds=10)
    port = server.port
    server.stop()
    other = ServerDouble(port, checkpoint="step=000020")
    try:
        with pytest.raises(ServerChangedError, match="step=000020"):
            client.predict(IMAGES, TEXTS)
    finally:
        other.stop()


def test_a_server_that_stays_away_is_unavailable_after_the_retry_window(server: ServerDouble) -> None:
    client = PolicyServerClient(server.url, retry_seconds=1.0)
    server.stop()
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="no policy server reachable"):
        client.predict(IMAGES, TEXTS)
    assert 0.5 < time.monotonic() - start < 6


def test_no_server_at_all_is_unavailable_after_the_connect_timeout() -> None:
    srv = ServerDouble()
    url = srv.url
    srv.stop()
    with pytest.raises(ServerUnavailableError):
        PolicyServerClient(url, connect_timeout=0.5)


def test_error_frames_and_refusals_are_raised_not_retried() -> None:
    srv = ServerDouble(on_predict=lambda m: error_reply(m["id"], "forward failed: CUDA out of memory"))
    try:
        with PolicyServerClient(srv.url, retry_seconds=30) as client:
            with pytest.raises(PolicyServerError, match="CUDA out of memory"):
                client.predict(IMAGES, TEXTS)
        assert srv.connections == 1
    finally:
        srv.stop()


def test_a_request_bigger_than_the_server_accepts_is_refused_with_its_close_code_not_retried() -> None:
    srv = ServerDouble(max_size=1000)
    try:
        client = PolicyServerClient(srv.url, retry_seconds=30)
        start = time.monotonic()
        with pytest.raises(PolicyServerError, match="1009"):
            client.predict([np.zeros((64, 64, 3), np.uint8)], ["big"])
        assert time.monotonic() - start < 5 and srv.connections == 1  # refused, not retried
    finally:
        srv.stop()


def test_urls_are_checked() -> None:
    with pytest.raises(ValueError, match="ws://"):
        PolicyServerClient("http://127.0.0.1:8000")


def test_a_request_that_keeps_dropping_the_connection_is_not_resent_forever() -> None:
    srv = ServerDouble(on_predict=lambda m: "drop")  # the server closes on every request
    try:
        client = PolicyServerClient(srv.url, retry_seconds=30, max_resends=3)
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="dropped 4 times during this request"):
            client.predict(IMAGES, TEXTS)
        assert srv.connections == 4 and time.monotonic() - start < 10
    finally:
        srv.stop()


def test_a_server_that_never_answers_times_out() -> None:
    hang = threading.Event()
    srv = ServerDouble(on_predict=lambda m: hang.wait(5) and None)  # blocks the server's loop, then replies
    try:
        client = PolicyServerClient(srv.url, reply_timeout=0.5)
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="no reply within"):
            client.predict(IMAGES, TEXTS)
        assert time.monotonic() - start < 4
    finally:
        hang.set()
        srv.stop()
