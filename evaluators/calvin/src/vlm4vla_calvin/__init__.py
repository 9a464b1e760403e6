"""CALVIN ABC→D evaluator plugin of vlm4vla (entry point ``calvin`` in ``vlm4vla.evaluators``).

Importing this package does not import calvin_env; see `vlm4vla_calvin.evaluator`.
"""

from vlm4vla_calvin.env import BENCHMARK_COMMIT, INSTALL_HINT
from vlm4vla_calvin.evaluator import (
    EP_LEN,
    GROUP,
    CalvinEpisode,
    CalvinEvaluator,
    average_length,
    chain_success_rates,
    per_subtask,
    static_image,
    to_env_action,
)
from vlm4vla_calvin.sequences import NUM_SEQUENCES, SEQUENCE_LENGTH, CalvinEvalSet, CalvinSequence, load_eval_set

__all__ = [
    "BENCHMARK_COMMIT",
    "EP_LEN",
    "GROUP",
    "INSTALL_HINT",
    "NUM_SEQUENCES",
    "SEQUENCE_LENGTH",
    "CalvinEpisode",
    "CalvinEvalSet",
    "CalvinEvaluator",
    "CalvinSequence",
    "average_length",
    "chain_success_rates",
    "load_eval_set",
    "per_subtask",
    "static_image",
    "to_env_action",
]
