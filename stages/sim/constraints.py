"""Constraint sets of the instructions and the Euclidean projection of an action onto them.

The "QP-projected teacher" of ch07 §7.9: the recorded action is

    a* = argmin_a ||a - a_expert||²   s.t.   a ∈ C(constraint, state) ∩ [-1, 1]^3

over the three translation components (the gripper component passes through). Both constraint sets
are simple enough that the QP has a closed form, computed here exactly:

- speed limit v (m/s): C = {a : ||a|| · ACTION_UNIT_MPS ≤ v}, a ball inside the box (v < 0.8 m/s),
  so the projection scales a down onto the ball.
- workspace boundary z_min (m): the hand must stay above the height z_min over the table (table top
  at z = 0). A command moves the mocap target by a · ACTION_SCALE, so
  C = {a : target_z + a_z · ACTION_SCALE ≥ z_min}, a half-space on a_z; with the box, the
  projection clips a_z alone.

Units: 1 action unit = ACTION_SCALE m per control step = ACTION_UNIT_MPS (0.8) m/s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.sim.envs import ACTION_SCALE, ACTION_UNIT_MPS

SPEED_LIMIT = "speed_limit"
WORKSPACE_BOUNDARY = "workspace_boundary"
KINDS = (SPEED_LIMIT, WORKSPACE_BOUNDARY)
UNITS = {SPEED_LIMIT: "m/s", WORKSPACE_BOUNDARY: "m"}
SPEED_CHOICES_MPS = (0.3, 0.4, 0.5)  # all well under the 0.8 m/s an action unit commands
FLOOR_CHOICES_M = (0.08, 0.1, 0.12)  # hand height over the table; the mocap floor is 0.05 m


@dataclass(frozen=True)
class Constraint:
    kind: str  # one of KINDS
    value: float  # SI: m/s for speed_limit, m (minimum hand height) for workspace_boundary

    @property
    def unit(self) -> str:
        return UNITS[self.kind]

    def to_json(self) -> dict:
        return {"kind": self.kind, "value": self.value, "unit": self.unit}


def sample_constraint(rng: np.random.Generator) -> Constraint:
    kind = KINDS[int(rng.integers(len(KINDS)))]
    choices = SPEED_CHOICES_MPS if kind == SPEED_LIMIT else FLOOR_CHOICES_M
    return Constraint(kind, float(choices[int(rng.integers(len(choices)))]))


def project_action(action: np.ndarray, constraint: Constraint | None, target_pos: np.ndarray) -> np.ndarray:
    """Euclidean projection of `action` [4] onto the constraint set (closed-form QP, see module doc).

    `target_pos` [3] is the mocap target the command will be added to (`SimEnv.target_pos()`).
    Returns a new array; the gripper component is unchanged; without a constraint only the box applies.
    """
    a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0).copy()
    if constraint is None:
        return a
    if constraint.kind == SPEED_LIMIT:
        radius = constraint.value / ACTION_UNIT_MPS  # action units
        norm = float(np.linalg.norm(a[:3]))
        if norm > radius:
            a[:3] *= radius / norm
    elif constraint.kind == WORKSPACE_BOUNDARY:
        lowest = (constraint.value - float(target_pos[2])) / ACTION_SCALE  # smallest admissible a_z
        a[2] = min(max(a[2], lowest), 1.0)
    else:
        raise ValueError(f"unknown constraint kind {constraint.kind!r}")
    return a


def speed_of(action_xyz: np.ndarray) -> np.ndarray:
    """Commanded hand speed in m/s of actions [..., 3] (the unit mapping of the module doc)."""
    return np.linalg.norm(action_xyz, axis=-1) * ACTION_UNIT_MPS
