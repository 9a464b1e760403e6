"""Test kit for evaluator plugins: `ScriptedPolicy`, `write_tiny_bundle`, `offline_hub` and
`EvaluatorContract`, the checks every plugin's test-suite inherits::

    class TestLiberoContract(EvaluatorContract):
        suite = "libero10"
        simulator_modules = ("libero", "robosuite", "mujoco")

        def hide_simulator(self, monkeypatch):
            monkeypatch.setattr(vlm4vla_libero.evaluator, "_libero_root", lambda: None)

Importing it needs pytest, but neither torch nor a simulator (tiny bundles import torch when built).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from vlm4vla.evaluation.client import PolicyClient
from vlm4vla.evaluation.plugin import (
    Evaluator,
    IncompatibleBundleError,
    SimulatorImportError,
    available_suites,
    load_evaluator,
)

# What evaluation code must never import: training-only layers (Lightning, 4–5 s per process).
FORBIDDEN_IMPORTS: tuple[str, ...] = (
    "lightning",
    "pytorch_lightning",
    "lightning_fabric",
    "vlm4vla.data",
    "vlm4vla.training",
)

HUB_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def offline_hub(environ: MutableMapping[str, str] | None = None) -> None:
    """Never reach the Hugging Face hub (tiny models are built in-process). Variables already set
    are kept; call it before transformers is imported, which reads them once."""
    environ = os.environ if environ is None else environ
    for key, value in HUB_OFFLINE.items():
        environ.setdefault(key, value)


def loaded_modules(modules: Sequence[str], prefixes: Sequence[str]) -> list[str]:
    """The entries of ``modules`` that are one of ``prefixes`` or a submodule of one."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def imports_in_fresh_interpreter(
    code: str, *, path: Sequence[str | os.PathLike[str]] = (), timeout: float = 120
) -> list[str]:
    """Run ``code`` in a new interpreter and return the names in its ``sys.modules`` afterwards.

    ``path``: extra ``sys.path`` entries (for modules that are not installed)."""
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    script = textwrap.dedent(code) + "\nimport json as _json, sys as _sys\nprint(_json.dumps(sorted(_sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if out.returncode != 0:
        raise AssertionError(f"the fresh interpreter failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------- policies and bundles
class ScriptedPolicy:
    """Stands in for the `PolicyClient` a plugin's ``run_episode`` gets: records every image,
    instruction and reset, and answers with scripted actions (cycled) or ``respond(image, instruction)``."""

    def __init__(self, actions: Sequence[Sequence[float]] | Callable[[np.ndarray, str], Any]) -> None:
        self._respond = actions if callable(actions) else None
        self.actions = [] if callable(actions) else [np.asarray(a, dtype=np.float32) for a in actions]
        if self._respond is None and not self.actions:
            raise ValueError("ScriptedPolicy needs at least one action or a respond function")
        self.images: list[np.ndarray] = []
        self.instructions: list[str] = []
        self.events: list[str] = []  # "act" / "reset", in call order

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        self.images.append(np.array(image))
        self.instructions.append(instruction)
        self.events.append("act")
        if self._respond is not None:
            return np.asarray(self._respond(image, instruction), dtype=np.float32)
        return self.actions[(len(self.images) - 1) % len(self.actions)]

    def reset(self) -> None:
        self.events.append("reset")

    @property
    def resets(self) -> int:
        return self.events.count("reset")


def write_tiny_bundle(
    directory: str | os.PathLike[str],
    *,
    gripper: str | None = None,
    seed: int = 0,
    chunk_size: int = 4,
    arm_scale: float = 0.9,
    backbone: str = "qwen2.5-vl",
) -> Path:
    """Save a random tiny policy bundle to ``directory`` (offline; ~0.2 s once torch is imported).

    ``gripper``: ``None`` — no normaliser (the policy returns a {0, 1} gripper); ``"signed"``
    (LIBERO, CALVIN) or ``"unit"`` (Bridge) — a q01/q99 normaliser fitted to random actions within
    ±``arm_scale`` whose gripper uses that convention, as the suite's datamodule would write it.
    """
    offline_hub()
    import torch

    from vlm4vla.backbones import get_backbone
    from vlm4vla.policy.action_space import GripperConvention, QuantileNormalizer
    from vlm4vla.policy.policy import VLAPolicy

    torch.manual_seed(seed)
    policy = VLAPolicy(get_backbone(backbone).tiny(), chunk_size=chunk_size)
    if gripper is not None:
        convention = GripperConvention(gripper)
        rng = np.random.default_rng(seed)
        actions = rng.uniform(-arm_scale, arm_scale, size=(256, 7))
        closed = rng.random(256) > 0.5
        actions[:, 6] = np.where(closed, 1.0, -1.0) if gripper == "signed" else closed.astype(np.float64)
        policy.normalizer = QuantileNormalizer.from_actions(actions, gripper=convention)
    policy.save_pretrained(directory)
    return Path(directory)


def torchrun_eval_command(nproc: int, args: Sequence[str]) -> list[str]:
    """``torchrun --nproc-per-node N --no-python vlm4vla-eval ARGS`` on a free loopback port, with
    this interpreter's torchrun and vlm4vla-eval (for sharding tests of a plugin)."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    return [
        str(bin_dir / "torchrun"), "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
        "--master-port", str(port), "--no-python", str(bin_dir / "vlm4vla-eval"), *args,
    ]  # fmt: skip


def launch_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any launcher's rank variables (a clean torchrun start)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    for name in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_STEP_NUM_TASKS",
        "SLURM_LOCALID",
    ):
        env.pop(name, None)
    return env


def stored_records(
    out: str | os.PathLike, ignore: Sequence[str] = ("seconds",)
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Every record in every shard file under ``out`` by (checkpoint, mode, task, episode id),
    without the ``ignore`` fields; an episode stored twice is an `AssertionError`."""
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for path in sorted(Path(out).glob("*/*/episodes*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            key = (record["checkpoint"], record["mode"], record["task"], json.dumps(record["episode_id"]))
            assert key not in found, f"{key} stored twice under {out}"
            found[key] = {k: v for k, v in record.items() if k not in ignore}
    return found


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServedBundle:
    """``vlm4vla serve BUNDLE`` in a subprocess on a fixed loopback port (so a restart keeps the
    URL), for tests of evaluation through a policy server::

        with ServedBundle(bundle, "--max-batch", "1") as server:
            main(["--suite", "libero10", "--policy-server", server.url, ...])
            server.kill(); server.start()     # the client reconnects to the same URL
    """

    def __init__(self, bundle: str | os.PathLike, *args: str, port: int | None = None, log: Path | None = None) -> None:
        self.bundle = Path(bundle)
        self.args = list(args)
        self.port = port or free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 120.0) -> ServedBundle:
        import shutil
        import tempfile

        from vlm4vla.evaluation.remote import wait_until_listening

        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"vlm4vla serve {self.bundle} is already running (pid {self.proc.pid})")
        ready_dir = Path(tempfile.mkdtemp(prefix="vlm4vla-served-"))
        ready = ready_dir / "ready.json"
        argv = [sys.executable, "-m", "vlm4vla.cli.main", "serve", str(self.bundle), "--port", str(self.port)]
        argv += ["--ready-file", str(ready), "--device", "cpu", *self.args]
        env = {**launch_environment(), **HUB_OFFLINE}
        if self.log is not None:
            with open(self.log, "ab") as log:  # the child keeps its own descriptor
                self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
        else:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        self.starts += 1
        try:
            wait_until_listening(self.proc, ready, what=f"vlm4vla serve {self.bundle}", timeout=timeout, log=self.log)
        finally:
            shutil.rmtree(ready_dir, ignore_errors=True)  # the server no longer needs it once it is listening
        return self

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, as a crashed or pre-empted server."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        from vlm4vla.evaluation.remote import stop_process

        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self) -> ServedBundle:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _contract_query(image: np.ndarray, instruction: str) -> np.ndarray:
    """A deterministic chunk of 4 small actions depending on the image only; gripper 1."""
    phase = float(np.asarray(image, dtype=np.float64).mean()) / 255.0
    chunk = np.zeros((4, 7), dtype=np.float32)
    chunk[:, 0] = 0.01 * np.sin(np.arange(4) + 10.0 * phase)
    chunk[:, 6] = 1.0
    return chunk


