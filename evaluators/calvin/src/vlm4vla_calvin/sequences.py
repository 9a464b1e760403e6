"""The fixed CALVIN evaluation set, shipped as package data (``data/calvin_eval_sequences.json``).

1000 sequences of 5 chained subtasks, exactly as the benchmark's own generator
(``calvin_agent.evaluation.multistep_sequences.get_sequences(1000)``) produces them, each with
the physical initial state the benchmark derives from its symbolic state: the fixed 15-d
``robot_obs`` shared by every sequence and the sequence's 24-d ``scene_obs``. One instruction
per subtask (the first entry of the validation annotations, as in ``evaluate_policy.py``).

Loading it reads only the JSON file; nothing here needs calvin_env.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

DATA_FILE = "calvin_eval_sequences.json"
NUM_SEQUENCES = 1000
SEQUENCE_LENGTH = 5
ROBOT_OBS_DIM = 15
SCENE_OBS_DIM = 24


@dataclass(frozen=True)
class CalvinSequence:
    """One evaluation sequence: its symbolic initial state, 5 subtasks and physical scene state."""

    index: int
    initial_state: Mapping[str, Any]
    subtasks: tuple[str, ...]
    scene_obs: tuple[float, ...]


@dataclass(frozen=True)
class CalvinEvalSet:
    """The whole evaluation set: sequences in benchmark order, the shared robot state, instructions."""

    sequences: tuple[CalvinSequence, ...]
    robot_obs: tuple[float, ...]
    instructions: Mapping[str, str]

    def instruction(self, subtask: str) -> str:
        try:
            return self.instructions[subtask]
        except KeyError:
            raise KeyError(f"no CALVIN instruction for subtask {subtask!r}") from None


def parse_eval_set(data: Mapping[str, Any]) -> CalvinEvalSet:
    """Validate and freeze the JSON content (raises ValueError on any inconsistency)."""
    robot_obs = tuple(float(v) for v in data["robot_obs"])
    if len(robot_obs) != ROBOT_OBS_DIM:
        raise ValueError(f"robot_obs has {len(robot_obs)} values, expected {ROBOT_OBS_DIM}")
    instructions = {str(k): str(v) for k, v in data["instructions"].items()}
    sequences = []
    for index, entry in enumerate(data["sequences"]):
        subtasks = tuple(str(t) for t in entry["tasks"])
        scene_obs = tuple(float(v) for v in entry["scene_obs"])
        if len(subtasks) != SEQUENCE_LENGTH or len(set(subtasks)) != SEQUENCE_LENGTH:
            raise ValueError(f"sequence {index}: expected {SEQUENCE_LENGTH} distinct subtasks, got {list(subtasks)}")
        if len(scene_obs) != SCENE_OBS_DIM:
            raise ValueError(f"sequence {index}: scene_obs has {len(scene_obs)} values, expected {SCENE_OBS_DIM}")
        missing = [t for t in subtasks if t not in instructions]
        if missing:
            raise ValueError(f"sequence {index}: no instruction for {missing}")
        sequences.append(
            CalvinSequence(
                index=index, initial_state=dict(entry["initial_state"]), subtasks=subtasks, scene_obs=scene_obs
            )
        )
    return CalvinEvalSet(sequences=tuple(sequences), robot_obs=robot_obs, instructions=instructions)


@functools.lru_cache(maxsize=1)
def load_eval_set() -> CalvinEvalSet:
    """The shipped evaluation set (cached; ``NUM_SEQUENCES`` sequences)."""
    text = resources.files("vlm4vla_calvin").joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    eval_set = parse_eval_set(json.loads(text))
    if len(eval_set.sequences) != NUM_SEQUENCES:
        raise ValueError(f"{DATA_FILE}: {len(eval_set.sequences)} sequences, expected {NUM_SEQUENCES}")
    return eval_set
