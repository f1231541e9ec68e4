"""Training over processes with torchrun (gloo on CPU): one PPO update split over 2 ranks gives
the parameters of 1 process with the global batch; a 2-rank tiny run writes one run directory,
resumes, and learns as the 1-rank run does; a rank that dies stops the job, the last checkpoint
intact. This file is also the worker torchrun starts (`python tests/test_distributed.py OUT`)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
TOY = ["sft.steps=2", "sft.demos=16", "sft.batch_size=4", "ppo.num_steps=2", "env.num_envs=4", "log.samples=4",
       "ppo.minibatch_size=8", "ppo.epochs=1", "sampling.max_new_tokens=12", "eval.episodes=4", "eval.start_states=false", "env.image_size=64",
       "run.threads=1"]


def _torchrun(args: list[str], nproc: int = 2, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTVLMRL_DIST_TIMEOUT_S": "120"}
    return subprocess.run([str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


# -- one update, split over ranks -------------------------------------------------------------

def _fixed_rollout(envs: range, num_envs: int):
    """A rollout of 2 steps x `num_envs` envs from the tiny VLM (the same for every process), kept
    for the envs in `envs`: prompts and replies of different lengths, rewards and dones fixed."""
    from fastvlmrl.build import build_encoder
    from fastvlmrl.models import load_policy
    from fastvlmrl.rl.batch import forward_logp_and_values, pack
    from fastvlmrl.rl.storage import RolloutStorage, Transition

    torch.manual_seed(0)
    policy, processor = load_policy(None, seed=0)
    torch.nn.init.normal_(policy.value_head.net[-1].weight, std=0.3)
    encoder = build_encoder(policy, processor, torch.float32)
    rng = np.random.default_rng(0)
    storage = RolloutStorage(2, len(envs), env_offset=envs.start if len(envs) else 0, global_envs=num_envs)
    rewards = rng.normal(size=(2, num_envs)).astype(np.float32)
    dones = rng.random((2, num_envs)) < 0.3
    for step in range(2):
        row = []
        for env in range(num_envs):
            frame = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            prompt_ids, mm = encoder.encode(frame, "NumberLine." + " x" * (env + step))
            reply = encoder.reply_ids('{"thoughts": "left", "action": "-"}'[: 10 + 4 * env + step])
            is_action = torch.zeros(len(reply), dtype=torch.bool)
            is_action[-3:] = True
            t = Transition(prompt_ids, mm, reply, logprobs=torch.zeros(len(reply)), is_action=is_action, value=0.0)
            with torch.no_grad():
                logp, value = forward_logp_and_values(policy, pack([t], encoder.pad_id, "cpu"), 1.0)
            t.logprobs, t.value = logp, float(value[0])
            row.append(t)
        keep = [row[e] for e in envs]
        storage.add(step, keep, rewards[step, list(envs)], dones[step, list(envs)])
    return policy, encoder, storage


def _whole(policy) -> dict[str, torch.Tensor]:
    """The policy's parameters, each whole (gathered when sharded)."""
    from torch.distributed.tensor import DTensor

    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone() for n, p in policy.named_parameters()}


def update_worker(out: Path) -> None:
    """One PPO update of the fixed rollout on this rank's envs (global: 4 envs x 2 steps, mini-batches
    of 3, so each rank's part of a mini-batch varies, possibly empty), then two SFT steps on
    batches of 5 (rank parts of 3 and 2), then the group algorithms' update of samples split
    unevenly over the ranks (5 and 3)."""
    from fastvlmrl import distributed, sharding
    from fastvlmrl.config import PPOConfig, SFTConfig
    from fastvlmrl.rl.ppo import ppo_update
    from fastvlmrl.rl.sft import sft_train

    world = distributed.init_from_environment("cpu")
    first, count = world.local_slice(4, "envs")
    policy, encoder, storage = _fixed_rollout(range(first, first + count), 4)
    fsdp = world.active and os.environ.get("FSDP") == "1"  # the same with the policy sharded (model.fsdp)
    if fsdp:
        sharding.shard(policy)
    cfg = PPOConfig(epochs=2, minibatch_size=3, micro_batch_size=1 if world.active else 0, value_clip=0.0, clip=0.2,
                    entropy_coef=0.01, max_grad_norm=1.0, loss_level=os.environ.get("LOSS_LEVEL", "sequence"))
    storage.finish(torch.zeros(count), 0.9, 0.95, normalize=True)
    # plain SGD: the parameters move by the gradients themselves (Adam's normalisation would blow
    # float32 summation-order noise in near-zero gradients up to a full step)
    optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    metrics = ppo_update(policy, optimizer, storage, cfg, temperature=1.0, pad_id=encoder.pad_id,
                         device="cpu", generator=torch.Generator().manual_seed(0))
    metrics.update(storage.critic_stats())
    after_ppo = _whole(policy)
    demos = [t for row in _fixed_rollout(range(4), 4)[2].transitions for t in row]  # the same 8 on every rank
    sft_train(policy, encoder, demos, SFTConfig(steps=2, batch_size=5, lr=1e-4, warmup_steps=1, checkpoint_every=0),
              device="cpu", seed=3)
    sft_params = _whole(policy)
    # the group algorithms' update: samples with given advantages, 8 in all, 5 on rank 0 and 3 on rank 1
    from fastvlmrl.rl.storage import SampleStorage

    policy, encoder, whole = _fixed_rollout(range(4), 4)
    if fsdp:
        sharding.shard(policy)
    flat = [t for row in whole.transitions for t in row]
    advantages = np.random.default_rng(1).normal(size=len(flat))
    samples = [(t, float(a), 0.0) for t, a in zip(flat, advantages)]
    groups = SampleStorage.for_world(samples if not world.active else samples[:5] if world.rank == 0 else samples[5:])
    optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    ppo_update(policy, optimizer, groups, dataclasses.replace(cfg, value_coef=0.0), temperature=1.0,
               pad_id=encoder.pad_id, device="cpu", generator=torch.Generator().manual_seed(0))
    torch.save({"params": after_ppo, "metrics": metrics, "advantages": storage.advantages,
                "sft_params": sft_params, "group_params": _whole(policy)},
               out / f"rank{world.rank}.pt")
    distributed.shutdown()


