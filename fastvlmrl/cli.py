"""The `fastvlmrl` command.

    fastvlmrl train [config.yaml | preset] [section.key=value ...]   (default preset: tiny/numberline)
    fastvlmrl train ... --print-config                                (the resolved settings; no training)
    fastvlmrl config [config.yaml | preset] [section.key=value ...]  (every key with its value and doc)
    fastvlmrl train resume=RUN_DIR [section.key=value ...]           (continue from its latest checkpoint)
    fastvlmrl sft [config.yaml | preset] [section.key=value ...]     (SFT on oracle demonstrations only)
    fastvlmrl eval RUN_DIR [--checkpoint step_N] [eval.episodes=N ...]
    fastvlmrl envs [--game NAME] [--policy oracle|random] [--episodes N] [--num-envs N] [--threads T]
    fastvlmrl render RUN_DIR [--checkpoint step_N] [--episodes N] [--seed S] --out ep.gif|ep.png
    fastvlmrl render --game NAME [--policy oracle|random] [--seed S] --out episode.png|.gif
    fastvlmrl plot RUN_DIR... --out runs.png [--x steps|time]       (overlay runs; seeds as mean and band)
    fastvlmrl export RUN_DIR OUT_DIR [--checkpoint step_N]            (a Hugging Face model directory, LoRA merged)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def cmd_envs(args) -> int:
    """Play episodes of each game with a policy on the C batch; print success, return, length and
    steps/s, both as played (SameStep, final frames copied) and zero-copy (NextStep, copy=False)."""
    from tqdm import tqdm

    from fastvlmrl.envs import GAMES, get_game
    from fastvlmrl.envs.play import play, reply_policy, zero_copy_steps_per_second
    from fastvlmrl.envs.vector import make_batch

    names = [get_game(args.game).name] if args.game else list(GAMES)
    policy = reply_policy(args.policy, args.seed)
    print(f"{'game':<11} {'success':>8} {'return':>8} {'length':>7} {'episodes':>9} {'steps/s':>10} {'zero-copy':>10}")
    for name in names:
        envs = make_batch(name, args.num_envs, copy=False, num_threads=args.threads, autoreset_mode="SameStep")
        with tqdm(total=args.episodes, desc=name, leave=False, disable=not sys.stderr.isatty()) as bar:
            wins = []

            def on_episode(ret, length):
                wins.append(ret > 0)
                bar.update(1)
                bar.set_postfix(success=f"{sum(wins) / len(wins):.3f}")

            result = play(envs, lambda game, info: policy(game, info).action, args.episodes, seed=args.seed,
                          on_episode=on_episode)
        envs.close()
        zero_copy = zero_copy_steps_per_second(name, args.num_envs, num_threads=args.threads, seed=args.seed)
        n = args.episodes
        print(f"{name:<11} {result.success_rate(n):>8.3f} {result.mean_return(n):>8.2f} {result.mean_length(n):>7.2f} "
              f"{len(result.returns[:n]):>9} {result.steps_per_second:>10,.0f} {zero_copy:>10,.0f}")
    print(f"steps/s of step() alone, {args.num_envs} envs, 300x300 frames: as played (SameStep, final frames copied "
          "out); zero-copy: NextStep, copy=False, random actions (bench/test_bench_envs.py)")
    return 0


def cmd_render(args) -> int:
    """Play episodes and draw every step with its reply: a run's checkpoint (RUN_DIR), or a
    game's oracle or random policy (--game)."""
    from fastvlmrl.envs.strip import check_picture_path

    check_picture_path(args.out)  # before anything is loaded or played
    if args.run_dir is not None:
        from fastvlmrl.render import render_run

        if args.game is not None:
            raise ValueError("render: give a run directory or --game, not both (a run plays its own game)")
        print(render_run(args.run_dir, args.out, checkpoint=args.checkpoint, episodes=args.episodes, seed=args.seed,
                         max_steps=args.max_steps))
        return 0
    if args.game is None:
        raise ValueError("render: give a run directory (its model plays) or --game NAME (an oracle or random policy)")
    from fastvlmrl.envs import get_game
    from fastvlmrl.envs.play import reply_policy
    from fastvlmrl.envs.strip import episode_strip
    from fastvlmrl.envs.vector import make_batch

    game = get_game(args.game)
    envs = make_batch(game.name, 1, autoreset_mode="Disabled", height=args.size, width=args.size)
    obs, _ = envs.reset(seed=args.seed)
    policy = reply_policy(args.policy, args.seed)
    frames, texts, total = [obs[0]], [], 0.0
    for _ in range(args.max_steps):
        step = policy(game, envs.describe(0))
        texts.append(step.text)
        obs, reward, terminated, truncated, _ = envs.step(np.array([step.action]))
        total += float(reward[0])
        if terminated[0] or truncated[0]:
            break
        frames.append(obs[0])
    envs.close()
    episode_strip(frames, texts, args.out)
    print(f"wrote {args.out}: {len(texts)} steps, return {total:g}")
    return 0


