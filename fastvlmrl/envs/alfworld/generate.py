"""Generated ALFWorld games: ALFWorld's file layout (`traj_data.json` + `game.tw-pddl` per game)
built from what the `alfworld` wheel ships, so training and tests run without the dataset.

A game is one of the six task types in one of AI2-THOR's 120 rooms (`alfworld/gen/layouts`: the
room's object types and its receptacles with their interaction poses). The generator draws a goal
the room can hold (the object/receptacle rules of `alfworld.gen.constants`: what each receptacle
can contain, which objects are cleanable, heatable, coolable; the rooms each task type is valid
in), places the target objects and some distractors in receptacles that can hold them, writes the
PDDL problem for ALFWorld's domain with the goal from `alfworld.gen.goal_library`, and the grammar
with the templated task line. Each game is kept only when the project's oracle walkthrough wins it
in the real text engine; the walkthrough is stored in the game file.

Games generated here are easier and more regular than ALFRED's (full-knowledge placements, no
movable-receptacle nesting, no slicing): results on them are not comparable with published
ALFWorld numbers.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field

from fastvlmrl.envs.alfworld.tasks import TASK_NAMES, TRANSFORMS, task_type

GENERATOR_VERSION = 2  # bumped when the same seed would give other games (runs' cached games are then not reused)
_LAMPS = ("DeskLamp", "FloorLamp")
# Receptacles a lamp stands on in generated rooms (ALFRED's rules list none for lamps).
_LAMP_STANDS = ("Desk", "SideTable", "Dresser", "DiningTable", "CoffeeTable", "Shelf", "TVStand")
_MANGLE = (("-", "_minus_"), ("|", "_bar_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_"))


def _alfworld():
    from fastvlmrl.envs.alfworld.engine import require_alfworld

    require_alfworld()
    import alfworld.gen.constants as constants
    import alfworld.gen.goal_library as goals

    return constants, goals


def mangle(name: str) -> str:
    """An AI2-THOR id as ALFWorld writes it in PDDL ("Apple|+01.20|..." -> "Apple_bar__plus_01_dot_20...")."""
    for old, new in _MANGLE:
        name = name.replace(old, new)
    return name


def layouts_dir() -> str:
    import alfworld.gen

    return os.path.join(os.path.dirname(alfworld.gen.__file__), "layouts")


def logic_files() -> tuple[str, str]:
    """ALFWorld's domain and grammar, from the installed wheel: (alfred.pddl, alfred.twl2) text."""
    import alfworld

    data = os.path.join(os.path.dirname(alfworld.__file__), "data")
    with open(os.path.join(data, "alfred.pddl"), encoding="utf-8") as f:
        domain = f.read()
    with open(os.path.join(data, "alfred.twl2"), encoding="utf-8") as f:
        grammar = f.read()
    return domain, grammar


@dataclass
class Room:
    """One AI2-THOR room as the wheel's layout files describe it."""

    scene: int
    object_types: list[str]
    receptacles: dict[str, tuple[int, int, int, int]]  # receptacle id -> interaction pose (grid units)
    points: list[tuple[float, float]] = field(default_factory=list)

    def receptacle_types(self) -> set[str]:
        return {receptacle_type(r) for r in self.receptacles}


def receptacle_type(rid: str) -> str:
    """A receptacle id's type: "Sink|...|SinkBasin" is a SinkBasin, as in ALFRED."""
    parts = rid.split("|")
    return parts[-1] if parts[-1].endswith("Basin") else parts[0]