# -------------------------------------------------------------------- the contract
# Assertions carry their own messages: pytest does not rewrite asserts in an installed module.
def _assert_one_sentence_with(message: str, hint: str) -> None:
    assert "\n" not in message, f"the message must be one line: {message!r}"
    assert hint in message, f"the message must include install_hint {hint!r}: {message!r}"


class EvaluatorContract:
    """What every evaluator plugin must do; a plugin's tests subclass it as ``Test…Contract``.

    Set ``suite``; list the simulator's top-level modules in ``simulator_modules``; override
    `hide_simulator` to make the simulator look uninstalled; override `fake_env` to return an
    env double for a spec, which enables the rollout checks.
    """

    suite: ClassVar[str]
    """The suite's name: its ``vlm4vla.evaluators`` entry point (or in-process registration)."""
    simulator_modules: ClassVar[tuple[str, ...]] = ()
    """Modules the plugin may import only when an env is built (never at import time)."""
    plugin_module: ClassVar[str | None] = None
    """Imported in a fresh interpreter before the suite is loaded; default: the entry point's module."""
    import_path: ClassVar[tuple[str, ...]] = ()
    """Extra ``sys.path`` entries of that interpreter (for a plugin that is not installed)."""

    # ---------------------------------------------------------------- hooks
    def make_evaluator(self) -> Evaluator:
        return load_evaluator(self.suite)

    def hide_simulator(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make the simulator look uninstalled (e.g. ``monkeypatch.setattr`` the plugin's probe)."""
        pytest.fail(f"{type(self).__name__} must override hide_simulator(monkeypatch)")

    def fake_env(self, spec: Mapping[str, Any]) -> Any | None:
        """An env double for ``spec`` that ``run_episode`` accepts and that never succeeds; None: no rollout checks."""
        return None

    def first_spec(self, evaluator: Evaluator) -> dict[str, Any]:
        task = evaluator.tasks()[0]
        return {**evaluator.episodes(task, episodes_per_task=1)[0], "task": task}

    # ---------------------------------------------------------------- discovery and import
    def test_suite_is_discovered(self) -> None:
        assert self.suite in available_suites(), f"suite {self.suite!r} is neither an entry point nor registered"
        evaluator = self.make_evaluator()
        assert isinstance(evaluator, Evaluator), f"{type(evaluator).__name__} is not an Evaluator"
        assert evaluator.name == self.suite, f"suite {self.suite!r} loads an evaluator named {evaluator.name!r}"
        assert isinstance(evaluator.headline_metric, str) and evaluator.headline_metric, "headline_metric: a name"
        assert evaluator.install_hint, "install_hint: say how to install the simulator"

    def test_importing_the_plugin_loads_no_simulator_and_no_training_code(self) -> None:
        module = self.plugin_module or available_suites()[self.suite].split(":")[0]
        loaded = imports_in_fresh_interpreter(
            f"""
            import {module}
            from vlm4vla.evaluation.plugin import load_evaluator
            evaluator = load_evaluator({self.suite!r})
            for task in evaluator.tasks():
                evaluator.episodes(task)
            """,
            path=self.import_path,
        )
        found = loaded_modules(loaded, (*self.simulator_modules, *FORBIDDEN_IMPORTS))
        assert not found, f"importing {module} and listing its episodes loaded {found}"

    def test_evaluator_pickles_for_the_workers(self) -> None:
        evaluator = self.make_evaluator()
        clone = pickle.loads(pickle.dumps(evaluator))
        assert type(clone) is type(evaluator) and clone.tasks() == evaluator.tasks(), "pickling changed the evaluator"

    # ---------------------------------------------------------------- episodes
    def test_tasks_are_unique_names(self) -> None:
        tasks = self.make_evaluator().tasks()
        assert tasks and all(isinstance(t, str) and t for t in tasks), f"tasks() must be non-empty names: {tasks!r}"
        assert len(set(tasks)) == len(tasks), f"tasks() has duplicates: {tasks!r}"

    def test_episodes_are_deterministic_json_specs_with_unique_ids(self) -> None:
        first, second = self.make_evaluator(), self.make_evaluator()
        for task in first.tasks():
            specs = first.episodes(task)
            assert specs, f"task {task!r} has no episodes"
            assert second.episodes(task) == specs == first.episodes(task), f"task {task!r}: episodes() changed"
            assert json.loads(json.dumps(specs)) == specs, "episode specs must be JSON values"
            ids = [s["episode_id"] for s in specs]
            assert len(set(ids)) == len(ids), f"task {task!r}: duplicate episode ids"
            assert first.episodes(task, episodes_per_task=1) == specs[:1], "episodes_per_task=K: the first K"
            assert first.episodes(task, episodes_per_task=len(specs) + 3) == specs, "a cap must not extend the protocol"

    # ---------------------------------------------------------------- bundles
    @pytest.fixture(scope="class")
    @classmethod
    def bundles(cls, tmp_path_factory: pytest.TempPathFactory) -> dict[str | None, Path]:
        """Tiny bundles with each gripper convention and without a normaliser."""
        root = tmp_path_factory.mktemp("contract_bundles")
        return {kind: write_tiny_bundle(root / str(kind), gripper=kind) for kind in ("signed", "unit", None)}

    def test_check_bundle_accepts_its_gripper_convention_and_refuses_the_other(
        self, bundles: dict[str | None, Path]
    ) -> None:
        from vlm4vla.policy.bundle import check_bundle_files

        evaluator = self.make_evaluator()
        evaluator.check_bundle(check_bundle_files(bundles[None]))  # {0, 1} gripper, mapped by the plugin
        for kind in ("signed", "unit"):
            config = check_bundle_files(bundles[kind])
            if evaluator.gripper_convention in (None, kind):
                evaluator.check_bundle(config)
                continue
            with pytest.raises(IncompatibleBundleError) as err:
                evaluator.check_bundle(config)
            message = str(err.value)
            assert "\n" not in message and repr(kind) in message, f"the refusal must name {kind!r}: {message!r}"
            assert evaluator.gripper_hint and evaluator.gripper_hint in message, "gripper_hint: say what the env takes"

    def test_check_bundle_refuses_other_action_sizes_and_chunks(self, bundles: dict[str | None, Path]) -> None:
        from vlm4vla.policy.bundle import check_bundle_files

        evaluator = self.make_evaluator()
        config = dict(check_bundle_files(bundles[None]))
        with pytest.raises(IncompatibleBundleError, match=f"{evaluator.action_dim + 1}-d"):
            evaluator.check_bundle({**config, "action_dim": evaluator.action_dim + 1})
        with pytest.raises(IncompatibleBundleError):
            evaluator.check_bundle({**config, "chunk_size": 0})
        if evaluator.max_chunk_size is not None:
            with pytest.raises(IncompatibleBundleError):
                evaluator.check_bundle({**config, "chunk_size": evaluator.max_chunk_size + 1})

    # ---------------------------------------------------------------- missing simulator
    def test_missing_simulator_is_one_sentence_saying_how_to_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hide_simulator(monkeypatch)
        evaluator = self.make_evaluator()
        with pytest.raises(SimulatorImportError) as err:
            evaluator.check_available()
        _assert_one_sentence_with(str(err.value), evaluator.install_hint)
        with pytest.raises(SimulatorImportError) as err:  # the worker's own check, e.g. without check_available
            evaluator.make_env(self.first_spec(evaluator), seed=0)
        _assert_one_sentence_with(str(err.value), evaluator.install_hint)

    def test_cli_without_the_simulator_exits_with_one_line(
        self,
        bundles: dict[str | None, Path],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        from vlm4vla.cli.evaluate import main

        self.hide_simulator(monkeypatch)
        out = tmp_path / "out"
        code = main(["--suite", self.suite, "--ckpt", str(bundles[None]), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith(f"vlm4vla-eval: error: suite {self.suite!r}: simulator unavailable: "), err
        assert self.make_evaluator().install_hint in err, err
        assert not list(out.rglob("episodes.jsonl")), "episodes ran without a simulator"

    # ---------------------------------------------------------------- rollout (with an env double)
    def test_rollout_through_the_policy_client_is_a_deterministic_json_record(self) -> None:
        evaluator = self.make_evaluator()
        spec = self.first_spec(evaluator)
        envs = [self.fake_env(spec), self.fake_env(spec)]
        if envs[0] is None:
            pytest.skip(f"{type(self).__name__} has no fake_env: rollout checks need an env double")
        records, clients = [], []
        for env in envs:
            client = PolicyClient(_contract_query, mode="full", chunk_size=4)
            try:
                records.append(evaluator.run_episode(env, client, spec, max_steps=6))
            finally:
                evaluator.close_env(env)
            clients.append(client)
        record = records[0]
        assert isinstance(record["success"], bool) and isinstance(record["steps"], int), f"record: {record!r}"
        assert record["success"] is False and record["steps"] == 6, (
            f"max_steps=6 and the double never succeeds: {record!r}"
        )
        assert clients[0].steps == 6 and clients[0].queries >= math.ceil(6 / 4), "one policy.act per env step"
        assert json.loads(json.dumps(record)) == record, f"records must be JSON values: {record!r}"
        assert records[1] == record, f"the same env and policy gave different records: {records!r}"
        summary = evaluator.summarize([{**record, "task": spec["task"]}])
        assert summary["episodes"] == 1 and math.isfinite(summary[evaluator.headline_metric]), f"summary: {summary!r}"


__all__ = [
    "launch_environment",
    "stored_records",
    "torchrun_eval_command",
    "FORBIDDEN_IMPORTS",
    "HUB_OFFLINE",
    "EvaluatorContract",
    "ScriptedPolicy",
    "imports_in_fresh_interpreter",
    "loaded_modules",
    "offline_hub",
    "write_tiny_bundle",
]
