"""SPDiff U-Net: shapes, residual on the middle slice, profiles."""

from __future__ import annotations

import pytest
import torch

from need_core.spdiff import NETWORK_PROFILES, NetworkSettings, SPDiffUNet, network_profile


@pytest.mark.parametrize("shape", [(16, 20), (17, 23), (9, 30)])
def test_output_is_one_sinogram_of_the_input_size(shape: tuple[int, int]) -> None:
    network = SPDiffUNet(network_profile("tiny"))
    out = network(torch.rand(2, 3, *shape), torch.tensor([0, 9]))
    assert out.shape == (2, *shape)


def test_prediction_is_a_residual_on_the_middle_slice() -> None:
    network = SPDiffUNet(network_profile("tiny"))
    torch.nn.init.zeros_(network.head.weight)
    torch.nn.init.zeros_(network.head.bias)
    x_t = torch.rand(2, 3, 12, 12)
    assert torch.equal(network(x_t, torch.tensor([1, 2])), x_t[:, 1])


def test_log_domain_residual_works_on_post_log_data_and_returns_transmission() -> None:
    network = SPDiffUNet(NetworkSettings(channels=(8, 16, 32), convs_per_block=1, domain="log"))
    torch.nn.init.zeros_(network.head.weight)
    torch.nn.init.constant_(network.head.bias, 0.1)  # +0.1 in post-log = 10 % less transmission
    x_t = torch.rand(2, 3, 12, 12) * 0.9 + 0.05
    torch.testing.assert_close(network(x_t, torch.tensor([1, 2])), x_t[:, 1] * torch.exp(torch.tensor(-0.1)))
    assert network_profile("cpu").domain == "log" and network_profile("paper").domain == "transmission"
    with pytest.raises(ValueError, match="domain"):
        NetworkSettings(domain="sqrt")


def test_step_changes_the_prediction() -> None:
    torch.manual_seed(0)
    network = SPDiffUNet(network_profile("tiny"))
    x_t = torch.rand(1, 3, 12, 12)
    assert not torch.allclose(network(x_t, torch.tensor([0])), network(x_t, torch.tensor([9])))


def test_profiles_grow_and_paper_is_reference_size() -> None:
    assert network_profile("paper").channels == (64, 128, 256)
    sizes = [
        sum(p.numel() for p in SPDiffUNet(NETWORK_PROFILES[name]).parameters()) for name in ("tiny", "cpu", "paper")
    ]
    assert sizes == sorted(sizes)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown SPDiff network profile"):
        network_profile("huge")
    with pytest.raises(ValueError, match="3 positive integers"):
        NetworkSettings(channels=(8, 16))
    with pytest.raises(ValueError, match=r"\(batch, 3, views, detectors\)"):
        SPDiffUNet(network_profile("tiny"))(torch.rand(2, 1, 8, 8), torch.tensor([0, 0]))


def test_settings_round_trip() -> None:
    settings = network_profile("cpu")
    assert NetworkSettings.from_dict(settings.to_dict()) == settings
