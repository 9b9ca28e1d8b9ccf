"""Each loss against numbers worked out by hand in the comments, and against TRL's own code where
TRL has it (per-token log-probs, entropy)."""
from __future__ import annotations

import math

import pytest
import torch

from training.losses import (
    AdaptiveKLController,
    RunningMoments,
    entropy_from_logits,
    gae,
    kl_penalty_rewards,
    last_token_index,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    token_logprobs,
    whiten,
)


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


def test_masked_mean_overall_and_per_row():
    x = torch.tensor([[1.0, 2.0, 100.0], [4.0, 6.0, 8.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert close(masked_mean(x, mask), (1 + 2 + 4 + 6 + 8) / 5)  # 4.2
    assert close(masked_mean(x, mask, dim=1), [1.5, 6.0])


def test_token_logprobs_matches_trl_selective_log_softmax():
    from trl.trainer.utils import selective_log_softmax

    torch.manual_seed(1)
    logits, labels = torch.randn(2, 3, 7), torch.randint(0, 7, (2, 3))
    assert close(token_logprobs(logits, labels), selective_log_softmax(logits, labels))
    # by hand: logits (0, log 3) → p = (1/4, 3/4)
    two = torch.tensor([[[0.0, math.log(3)]]])
    assert close(token_logprobs(two, torch.tensor([[1]])), [[math.log(0.75)]])


def test_entropy_by_hand_and_against_trl():
    from trl.trainer.utils import entropy_from_logits as trl_entropy

    # p = (½, ½): H = log 2 = 0.693147; p = (¼, ¾): H = ¼ log 4 + ¾ log(4/3) = 0.562335
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3)]]])
    assert close(entropy_from_logits(logits, torch.tensor([[1, 1]])), (0.693147 + 0.562335) / 2)
    assert close(entropy_from_logits(logits, torch.tensor([[1, 0]])), 0.693147)
    torch.manual_seed(2)
    random_logits, mask = torch.randn(2, 4, 9), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert close(entropy_from_logits(random_logits, mask), masked_mean(trl_entropy(random_logits), mask))


def test_whiten_by_hand():
    # real values 1, 2, 3, 4: mean 2.5, population variance 1.25
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    s = math.sqrt(1.25)
    assert close(whiten(x, mask), [[-1.5 / s, -0.5 / s, 0.5 / s], [1.5 / s, 0.0, 0.0]])


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 1, 0, 0]


def test_kl_penalty_rewards_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # kl = [[0.5, 0, −1], [1, 0, (pad)]]; r = −0.1·kl, plus score 1 at t=2 of row 1 and score 2 at t=1 of row 2
    rewards, kl = kl_penalty_rewards(torch.tensor([1.0, 2.0]), logprobs, ref, mask, beta=0.1)
    assert close(kl, [[0.5, 0.0, -1.0], [1.0, 0.0, 0.0]])
    assert close(rewards, [[-0.05, 0.0, 1.1], [-0.1, 2.0, 0.0]])


def test_gae_by_hand():
    # γ = 0.9, λ = 0.5, so γλ = 0.45.
    # row 1: r = (0, 0, 1), V = 0.5 everywhere, all real.
    #   t=2: δ = 1 − 0.5 = 0.5,                 Â = 0.5
    #   t=1: δ = 0 + 0.9·0.5 − 0.5 = −0.05,     Â = −0.05 + 0.45·0.5 = 0.175
    #   t=0: δ = −0.05,                          Â = −0.05 + 0.45·0.175 = 0.02875
    # row 2: r = (0, 2, pad), V = (1, 1, pad): the episode ends at t=1.
    #   t=1: δ = 2 + 0 − 1 = 1,                  Â = 1
    #   t=0: δ = 0 + 0.9·1 − 1 = −0.1,           Â = −0.1 + 0.45·1 = 0.35
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert close(advantages, [[0.02875, 0.175, 0.5], [0.35, 1.0, 0.0]])
    assert close(returns, [[0.52875, 0.675, 1.0], [1.35, 2.0, 0.0]])


def test_gae_with_lambda_one_is_the_discounted_return_minus_value():
    rewards, values, mask = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.3, -0.2, 0.7]]), torch.ones(1, 3)
    _, returns = gae(rewards, values, mask, gamma=0.5, lam=1.0)
    assert close(returns, [[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]])  # Monte-Carlo returns: 2.75, 3.5, 3