@pytest.mark.parametrize("loss_level,fsdp", [("sequence", "0"), ("token", "0"), ("sequence", "1")])
def test_an_update_over_two_ranks_is_the_single_process_update(tmp_path, loss_level, fsdp, monkeypatch):
    # fsdp=1: the policy sharded over the ranks (model.fsdp): the same parameters again
    monkeypatch.setenv("LOSS_LEVEL", loss_level)
    monkeypatch.setenv("FSDP", fsdp)
    result = _torchrun([__file__, str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    (tmp_path / "ddp").mkdir()
    for name in ("rank0.pt", "rank1.pt"):
        (tmp_path / name).rename(tmp_path / "ddp" / name)
    update_worker(tmp_path)  # the same in this process alone, with the whole rollout
    single = torch.load(tmp_path / "rank0.pt")
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1)]
    torch.testing.assert_close(torch.cat([r["advantages"] for r in ranks], dim=1), single["advantages"],
                               atol=1e-6, rtol=1e-5)  # normalised over the global rollout
    start = dict(_fixed_rollout(range(0), 4)[0].named_parameters())
    for key in ("params", "sft_params", "group_params"):
        for name, value in single[key].items():
            for r in ranks:
                torch.testing.assert_close(r[key][name], value, atol=1e-5, rtol=1e-4, msg=f"{key} {name}")
        assert sum(not torch.equal(value, start[name]) for name, value in single[key].items()) > 10  # it moved
    for key in ("actor/pg_loss", "critic/value_loss", "actor/entropy", "actor/approx_kl", "actor/grad_norm",
                "actor/clip_frac", "critic/explained_variance", "critic/value_mean", "actor/optimizer_steps"):
        for r in ranks:
            assert r["metrics"][key] == pytest.approx(single["metrics"][key], rel=1e-4, abs=1e-6), key


def test_what_several_processes_cannot_run_is_refused_before_work():
    from fastvlmrl.config import load_config
    from fastvlmrl.distributed import World
    from fastvlmrl.train import check_world

    two = World(rank=0, size=2)
    with pytest.raises(ValueError, match="env.num_envs=3 must be a multiple of the number of processes"):
        check_world(load_config(None, ["env.num_envs=3"]), two)
    with pytest.raises(ValueError, match="4 envs must be a multiple of algo.group_size=8"):
        check_world(load_config(None, ["algo.name=grpo", "env.num_envs=8", "algo.group_size=8"]), two)
    check_world(load_config(None, ["algo.name=gigpo", "env.num_envs=8", "algo.group_size=4"]), two)  # whole groups
    with pytest.raises(ValueError, match="model.fsdp=true shards the model over torchrun's processes"):
        check_world(load_config(None, ["model.fsdp=true"]), World())
    with pytest.raises(ValueError, match="frozen copy of the model, which model.fsdp does not shard"):
        check_world(load_config(None, ["model.fsdp=true", "ppo.kl_coef=0.1"]), two)
    with pytest.raises(ValueError, match="gtr.corrector=self swaps the teacher's weights"):
        check_world(load_config(None, ["model.fsdp=true", "gtr.enabled=true", "gtr.corrector=self"]), two)
    check_world(load_config(None, ["model.fsdp=true", "model.lora=true", "ppo.kl_coef=0.1", "sft.steps=0"]), two)
    check_world(load_config(None, ["env.num_envs=4", "ppo.minibatch_size=3"]), two)  # mini-batches stay global
    assert World().sum([1.0, 2]) == [1.0, 2.0] and World().gather("x") == ["x"]  # a world of one: identities


