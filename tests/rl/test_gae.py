import torch

from fastvlmrl.rl.gae import compute_gae


def _reference(rewards, values, dones, last_values, gamma, lam):
    """GAE written from its definition: A_t = sum_k (gamma lam)^k delta_{t+k}, stopping at episode ends."""
    T, N = rewards.shape
    adv = torch.zeros(T, N, dtype=torch.float64)
    for n in range(N):
        for t in range(T):
            total, factor = 0.0, 1.0
            for k in range(t, T):
                next_v = last_values[n] if k == T - 1 else values[k + 1, n]
                live = 0.0 if dones[k, n] else 1.0
                delta = rewards[k, n] + gamma * next_v * live - values[k, n]
                total += factor * delta
                if dones[k, n]:
                    break
                factor *= gamma * lam
            adv[t, n] = total
    return adv


def test_gae_matches_its_definition_on_random_rollouts():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        T, N = 7, 5
        rewards = torch.randn(T, N, generator=g, dtype=torch.float64)
        values = torch.randn(T, N, generator=g, dtype=torch.float64)
        dones = torch.rand(T, N, generator=g) < 0.3
        last = torch.randn(N, generator=g, dtype=torch.float64)
        adv, ret = compute_gae(rewards, values, dones, last, 0.9, 0.95)
        want = _reference(rewards, values, dones, last, 0.9, 0.95)
        torch.testing.assert_close(adv.double(), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ret.double(), want + values, atol=1e-5, rtol=1e-5)


def test_lambda_one_gives_discounted_returns_and_zero_gives_td_errors():
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[0.5], [0.2], [0.1]])
    dones = torch.tensor([[False], [False], [True]])
    last = torch.tensor([9.0])  # ignored: the episode ended
    _, ret = compute_gae(rewards, values, dones, last, 0.9, 1.0)
    torch.testing.assert_close(ret[:, 0], torch.tensor([1 + 0.81 * 2, 0.9 * 2, 2.0]))
    adv, _ = compute_gae(rewards, values, dones, last, 0.9, 0.0)
    torch.testing.assert_close(adv[:, 0], torch.tensor([1 + 0.9 * 0.2 - 0.5, 0.9 * 0.1 - 0.2, 2 - 0.1]))