def load_room(scene: int) -> Room:
    import numpy as np

    base = os.path.join(layouts_dir(), f"FloorPlan{scene}")
    with open(base + "-objects.json", encoding="utf-8") as f:
        object_types = json.load(f)
    with open(base + "-openable.json", encoding="utf-8") as f:
        poses = json.load(f)
    receptacles = {}
    for rid, (x, z, rotation, horizon) in sorted(poses.items()):
        kind = rid.split("|")[0]
        if kind in ("Sink", "Bathtub"):  # ALFRED's basin is the receptacle inside the sink
            rid, kind = f"{rid}|{kind}Basin", f"{kind}Basin"
        receptacles[rid] = (round(x / 0.25), round(z / 0.25), int(rotation) // 90 % 4, int(horizon))
    points = [tuple(p) for p in np.load(base + "-layout.npy").tolist()]
    return Room(scene, object_types, receptacles, points)


def rooms_for(task: str, constants) -> list[int]:
    """The scenes a task type is valid in (ALFRED's GOALS_VALID over SCENE_TYPE) that the wheel ships."""
    scenes = []
    for kind in sorted(constants.GOALS_VALID[task]):
        scenes += list(constants.SCENE_TYPE[kind])
    have = {int(name[len("FloorPlan"):].split("-")[0]) for name in os.listdir(layouts_dir())
            if name.startswith("FloorPlan") and name.endswith("-objects.json")}
    return [s for s in scenes if s in have]


def _containers(room: Room, obj: str, constants) -> list[str]:
    """Receptacles of the room that can hold object type `obj`."""
    if obj in _LAMPS:
        return [r for r in room.receptacles if receptacle_type(r) in _LAMP_STANDS]
    return [r for r in room.receptacles if obj in constants.VAL_RECEPTACLE_OBJECTS.get(receptacle_type(r), ())]


def _movable_types(room: Room, constants) -> list[str]:
    statics = set(constants.RECEPTACLES) - set(constants.MOVABLE_RECEPTACLES)
    found = []
    for obj in room.object_types:
        if obj in statics or obj not in constants.OBJECTS or obj in _LAMPS:
            continue
        if _containers(room, obj, constants):
            found.append(obj)
    return sorted(set(found))


@dataclass
class GameSpec:
    """A drawn game before it is written: its goal and every placement."""

    task_type: str
    scene: int
    object_target: str
    parent_target: str
    toggle_target: str
    placements: list[tuple[str, str, str]]  # (object id, object type, receptacle id)
    agent_pose: tuple[int, int, int, int]


def draw_goal(task: str, room: Room, rng: random.Random, constants) -> tuple[str, str, str] | None:
    """(object, parent receptacle type, lamp type) for `task` in `room`, or None when it holds none."""
    movable = _movable_types(room, constants)
    types_here = room.receptacle_types()
    if task == "look_at_obj_in_light":
        lamps = [lamp for lamp in _LAMPS if lamp in room.object_types and _containers(room, lamp, constants)]
        if not lamps or not movable:
            return None
        return rng.choice(movable), "", rng.choice(lamps)
    if task in TRANSFORMS:
        appliance, _, _ = TRANSFORMS[task]
        if appliance not in types_here:
            return None
        ability = {"SinkBasin": "Cleanable", "Microwave": "Heatable", "Fridge": "Coolable"}[appliance]
        movable = [o for o in movable if o in constants.VAL_ACTION_OBJECTS[ability]]
    options = []
    for obj in movable:
        for parent in sorted(types_here):
            if parent == (TRANSFORMS.get(task, ("",))[0]):
                continue  # "put a clean mug in sinkbasin" is not a task
            if obj in constants.VAL_RECEPTACLE_OBJECTS.get(parent, ()):
                options.append((obj, parent))
    if not options:
        return None
    obj, parent = rng.choice(options)
    return obj, parent, ""


def _thor_id(kind: str, rng: random.Random, taken: set[str]) -> str:
    while True:
        xyz = "|".join(f"{rng.uniform(-3, 3):+06.2f}" for _ in range(3))
        rid = f"{kind}|{xyz}"
        if rid not in taken:
            taken.add(rid)
            return rid


def draw_game(task: str, rng: random.Random, *, distractors: tuple[int, int] = (4, 10),
              scenes: list[int] | None = None) -> GameSpec:
    """One game of `task` in a random valid room (from `scenes` when given)."""
    constants, _ = _alfworld()
    task = task_type(task)
    candidates = list(scenes) if scenes else rooms_for(task, constants)
    for _ in range(200):
        room = load_room(rng.choice(candidates))
        goal = draw_goal(task, room, rng, constants)
        if goal is None:
            continue
        obj, parent, toggle = goal
        taken: set[str] = set()
        placements = []

        def place(kind: str, *, avoid: str = "") -> None:
            spots = [r for r in _containers(room, kind, constants) if receptacle_type(r) != avoid]
            rid = _thor_id(kind, rng, taken)
            placements.append((rid, kind, rng.choice(spots)))

        # The target starts outside any receptacle of the goal's type (else the game is won at once).
        if not [r for r in _containers(room, obj, constants) if receptacle_type(r) != parent]:
            continue
        for _ in range(2 if task == "pick_two_obj_and_place" else rng.randint(1, 2)):
            place(obj, avoid=parent)
        if toggle:
            place(toggle)
        others = [o for o in _movable_types(room, constants) if o != obj]
        for _ in range(rng.randint(*distractors) if others else 0):
            place(rng.choice(others))
        x, z = rng.choice(room.points) if room.points else (0.0, 0.0)
        pose = (round(x / 0.25), round(z / 0.25), rng.randrange(4), 30)
        return GameSpec(task, room.scene, obj, parent, toggle, placements, pose)
    raise ValueError(f"no room among {len(candidates)} can hold a {task} game")


def _loc(pose: tuple[int, int, int, int]) -> str:
    return "loc|%d|%d|%d|%d" % pose


def problem_pddl(spec: GameSpec, room: Room, goal_text: str, constants) -> str:
    """The PDDL problem of a game, in ALFWorld's shape (see planned_game_state.py)."""
    statics = set(constants.RECEPTACLES) - set(constants.MOVABLE_RECEPTACLES)
    otypes = sorted((set(constants.OBJECTS) | set(constants.MOVABLE_RECEPTACLES)) - statics)
    rtypes = sorted(statics | {"SinkBasin", "BathtubBasin"})
    receptacles = sorted(room.receptacles)
    locations = sorted({_loc(room.receptacles[r]) for r in receptacles} | {_loc(spec.agent_pose)})
    objects = [(oid, kind) for oid, kind, _ in spec.placements]
    lines = ["(define (problem plan_generated)", "    (:domain alfred)", "    (:objects", "        agent1 # agent"]
    lines += [f"        {t}Type # otype" for t in otypes]
    lines += [f"        {t}Type # rtype" for t in rtypes]
    lines += [f"        {oid} # object" for oid, _ in objects]
    lines += [f"        {r} # receptacle" for r in receptacles]
    lines += [f"        {loc} # location" for loc in locations]
    lines += ["        )", "    (:init", "        (= (total#cost) 0)", f"        (atLocation agent1 {_loc(spec.agent_pose)})"]
    present_types = {kind for _, kind in objects}
    for r in receptacles:
        kind = receptacle_type(r)
        lines.append(f"        (receptacleType {r} {kind}Type)")
        lines.append(f"        (receptacleAtLocation {r} {_loc(room.receptacles[r])})")
        if kind in constants.OPENABLE_CLASS_SET:
            lines.append(f"        (openable {r})")
    for kind in sorted({receptacle_type(r) for r in receptacles}):
        for obj in sorted(present_types):
            if obj in constants.VAL_RECEPTACLE_OBJECTS.get(kind, ()) or (obj in _LAMPS and kind in _LAMP_STANDS):
                lines.append(f"        (canContain {kind}Type {obj}Type)")
    for oid, kind, rid in spec.placements:
        lines.append(f"        (objectType {oid} {kind}Type)")
        lines.append(f"        (inReceptacle {oid} {rid})")
        lines.append(f"        (objectAtLocation {oid} {_loc(room.receptacles[rid])})")
        if kind in _LAMPS:
            lines.append(f"        (toggleable {oid})")
            continue
        lines.append(f"        (pickupable {oid})")
        if kind in constants.MOVABLE_RECEPTACLES_SET:
            lines.append(f"        (isReceptacleObject {oid})")
        for ability, predicate in (("Cleanable", "cleanable"), ("Heatable", "heatable"), ("Coolable", "coolable"),
                                   ("Sliceable", "sliceable")):
            if kind in constants.VAL_ACTION_OBJECTS[ability]:
                lines.append(f"        ({predicate} {oid})")
    lines.append("        )")
    text = "\n".join(lines) + "\n" + goal_text
    # ALFWorld's own id mangling; '#' is its type separator, written '-' once ids are mangled.
    return mangle(text).replace("#", "-")


def traj_data(spec: GameSpec, task_desc: str) -> dict:
    """`traj_data.json` as ALFWorld reads it (task type, pddl_params, scene, the task line)."""
    return {
        "task_type": spec.task_type,
        "pddl_params": {"object_target": spec.object_target, "parent_target": spec.parent_target,
                        "toggle_target": spec.toggle_target, "mrecep_target": "", "object_sliced": False},
        "scene": {"floor_plan": f"FloorPlan{spec.scene}", "scene_num": spec.scene},
        "turk_annotations": {"anns": [{"task_desc": task_desc}]},
        "fastvlmrl_generated": True,
    }


def task_line(spec: GameSpec, goals, rng: random.Random) -> str:
    """The templated task (ALFWorld's get_templated_task_desc, with our RNG instead of the global one)."""
    template = rng.choice(goals.gdict[spec.task_type]["templates"])
    return template.format(obj=spec.object_target.lower(), recep=spec.parent_target.lower(),
                           toggle=spec.toggle_target.lower(), mrecep="")


def build_game(spec: GameSpec, rng: random.Random) -> tuple[dict, dict]:
    """(traj_data, game file data) of a drawn game; the walkthrough is filled in by verification."""
    constants, goals = _alfworld()
    room = load_room(spec.scene)
    g = goals.gdict[spec.task_type]["pddl"].format(obj=spec.object_target, recep=spec.parent_target,
                                                   toggle=spec.toggle_target, mrecep="")
    desc = task_line(spec, goals, rng)
    domain, grammar = logic_files()
    game = {"pddl_domain": domain, "grammar": grammar.replace("UNKNOWN GOAL", desc),
            "pddl_problem": problem_pddl(spec, room, g, constants), "solvable": None, "walkthrough": None}
    return traj_data(spec, desc), game


def generate(out_dir: str, num_games: int, *, task_types=TASK_NAMES, seed: int = 0, split: str = "train",
             distractors: tuple[int, int] = (4, 10)) -> list[str]:
    """Write `num_games` games (task types in turn) under `out_dir/<split>/<task>-.../trial_<n>/`;
    returns the game file paths. Seeded: the same arguments give the same games. Rooms as
    ALFWorld splits them: train and valid_seen in the training rooms, valid_unseen in the test
    rooms. A game is kept only when the oracle walkthrough wins it in the text engine (else it is
    drawn again)."""
    from fastvlmrl.console import progress
    from fastvlmrl.envs.alfworld.engine import TextGame

    tasks = [task_type(t) for t in task_types]
    if not tasks:
        raise ValueError("generate needs at least one task type")
    if num_games < 1:
        raise ValueError(f"num_games must be >= 1, got {num_games}")
    from fastvlmrl.envs.alfworld.data import split_name

    split = split_name(split)
    constants, _ = _alfworld()
    # ALFWorld's own split of the rooms: unseen games are in rooms training never shows
    rooms = constants.TEST_SCENE_NUMBERS if split == "valid_unseen" else constants.TRAIN_SCENE_NUMBERS
    rng = random.Random(f"fastvlmrl-alfworld-{seed}-{split}")
    paths = []
    engine = TextGame(memoize=True)
    for n in progress(range(num_games), desc=f"generating {split}"):
        task = tasks[n % len(tasks)]
        for attempt in range(20):
            spec = draw_game(task, rng, distractors=distractors,
                             scenes=[r for r in rooms_for(task, constants) if r in set(rooms)])
            traj, game = build_game(spec, rng)
            walkthrough = engine.verify(game, traj)
            if walkthrough is not None:
                game["solvable"], game["walkthrough"] = True, walkthrough
                break
        else:
            raise RuntimeError(f"could not generate a winnable {task} game in 20 draws")
        folder = os.path.join(out_dir, split, f"{task}-{spec.object_target}-{spec.parent_target or spec.toggle_target}"
                              f"-{spec.scene}", f"trial_{n:05d}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "traj_data.json"), "w", encoding="utf-8") as f:
            json.dump(traj, f, indent=1)
        path = os.path.join(folder, "game.tw-pddl")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(game, f)
        paths.append(path)
    return paths