# -- whole runs ---------------------------------------------------------------------------------

def _train(out: Path, name: str, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    args = ["-m", "fastvlmrl", "train", *TOY, f"run.out_dir={out}", f"run.name={name}", *extra]
    if nproc == 1:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return _torchrun(args, nproc=nproc)


def test_a_two_rank_run_writes_one_run_and_resumes(tmp_path):
    # no SFT: its evaluation plays other episodes on 2 ranks than on 1 (the SFT itself is the single
    # process's: test_an_update_over_two_ranks_is_the_single_process_update)
    result = _train(tmp_path, "two", 2, "ppo.updates=2", "sft.steps=0")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "two"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in records if "update" in r]
    assert [r["update"] for r in updates] == [0, 1]  # one line per update: rank 0 writes alone
    assert updates[-1]["env_steps"] == 2 * 2 * 4  # the global envs' steps
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["step_2"]
    assert result.stdout.count("run: ") == 1  # one report, rank 0's
    resumed = _torchrun(["-m", "fastvlmrl", "train", f"resume={run}", "ppo.updates=3"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    updates = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in updates if "update" in r] == [0, 1, 2]
    # on another number of processes: the weights and schedule go on, the envs start fresh episodes
    alone = subprocess.run([sys.executable, "-m", "fastvlmrl", "train", f"resume={run}", "ppo.updates=4"], cwd=ROOT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "written by 2 process(es), this run has 1" in alone.stdout
    after = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in after if "update" in r] == [0, 1, 2, 3]
    single = _train(tmp_path, "one", 1, "ppo.updates=2", "sft.steps=0")
    assert single.returncode == 0, single.stderr[-3000:]
    # each rank's envs start as those envs of the single process and sample with their seeds: the
    # first replies of all 4 envs are the single process's (later steps differ: the random actions
    # that stand in for illegal replies come from each rank's own stream)
    first = [[json.loads(line) for line in (tmp_path / name / "samples.jsonl").read_text().splitlines()
              if json.loads(line).get("update") == 0] for name in ("two", "one")]
    assert [s["env"] for s in first[0]] == [0, 1, 2, 3]
    assert [(s["env"], s["output"]) for s in first[0]] == [(s["env"], s["output"]) for s in first[1]]
    evals = [json.loads((tmp_path / name / "eval.json").read_text()) for name in ("two", "one")]
    assert evals[0]["episodes"] == evals[1]["episodes"] == 4  # pooled over the ranks


def test_a_group_run_over_two_ranks_plays_the_single_process_groups(tmp_path):
    # 8 envs in groups of 2: ranks of 4 envs, two whole groups each
    group = ["algo.name=gigpo", "algo.group_size=2", "env.num_envs=8", "algo.max_episode_steps=3", "ppo.updates=2",
             "sft.steps=0", "log.samples=8"]
    runs = {"two": _train(tmp_path, "two", 2, *group), "one": _train(tmp_path, "one", 1, *group)}
    for name, result in runs.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    records = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                      if "update" in json.loads(line)] for name in runs}
    assert [r["update"] for r in records["two"]] == [0, 1]  # rank 0 writes alone
    first = {name: records[name][0] for name in runs}
    # the first update's episodes are the single process's: the same starts per group, the same
    # first replies; the env steps and episodes are counted over both ranks
    assert first["two"]["rollout/episodes"] == first["one"]["rollout/episodes"] == 8
    samples = {name: [json.loads(line) for line in (tmp_path / name / "samples.jsonl").read_text().splitlines()
                      if json.loads(line).get("update") == 0][:8] for name in runs}
    assert [(s["env"], s["state"], s["output"]) for s in samples["two"]] == \
        [(s["env"], s["state"], s["output"]) for s in samples["one"]]
    assert 8 <= first["two"]["env_steps"] <= 8 * 3


