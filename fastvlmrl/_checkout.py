"""A plain checkout (not pip-installed): the top-level `kernels/` and `configs/` as
`fastvlmrl.kernels` and `fastvlmrl.configs`.

pyproject.toml installs those two folders under the package (setuptools `package-dir`), so an
installed or editable fastvlmrl finds them by itself. A checkout put on `sys.path` as it is (the
GPU machine's copy of the working tree, a project that vendors the repository) has no such
mapping: this finder, placed last on `sys.meta_path`, supplies it, and only for those two names.

With the checkout's root itself on `sys.path` (`python -m fastvlmrl` or `torchrun -m fastvlmrl`
started there), the top-level `kernels/` would also shadow the PyPI package `kernels`, which
transformers (>= 5.25) imports: `install` moves the root to the end of `sys.path`, so installed
packages come first and the checkout stays importable (by the processes it spawns too).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
_FOLDERS = {"fastvlmrl.kernels": _ROOT / "kernels", "fastvlmrl.configs": _ROOT / "configs"}


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        folder = _FOLDERS.get(name)
        if folder is None or not (folder / "__init__.py").is_file():
            return None
        return importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


def install() -> None:
    """Put the finder last on `sys.meta_path` (once): installed packages are found first."""
    if not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.append(_CheckoutFinder())
    roots = [entry for entry in sys.path if _is_root(entry)]
    sys.path[:] = [entry for entry in sys.path if not _is_root(entry)] + roots


def _is_root(entry: str) -> bool:
    try:
        return Path(entry or ".").resolve() == _ROOT
    except (OSError, RuntimeError):
        return False