DEFAULT_PRESET = "tiny/numberline"


def _config_from(args, check_model_files: bool = True):
    """A config file or preset name (default: the tiny NumberLine preset), then key=value overrides."""
    from pathlib import Path

    from fastvlmrl.config import load_config
    from fastvlmrl.configs import preset_path

    settings = list(args.settings)
    source = settings.pop(0) if settings and "=" not in settings[0] else DEFAULT_PRESET
    if Path(source).is_file():
        path = Path(source)
    else:
        try:
            path = preset_path(source.removesuffix(".yaml"))
        except ValueError as error:
            if "." in source and "/" not in source and not source.endswith(".yaml"):  # `ppo.clip 0.2`
                value = settings[0] if settings and "=" not in settings[0] else "VALUE"
                raise ValueError(f"{source!r} is neither a config file nor a preset; settings are written "
                                 f"key=value: did you mean {source}={value}?") from None
            raise ValueError(str(error)) from None
    loose = [text for text in settings if "=" not in text]
    if loose:
        raise ValueError(f"{loose[0]!r} is not key=value (only the first setting may name a config file or preset)")
    return load_config(path, settings, check_model_files=check_model_files)


def cmd_train(args) -> int:
    """Train with PPO (after the SFT warm start if sft.steps > 0), or continue a stopped run with
    resume=RUN_DIR; print where the run went."""
    from pathlib import Path

    from fastvlmrl.checkpoint import check_resume_overrides
    from fastvlmrl.config import load_config
    from fastvlmrl.config_io import describe_config
    from fastvlmrl.train import train

    resumes = [a for a in args.settings if a.startswith("resume=")]
    if not resumes:
        cfg = _with_free_name(_config_from(args), args.settings)
        if args.print_config:  # a dry run: what would train, and where
            print("\n".join(describe_config(cfg)))
            return 0
        return _report(train(cfg))
    overrides = [a for a in args.settings if not a.startswith("resume=")]
    if len(resumes) > 1 or (overrides and "=" not in overrides[0]):
        raise ValueError("resume=RUN_DIR takes the run's own config: give one run directory and only key=value overrides")
    check_resume_overrides(overrides)
    run_dir = Path(resumes[0].removeprefix("resume="))
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", overrides)
    if args.print_config:
        print("\n".join(describe_config(cfg)))
        return 0
    return _report(train(cfg, run_dir=run_dir, resume=True))


def _with_free_name(cfg, settings):
    """A run name from the preset or config file is a default: a second run of it gets the next
    free `name-N`. A run.name given on the command line is the user's: a run there is refused."""
    from fastvlmrl.run_dir import free_run_name

    if not any(s.startswith("run.name=") for s in settings):
        cfg.run.name = free_run_name(cfg.run.out_dir, cfg.run.name)
    return cfg


def _rank_tag() -> str:
    """' [rank R]' in a process torchrun started other than rank 0, else ''."""
    rank = int(os.environ.get("RANK", "0"))
    return f" [rank {rank}]" if rank else ""


def _report(run_dir) -> int:
    if _rank_tag():  # under torchrun rank 0 reports for the job
        return 0
    result = json.loads((run_dir / "eval.json").read_text())
    interval = (f" (95% interval {result['success_ci95_low']:.3f}-{result['success_ci95_high']:.3f})"
                if "success_ci95_low" in result else "")
    print(f"run: {run_dir}  eval success_rate {result['success_rate']:.3f}{interval} over {result['episodes']} episodes")
    return 0


def cmd_config(args) -> int:
    """Print every config key with its value (the preset's or file's, then the overrides) and doc."""
    from fastvlmrl.config_io import describe_config

    print("\n".join(describe_config(_config_from(args))))
    return 0


def cmd_export(args) -> int:
    """A run's checkpoint as a standard Hugging Face model directory (LoRA merged), value head beside it."""
    from fastvlmrl.export import export_run

    out = export_run(args.run_dir, args.out_dir, checkpoint=args.checkpoint)
    print(f"wrote {out}: AutoModelForImageTextToText.from_pretrained({str(out)!r}) loads it; "
          "value_head.safetensors holds the critic")
    return 0