def test_an_fsdp_run_is_the_ddp_run_and_resumes_anywhere(tmp_path):
    from safetensors.torch import load_file

    # the same run with the model sharded (model.fsdp) and replicated: the same replies and weights
    runs = {name: _train(tmp_path, name, 2, "ppo.updates=2", f"model.fsdp={fsdp}")
            for name, fsdp in (("fsdp", "true"), ("ddp", "false"))}
    for name, result in runs.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    assert "FSDP: 6 units sharded over 2 processes" in runs["fsdp"].stdout

    def weights(name, step):
        folder = tmp_path / name / "checkpoints" / f"step_{step}"
        return {**load_file(folder / "model" / "model.safetensors"), **load_file(folder / "value_head.safetensors")}

    def replies(name):
        return [json.loads(line)["output"] for line in (tmp_path / name / "samples.jsonl").read_text().splitlines()]

    assert replies("fsdp") == replies("ddp")
    sharded, replicated = weights("fsdp", 2), weights("ddp", 2)
    assert sharded.keys() == replicated.keys()  # the checkpoint is written whole, as one process writes it
    for key, value in replicated.items():
        torch.testing.assert_close(sharded[key], value, atol=1e-5, rtol=1e-4, msg=key)
    # resumed sharded on 2 ranks (the optimizer's moments sharded again), then on 1 process without FSDP
    for name in ("fsdp", "ddp"):
        resumed = _torchrun(["-m", "fastvlmrl", "train", f"resume={tmp_path / name}", "ppo.updates=3"])
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    sharded, replicated = weights("fsdp", 3), weights("ddp", 3)
    for key, value in replicated.items():
        torch.testing.assert_close(sharded[key], value, atol=1e-5, rtol=1e-4, msg=key)
    alone = subprocess.run([sys.executable, "-m", "fastvlmrl", "train", f"resume={tmp_path / 'fsdp'}", "ppo.updates=4",
                            "model.fsdp=false"], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert (tmp_path / "fsdp" / "checkpoints" / "step_4").is_dir()


def test_a_rank_that_dies_stops_the_job_and_leaves_the_checkpoint_intact(tmp_path):
    from fastvlmrl.checkpoint import latest_checkpoint, verify_checkpoint

    args = ["-m", "fastvlmrl", "train", *TOY, "sft.steps=0", "ppo.updates=50", "log.checkpoint_every=1",
            f"run.out_dir={tmp_path}", "run.name=dies"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTVLMRL_DIST_TIMEOUT_S": "60"}
    job = subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc-per-node=2", *args], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        latest = tmp_path / "dies" / "checkpoints" / "latest"
        deadline = time.monotonic() + 240
        while not latest.is_file() and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.5)
        assert latest.is_file(), "no checkpoint was written"
        workers = _children(job.pid)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)  # one rank dies mid-run
        killed = time.monotonic()
        job.wait(timeout=120)
        assert job.returncode != 0 and time.monotonic() - killed < 120
    finally:
        if job.poll() is None:
            job.kill()
    checkpoint = latest_checkpoint(tmp_path / "dies")
    verify_checkpoint(checkpoint)  # the manifest's files and checksums


def test_the_slurm_script_starts_a_job(tmp_path):
    """scripts/slurm.sh with stand-ins for srun and scontrol (one node, two CPU processes)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho 127.0.0.1\n")
    (bin_dir / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{TORCHRUN.parent}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node1",
           "SLURM_NNODES": "1", "SLURM_JOB_ID": "7", "GPUS_PER_NODE": "2", "PORT": "29731", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "scripts/slurm.sh", *TOY, "sft.steps=0", "ppo.updates=1",
                             f"run.out_dir={tmp_path}", "run.name=slurm"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes 2 (gloo)" in result.stdout and (tmp_path / "slurm" / "eval.json").is_file()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if not path.is_file():
        pytest.skip("no /proc/<pid>/task/<pid>/children here to find torchrun's workers")
    return [int(c) for c in path.read_text().split()]


if __name__ == "__main__":
    update_worker(Path(sys.argv[1]))


LAUNCH_SCRIPTED = """
import sys
sys.path.insert(0, {tests!r})
from scripted import scripted_generate
from fastvlmrl.cli import main
from fastvlmrl.engine import Engine
TEXT = '{{"cards": [1, 2, 3, 4], "current formula": "", "thoughts": "so I append 1.", "action": "1"}}'
Engine.generate_requests = scripted_generate(Engine.generate_requests, TEXT)
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_gtr_runs_over_two_ranks(tmp_path):
    """GTR's collectives (the guide's counts, the cloning batch's token total) line up over ranks:
    the replies are scripted (valid JSON, wrong thoughts) so that corrections are cloned."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCH_SCRIPTED.format(tests=str(Path(__file__).parent)))
    result = _torchrun([str(launcher), "train", *TOY, f"run.out_dir={tmp_path}", "run.name=gtr", "ppo.updates=2",
                        "sft.steps=0", "env.name=Points24", "gtr.enabled=true", "gtr.truncate_off_path=true"])
    assert result.returncode == 0, result.stderr[-3000:]
    updates = [json.loads(line) for line in (tmp_path / "gtr" / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in updates if "update" in r]
    assert len(updates) == 2 and all(r["gtr/sft_steps"] > 0 for r in updates)
    assert updates[-1]["gtr/buffer_added"] > 0 and updates[0]["thought/valid_json_rate"] == 1.0
