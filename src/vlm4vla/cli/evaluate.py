"""``vlm4vla-eval``: evaluate policy bundles on a benchmark suite (an installed evaluator plugin).

    vlm4vla-eval --list-suites
    vlm4vla-eval --suite libero10 --ckpt runs/x            # every checkpoints/step=* bundle
    vlm4vla-eval --suite libero10 --ckpt runs/x/checkpoints/step=010000 --modes full \\
                 --workers 2 --out results/x --episodes-per-task 2 --max-steps 50 --video 1

Results go to ``OUT/<checkpoint>/<mode>/episodes.jsonl`` as each episode finishes; re-running
the same command resumes (finished episodes are skipped). Reports: ``OUT/summary.{json,csv,md}``,
``OUT/best.json``, ``OUT/curves.png``, rewritten only when every planned episode is on disk.
One run at a time per OUT (an OS lock on ``OUT/.vlm4vla-eval.lock``); a second is refused.

Suite options are the plugin's constructor arguments (``--suite-option camera_size=256``,
repeatable; values are YAML scalars); ``--protocol standard|released`` picks the benchmark's
canonical loop or the released VLM4VLA evaluation's. Both are recorded in every cell's
``meta.json`` (with the simulator versions) and a resume with other values is refused.

Policy servers: ``--policy-server ws://HOST:PORT[,…]`` evaluates the bundles that ``vlm4vla
serve`` serves (the simulator may then run in its own Python environment, and this process
imports no torch); ``--serve --ckpt …`` starts one server per checkpoint itself. Records,
resume and reports are those of an in-process run.

Sharding: started by ``torchrun`` or ``srun`` (``torchrun --nproc-per-node 8 --no-python
vlm4vla-eval …``) every rank takes its share of the episodes, binds its local rank's GPU and
appends to its own shard files; rank 0 writes the reports when all have finished. ``--shard
INDEX/COUNT`` runs one independent shard (job arrays); ``vlm4vla-eval --summarize OUT`` rebuilds
the reports from whatever shards exist.

Extra plugin modules (which call `vlm4vla.evaluation.register_evaluator` on import) can be
loaded with ``--plugin-module MOD`` or ``VLM4VLA_EVAL_PLUGINS=mod1,mod2``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from vlm4vla.cli.errors import VLM4VLAError, report, report_message

PROG = "vlm4vla-eval"
PLUGINS_ENV = "VLM4VLA_EVAL_PLUGINS"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Evaluate VLA policy bundles on a benchmark suite.")
    p.add_argument("--list-suites", action="store_true", help="list the installed evaluator plugins and exit")
    p.add_argument("--suite", help="suite name (see --list-suites)")
    p.add_argument("--ckpt", type=Path, help="a policy bundle, or a run directory (all checkpoints/step=* bundles)")
    p.add_argument(
        "--policy-server",
        metavar="URL[,URL...]",
        help="evaluate the bundles served by `vlm4vla serve` at ws://HOST:PORT instead of --ckpt (servers of one "
        "bundle are replicas; of several bundles, the checkpoints of the sweep); this process imports no torch",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="with --ckpt: start `vlm4vla serve` for each checkpoint in turn and evaluate through it",
    )
    p.add_argument(
        "--serve-command",
        default=None,
        metavar="CMD",
        help="the server command --serve runs, e.g. '/opt/gpu-env/bin/vlm4vla serve' (default: this Python's)",
    )
    p.add_argument(
        "--token",
        default=None,
        help="the policy server's shared token (default $VLM4VLA_SERVER_TOKEN)",
    )
    p.add_argument(
        "--server-retry",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long a server is waited for (at start, and after a dropped connection) before the sweep "
        "stops (default 60)",
    )
    p.add_argument(
        "--summarize",
        type=Path,
        metavar="OUT",
        help="rebuild OUT's reports from the episodes stored so far (all shards) and exit",
    )
    p.add_argument(
        "--shard",
        metavar="INDEX/COUNT",
        help="run one independent shard of the sweep, e.g. ${SLURM_ARRAY_TASK_ID}/8 (torchrun/srun need none)",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=24 * 60,
        metavar="MINUTES",
        help="how long a rank waits for the others at the final barrier (torchrun/srun; default 1440)",
    )
    p.add_argument(
        "--modes", default=None, help="chunk modes, comma-separated (default: the protocol's; standard: all three)"
    )
    p.add_argument(
        "--protocol",
        choices=("standard", "released"),
        default=None,
        help="standard (default): the benchmark's own loop; released: the released VLM4VLA evaluation's",
    )
    p.add_argument(
        "--suite-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a constructor option of the suite's plugin, e.g. camera_size=256 (repeatable; see the plugin README)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="policy device(s), one replica each: auto (every visible GPU, or the local rank's under torchrun/srun; "
        "else the CPU), cpu, cuda, cuda:N, or a list cuda:0,cuda:1",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="the VLM's precision (default float32; with --policy-server the server's; the head stays fp32; "
        "recorded, a resume with another is refused)",
    )
    p.add_argument(
        "--allow-unnormalized",
        action="store_true",
        help="evaluate bundles without action statistics (their actions are not in the env's units)",
    )
    p.add_argument("--workers", type=_positive, default=1, help="env worker processes (default 1)")
    p.add_argument(
        "--max-batch",
        type=_positive,
        default=None,
        help="largest batch of observations per policy forward (default: --workers)",
    )
    p.add_argument("--out", type=Path, default=Path("results"), help="results directory (default ./results)")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the suite's tasks")
    p.add_argument("--episodes-per-task", type=_positive, default=None, help="first K episodes of each task")
    p.add_argument("--max-steps", type=_positive, default=None, help="cap policy steps per (sub)task (smoke runs)")
    p.add_argument("--video", type=_non_negative, default=0, metavar="K", help="MP4 of the first K episodes per task")
    p.add_argument("--seed", type=int, default=0, help="base seed of the episodes (default 0)")
    p.add_argument(
        "--plugin-module",
        action="append",
        default=[],
        metavar="MODULE",
        help=f"import MODULE to register extra evaluators (repeatable; also ${PLUGINS_ENV})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar and no tables")
    return p  # fmt: skip


def _plugin_modules(args: argparse.Namespace) -> list[str]:
    env = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    return env + list(args.plugin_module)


def parse_suite_options(items: Sequence[str], protocol: str | None = None) -> dict[str, object]:
    """``["camera_size=256", "center_crop=false"]`` → ``{"camera_size": 256, "center_crop": False}``
    (values as YAML scalars: numbers, true/false, null, strings); ``--protocol`` joins them."""
    import yaml

    from vlm4vla.errors import ConfigError

    options: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"--suite-option {item!r}: expected KEY=VALUE, e.g. camera_size=256")
        if key in options:
            raise ConfigError(f"--suite-option: {key} is given twice")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        if isinstance(value, (dict, list)):
            value = text  # only scalars: a plugin option is one value
        options[key] = value
    if protocol is not None:
        if "protocol" in options and options["protocol"] != protocol:
            raise ConfigError(f"--protocol {protocol} contradicts --suite-option protocol={options['protocol']}")
        options["protocol"] = protocol
    return options


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vlm4vla.evaluation.plugin import (
        SimulatorImportError,
        available_suites,
        import_plugin_modules,
        load_evaluator,
    )

    try:
        import_plugin_modules(_plugin_modules(args))
        if args.list_suites:
            suites = available_suites()
            if not suites:
                print("no evaluator plugins installed; e.g. pip install ./evaluators/libero")
            for name, source in suites.items():
                print(f"{name}\t{source}")
            return 0
        if args.summarize is not None:
            return _summarize(args)
        if not args.suite or (args.ckpt is None) == (args.policy_server is None):
            return report_message(
                PROG, "--suite and one of --ckpt or --policy-server are required (or --list-suites, --summarize OUT)"
            )
        options = parse_suite_options(args.suite_option, args.protocol)
        return _evaluate(args, load_evaluator(args.suite, options))
    except SimulatorImportError as err:
        return report_message(PROG, f"suite {args.suite!r}: simulator unavailable: {err}")
    except VLM4VLAError as err:
        return report(PROG, err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished episodes are saved, re-run the same command to resume", file=sys.stderr)
        return 130


def _evaluate(args: argparse.Namespace, evaluator: object) -> int:
    from contextlib import ExitStack

    from vlm4vla.evaluation.chunking import parse_modes
    from vlm4vla.evaluation.distributed import detect_launch

    launch = detect_launch(shard=args.shard)
    modes = parse_modes(args.modes) if args.modes is not None else None
    if args.serve and args.ckpt is None:
        return report_message(PROG, "--serve starts a server per --ckpt bundle; give --ckpt (or use --policy-server)")
    evaluator.check_available()  # a missing simulator is told before any bundle is read
    with ExitStack() as stack:
        checkpoints, devices, dtype, loader = _policies(args, launch, stack)
        return _sweep(args, evaluator, launch, modes, checkpoints, devices, dtype, loader)


def _policies(args: argparse.Namespace, launch: object, stack: object) -> tuple[list, list[str], str, object]:
    """The checkpoints, the recorded device(s) and dtype, and the policy loader of the sweep:
    bundles loaded in this process, servers given by URL, or servers started per checkpoint."""
    from vlm4vla.evaluation.sweep import resolve_checkpoints

    if args.policy_server is not None:
        from vlm4vla.evaluation.remote import RemotePolicyError, connect_servers, parse_server_urls

        remote = connect_servers(
            parse_server_urls(args.policy_server),
            token=args.token,
            connect_timeout=args.server_retry,
            retry_seconds=args.server_retry,
        )
        stack.callback(remote.close)
        if args.dtype is not None and args.dtype != remote.dtype:
            raise RemotePolicyError(f"--dtype {args.dtype}: the server runs the policy in {remote.dtype}")
        return remote.checkpoints, [remote.device], remote.dtype, remote.loader
    checkpoints = resolve_checkpoints(args.ckpt)
    dtype = args.dtype or "float32"
    if args.serve:
        import shlex

        from vlm4vla.evaluation.remote import ServedCheckpoints

        served = stack.enter_context(
            ServedCheckpoints(
                shlex.split(args.serve_command) if args.serve_command else None,
                device=args.device,
                dtype=dtype,
                max_batch=args.max_batch,
                token=args.token,
                retry_seconds=args.server_retry,
            )
        )
        device = served.start(checkpoints[0])  # fails fast, and tells the device the results record
        return checkpoints, [device], dtype, served.loader
    from vlm4vla.evaluation.devices import resolve_devices

    devices = resolve_devices(args.device, local_rank=launch.local_rank if launch.grouped else None)
    return checkpoints, devices, dtype, None


def _sweep(args, evaluator, launch, modes, checkpoints, devices, dtype, loader) -> int:  # noqa: ANN001
    from vlm4vla.evaluation.distributed import ProcessGroup
    from vlm4vla.evaluation.sweep import SweepSettings, run_sweep

    settings = SweepSettings(
        modes=modes,
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
        episodes_per_task=args.episodes_per_task,
        max_steps=args.max_steps,
        seed=args.seed,
        workers=args.workers,
        max_batch=args.max_batch,
        video=args.video,
        allow_unnormalized=args.allow_unnormalized,
        device=devices[0],
        devices=devices,
        dtype=dtype,
        suite_options=parse_suite_options(args.suite_option, args.protocol),
    )
    quiet = args.quiet or launch.rank != 0
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with ProcessGroup(launch, timeout_minutes=args.dist_timeout) as group:
            if quiet:
                result = run_sweep(
                    evaluator, checkpoints, args.out, settings, policy_loader=loader, launch=launch, group=group
                )
            else:
                result = _run_with_progress(evaluator, checkpoints, args.out, settings, launch, group, loader)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if launch.world_size > 1:  # one status line per rank, whatever --quiet says
        if result.reported:
            then = f"reports in {args.out}"
        elif launch.grouped:
            then = "rank 0 writes the reports"
        else:
            then = f"other shards are still missing; run {PROG} --summarize {args.out} when they have finished"
        print(f"{PROG}: {launch.describe()}: {result.ran} episodes run, {result.skipped} already done; {then}")
    if not result.reported:
        return 0
    if not quiet or (launch.source == "shard" and not args.quiet):
        _print_results(evaluator.name, evaluator.headline_metric, result)
        print(
            f"{result.ran} episodes run, {result.skipped} already done; reports in {args.out} "
            "(summary.md, summary.json, summary.csv, best.json, curves.png)"
        )
    return 0


def _print_results(suite: str, metric: str, result: object) -> None:
    from rich.console import Console

    from vlm4vla.evaluation.report import render_table, render_tasks

    console = Console()
    console.print(render_table(result.cells, result.best, metric, suite))
    if result.best is not None:
        best_cell = next(
            c for c in result.cells if c["checkpoint"] == result.best["checkpoint"] and c["mode"] == result.best["mode"]
        )
        console.print(render_tasks(best_cell, metric))


def _summarize(args: argparse.Namespace) -> int:
    from vlm4vla.evaluation.sweep import summarize_results

    result = summarize_results(args.summarize)
    if not args.quiet and result.cells:
        _print_results(result.suite, result.cells[0]["headline_metric"], result)
    incomplete = [
        f"{c['checkpoint']}/{c['mode']} ({c['episodes']}/{c['expected_episodes']})"
        for c in result.cells
        if not c["complete"]
    ]
    state = (
        f"incomplete cells: {', '.join(incomplete)}; the best is picked among the complete ones"
        if incomplete
        else "every cell is complete"
    )
    print(f"{PROG}: reports rebuilt in {args.summarize} from {result.ran} stored episodes; {state}")
    return 0


def _run_with_progress(evaluator, checkpoints, out, settings, launch, group, loader):  # noqa: ANN001, ANN202
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from vlm4vla.evaluation.sweep import run_sweep

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=False,
    ) as progress:
        bar = progress.add_task(f"{evaluator.name} episodes", total=None, rate="")
        successes = [0, 0]

        def on_plan(to_run: int, done: int) -> None:
            progress.update(bar, total=to_run)

        def on_record(record: dict) -> None:
            successes[0] += bool(record.get("success"))
            successes[1] += 1
            progress.update(bar, advance=1, rate=f"success {successes[0]}/{successes[1]}")

        return run_sweep(
            evaluator,
            checkpoints,
            out,
            settings,
            policy_loader=loader,
            on_plan=on_plan,
            on_record=on_record,
            launch=launch,
            group=group,
        )


if __name__ == "__main__":
    sys.exit(main())