def test_ppo_policy_loss_by_hand():
    # ratios 1.5, 0.5, 1.0 with advantages 1, 1, −2 and ε = 0.2:
    #   t0: max(−1.5, −1.2) = −1.2 (clipped);  t1: max(−0.5, −0.8) = −0.5;  t2: max(2, 2) = 2
    #   loss = (−1.2 − 0.5 + 2) / 3 = 0.1; clip fraction 1/3
    #   approx KL = ½ mean(log² 1.5, log² 0.5, 0) = ½ (0.164402 + 0.480453) / 3 = 0.107476
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    loss, clip_frac, approx_kl = ppo_policy_loss(logprobs, torch.zeros(1, 3), torch.tensor([[1.0, 1.0, -2.0]]),
                                                 torch.ones(1, 3), clip_eps=0.2)
    assert close(loss, 0.1) and close(clip_frac, 1 / 3) and close(approx_kl, 0.107476)


def test_ppo_policy_loss_ignores_padding_and_its_gradient_is_the_advantage_at_ratio_one():
    logprobs = torch.zeros(1, 3, requires_grad=True)
    advantages, mask = torch.tensor([[2.0, -1.0, 50.0]]), torch.tensor([[1, 1, 0]])
    loss, _, _ = ppo_policy_loss(logprobs, torch.zeros(1, 3), advantages, mask, clip_eps=0.2)
    loss.backward()
    assert close(loss, (-2 + 1) / 2)
    assert close(logprobs.grad, [[-1.0, 0.5, 0.0]])  # −Â_t / n at ρ = 1


def test_ppo_value_loss_by_hand():
    # t0: V 1.0, V_old 0.5, R 2: clipped V = 0.7; errors (1 − 2)² = 1, (0.7 − 2)² = 1.69 → 1.69 (clipped)
    # t1: V = V_old = 0, R 1: both errors 1 → 1.   loss = ½ (1.69 + 1) / 2 = 0.6725, clip fraction ½
    loss, clip_frac = ppo_value_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]),
                                     torch.tensor([[2.0, 1.0]]), torch.ones(1, 2), clip_value=0.2)
    assert close(loss, 0.6725) and close(clip_frac, 0.5)


def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert close(ctl.update(12.0, 100), 0.1 * (1 + 0.2 * 100 / 10000))  # error clipped at +0.2 → 0.1002
    assert close(ctl.update(3.0, 100), 0.1002 * (1 - 0.2 * 0.01), 1e-8)  # error −0.5 clipped at −0.2
    before = ctl.value
    assert close(ctl.update(6.6, 1000), before * (1 + 0.1 * 0.1), 1e-8)  # error 0.1 within the clip


def test_running_moments_by_hand():
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 3.0]))
    moments.update(torch.tensor([5.0]))
    # 1, 3, 5: mean 3, population variance (4 + 0 + 4) / 3 = 8/3
    assert close(moments.mean, 3.0) and close(moments.var, 8 / 3) and moments.count == 3
    assert close(moments.normalise(torch.tensor([3.0, 5.0])), [0.0, 2 / math.sqrt(8 / 3)])


def test_exact_kl_matches_a_hand_computed_value_and_is_never_negative():
    from training.losses import exact_kl

    p = torch.tensor([[[math.log(0.5), math.log(0.5)], [0.0, 0.0]]])  # (1, 2, 2): p = (.5, .5) at both positions
    q = torch.tensor([[[math.log(0.25), math.log(0.75)], [0.0, 0.0]]])  # q = (.25, .75), then equal to p
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL at position 0; 0 at position 1
    got = exact_kl(p, q, torch.tensor([[1, 1]]))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert exact_kl(p, q, torch.tensor([[0, 1]])).item() == pytest.approx(0.0, abs=1e-7)  # masked out
    torch.manual_seed(0)
    a, b = torch.randn(4, 5, 7), torch.randn(4, 5, 7)
    assert (exact_kl(a, b, torch.ones(4, 5)) >= 0).all()
    assert torch.allclose(exact_kl(a, a, torch.ones(4, 5)), torch.zeros(4), atol=1e-6)
