from __future__ import annotations

import numpy as np
import pytest

from vlm4vla.evaluation import ActionQueue, PolicyClient, parse_modes, steps_per_query


@pytest.mark.parametrize(("n", "expected"), [(10, (10, 5, 1)), (4, (4, 2, 1)), (1, (1, 1, 1)), (3, (3, 1, 1))])
def test_steps_per_query(n: int, expected: tuple[int, int, int]) -> None:
    assert tuple(steps_per_query(m, n) for m in ("full", "half", "single")) == expected


def test_bad_mode_and_chunk() -> None:
    with pytest.raises(ValueError, match="unknown chunk mode 'double'"):
        steps_per_query("double", 4)
    with pytest.raises(ValueError, match="≥ 1"):
        steps_per_query("full", 0)
    assert parse_modes("single,full,full") == ["full", "single"]
    with pytest.raises(ValueError, match="unknown mode"):
        parse_modes("full,quarter")


def test_action_queue_keeps_first_steps() -> None:
    queue = ActionQueue(2)
    chunk = np.arange(28, dtype=np.float32).reshape(4, 7)
    queue.push(chunk)
    assert len(queue) == 2
    np.testing.assert_array_equal(queue.pop(), chunk[0])
    with pytest.raises(RuntimeError, match="still holds"):
        queue.push(chunk)
    np.testing.assert_array_equal(queue.pop(), chunk[1])
    assert queue.empty
    queue.push(chunk)
    queue.clear()
    assert queue.empty


@pytest.mark.parametrize(("mode", "queries"), [("full", 3), ("half", 6), ("single", 12)])
def test_client_queries_and_executes_in_order(mode: str, queries: int) -> None:
    calls: list[int] = []

    def query(image: np.ndarray, text: str) -> np.ndarray:
        calls.append(len(calls))
        return np.stack([np.full(7, 10 * len(calls) + i, np.float32) for i in range(4)])

    client = PolicyClient(query, mode=mode, chunk_size=4)
    image = np.zeros((8, 8, 3), np.uint8)
    actions = [client.act(image, "go")[0] for _ in range(12)]
    assert client.queries == len(calls) == queries
    per = 12 // queries
    # Each query's first `per` actions, in order.
    assert actions == [10 * (q + 1) + i for q in range(queries) for i in range(per)]


def test_client_reset_clears_queue() -> None:
    client = PolicyClient(lambda im, t: np.zeros((4, 7), np.float32), mode="full", chunk_size=4)
    image = np.zeros((8, 8, 3), np.uint8)
    client.act(image, "a")
    client.reset()
    client.act(image, "b")
    assert client.queries == 2 and len(client.queue) == 3
    with pytest.raises(ValueError, match="uint8"):
        client.act(np.zeros((8, 8, 3), np.float32), "c")
