"""Simulator-independent evaluation: plugin contract, chunk execution, workers, store, reports.

Nothing here imports a simulator, Lightning or the data layer; suites are plugins
(``vlm4vla.evaluators`` entry points), tested with `vlm4vla.evaluation.testing`.
"""

from vlm4vla.evaluation.chunking import MODES, ActionQueue, parse_modes, steps_per_query
from vlm4vla.evaluation.client import PolicyClient
from vlm4vla.evaluation.plugin import (
    ENTRY_POINT_GROUP,
    PROTOCOLS,
    EvaluationError,
    Evaluator,
    IncompatibleBundleError,
    SimulatorImportError,
    SuiteNotFoundError,
    available_suites,
    import_plugin_modules,
    load_evaluator,
    register_evaluator,
    unregister_evaluator,
)
from vlm4vla.evaluation.report import pick_best
from vlm4vla.evaluation.store import CellStore, StoreError

__all__ = [
    "ENTRY_POINT_GROUP",
    "MODES",
    "PROTOCOLS",
    "ActionQueue",
    "CellStore",
    "EvaluationError",
    "Evaluator",
    "IncompatibleBundleError",
    "PolicyClient",
    "SimulatorImportError",
    "StoreError",
    "SuiteNotFoundError",
    "available_suites",
    "import_plugin_modules",
    "load_evaluator",
    "parse_modes",
    "pick_best",
    "register_evaluator",
    "steps_per_query",
    "unregister_evaluator",
]
