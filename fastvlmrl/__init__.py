"""fastvlmrl: fine-tune vision-language models as decision-making agents with RL, fast.

Importing the package is light: it imports neither torch, the games, the C extension nor (when
it is not installed) gymnasium, so `fastvlmrl.kernels` works on its own. Where gymnasium is
installed, the games' Gymnasium ids (`fastvlmrl/<Game>-v0`) are registered here; the games
themselves load when an env is made.
"""

from fastvlmrl import _checkout

_checkout.install()

from fastvlmrl import envs  # noqa: E402  (registers the Gymnasium ids, imports no game)

__all__ = ["envs"]