def cmd_sft(args) -> int:
    """Supervised fine-tuning on oracle demonstrations only (train with ppo.updates=0)."""
    from fastvlmrl.train import train

    args.settings = list(args.settings) + ["ppo.updates=0"]
    cfg = _with_free_name(_config_from(args), args.settings)
    if cfg.sft.steps == 0:
        raise ValueError("sft.steps is 0: set sft.steps=N to train on N batches of demonstrations")
    return _report(train(cfg))


def cmd_eval(args) -> int:
    """Evaluate a run's checkpoint on fresh seeds; writes eval/<checkpoint>_<episodes>ep.json."""
    from fastvlmrl.evaluate import evaluate_run

    result, path = evaluate_run(args.run_dir, list(args.settings), checkpoint=args.checkpoint)
    print(json.dumps(result))
    print(f"wrote {path}")
    return 0


def cmd_plot(args) -> int:
    """Overlay runs' curves in one picture; runs that differ only in run.seed as a mean with a band."""
    from pathlib import Path

    from fastvlmrl.curves import group_runs, plot_runs

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must end in .png, got {args.out!r}")
    if not out.parent.is_dir():
        raise ValueError(f"--out: the directory {out.parent} does not exist")
    plot_runs([Path(d) for d in args.run_dirs], out, x=args.x)
    groups = group_runs([Path(d) for d in args.run_dirs])
    print(f"wrote {out}: {len(args.run_dirs)} runs in {len(groups)} configurations")
    return 0


