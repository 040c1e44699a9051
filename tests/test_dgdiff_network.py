"""DGDiff U-Net profiles: shapes, sizes and refused inputs."""

from __future__ import annotations

import pytest
import torch

from need_core.dgdiff.network import PROFILES, build_unet


def test_tiny_unet_returns_a_v_prediction_of_the_input_shape():
    model = build_unet("tiny")
    x = torch.randn(2, 1, 32, 48)
    v = model(x, torch.tensor([0, 999]))
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_time_step_changes_the_output():
    torch.manual_seed(0)
    model = build_unet("tiny")
    x = torch.randn(1, 1, 32, 32)
    assert not torch.allclose(model(x, torch.tensor([0])), model(x, torch.tensor([500])))


def test_paper_profile_matches_the_reference_size_and_cpu_is_several_times_smaller():
    assert PROFILES["paper"].base_channels == 64 and PROFILES["paper"].multipliers == (1, 2, 4, 8)
    paper = sum(p.numel() for p in build_unet("paper").parameters())
    cpu = sum(p.numel() for p in build_unet("cpu").parameters())
    assert 30e6 < paper < 40e6
    assert cpu * 5 < paper


def test_bad_inputs_are_refused_clearly():
    model = build_unet("tiny")
    with pytest.raises(ValueError, match="multiple of 8"):
        model(torch.randn(1, 1, 36, 32), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\(b, 1, H, W\)"):
        model(torch.randn(1, 2, 32, 32), torch.tensor([0]))
    with pytest.raises(ValueError, match="steps t"):
        model(torch.randn(2, 1, 32, 32), torch.tensor([0]))
    with pytest.raises(ValueError, match="unknown DGDiff profile"):
        build_unet("huge")
