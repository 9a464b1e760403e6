"""``vlm4vla serve BUNDLE``: serve a policy bundle's ``predict_chunk`` over WebSocket.

    vlm4vla serve runs/x/checkpoints/step=010000 --device cuda:0 --dtype bfloat16 --port 8000
    vlm4vla-eval --suite calvin --policy-server ws://127.0.0.1:8000    # in the simulator's env

Binds 127.0.0.1 unless ``--host`` says otherwise (then warns). ``--token`` (or
``$VLM4VLA_SERVER_TOKEN``) makes clients authenticate. ``--ready-file F`` writes
``{"url", "port", "pid", "checkpoint"}`` to F once listening (with ``--port 0``: a free port).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="a policy bundle directory (e.g. runs/x/checkpoints/step=010000)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one, see --ready-file)")
    parser.add_argument(
        "--device",
        default="auto",
        help="policy device: auto (the first GPU, or the local rank's under torchrun/srun; else the CPU), cpu, cuda:N",
    )
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="the VLM's precision"
    )
    parser.add_argument("--max-batch", type=int, default=8, help="largest forward in samples (default 8)")
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=2.0,
        help="how long a request waits for others to join its batch (default 2 ms)",
    )
    parser.add_argument("--token", default=None, help="shared token clients must send (default $VLM4VLA_SERVER_TOKEN)")
    parser.add_argument(
        "--max-message-mb", type=float, default=16.0, help="largest message accepted, in MiB (default 16)"
    )
    parser.add_argument(
        "--max-image-side", type=int, default=1024, help="largest image height or width accepted (default 1024)"
    )
    parser.add_argument("--ready-file", type=Path, default=None, help="write the URL here (JSON) once listening")


def run(args: argparse.Namespace) -> int:
    from vlm4vla_client.protocol import TOKEN_ENV

    from vlm4vla.errors import ConfigError
    from vlm4vla.evaluation.devices import check_dtype, resolve_devices
    from vlm4vla.evaluation.distributed import detect_launch
    from vlm4vla.evaluation.sweep import load_policy, resolve_checkpoints
    from vlm4vla.files import write_atomic
    from vlm4vla.serving.metadata import bundle_metadata
    from vlm4vla.serving.server import PolicyServer, warn_if_exposed

    if args.max_batch < 1:
        raise ConfigError(f"--max-batch: must be ≥ 1, got {args.max_batch}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: must be 0..65535, got {args.port}")
    if args.ready_file is not None and args.ready_file.exists():
        raise ConfigError(f"--ready-file {args.ready_file}: already exists (a server is running, or left it behind)")
    check_dtype(args.dtype)
    checkpoints = resolve_checkpoints(args.bundle)
    if len(checkpoints) != 1:
        raise ConfigError(
            f"{args.bundle}: {len(checkpoints)} bundles; a server serves one, e.g. {checkpoints[-1].path}"
        )
    (ckpt,) = checkpoints
    if "," in args.device:
        raise ConfigError(f"--device {args.device}: a server runs one replica; start one server per device")
    # Started by a torchrun/srun rank (vlm4vla-eval --serve): "auto" is that rank's GPU.
    launch = detect_launch()
    device = resolve_devices(args.device, local_rank=launch.local_rank if launch.grouped else None)[0]
    predict = load_policy(ckpt, device=device, dtype=args.dtype)
    metadata = bundle_metadata(ckpt.name, ckpt.path, ckpt.step, ckpt.config, device=device, dtype=args.dtype)
    warn_if_exposed(args.host)
    server = PolicyServer(
        predict,
        metadata,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        token=args.token if args.token is not None else os.environ.get(TOKEN_ENV),
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        max_image_side=args.max_image_side,
    )

    def listening(srv: PolicyServer) -> None:
        print(
            f"vlm4vla serve: {ckpt.name} (chunk {metadata['chunk_size']}, {device}, {args.dtype}) on {srv.url}",
            file=sys.stderr,
            flush=True,
        )
        if args.ready_file is not None:
            info = {"url": srv.url, "port": srv.port, "pid": os.getpid(), "checkpoint": ckpt.name}
            write_atomic(args.ready_file, json.dumps(info) + "\n")

    signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
    try:
        server.serve_forever(listening)
    except KeyboardInterrupt:
        pass
    except OSError as err:  # the port is taken, the address is not this machine's
        raise ConfigError(f"--host {args.host} --port {args.port}: cannot listen ({err.strerror or err})") from None
    finally:
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)
    return 0
