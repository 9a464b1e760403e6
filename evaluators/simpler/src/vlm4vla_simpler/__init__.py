"""SimplerEnv-Bridge evaluator plugin of vlm4vla (entry point ``simpler_bridge`` in ``vlm4vla.evaluators``).

Importing this package does not import a simulator; see `vlm4vla_simpler.evaluator`.
"""

from vlm4vla_simpler.evaluator import (
    BRIDGE_TASKS,
    EPISODES_PER_TASK,
    IMAGE_SIZE,
    MANISKILL3_ENV_IDS,
    MAX_STEPS,
    SimplerBridgeEvaluator,
    SimplerEpisode,
    ensure_assets,
    euler_to_axis_angle,
    gripper_to_env,
    resolve_backend,
    to_env_action,
    to_policy_image,
)

__all__ = [
    "BRIDGE_TASKS",
    "EPISODES_PER_TASK",
    "IMAGE_SIZE",
    "MANISKILL3_ENV_IDS",
    "MAX_STEPS",
    "SimplerBridgeEvaluator",
    "SimplerEpisode",
    "ensure_assets",
    "euler_to_axis_angle",
    "gripper_to_env",
    "resolve_backend",
    "to_env_action",
    "to_policy_image",
]
