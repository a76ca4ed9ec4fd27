"""Every corruption: deterministic for a seed, stays in [0, 1], and gets stronger with severity."""

import pytest
import torch

from kdbench.data.corruptions import CORRUPTIONS, corrupt


def images(size=32, channels=3, n=16):
    """Smooth random images with texture (so blur, pixelate and JPEG have something to change)."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(n, channels, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return (0.7 * x + 0.3 * torch.rand(n, channels, size, size, generator=g)).clamp(0.05, 0.95)


@pytest.mark.parametrize("name", CORRUPTIONS.names())
def test_deterministic_and_in_range(name):
    x = images()
    for sev in (1, 3, 5):
        a, b = corrupt(name, x, sev, seed=7), corrupt(name, x, sev, seed=7)
        assert torch.equal(a, b)
        assert a.shape == x.shape and a.dtype == x.dtype
        assert a.min().item() >= 0.0 and a.max().item() <= 1.0


@pytest.mark.parametrize("name", CORRUPTIONS.names())
def test_stronger_with_severity(name):
    x = images()
    dist = [(corrupt(name, x, s, seed=1) - x).abs().mean().item() for s in range(1, 6)]
    assert all(b >= a - 1e-6 for a, b in zip(dist, dist[1:])), dist
    assert dist[-1] > dist[0], dist
    assert dist[0] > 0


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"])
def test_noise_depends_on_seed(name):
    x = images()
    assert not torch.equal(corrupt(name, x, 3, seed=1), corrupt(name, x, 3, seed=2))


def test_gaussian_noise_has_cifar_c_sigma():
    x = torch.full((64, 1, 32, 32), 0.5)
    for sev, sigma in zip(range(1, 6), (0.04, 0.06, 0.08, 0.09, 0.10)):
        d = corrupt("gaussian_noise", x, sev, seed=0) - x
        assert abs(d.std().item() - sigma) < 0.003


def test_contrast_and_brightness_formulas():
    x = images(channels=1)
    c = corrupt("contrast", x, 5, seed=0)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(c, ((x - mean) * 0.15 + mean).clamp(0, 1))
    b = corrupt("brightness", x, 2, seed=0)
    torch.testing.assert_close(b, (x + 0.1).clamp(0, 1))  # grey image: V + c


def test_grayscale_digits_size_works():
    x = images(size=8, channels=1)
    for name in CORRUPTIONS.names():
        assert corrupt(name, x, 5, seed=0).shape == x.shape
