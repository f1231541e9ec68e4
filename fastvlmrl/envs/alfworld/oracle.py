"""The ALFWorld oracle: the next command toward the goal and a truthful thought, from the game's
facts (full knowledge of where every object is).

It makes SFT demonstrations, verifies generated games (generate.py) and answers GTR's corrector.
Its plan, per task type: take a target object (go to its receptacle, open it if closed), for
clean/heat/cool use the sink basin/microwave/fridge on it, then go to a receptacle of the goal's
type (open it if closed) and move the object there (twice for pick_two); for look_at_obj_in_light
take the object to the lamp and use the lamp. An unrelated object in hand is put down first.
Commands use the text engine's verbs ("go to", "open", "take X from Y", "move X to Y", "clean X
with Y", "heat", "cool", "use"): the game's admissible list is checked before a command is chosen.
"""

from __future__ import annotations

from fastvlmrl.envs.alfworld.tasks import TRANSFORMS, Facts, Goal


def _is_open(facts: Facts, receptacle: str) -> bool:
    return not facts.holds("openable", receptacle) or facts.holds("opened", receptacle)


def _reach(facts: Facts, receptacle: str, why: str) -> tuple[str, str] | None:
    """The command that brings the agent to `receptacle` with it open, or None when it already is."""
    if facts.location_of(receptacle) != facts.agent_location():
        return f"go to {receptacle}", f"{why}, so I go to {receptacle}."
    if not _is_open(facts, receptacle):
        return f"open {receptacle}", f"I am at {receptacle}, which is closed: I open it."
    return None


def _type_of(facts: Facts, thing: str) -> str:
    for name in ("objecttype", "receptacletype"):
        for args in facts.all(name):
            if args[0] == thing:
                return args[1].lower().removesuffix("type")
    return ""


def plan_step(goal: Goal, facts: Facts) -> tuple[str, str] | None:
    """(command, thought) of the oracle's next move, or None when it has none (won, or stuck)."""
    targets = facts.of_type(goal.object_target)
    parents = facts.of_type(goal.parent_target) if goal.parent_target else []
    held = facts.held()
    task = goal.task_type
    transform = TRANSFORMS.get(task)
    if held is not None and held not in targets:
        return _put_down(facts, held, f"I hold {held}, which the task does not need")
    if task == "look_at_obj_in_light":
        if held is None:
            return _take(facts, targets, f"I need a {goal.object_target.lower()} to look at")
        lamps = facts.of_type(goal.toggle_target)
        if not lamps:
            return None
        lamp = _nearest(facts, lamps)
        where = facts.receptacle_of(lamp)
        step = _reach(facts, where, f"I hold {held}; the {lamp} is on {where}") if where else None
        return step or (f"use {lamp}", f"I hold {held} and stand by {lamp}: I turn it on to look at {held}.")
    # Placing tasks: the parent with the most targets already there (pick_two needs two in one),
    # then the one the agent stands at (any of the goal's type will do: the agent's choice is right).
    def placed(p):  # (for clean/heat/cool: only a target already cleaned/heated/cooled counts)
        return [o for o, r in facts.all("inreceptacle")
                if r == p and o in targets and (transform is None or facts.holds(transform[2], o))]

    need = 2 if task == "pick_two_obj_and_place" else 1
    here = facts.agent_location()
    parents = sorted(parents, key=lambda p: (-len(placed(p)), facts.location_of(p) != here, p))
    if not parents:
        return None
    parent = parents[0]
    if held is None:
        loose = [o for o in targets if o not in placed(parent)]
        kind = {"clean": "clean ", "heat": "hot ", "cool": "cool "}[transform[1]] if transform else ""
        return _take(facts, loose, f"The task needs {need - len(placed(parent))} more "
                                   f"{kind}{goal.object_target.lower()} in {parent}")
    if transform:
        appliance_type, verb, state = transform
        if not facts.holds(state, held):
            appliances = facts.of_type(appliance_type)
            if not appliances:
                return None
            appliance = _nearest(facts, appliances)
            if facts.location_of(appliance) != facts.agent_location():
                return f"go to {appliance}", f"I hold {held}; it must be {_done(verb)} first, so I go to {appliance}."
            return f"{verb} {held} with {appliance}", f"I am at {appliance} holding {held}: I {verb} it."
    step = _reach(facts, parent, f"I hold {held}, ready to go in {parent}")
    return step or (f"move {held} to {parent}", f"I am at {parent} holding {held}: I put it there.")


def _nearest(facts: Facts, things: list[str]) -> str:
    """The one at the agent's location if there is one, else the first by name (a lamp, an
    appliance: any of them will do)."""
    here = facts.agent_location()
    def where(thing):  # a receptacle's location, or the location of the receptacle an object is in
        return facts.location_of(thing) or facts.location_of(facts.receptacle_of(thing) or "")
    return min(things, key=lambda t: (where(t) != here, t))


def _done(verb: str) -> str:
    return {"clean": "cleaned", "heat": "heated", "cool": "cooled"}[verb]


def _take(facts: Facts, candidates: list[str], why: str) -> tuple[str, str] | None:
    here = facts.agent_location()
    spots = [(o, facts.receptacle_of(o)) for o in candidates if facts.receptacle_of(o)]
    if not spots:
        return None
    # one within reach first, then the first by name
    spots.sort(key=lambda pair: (facts.location_of(pair[1]) != here, pair[0]))
    obj, where = spots[0]
    step = _reach(facts, where, f"{why}; {obj} is in {where}")
    return step or (f"take {obj} from {where}", f"{why}. I am at {where}, where {obj} is: I take it.")


def _put_down(facts: Facts, held: str, why: str) -> tuple[str, str] | None:
    kind = _type_of(facts, held)
    here = facts.agent_location()
    able = [r for r, loc in facts.all("receptacleatlocation")
            if facts.holds("cancontain", _type_of(facts, r) + "type", kind + "type")]
    able.sort(key=lambda r: (facts.location_of(r) != here, not _is_open(facts, r), r))
    if not able:
        return None
    where = able[0]
    step = _reach(facts, where, f"{why}; {where} can take it")
    return step or (f"move {held} to {where}", f"{why}: I put it on {where}.")


def admissible_form(command: str, admissible) -> str | None:
    """`command` as this game's admissible list spells it, or None. ALFWorld's older game files
    say "put X in/on Y" where the wheel's grammar says "move X to Y"."""
    if command in admissible:
        return command
    if command.startswith("move ") and " to " in command:
        obj, place = command[len("move "):].split(" to ", 1)
        for form in (f"put {obj} in/on {place}", f"put {obj} in {place}", f"put {obj} on {place}"):
            if form in admissible:
                return form
    return None


def next_command(goal: Goal, facts: Facts, admissible) -> str | None:
    """The oracle's next command when the game accepts it now, else None."""
    step = plan_step(goal, facts)
    return None if step is None else admissible_form(step[0], admissible)
