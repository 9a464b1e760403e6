"""LIBERO-10 evaluator plugin of vlm4vla (entry point ``libero10`` in ``vlm4vla.evaluators``).

Importing this package does not import the simulator; see `vlm4vla_libero.evaluator`.
"""

from vlm4vla_libero.evaluator import (
    DUMMY_ACTION,
    EPISODES_PER_TASK,
    LIBERO10_TASKS,
    MAX_STEPS,
    WAIT_STEPS,
    LiberoEpisode,
    LiberoEvaluator,
    ensure_libero_config,
    import_libero,
    to_env_action,
)

__all__ = [
    "DUMMY_ACTION",
    "EPISODES_PER_TASK",
    "LIBERO10_TASKS",
    "MAX_STEPS",
    "WAIT_STEPS",
    "LiberoEpisode",
    "LiberoEvaluator",
    "ensure_libero_config",
    "import_libero",
    "to_env_action",
]
