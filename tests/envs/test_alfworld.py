"""ALFWorld, the text game: generated games (one per task type) in ALFWorld's own engine.

The oracle wins every generated game, a random policy mostly does not, replies parse to admissible
commands, the memoized engine matches the stock one byte for byte, the reward and the episode
rules are RL4VLM's and GTR's, the process-pool vector env steps, ends, resumes and fails clearly.
Needs the `alfworld` extra (CI installs it; elsewhere the module is skipped without it).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys

import numpy as np
import pytest

if os.environ.get("CI") != "true":
    pytest.importorskip("alfworld")
    pytest.importorskip("fast_downward")

from fastvlmrl.envs.alfworld import fast_textworld  # noqa: E402
from fastvlmrl.envs.alfworld.data import NoGamesError, find_games  # noqa: E402
from fastvlmrl.envs.alfworld.engine import NOTHING_HAPPENS, TextGame  # noqa: E402
from fastvlmrl.envs.alfworld.env import GTR_TRUNCATION_REWARD, ALFWorldEnv, Episodes  # noqa: E402
from fastvlmrl.envs.alfworld.generate import generate  # noqa: E402
from fastvlmrl.envs.alfworld.tasks import TASK_NAMES, task_type  # noqa: E402
from fastvlmrl.envs.alfworld.text import alfworld_prompt, normalise, oracle_reply, parse_command  # noqa: E402
from fastvlmrl.envs.alfworld.vector import ALFWorldVectorEnv  # noqa: E402


@pytest.fixture(scope="module")
def games_dir(tmp_path_factory):
    """Six generated games, one per task type (train split), and two unseen-room games."""
    root = str(tmp_path_factory.mktemp("alfworld"))
    generate(root, 6, seed=0)
    generate(root, 2, seed=0, split="valid_unseen", task_types=["pick"])
    return root


@pytest.fixture(scope="module")
def games(games_dir):
    return find_games(games_dir, "train")


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _traj(path):
    return _load(os.path.join(os.path.dirname(path), "traj_data.json"))


def test_one_game_per_task_type_in_alfworlds_layout(games):
    assert sorted(_traj(g)["task_type"] for g in games) == sorted(TASK_NAMES)
    for path in games:
        game, traj = _load(path), _traj(path)
        assert game["solvable"] is True and game["walkthrough"]
        assert "UNKNOWN GOAL" not in game["grammar"] and "(:goal" in game["pddl_problem"]
        assert set(traj["pddl_params"]) >= {"object_target", "parent_target", "toggle_target", "mrecep_target",
                                            "object_sliced"}
        assert traj["scene"]["scene_num"] in __import__("alfworld.gen.constants").gen.constants.TRAIN_SCENE_NUMBERS


def test_unseen_split_uses_the_test_rooms(games_dir):
    import alfworld.gen.constants as constants

    unseen = find_games(games_dir, "valid_unseen")
    assert len(unseen) == 2
    assert all(_traj(g)["scene"]["scene_num"] in constants.TEST_SCENE_NUMBERS for g in unseen)


def test_generation_is_seeded(tmp_path, games):
    again = generate(str(tmp_path), 2, seed=0)  # the fixture's first two games (task types in turn)
    mine = {_traj(p)["task_type"]: _load(p)["pddl_problem"] for p in again}
    theirs = {_traj(p)["task_type"]: _load(p)["pddl_problem"] for p in games}
    assert len(mine) == 2
    for task, problem in mine.items():
        assert theirs[task] == problem


@pytest.mark.parametrize("memoize", [False, True])
def test_stored_walkthrough_wins_in_a_fresh_engine(games, memoize):
    engine = TextGame(memoize=memoize)
    try:
        for path in games:
            engine.load(path)
            obs = engine.reset()
            assert obs.task and obs.admissible and not obs.won
            rewards = []
            for command in _load(path)["walkthrough"]:
                assert command in obs.admissible
                obs, reward, legal = engine.step(command)
                rewards.append(reward)
                assert legal
            assert obs.won and obs.progress == 1.0
            assert rewards[-1] == pytest.approx(51.0)  # 50 x won + the goal-condition rate (1)
    finally:
        fast_textworld.uninstall()


def test_random_policy_mostly_loses(games):
    episodes = Episodes(games, max_steps=30, seed=0)
    rng = random.Random(0)
    wins = 0
    for g in range(len(games)):
        info = episodes.reset(game=g)
        for _ in range(30):
            info, _, terminated, truncated = episodes.step(rng.choice(info["admissible_commands"]))
            if terminated or truncated:
                break
        wins += info["won"]
    assert wins <= 2  # of 6: the oracle wins each in at most 12 steps


def test_illegal_command_costs_one_and_changes_nothing(games):
    engine = TextGame()
    engine.load(games[0])
    start = engine.reset()
    obs, reward, legal = engine.step("dance with the fridge")
    assert not legal and obs.text == NOTHING_HAPPENS
    assert reward == pytest.approx(start.progress - 1.0)
    assert obs.admissible == start.admissible


def test_goal_conditions_rise_with_the_oracle(games):
    heat = next(g for g in games if _traj(g)["task_type"] == "pick_heat_then_place_in_recep")
    episodes = Episodes([heat], seed=0)
    info = episodes.reset()
    seen = [info["goal_progress"]]
    while not info["won"]:
        info, reward, terminated, _ = episodes.step(info["expert_action"])
        seen.append(info["goal_progress"])
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert pytest.approx(1 / 3) in seen  # heated, not yet in place
    assert terminated and reward == pytest.approx(51.0)


def test_memoized_engine_matches_the_stock_one(games):
    def play(memoize):
        engine = TextGame(memoize=memoize)
        rng = random.Random(7)
        out = []
        for path in games[::2]:  # three task types (the stock engine is slow)
            for _ in range(2):  # the second load and reset reuse the caches
                engine.load(path)
                obs = engine.reset()
                out.append((obs.text, obs.admissible, obs.progress))
                for _ in range(8):
                    command = rng.choice(obs.admissible)
                    obs, reward, legal = engine.step(command)
                    out.append((command, obs.text, obs.admissible, reward, obs.won))
        return out

    fast_textworld.uninstall()  # the caches are process-wide: earlier tests installed them
    try:
        stock = play(False)
        assert not fast_textworld.installed()
        memoized = play(True)
        assert fast_textworld.installed()
    finally:
        fast_textworld.uninstall()
    assert stock == memoized


def test_loading_keeps_sys_argv(games):
    before = list(sys.argv)
    engine = TextGame()
    engine.load(games[0])
    assert sys.argv == before


def test_parse_every_admissible_command(games):
    env = ALFWorldEnv(games)
    _, info = env.reset(seed=0)
    commands = info["admissible_commands"]
    for i, command in enumerate(commands):
        assert parse_command(json.dumps({"thoughts": "t", "action": command}), commands) == (i, True)
        assert parse_command(f'{{"action": "  {command.upper()}. "}}', commands) == (i, True)
        assert parse_command(f'I think... "action": "{command}"', commands) == (i, True)


def test_parse_whole_words_and_illegal_replies():
    commands = ["go to cabinet 1", "go to cabinet 10", "take apple 1 from cabinet 1", "look"]
    assert parse_command('"action": "go to cabinet 10"', commands) == (1, True)
    assert parse_command('"action": go to cabinet 1, then', commands) == (0, True)
    assert parse_command("take apple 1 from cabinet 1", commands) == (2, True)  # "go to cabinet 1" is not in it
    for bad in ("", "{", '{"action": 3}', '"action": "open the fridge"', "go to cabinet 1 or go to cabinet 10",
                None, b"\xff\xfe", "x" * 100_000):
        assert parse_command(bad, commands) == (None, False)
    assert parse_command('"action": "look"', []) == (None, False)
    assert normalise('  "Go  To Cabinet 1." ') == "go to cabinet 1"


def test_prompt_and_oracle_reply(games):
    env = ALFWorldEnv(games)
    _, info = env.reset(seed=1)
    prompt = alfworld_prompt(info)
    assert info["task"].rstrip(".") in prompt and "'go to" in prompt and '"thoughts"' in prompt
    assert "The previous actions you have taken: []." in prompt
    reply = oracle_reply(info)
    assert parse_command(reply, info["admissible_commands"]) == (
        info["admissible_commands"].index(info["expert_action"]), True)
    _, _, _, _, info = env.step(info["expert_action"])
    assert f"['{info['previous_actions'][0]}']" in alfworld_prompt(info)
    assert '"thoughts"' not in alfworld_prompt(info, cot=False)
    assert "description of the current scene" not in alfworld_prompt(info, observation=False)


def test_gymnasium_env_rules(games):
    import gymnasium

    import fastvlmrl  # noqa: F401  (registers the id)

    env = gymnasium.make("fastvlmrl/ALFWorld-v0", games=games[:1], max_steps=3)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"text", "task", "admissible"}
    for k in range(3):
        obs, reward, terminated, truncated, info = env.step(obs["admissible"].index("look")
                                                            if "look" in obs["admissible"] else 0)
    assert truncated and not terminated and info["steps"] == 3
    with pytest.raises(RuntimeError, match="ended"):
        env.step("look")
    with pytest.raises(ValueError, match="out of range"):
        env.reset(seed=0)
        env.step(10_000)


def test_gtr_truncation_after_five_identical_actions(games):
    episodes = Episodes(games[:1], gtr_truncation=True, seed=0)
    episodes.reset()
    for k in range(5):
        info, reward, terminated, truncated = episodes.step("look")
    assert terminated and not truncated and reward == GTR_TRUNCATION_REWARD and not info["won"]


def test_vector_env_steps_ends_and_resumes(games):
    envs = ALFWorldVectorEnv(games, num_envs=3, seed=0)
    try:
        envs.reset(seed=0)
        ended = 0
        for _ in range(40):
            actions = [envs.describe(i)["expert_action"] for i in range(3)]
            obs, rewards, terminated, truncated, infos = envs.step(actions)
            for i in np.flatnonzero(terminated):
                final = envs.describe_final(i)
                assert final["won"] and rewards[i] == pytest.approx(51.0)
                assert envs.describe(i)["steps"] == 0  # SameStep: already the next episode
                assert infos["final_info"][i]["won"]
                ended += 1
        assert ended >= 6
    finally:
        envs.close()
    with pytest.raises(RuntimeError, match="closed"):
        envs.step(["look"] * 3)


def _oracle_play(envs, steps):
    out = []
    for _ in range(steps):
        actions = [envs.describe(i)["expert_action"] or "look" for i in range(envs.num_envs)]
        obs, rewards, terminated, truncated, _ = envs.step(actions)
        out.append((obs, rewards.tolist(), terminated.tolist(), [envs.describe(i)["game"] for i in range(envs.num_envs)]))
    return out


def test_vector_env_state_restores_into_fresh_workers_across_episode_ends(games):
    envs = ALFWorldVectorEnv(games, num_envs=2, seed=0)
    try:
        envs.reset(seed=3)
        _oracle_play(envs, 3)  # mid-episode
        snapshot = envs.get_state()
        after = _oracle_play(envs, 25)  # episodes end and new games are drawn (the RNG's part of the state)
    finally:
        envs.close()
    assert sum(sum(t) for _, _, t, _ in after) >= 2
    fresh = ALFWorldVectorEnv(games, num_envs=2, seed=99)
    try:
        fresh.set_state(snapshot)
        assert _oracle_play(fresh, 25) == after
    finally:
        fresh.close()
    with pytest.raises(ValueError, match="another list of games"):
        other = ALFWorldVectorEnv(games[:3], num_envs=2, seed=0)
        try:
            other.set_state(snapshot)
        finally:
            other.close()


def test_gigpo_anchors_are_equal_for_equal_starts_only(games):
    from fastvlmrl.envs.games.alfworld import ALFWORLD

    envs = ALFWorldVectorEnv(games, num_envs=3, seed=0)
    try:
        other = next(s for s in range(6, 100) if random.Random(s).randrange(len(games)) != random.Random(5).randrange(len(games)))
        envs.reset(seed=[5, 5, other])  # a group of two from one start, and a start in another game
        anchors = [ALFWORLD.anchor(envs.describe(i)) for i in range(3)]
        assert anchors[0] == anchors[1] != anchors[2]
        envs.step([envs.describe(0)["expert_action"], "look", "look"])
        assert ALFWORLD.anchor(envs.describe(0)) != ALFWORLD.anchor(envs.describe(1))
    finally:
        envs.close()


def test_success_is_winning_not_a_positive_return(games):
    from fastvlmrl.envs.games.alfworld import ALFWORLD

    look = next(g for g in games if _traj(g)["task_type"] == "look_at_obj_in_light")
    episodes = Episodes([look], max_steps=40, seed=0)
    info = episodes.reset()
    total = 0.0
    while info["expert_action"] and not info["expert_action"].startswith("use"):
        info, reward, _, _ = episodes.step(info["expert_action"])  # take the object, walk to the lamp
        total += reward
    info, reward, _, _ = episodes.step("look")
    total += reward
    assert total > 0 and not info["won"]  # holding the object: half the goal conditions, every step
    assert not ALFWORLD.episode_success(total, info)
    info, reward, terminated, _ = episodes.step(info["expert_action"])
    assert terminated and ALFWORLD.episode_success(total + reward, info)


def test_vector_env_names_a_broken_game(games, tmp_path):
    bad = tmp_path / "train" / "broken" / "trial_0"
    bad.mkdir(parents=True)
    shutil.copy(os.path.join(os.path.dirname(games[0]), "traj_data.json"), bad / "traj_data.json")
    (bad / "game.tw-pddl").write_text(json.dumps({**_load(games[0]), "pddl_problem": "(define (problem x"}))
    envs = ALFWorldVectorEnv([str(bad / "game.tw-pddl")], num_envs=1, seed=0)
    with pytest.raises(RuntimeError, match="env 0 failed during reset"):
        envs.reset(seed=0)
    assert envs.closed


def test_find_games_filters_and_explains(games_dir, tmp_path, monkeypatch):
    assert len(find_games(games_dir, "train", task_types=["pick", 4])) == 2
    assert len(find_games(games_dir, "train", limit=3)) == 3
    # unsolvable games are skipped; so are ALFRED's movable and sliced tasks
    root = tmp_path / "json_2.1.1"
    src = os.path.dirname(find_games(games_dir, "train")[0])
    for name, solvable in (("ok", True), ("no", False), ("pick_and_place_with_movable_recep-x", True)):
        folder = root / "train" / name / "trial_0"
        shutil.copytree(src, folder)
        (folder / "game.tw-pddl").write_text(json.dumps({**_load(str(folder / "game.tw-pddl")), "solvable": solvable}))
    assert [os.path.basename(os.path.dirname(os.path.dirname(p))) for p in find_games(str(tmp_path))] == ["ok"]
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    assert len(find_games(None)) == 1
    monkeypatch.delenv("ALFWORLD_DATA")
    with pytest.raises(NoGamesError, match="alfworld-download"):
        find_games(None)
    with pytest.raises(NoGamesError, match="valid_seen"):
        find_games(str(tmp_path), "valid_seen")
    with pytest.raises(ValueError, match="unknown ALFWorld split"):
        find_games(str(tmp_path), "test")


def test_task_type_names():
    assert task_type(1) == task_type("pick") == task_type("PICK_AND_PLACE_SIMPLE") == "pick_and_place_simple"
    with pytest.raises(ValueError, match="unknown ALFWorld task type"):
        task_type("juggle")


TRAIN = ["tiny/alfworld", "sft.steps=2", "sft.demos=8", "sft.batch_size=4", "ppo.updates=1",
         "ppo.num_steps=2", "env.num_envs=2", "ppo.minibatch_size=2", "ppo.epochs=1", "sampling.max_new_tokens=12",
         "eval.episodes=2", "alfworld.max_steps=3", "alfworld.eval_split=valid_unseen", "alfworld.task_types=pick"]


def test_training_on_alfworld_runs_evaluates_and_resumes(games_dir, tmp_path):
    from fastvlmrl.cli import main

    args = [*TRAIN, f"alfworld.data_path={games_dir}", f"run.out_dir={tmp_path}", "run.name=alf"]
    assert main(["train", *args]) == 0
    run = tmp_path / "alf"
    result = json.loads((run / "eval.json").read_text())
    assert result["episodes"] == 2 and 0.0 <= result["success_rate"] <= 1.0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"update"' in x]
    assert records[0]["env_steps"] == 4
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and samples[0]["game"] == "ALFWorld" and "admissible_commands" in samples[0]["state"]
    assert main(["train", f"resume={run}", "ppo.updates=2"]) == 0  # the envs' episodes come back from the checkpoint
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"update"' in x]
    assert [r["update"] for r in records] == [0, 1]
    assert main(["eval", str(run), "alfworld.eval_split=train", "eval.episodes=2"]) == 0  # another split
    assert json.loads((run / "eval" / "step_2_2ep_train.json").read_text())["episodes"] == 2


def test_gigpo_on_alfworld_anchors_text_states(games_dir, tmp_path):
    from fastvlmrl.cli import main

    args = [*TRAIN, "sft.steps=0", "algo.name=gigpo", "algo.group_size=2", "algo.max_episode_steps=3",
            f"alfworld.data_path={games_dir}", f"run.out_dir={tmp_path}", "run.name=g"]
    assert main(["train", *args]) == 0
    assert (tmp_path / "g" / "eval.json").is_file()


def test_gtr_oracle_on_alfworld_clones_text_corrections(games_dir, tmp_path):
    from fastvlmrl.cli import main
    from fastvlmrl.gtr.buffer import CorrectedSample, DAggerBuffer

    from fastvlmrl.config import GTRConfig
    from fastvlmrl.envs.games.alfworld import ALFWORLD
    from fastvlmrl.gtr.cloning import clone_sample
    from fastvlmrl.gtr.guide import ThoughtGuide
    from fastvlmrl.gtr.oracle_corrector import OracleCorrector
    from fastvlmrl.models.encoder import PromptEncoder
    from fastvlmrl.models.tiny import build_tiny_processor

    buffer = DAggerBuffer(4)
    buffer.add(CorrectedSample(None, "task", '{"thoughts": "t", "action": "look"}'))
    assert buffer.draw(1)[0].frame is None  # a text prompt's sample keeps no frame
    # the oracle corrector judges a wrong decision and the buffer keeps the text prompt with the expert's thought
    env = ALFWorldEnv(find_games(games_dir, "train", task_types=["pick"]))
    _, info = env.reset(seed=0)
    wrong = next(c for c in info["admissible_commands"] if c != info["expert_action"])
    guide = ThoughtGuide(OracleCorrector(ALFWORLD), ALFWORLD, GTRConfig(enabled=True))
    prompt = alfworld_prompt(info)
    right = json.dumps({"thoughts": info["expert_thoughts"], "action": info["expert_action"]})
    guide.observe([None, None], [info, info], [prompt, prompt],
                  [json.dumps({"thoughts": "I wander.", "action": wrong}), right])
    assert guide.counts["judged"] == 2 and guide.counts["corrected"] == 1 and len(guide.buffer) == 1
    sample = guide.buffer.draw(1)[0]
    assert sample.frame is None and info["expert_thoughts"] in sample.reply and wrong in sample.reply
    encoder = PromptEncoder(build_tiny_processor(), ("pixel_values",))
    transition = clone_sample(encoder, sample)
    assert transition.mm == {} and len(transition.output_ids) > 0
    # and a whole run with GTR's oracle and its ALFWorld truncation
    args = [*TRAIN, "sft.steps=0", "gtr.enabled=true", "gtr.corrector=oracle", "alfworld.gtr_truncation=true",
            f"alfworld.data_path={games_dir}", f"run.out_dir={tmp_path}", "run.name=gtr"]
    assert main(["train", *args]) == 0
    record = next(json.loads(x) for x in (tmp_path / "gtr" / "metrics.jsonl").read_text().splitlines()
                  if '"update"' in x)
    assert "gtr/buffer_size" in record


def test_alfworld_config_errors(games_dir, capsys):
    from fastvlmrl.cli import main

    assert main(["train", *TRAIN, "alfworld.task_types=juggle"]) == 2
    assert "unknown ALFWorld task type" in capsys.readouterr().err
    assert main(["train", *TRAIN, "gtr.enabled=true", "gtr.corrector=self"]) == 2
    assert "not supported yet" in capsys.readouterr().err
    assert main(["train", *TRAIN, "gtr.enabled=true", "gtr.truncate_off_path=true"]) == 2
    assert "alfworld.gtr_truncation" in capsys.readouterr().err
    assert main(["train", "tiny/numberline", "env.illegal_action=noop"]) == 2
    assert "ALFWorld's" in capsys.readouterr().err
    assert main(["train", *TRAIN, f"alfworld.data_path={games_dir}/nothing"]) == 2
    assert "alfworld-download" in capsys.readouterr().err


def test_oracle_speaks_the_older_put_verb():
    from fastvlmrl.envs.alfworld.oracle import admissible_form

    new = ["go to cabinet 1", "move apple 1 to countertop 1"]
    old = ["go to cabinet 1", "put apple 1 in/on countertop 1"]
    assert admissible_form("move apple 1 to countertop 1", new) == "move apple 1 to countertop 1"
    assert admissible_form("move apple 1 to countertop 1", old) == "put apple 1 in/on countertop 1"
    assert admissible_form("move apple 1 to countertop 2", old) is None


def _facts(*props):
    """Facts from ("name", "arg", ...) tuples, as the text engine's propositions carry them."""
    from types import SimpleNamespace

    from fastvlmrl.envs.alfworld.tasks import Facts

    return Facts([SimpleNamespace(name=p[0], arguments=[SimpleNamespace(name=a) for a in p[1:]]) for p in props])