def cmd_plan(args) -> int:
    """The estimated peak memory of the run's rollout and update, and whether it fits each GPU size."""
    from fastvlmrl.plan import describe_plan, plan_run

    cfg = _config_from(args, check_model_files=args.model is None)
    if args.processes < 1:
        raise ValueError(f"--processes must be at least 1, got {args.processes}")
    print("\n".join(describe_plan(cfg, plan_run(cfg, args.model, args.processes), args.gpu_gb)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvlmrl", description=__doc__.split("\n")[0],
                                     epilog="fastvlmrl config [preset] lists every setting with its default and doc")
    parser.add_argument("--version", action="version", version=f"fastvlmrl {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="list every setting (key, value, doc) of a preset or config file")
    config.add_argument("settings", nargs="*", help="a YAML config file or a preset (default tiny/numberline), "
                                                    "then section.key=value overrides")
    config.set_defaults(func=cmd_config)

    train = sub.add_parser("train", help="fine-tune a VLM agent with PPO (the tiny VLM on NumberLine by default)")
    train.add_argument("settings", nargs="*",
                       help="a YAML config file or a preset (tiny/numberline, rl4vlm/points24, ...; default "
                            "tiny/numberline), then section.key=value overrides; or resume=RUN_DIR to continue "
                            "a stopped run from its latest checkpoint")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved settings (every key with its doc) and exit without training")
    train.set_defaults(func=cmd_train)

    sft = sub.add_parser("sft", help="supervised fine-tuning on (optionally noisy) oracle demonstrations only")
    sft.add_argument("settings", nargs="*", help="as for train; sft.* keys set the demonstrations and steps")
    sft.set_defaults(func=cmd_sft)

    evaluate = sub.add_parser("eval", help="play episodes with a run's checkpoint; write eval/<checkpoint>_<N>ep.json")
    evaluate.add_argument("run_dir", help="a run directory (runs/<name>)")
    evaluate.add_argument("--checkpoint", help="step_N (default: the run's latest)")
    evaluate.add_argument("settings", nargs="*", help="section.key=value overrides, e.g. eval.episodes=1000")
    evaluate.set_defaults(func=cmd_eval)

    envs = sub.add_parser("envs", help="play the games with an oracle or random policy and print statistics")
    envs.add_argument("--game", help="one game (default: all four)")
    envs.add_argument("--policy", choices=["oracle", "random"], default="oracle")
    envs.add_argument("--episodes", type=_positive, default=2000)
    envs.add_argument("--num-envs", type=_positive, default=64)
    envs.add_argument("--threads", type=_positive, default=1)
    envs.add_argument("--seed", type=int, default=0)
    envs.set_defaults(func=cmd_envs)

    render = sub.add_parser("render", help="draw episodes with every reply: a run's model (RUN_DIR) or a policy (--game)")
    render.add_argument("run_dir", nargs="?", help="a run directory: its checkpoint plays (greedy, eval.temperature)")
    render.add_argument("--checkpoint", help="step_N (default: the run's latest)")
    render.add_argument("--episodes", type=_positive, default=2, help="episodes to play with a run (env i: seed + i)")
    render.add_argument("--game", help="without a run: the game an oracle or random policy plays")
    render.add_argument("--policy", choices=["oracle", "random"], default="oracle")
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--size", type=_positive, default=300, help="frame side in pixels (--game)")
    render.add_argument("--max-steps", type=_positive, default=30)
    render.add_argument("--out", required=True, help="output path: .png (contact sheet) or .gif (animation)")
    render.set_defaults(func=cmd_render)

    export = sub.add_parser("export", help="write a run's checkpoint as a Hugging Face model directory (LoRA merged)")
    export.add_argument("run_dir", help="a run directory (runs/<name>)")
    export.add_argument("out_dir", help="a new (or empty) directory")
    export.add_argument("--checkpoint", help="step_N (default: the run's latest)")
    export.set_defaults(func=cmd_export)

    plan = sub.add_parser("plan", help="estimate a run's peak GPU memory (rollout and update) before launching it")
    plan.add_argument("settings", nargs="*", help="a YAML config file or a preset, then section.key=value overrides")
    plan.add_argument("--model", help="a named architecture instead of model.path (no files needed): "
                                      "llava-1.5-7b, llava-1.6-mistral-7b, qwen2-vl-2b, qwen2-vl-7b")
    plan.add_argument("--gpu-gb", type=float, nargs="+", default=[24, 40, 80], help="GPU sizes to check (GB)")
    plan.add_argument("--processes", type=int, default=1,
                      help="torchrun processes (GPUs) the run is spread over: the estimate is one process's "
                           "(its envs, its share of each mini-batch; with model.fsdp=true, its shard)")
    plan.set_defaults(func=cmd_plan)

    alf = sub.add_parser("alfworld-generate", help="write generated ALFWorld games (ALFWorld's layout) into a directory")
    alf.add_argument("out_dir", help="where the splits go (OUT_DIR/train, OUT_DIR/valid_seen, ...)")
    alf.add_argument("--games", type=_positive, default=120, help="games in the train split")
    alf.add_argument("--eval-games", type=_positive, default=30, help="games in each evaluation split")
    alf.add_argument("--tasks", default="pick,look,clean,heat,cool,pick2",
                     help="task types, comma-separated (names, short names or 1..6), drawn in turn")
    alf.add_argument("--splits", nargs="+", default=["train", "valid_seen", "valid_unseen"],
                     choices=["train", "valid_seen", "valid_unseen"])
    alf.add_argument("--seed", type=int, default=0)
    alf.set_defaults(func=cmd_alfworld_generate)

    plot = sub.add_parser("plot", help="overlay the curves of runs (seeds of one setting as mean and band)")
    plot.add_argument("run_dirs", nargs="+", help="run directories (runs/<name>)")
    plot.add_argument("--out", required=True, help="output path ending in .png")
    plot.add_argument("--x", choices=["steps", "time"], default="steps", help="env steps or wall time (minutes)")
    plot.set_defaults(func=cmd_plot)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fastvlmrl")
    except PackageNotFoundError:  # a plain checkout, not installed
        return "unknown (not installed)"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def cmd_alfworld_generate(args) -> int:
    """Write generated ALFWorld games (ALFWorld's layout) for training and tests without the dataset."""
    from fastvlmrl.envs.alfworld.engine import require_alfworld
    from fastvlmrl.envs.alfworld.generate import generate

    try:
        require_alfworld()
    except ModuleNotFoundError as e:
        raise ValueError(str(e)) from None
    tasks = [t for t in args.tasks.split(",") if t.strip()]
    for split in args.splits:
        count = args.games if split == "train" else args.eval_games
        paths = generate(args.out_dir, count, task_types=tasks, seed=args.seed, split=split)
        print(f"{split}: {len(paths)} games in {os.path.join(args.out_dir, split)}")
    print(f"train on them with env.alfworld.data_path={args.out_dir} (generated games: not comparable with "
          "published ALFWorld numbers)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from fastvlmrl.console import quiet_libraries

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value settings after an option (`eval RUN --checkpoint step_2 eval.episodes=9`) are still settings
    if extra and hasattr(args, "settings") and all("=" in e and not e.startswith("-") for e in extra):
        args.settings = list(args.settings) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("train", "sft", "eval", "render", "export", "plan"):  # the commands that load a model
        quiet_libraries()
    from fastvlmrl.run_dir import RunStopped

    try:
        return args.func(args)
    except ValueError as error:  # a user-fixable problem: one clear line, no traceback
        print(f"fastvlmrl {args.command}{_rank_tag()}: error: {error}", file=sys.stderr)
        return 2
    except RunStopped as stopped:  # Ctrl-C or SIGTERM, at a safe point (every rank stops together)
        if not _rank_tag():
            print(f"fastvlmrl {args.command}: {stopped}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fastvlmrl config | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:  # a second Ctrl-C: at once
        print(f"fastvlmrl {args.command}: interrupted (the latest checkpoint, if any, is intact: "
              "resume=RUN_DIR continues from it)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
