"""ALFWorld's six task types: their names, their goal conditions read from the game's facts, and
what a scene needs to hold one.

The goal conditions follow ALFRED's own (`alfworld/env/tasks.py`, `goal_conditions_met`), read
from the text engine's facts instead of AI2-THOR's metadata: the fraction met is the "goal-condition
success rate" RL4VLM adds to the reward on every step.
"""

from __future__ import annotations

from dataclasses import dataclass

TASK_TYPES = {
    1: "pick_and_place_simple",
    2: "look_at_obj_in_light",
    3: "pick_clean_then_place_in_recep",
    4: "pick_heat_then_place_in_recep",
    5: "pick_cool_then_place_in_recep",
    6: "pick_two_obj_and_place",
}
TASK_NAMES = tuple(TASK_TYPES.values())
# Short names as the papers' tables (and RL4VLM's per-task logs) use them.
TASK_SHORT = {"pick_and_place_simple": "pick", "look_at_obj_in_light": "look",
              "pick_clean_then_place_in_recep": "clean", "pick_heat_then_place_in_recep": "heat",
              "pick_cool_then_place_in_recep": "cool", "pick_two_obj_and_place": "pick2"}
# The appliance each transforming task uses, with the command verb and the state it sets.
TRANSFORMS = {"pick_clean_then_place_in_recep": ("SinkBasin", "clean", "isclean"),
              "pick_heat_then_place_in_recep": ("Microwave", "heat", "ishot"),
              "pick_cool_then_place_in_recep": ("Fridge", "cool", "iscool")}


def task_type(name_or_id) -> str:
    """A task type by name, short name or ALFWorld's number (1..6); a clear error otherwise."""
    if isinstance(name_or_id, int) and not isinstance(name_or_id, bool) and name_or_id in TASK_TYPES:
        return TASK_TYPES[name_or_id]
    text = str(name_or_id).strip().lower()
    if text.isdigit() and int(text) in TASK_TYPES:
        return TASK_TYPES[int(text)]
    for name, short in TASK_SHORT.items():
        if text in (name, short):
            return name
    raise ValueError(f"unknown ALFWorld task type {name_or_id!r}: choose from {', '.join(TASK_NAMES)} "
                     f"(or {', '.join(TASK_SHORT.values())}, or 1..6)")


@dataclass(frozen=True)
class Goal:
    """What a game asks, as `traj_data.json`'s `pddl_params` name it (types in ALFRED's spelling,
    e.g. "Apple", "CounterTop", "DeskLamp")."""

    task_type: str
    object_target: str
    parent_target: str = ""
    toggle_target: str = ""

    @classmethod
    def from_traj(cls, traj: dict) -> Goal:
        params = traj.get("pddl_params", {})
        return cls(traj["task_type"], params.get("object_target", ""), params.get("parent_target", ""),
                   params.get("toggle_target", ""))


class Facts:
    """A game state's facts (the text engine's `facts`: propositions over demangled names such as
    "apple 1"), indexed for the goal checks and the oracle."""

    def __init__(self, facts):
        self.by_name: dict[str, list[tuple[str, ...]]] = {}
        for fact in facts:
            args = tuple(var.name.strip() for var in fact.arguments)
            self.by_name.setdefault(fact.name.lower(), []).append(args)

    def all(self, name: str) -> list[tuple[str, ...]]:
        return self.by_name.get(name.lower(), [])

    def holds(self, name: str, *args: str) -> bool:
        return tuple(args) in set(self.all(name))

    def of_type(self, type_name: str) -> list[str]:
        """Objects and receptacles whose type is `type_name` (ALFRED's spelling, any case)."""
        wanted = type_name.lower() + "type"
        found = [a[0] for a in self.all("objecttype") + self.all("receptacletype") if a[1].lower() == wanted]
        return sorted(set(found))

    def receptacle_of(self, obj: str) -> str | None:
        rs = [r for o, r in self.all("inreceptacle") if o == obj]
        return rs[0] if rs else None

    def held(self) -> str | None:
        objs = [args[-1] for args in self.all("holds")]
        return objs[0] if objs else None

    def agent_location(self) -> str | None:
        locs = [args[-1] for args in self.all("atlocation")]
        return locs[0] if locs else None

    def location_of(self, receptacle: str) -> str | None:
        locs = [loc for r, loc in self.all("receptacleatlocation") if r == receptacle]
        return locs[0] if locs else None


def goal_conditions(goal: Goal, facts: Facts) -> tuple[int, int]:
    """(conditions met, conditions in all) of `goal` in this state, as ALFRED counts them."""
    objects = set(facts.of_type(goal.object_target))
    parents = set(facts.of_type(goal.parent_target)) if goal.parent_target else set()
    in_place = {o for o, r in facts.all("inreceptacle") if o in objects and r in parents}
    kind = goal.task_type
    if kind == "pick_and_place_simple":
        return int(bool(in_place)), 1
    if kind == "pick_two_obj_and_place":
        per_parent = [sum(1 for o, r in facts.all("inreceptacle") if o in objects and r == p) for p in parents]
        return min(max(per_parent, default=0), 2), 2
    if kind == "look_at_obj_in_light":
        held = facts.held()
        lamps = set(facts.of_type(goal.toggle_target))
        here = facts.agent_location()
        lit = any(facts.holds("istoggled", lamp) and facts.location_of(facts.receptacle_of(lamp) or "") == here
                  for lamp in lamps)
        return int(held in objects) + int(lit), 2
    if kind in TRANSFORMS:
        state = TRANSFORMS[kind][2]
        done = {o for (o,) in facts.all(state) if o in objects}
        return int(bool(in_place)) + int(bool(done)) + int(bool(in_place & done)), 3
    raise ValueError(f"unknown ALFWorld task type {kind!r}")


def goal_progress(goal: Goal, facts: Facts) -> float:
    """The goal-condition success rate in [0, 1]."""
    met, total = goal_conditions(goal, facts)
    return met / total
