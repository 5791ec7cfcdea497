from __future__ import annotations

import pytest
import torch

from engine.discriminator import Discriminator, DiscriminatorConfig, minibatch_stddev
from engine.errors import BundleError, InputError
from tests.conftest import TINY_GENERATOR, reference

TINY = DiscriminatorConfig(size=32, channels=TINY_GENERATOR.channels)


def test_512px_discriminator_matches_official_keys_order_and_shapes() -> None:
    ref = reference("generator_car.json")
    with torch.device("meta"):
        d = Discriminator(DiscriminatorConfig(512))
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in d.state_dict().items()]
    theirs = [(e["key"], e["shape"], e["dtype"]) for e in ref["discriminator_entries"]]
    assert ours == theirs
    kinds = {e["key"]: e["kind"] for e in ref["discriminator_entries"]}
    assert {k for k, _ in d.named_parameters()} == {k for k, v in kinds.items() if v == "parameter"}
    assert {k for k, _ in d.named_buffers()} == {k for k, v in kinds.items() if v == "buffer"}
    totals = ref["discriminator_totals"]
    assert sum(p.numel() for p in d.parameters()) == totals["parameter_elements"]
    assert sum(b.numel() for b in d.buffers()) == totals["buffer_elements"]


def test_output_is_one_logit_per_image() -> None:
    torch.manual_seed(0)
    d = Discriminator(TINY)
    for n in (1, 2, 4, 8):
        assert d(torch.rand(n, 3, 32, 32) * 2 - 1).shape == (n,)
    with pytest.raises(InputError, match="groups of 4"):
        d(torch.zeros(6, 3, 32, 32))
    with pytest.raises(InputError, match=r"\[N, 3, 32, 32\]"):
        d(torch.zeros(4, 3, 16, 16))


def test_gradients_reach_every_parameter_and_the_input() -> None:
    torch.manual_seed(0)
    d = Discriminator(TINY)
    x = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    d(x).sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    for name, p in d.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_minibatch_stddev_groups_samples_as_the_official_view() -> None:
    # Official grouping: sample i shares a group with samples i +- k * N / group.
    x = torch.randn(8, 5, 4, 4)
    out = minibatch_stddev(x, 4)
    assert out.shape == (8, 6, 4, 4)
    assert torch.equal(out[:, :5], x)
    for i in range(8):
        members = x[[j for j in range(8) if j % 2 == i % 2]]
        expected = torch.sqrt(members.var(0, unbiased=False) + 1e-8).mean()
        torch.testing.assert_close(out[i, 5], expected.expand(4, 4))
    # a batch smaller than the group forms one group
    assert minibatch_stddev(x[:2], 4)[0, 5].allclose(minibatch_stddev(x[:2], 4)[1, 5])


def test_samples_in_different_groups_do_not_interact() -> None:
    torch.manual_seed(0)
    d = Discriminator(TINY).eval()
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    y = x.clone()
    y[1] = -y[1]  # sample 1 belongs to the odd group only
    a, b = d(x), d(y)
    assert torch.equal(a[0::2], b[0::2])
    assert not torch.equal(a[1::2], b[1::2])


def test_config_round_trip_and_validation() -> None:
    for cfg in (TINY, DiscriminatorConfig(64), DiscriminatorConfig(256, channel_multiplier=1, stddev_group=2)):
        assert DiscriminatorConfig.from_dict(cfg.to_dict()) == cfg
    assert DiscriminatorConfig(512).widths == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}
    assert TINY.widths == {4: 32, 8: 32, 16: 16, 32: 8}
    with pytest.raises(BundleError, match="unknown discriminator config keys"):
        DiscriminatorConfig.from_dict({**TINY.to_dict(), "mbstd": 1})
    with pytest.raises(BundleError, match="must list 4 widths"):
        DiscriminatorConfig(32, channels=(8, 8))
    with pytest.raises(BundleError, match="power of two"):
        DiscriminatorConfig(48)
