"""Overhead of evaluating through ``vlm4vla serve`` on loopback vs the policy in process (issue 16).

    python benchmarks/policy_server.py [--rounds 5] [--queries 20] [--side 256]

Same tiny policy bundle, same observations (256² LIBERO-released-sized images), batch sizes 1
and 8 (the harness sends the observations of all waiting env workers as one request). Both the
in-process policy and the server run one thread each (``OMP_NUM_THREADS=1``), and the two are
measured in alternating rounds in this one process, so the ratios compare like with like.

Reported per batch size: the median time per query (one ``predict`` call) in process and through
the server, the added milliseconds per query (median of paired differences: the calls alternate),
and the throughput ratio (env steps per second through the server / in process, over all calls;
each query answers ``batch`` env steps). A second server (its own
process) with a constant numpy policy measures the transport alone (encode, loopback WebSocket,
batching loop, decode).
Targets: ≤ 2 ms added per query at batch 1, ≥ 0.9× in-process throughput at batch 8.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

# A server in its own process whose "policy" returns zeros at once: the transport alone.
ECHO_SERVER = """
import json, sys, numpy as np
from vlm4vla.files import write_atomic
from vlm4vla.serving.server import PolicyServer
zeros = np.zeros((8, 4, 7), np.float32)
server = PolicyServer(lambda images, _: zeros[: len(images)], {"checkpoint": "echo"}, port=0, max_batch=8, max_wait_ms=0)
server.serve_forever(lambda s: write_atomic(sys.argv[1], json.dumps({"url": s.url})))
"""


def _time_queries(predict, images, texts, queries: int) -> float:  # noqa: ANN001
    start = time.perf_counter()
    for _ in range(queries):
        predict(images, texts)
    return (time.perf_counter() - start) / queries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--side", type=int, default=256)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from vlm4vla_client import PolicyServerClient

    from vlm4vla.evaluation.sweep import load_policy, resolve_checkpoints
    from vlm4vla.evaluation.testing import ServedBundle, write_tiny_bundle

    work = Path(tempfile.mkdtemp(prefix="vlm4vla-bench-serve-"))
    bundle = write_tiny_bundle(work / "step=000001", gripper="signed")
    local = load_policy(resolve_checkpoints(bundle)[0])
    rng = np.random.default_rng(0)
    observations = [rng.integers(0, 256, (args.side, args.side, 3), dtype=np.uint8) for _ in range(8)]
    texts = ["put both the alphabet soup and the tomato sauce in the basket"] * 8

    echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(work / "echo.json")])
    while not (work / "echo.json").is_file():
        assert echo.poll() is None, "the echo server did not start"
        time.sleep(0.05)
    echo_url = json.loads((work / "echo.json").read_text())["url"]
    rows = []
    with ServedBundle(bundle, "--max-batch", "8", "--max-wait-ms", "0") as served:
        remote = PolicyServerClient(served.url)
        transport = PolicyServerClient(echo_url)
        for batch in (1, 8):
            images, words = observations[:batch], texts[:batch]
            for fn in (local, remote.predict, transport.predict):  # warm-up
                fn(images, words)
            np.testing.assert_array_equal(remote.predict(images, words), local(images, words))
            # Paired, alternating calls: the forward's own jitter (±5 ms on this CPU) cancels in
            # the per-pair difference, whose median is the added time.
            local_t, remote_t, diffs = [], [], []
            for _ in range(args.rounds * args.queries):
                a = _time_queries(local, images, words, 1)
                b = _time_queries(remote.predict, images, words, 1)
                local_t.append(a)
                remote_t.append(b)
                diffs.append(b - a)
            transport_t = [
                _time_queries(transport.predict, images, words, 1) for _ in range(args.rounds * args.queries)
            ]
            med = {
                "local": statistics.median(local_t),
                "remote": statistics.median(remote_t),
                "added": statistics.median(diffs),
                "throughput": sum(local_t) / sum(remote_t),
                "transport": statistics.median(transport_t),
            }
            rows.append((batch, med))
        remote.close()
        transport.close()
    echo.terminate()
    echo.wait()
    import shutil

    shutil.rmtree(work, ignore_errors=True)

    print(f"policy server overhead: tiny Qwen2.5-VL bundle, {args.side}² images, loopback, 1 thread each side")
    print(
        f"{'batch':>5} {'in-process ms/query':>20} {'server ms/query':>16} {'added ms':>9} {'throughput ×':>13} {'transport ms':>13}"
    )
    for batch, med in rows:
        print(
            f"{batch:>5} {med['local'] * 1000:>20.2f} {med['remote'] * 1000:>16.2f} {med['added'] * 1000:>9.2f} "
            f"{med['throughput']:>13.3f} {med['transport'] * 1000:>13.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
