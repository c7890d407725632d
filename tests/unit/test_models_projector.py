"""Projector MLP and the symmetric InfoNCE of RALLRec Eq. 5."""

from __future__ import annotations

import math

import pytest
import torch

from ragrec.models.projector import Projector, alignment_top1, symmetric_info_nce

A = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
B = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 1.0]])


def _hand_loss(tau: float) -> float:
    """Eq. 5 written out with math on the 3x2 example (cosines by hand)."""
    r = 1 / math.sqrt(2)
    # cos(A_i, B_j): A0=(1,0), A1=(0,1), A2=(1,1)/sqrt2 ; B0=(1,0), B1=(0,1), B2=(-1,1)/sqrt2
    s = [[1.0, 0.0, -r], [0.0, 1.0, r], [r, r, 0.0]]
    total = 0.0
    for i in range(3):
        row = -math.log(math.exp(s[i][i] / tau) / sum(math.exp(s[i][j] / tau) for j in range(3)))
        col = -math.log(math.exp(s[i][i] / tau) / sum(math.exp(s[j][i] / tau) for j in range(3)))
        total += row + col
    return total / 3


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_symmetric_info_nce_matches_hand_computation(tau):
    assert symmetric_info_nce(A, B, tau).item() == pytest.approx(_hand_loss(tau), rel=1e-6)


def test_hand_value_at_tau_one():
    # by hand (r = 0.7071): rows  log(e+1+e^-r)-1 = 0.4378, log(1+e+e^r)-1 = 0.7486, log(2e^r+1) = 1.6207
    #                       cols  log(e+1+e^r)-1 = 0.7486, 0.7486,          log(e^-r+e^r+1) = 1.2588
    # (0.4378 + 0.7486 + 1.6207 + 0.7486 + 0.7486 + 1.2588) / 3 = 1.8543
    assert symmetric_info_nce(A, B, 1.0).item() == pytest.approx(1.8543, abs=2e-4)


def test_loss_is_cosine_based_and_minimised_by_aligned_pairs():
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    aligned = symmetric_info_nce(x, 3.0 * x, 0.1)  # scale must not matter
    assert aligned.item() == pytest.approx(symmetric_info_nce(x, x, 0.1).item(), rel=1e-5)
    shuffled = symmetric_info_nce(x, x[torch.randperm(16)], 0.1)
    assert aligned < shuffled
    for _ in range(5):  # any perturbation of the partner rows raises the loss
        assert aligned < symmetric_info_nce(x, x + 0.5 * torch.randn(16, 8), 0.1)
    # orthogonal one-hot pairs at small tau: the loss tends to 0
    assert symmetric_info_nce(torch.eye(4), torch.eye(4), 0.01).item() < 1e-6


def test_loss_rejects_bad_shapes_and_temperature():
    with pytest.raises(ValueError, match=r"both be \(B, d\), got \(3, 2\) and \(2, 2\)"):
        symmetric_info_nce(A, B[:2], 1.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        symmetric_info_nce(A, B, 0.0)


def test_projector_is_two_layer_mlp_with_colla_output_dim():
    p = Projector(10, 32, 4)
    assert [type(m).__name__ for m in p] == ["Linear", "ReLU", "Linear"]
    assert p(torch.randn(5, 10)).shape == (5, 4)


def test_alignment_top1():
    target = torch.eye(3)
    assert alignment_top1(torch.eye(3), target) == pytest.approx(1.0)
    assert alignment_top1(torch.eye(3)[[1, 0, 2]], target) == pytest.approx(1 / 3)
