"""The package's top level is light: `fastvlmrl.kernels` needs neither gymnasium nor the C
extension, and works from a plain checkout (the GPU machine's copy of the working tree)."""

import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A meta-path finder that makes these imports fail as if the packages were not installed.
BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r} or name in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
sys.meta_path.insert(0, Block())
"""

KERNEL_CALL = """
import torch
from fastvlmrl.kernels import fused_linear_logprob, ppo_clip_loss
h, w = torch.randn(5, 8, dtype=torch.float64), torch.randn(11, 8, dtype=torch.float64)
t = torch.randint(0, 11, (5,))
eager = torch.log_softmax(h @ w.T, dim=-1).gather(1, t[:, None])[:, 0]
assert torch.allclose(fused_linear_logprob(h, w, t), eager)
"""


def run(code: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, *args, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_fastvlmrl_loads_no_game_no_torch_no_extension():
    out = run("""
        import sys, fastvlmrl, gymnasium
        heavy = [m for m in sys.modules if m.startswith(("torch", "transformers", "fastvlmrl.envs.games",
                 "fastvlmrl.envs._cards", "fastvlmrl.envs.vector"))]
        print(heavy)
        print("fastvlmrl/Points24-v0" in gymnasium.registry)
    """)
    assert out.split("\n")[:2] == ["[]", "True"]


def test_the_games_still_load_on_first_use():
    out = run("""
        import fastvlmrl.envs as envs, gymnasium
        print(tuple(envs.GAMES) == envs.GAME_NAMES, envs.get_game("points24").name)
        print(type(gymnasium.make_vec("fastvlmrl/NumberLine-v0", num_envs=2)).__name__)
        print(envs.NumberLineVectorEnv.__name__)
    """)
    assert out.split("\n")[:3] == ["True Points24", "NumberLineVectorEnv", "NumberLineVectorEnv"]


def test_kernels_without_gymnasium_or_the_c_extension():
    blocked = ["gymnasium", "fastvlmrl.envs._cards", "transformers", "peft", "omegaconf"]
    out = run(BLOCK.format(blocked=blocked) + KERNEL_CALL + """
import fastvlmrl, sys
print(fastvlmrl.envs.register(), sorted(m for m in sys.modules if m.startswith("fastvlmrl.envs.")))
""")
    assert out.strip() == "False []"


def test_kernels_and_presets_from_a_plain_checkout(tmp_path):
    """No install, no .pth files (python -S): the checkout's own folders on sys.path, torch from
    site-packages."""
    for folder in ("fastvlmrl", "kernels", "configs"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    paths = [str(tmp_path), *site.getsitepackages()]
    out = run(f"import sys; sys.path[:0] = {paths!r}\n" + BLOCK.format(blocked=["fastvlmrl.envs._cards"])
              + KERNEL_CALL + """
import fastvlmrl.kernels, fastvlmrl.configs
print(fastvlmrl.kernels.__file__)
print(fastvlmrl.configs.preset_path("tiny/numberline"))
""", "-S")
    kernels_file, preset = out.split("\n")[:2]
    assert kernels_file == str(tmp_path / "kernels" / "__init__.py")
    assert preset == str(tmp_path / "configs" / "tiny" / "numberline.yaml")


def test_an_unknown_name_is_an_attribute_error():
    import fastvlmrl.envs

    try:
        fastvlmrl.envs.NoSuchGame  # noqa: B018
    except AttributeError as e:
        assert "NoSuchGame" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_the_checkout_root_does_not_shadow_the_pypi_kernels_package():
    """`python -m fastvlmrl` (and torchrun -m) from the checkout's root put the root first on
    sys.path, where the top-level kernels/ would be found before the PyPI `kernels` that
    transformers (>= 5.25) imports. Where that package is not installed there is nothing to shadow."""
    code = textwrap.dedent("""
        import importlib.machinery, importlib.util, sys
        from pathlib import Path
        root = Path.cwd().resolve()
        installed = importlib.machinery.PathFinder.find_spec(
            "kernels", [p for p in sys.path if Path(p or ".").resolve() != root])
        import fastvlmrl
        found = importlib.util.find_spec("kernels")
        print(installed.origin if installed else None, found.origin if found else None)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    installed, found = out.stdout.split()
    if installed != "None":
        assert found == installed