def test_oracle_takes_the_goal_receptacle_the_agent_stands_at():
    from fastvlmrl.envs.alfworld.oracle import plan_step
    from fastvlmrl.envs.alfworld.tasks import Goal

    room = [("objecttype", "apple 1", "appletype"), ("receptacletype", "countertop 1", "countertoptype"),
            ("receptacletype", "countertop 2", "countertoptype"), ("receptacletype", "microwave 1", "microwavetype"),
            ("receptacletype", "microwave 2", "microwavetype"),
            ("receptacleatlocation", "countertop 1", "loc1"), ("receptacleatlocation", "countertop 2", "loc2"),
            ("receptacleatlocation", "microwave 1", "loc3"), ("receptacleatlocation", "microwave 2", "loc2"),
            ("holds", "agent1", "apple 1")]
    pick = Goal("pick_and_place_simple", "Apple", "CounterTop")
    # any countertop will do: at countertop 2, the apple goes there (not "go to countertop 1")
    assert plan_step(pick, _facts(*room, ("atlocation", "agent1", "loc2")))[0] == "move apple 1 to countertop 2"
    assert plan_step(pick, _facts(*room, ("atlocation", "agent1", "loc9")))[0] == "go to countertop 1"
    # the same for the appliance: the microwave where the agent stands heats as well as the first
    heat = Goal("pick_heat_then_place_in_recep", "Apple", "CounterTop")
    assert plan_step(heat, _facts(*room, ("atlocation", "agent1", "loc2")))[0] == "heat apple 1 with microwave 2"
    assert plan_step(heat, _facts(*room, ("atlocation", "agent1", "loc9")))[0] == "go to microwave 1"


def test_right_decision_reads_the_action_as_the_env_does():
    from fastvlmrl.envs.games.alfworld import ALFWORLD

    info = {"admissible_commands": ["go to cabinet 1", "go to cabinet 10", "look"], "expert_action": "go to cabinet 1"}
    for said in ("go to cabinet 1", "'go to cabinet 1'", "go to cabinet 1.", "Go To  Cabinet 1"):
        assert ALFWORLD.right_decision(info, said) is True, said
    assert ALFWORLD.right_decision(info, "go to cabinet 10") is False
    assert ALFWORLD.right_decision(info, "dance") is False
    assert ALFWORLD.right_decision(info, None) is None
    # no expert move here (won, or the oracle has no plan): no verdict, so nothing is "corrected"
    assert ALFWORLD.right_decision({**info, "expert_action": None}, "look") is None
