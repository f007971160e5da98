"""Tests of packforcing_core.vae (the Wan2.1 video VAE) on tiny random models, CPU only.

The expected weight names and shapes below are written out from the released
wan_2.1_vae.safetensors layout, independently of the module's code.
"""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from packforcing_core.vae.latents import LATENT_MEAN, LATENT_STD, denormalize_latent, normalize_latent
from packforcing_core.vae.model import WanVAE, load_vae

WAN21_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
WAN21_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]
WAN21_KEY_COUNT = 194

# conv kernels differ slightly with the number of frames per call (CPU GEMM blocking), so chunked
# and one-shot results agree to float32 rounding, not bit for bit
CLOSE = dict(atol=2e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- expected layout

def _conv(p):
    return [f"{p}.weight", f"{p}.bias"]


def _res(p, shortcut=False):
    names = [f"{p}.residual.0.gamma", *_conv(f"{p}.residual.2"),
             f"{p}.residual.3.gamma", *_conv(f"{p}.residual.6")]
    return names + (_conv(f"{p}.shortcut") if shortcut else [])


def _attn(p):
    return [f"{p}.norm.gamma", *_conv(f"{p}.to_qkv"), *_conv(f"{p}.proj")]


def _resample(p, temporal):
    return _conv(f"{p}.resample.1") + (_conv(f"{p}.time_conv") if temporal else [])


def _middle_and_head(p):
    return _res(f"{p}.middle.0") + _attn(f"{p}.middle.1") + _res(f"{p}.middle.2") \
        + [f"{p}.head.0.gamma", *_conv(f"{p}.head.2")]


def wan21_vae_keys() -> list[str]:
    keys = _conv("encoder.conv1") + _conv("conv1") + _conv("conv2") + _conv("decoder.conv1")
    # encoder.downsamples: 4 stages of 2 residual blocks, a resample after the first three
    for i, shortcut in {0: 0, 1: 0, 3: 1, 4: 0, 6: 1, 7: 0, 9: 0, 10: 0}.items():
        keys += _res(f"encoder.downsamples.{i}", shortcut)
    for i, temporal in {2: False, 5: True, 8: True}.items():
        keys += _resample(f"encoder.downsamples.{i}", temporal)
    # decoder.upsamples: 4 stages of 3 residual blocks, a resample after the first three
    for i in (0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14):
        keys += _res(f"decoder.upsamples.{i}", shortcut=i == 4)
    for i, temporal in {3: True, 7: True, 11: False}.items():
        keys += _resample(f"decoder.upsamples.{i}", temporal)
    return keys + _middle_and_head("encoder") + _middle_and_head("decoder")


REAL_SHAPES = {
    "conv1.weight": (32, 32, 1, 1, 1),
    "conv2.weight": (16, 16, 1, 1, 1),
    "encoder.conv1.weight": (96, 3, 3, 3, 3),
    "encoder.downsamples.0.residual.0.gamma": (96, 1, 1, 1),
    "encoder.downsamples.2.resample.1.weight": (96, 96, 3, 3),
    "encoder.downsamples.3.shortcut.weight": (192, 96, 1, 1, 1),
    "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
    "encoder.middle.1.norm.gamma": (384, 1, 1),
    "encoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
    "encoder.head.2.weight": (32, 384, 3, 3, 3),
    "decoder.conv1.weight": (384, 16, 3, 3, 3),
    "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
    "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
    "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
    "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3),
    "decoder.upsamples.12.residual.2.weight": (96, 96, 3, 3, 3),
    "decoder.head.2.weight": (3, 96, 3, 3, 3),
}


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def vae() -> WanVAE:
    torch.manual_seed(0)
    return WanVAE(dim=8).eval()


@pytest.fixture(scope="module")
def latent() -> torch.Tensor:
    return torch.randn(1, 16, 6, 2, 3, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.rand(1, 3, 17, 16, 24, generator=g) * 2 - 1


def _save_tiny(vae: WanVAE, path) -> dict:
    sd = {k: v.contiguous() for k, v in vae.state_dict().items()}
    save_file(sd, str(path))
    return sd


# ----------------------------------------------------------------------------- constants

def test_constants_and_normalisation_round_trip():
    assert LATENT_MEAN == WAN21_MEAN and LATENT_STD == WAN21_STD
    mu = torch.randn(2, 16, 3, 4, 5, dtype=torch.float64)
    z = normalize_latent(mu)
    torch.testing.assert_close(denormalize_latent(z), mu)
    torch.testing.assert_close(z[0, 5], (mu[0, 5] - WAN21_MEAN[5]) / WAN21_STD[5])
    means = torch.tensor(WAN21_MEAN).view(1, 16, 1, 1, 1).expand(1, 16, 2, 2, 2)
    assert normalize_latent(means).abs().max() < 1e-6
    with pytest.raises(ValueError, match="16"):
        normalize_latent(torch.zeros(1, 48, 1, 2, 2))


# ----------------------------------------------------------------------------- layout

def test_key_names_equal_the_real_wan21_vae():
    expected = wan21_vae_keys()
    assert len(expected) == len(set(expected)) == WAN21_KEY_COUNT
    assert sorted(WanVAE(dim=8).state_dict()) == sorted(expected)
    for name in ("encoder.downsamples.0.residual.0.gamma", "encoder.downsamples.0.residual.2.weight",
                 "decoder.head.2.weight", "conv1.weight", "conv2.bias"):
        assert name in expected


def test_real_size_model_shapes_on_meta_device():
    with torch.device("meta"):
        big = WanVAE()
    sd = big.state_dict()
    assert sorted(sd) == sorted(wan21_vae_keys())
    for name, shape in REAL_SHAPES.items():
        assert tuple(sd[name].shape) == shape, name
    assert 126e6 < sum(t.numel() for t in sd.values()) < 128e6  # Wan-VAE has ~127M parameters


# ----------------------------------------------------------------------------- decode

@pytest.mark.parametrize("t", [1, 2, 4])
def test_decode_frame_count(vae, latent, t):
    out = vae.decode(latent[:, :, :t])
    assert out.shape == (1, 3, 4 * t - 3, 16, 24) and out.dtype == torch.float32
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5)])
def test_decode_any_latent_size(vae, h, w):
    out = vae.decode(torch.randn(2, 16, 2, h, w))
    assert out.shape == (2, 3, 5, 8 * h, 8 * w)


@pytest.mark.parametrize("split", [[1, 1, 1, 1, 1, 1], [3, 3], [1, 4, 1], [4, 2], [2, 3, 1], [6]])
def test_stream_decode_equals_one_shot(vae, latent, split):
    one_shot = vae.decode(latent, chunk_size=None)
    assert (one_shot.abs() < 1).float().mean() > 0.9  # outputs mostly unclamped: a real comparison
    stream = vae.stream_decoder()
    outs, start = [], 0
    for i, n in enumerate(split):
        outs.append(stream.decode(latent[:, :, start:start + n]))
        assert outs[-1].shape[2] == (4 * n - 3 if i == 0 else 4 * n)
        start += n
    torch.testing.assert_close(torch.cat(outs, dim=2), one_shot, **CLOSE)


def test_stream_decoder_reset_and_bounded_cache(vae, latent):
    stream = vae.stream_decoder(chunk_size=None)
    first = stream.decode(latent[:, :, :2])
    sizes = []
    for _ in range(6):  # a long video: the cache must not grow
        stream.decode(latent[:, :, 2:4])
        sizes.append(stream.cache_bytes())
    assert len(set(sizes)) == 1 and sizes[0] > 0
    with pytest.raises(ValueError, match="reset"):
        stream.decode(torch.randn(1, 16, 1, 3, 3))
    stream.reset()
    assert stream.cache_bytes() == 0
    torch.testing.assert_close(stream.decode(latent[:, :, :2]), first, atol=0, rtol=0)


def test_decode_is_causal(vae, latent):
    """Changing latent frames t.. leaves the first 4t-3 output frames untouched."""
    base = vae.decode(latent, chunk_size=None)
    for t in range(1, latent.shape[2]):
        changed = latent.clone()
        changed[:, :, t:] = torch.randn_like(changed[:, :, t:])
        out = vae.decode(changed, chunk_size=None)
        n = 4 * t - 3
        assert torch.equal(out[:, :, :n], base[:, :, :n]), t
        assert not torch.allclose(out[:, :, n:], base[:, :, n:]), t


# ----------------------------------------------------------------------------- encode

def test_encode_shape_and_causality(vae, video):
    z = vae.encode(video)
    assert z.shape == (1, 16, 5, 2, 3) and z.dtype == torch.float32
    changed = video.clone()
    changed[:, :, 9:] = -changed[:, :, 9:]  # frames 9.. feed latent frames 3 and 4 only
    z2 = vae.encode(changed)
    torch.testing.assert_close(z2[:, :, :3], z[:, :, :3], atol=0, rtol=0)
    assert not torch.allclose(z2[:, :, 3:], z[:, :, 3:])


@pytest.mark.parametrize("split", [[1, 4, 4, 4, 4], [5, 4, 8], [1, 16], [9, 8], [17]])
def test_stream_encode_equals_one_shot(vae, video, split):
    one_shot = vae.encode(video, chunk_size=None)
    stream = vae.stream_encoder()
    outs, start = [], 0
    for i, n in enumerate(split):
        outs.append(stream.encode(video[:, :, start:start + n]))
        assert outs[-1].shape[2] == ((n - 1) // 4 + 1 if i == 0 else n // 4)
        start += n
    torch.testing.assert_close(torch.cat(outs, dim=2), one_shot, **CLOSE)


def test_encode_refuses_bad_sizes(vae, video):
    with pytest.raises(ValueError, match=r"multiples of 8.*20x24"):
        vae.encode(torch.zeros(1, 3, 5, 20, 24))
    with pytest.raises(ValueError, match=r"1\+4k.*got 6"):
        vae.encode(video[:, :, :6])
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        vae.encode(torch.zeros(1, 4, 5, 16, 16))
    stream = vae.stream_encoder()
    stream.encode(video[:, :, :5])
    with pytest.raises(ValueError, match=r"multiple of 4 frames; got 3"):
        stream.encode(video[:, :, 5:8])
    with pytest.raises(ValueError, match=r"\(B, 16, T>=1, h, w\)"):
        vae.decode(torch.zeros(1, 48, 2, 2, 2))


def test_bfloat16(vae, latent, video):
    half = WanVAE(dim=8)
    half.load_state_dict(vae.state_dict())
    half = half.to(torch.bfloat16)
    out = half.decode(latent)
    assert out.dtype == torch.float32 and half.encoder.conv1.weight.dtype == torch.bfloat16
    assert (out - vae.decode(latent)).abs().mean() < 0.03
    z = half.encode(video)
    assert (z - vae.encode(video)).abs().mean() < 0.03


# ----------------------------------------------------------------------------- loading

def test_safetensors_round_trip(vae, tmp_path, latent):
    path = tmp_path / "wan_2.1_vae.safetensors"
    sd = _save_tiny(vae, path)
    loaded = load_vae(path)
    got = loaded.state_dict()
    assert sorted(got) == sorted(sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(loaded.decode(latent), vae.decode(latent), atol=0, rtol=0)
    assert load_vae(path, dtype=torch.bfloat16).decoder.conv1.weight.dtype == torch.bfloat16


def test_from_state_dict_detects_base_dim():
    torch.manual_seed(3)
    model = WanVAE(dim=16).eval()
    loaded = WanVAE.from_state_dict(model.state_dict())
    assert loaded.encoder.conv1.weight.shape[0] == 16
    z = torch.randn(1, 16, 2, 2, 2)
    torch.testing.assert_close(loaded.decode(z), model.decode(z), atol=0, rtol=0)


class _Payload:
    """Unpickling this creates a file: stands in for code execution."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pt_only_through_weights_only(vae, tmp_path):
    good = tmp_path / "vae.pt"
    torch.save(vae.state_dict(), good)
    assert torch.equal(load_vae(good).conv1.weight, vae.conv1.weight)

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Payload(marker)}, evil)
    with pytest.raises(ValueError, match=r"refused") as err:
        load_vae(evil)
    assert str(evil) in str(err.value)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # proves the payload is live when loaded unsafely
    assert marker.exists()


def _expect_error(path, *needles, exc=ValueError):
    with pytest.raises(exc) as err:
        load_vae(path)
    msg = str(err.value)
    for needle in (str(path), "Wan2.1 VAE", *needles):
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def test_wrong_files_are_refused_clearly(vae, tmp_path):
    sd_vae = tmp_path / "sd_vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
               "decoder.conv_out.weight": torch.zeros(3, 128, 3, 3),
               "quant_conv.weight": torch.zeros(8, 8, 1, 1)}, str(sd_vae))
    _expect_error(sd_vae, "encoder.conv1.weight", "Stable Diffusion")

    dit = tmp_path / "dit.safetensors"
    save_file({"patch_embedding.weight": torch.zeros(4, 16, 1, 2, 2),
               "blocks.0.self_attn.q.weight": torch.zeros(4, 4)}, str(dit))
    _expect_error(dit, "DiT")

    wan22 = tmp_path / "wan2.2_vae.safetensors"
    save_file({"encoder.conv1.weight": torch.zeros(160, 12, 3, 3, 3),
               "conv1.weight": torch.zeros(96, 96, 1, 1, 1),
               "conv2.weight": torch.zeros(48, 48, 1, 1, 1)}, str(wan22))
    _expect_error(wan22, "48", "Wan2.2")

    truncated = tmp_path / "truncated.safetensors"
    _save_tiny(vae, truncated)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    _expect_error(truncated, "truncated")

    truncated_pt = tmp_path / "truncated.pt"
    torch.save(vae.state_dict(), truncated_pt)
    truncated_pt.write_bytes(truncated_pt.read_bytes()[:1000])
    _expect_error(truncated_pt, "truncated")

    _expect_error(tmp_path / "missing.safetensors", exc=FileNotFoundError)
    (tmp_path / "notes.txt").write_text("hello")
    _expect_error(tmp_path / "notes.txt", "unsupported")


def test_missing_unexpected_and_misshapen_keys_are_listed(vae, tmp_path):
    sd = {k: v.clone() for k, v in vae.state_dict().items()}
    del sd["decoder.head.2.bias"]
    sd["decoder.extra.weight"] = torch.zeros(1)
    sd["decoder.middle.1.to_qkv.weight"] = torch.zeros(5, 32, 1, 1)
    path = tmp_path / "broken.safetensors"
    save_file(sd, str(path))
    msg = _expect_error(path, "decoder.head.2.bias", "decoder.extra.weight", "decoder.middle.1.to_qkv.weight")
    assert "missing" in msg and "unexpected" in msg and "shape" in msg
    assert os.path.basename(path) in msg


def test_channels_last_weights_decode_the_same():
    torch.manual_seed(0)
    vae = WanVAE(dim=8).eval()
    z = torch.randn(1, 16, 3, 4, 6)
    before = vae.decode(z)
    assert torch.allclose(vae.channels_last().decode(z), before, atol=1e-5)
    assert vae.decoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_conv_equals_conv_of_the_nearest_upsampled_frames(channels_last):
    """The decoder's resize conv, computed at the low resolution, against upsampling then a 3x3 conv
    (float64, odd sizes so that every border parity is exercised)."""
    from packforcing_core.vae.resample import Resample
    torch.manual_seed(0)
    up = Resample(6, "upsample2d").double()
    x = torch.randn(2, 6, 3, 5, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    got = up(x, {})
    big = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4).transpose(1, 2).flatten(0, 1)
    want = torch.nn.functional.conv2d(big, up.resample[1].weight, up.resample[1].bias, padding=1)
    want = want.unflatten(0, (2, 3)).transpose(1, 2)
    assert got.shape == (2, 3, 3, 10, 14)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    assert got.is_contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)


def test_norm_silu_writes_into_a_slice_of_a_larger_buffer():
    """The causal conv's padded input is filled in place: the result lands in the slice, the cached
    frames in front stay as they were (float64 formula as the reference)."""
    from packforcing_core.vae.kernels import rms_norm_silu
    g = torch.Generator().manual_seed(3)
    x, gamma = torch.randn(1, 5, 3, 4, 6, generator=g, dtype=torch.float64), torch.rand(5, dtype=torch.float64) + 0.5
    want = x / x.norm(dim=1, keepdim=True) * gamma.view(-1, 1, 1, 1) * 5 ** 0.5
    want = want * torch.sigmoid(want)
    buf = torch.full((1, 5, 5, 4, 6), 7.0, dtype=torch.float64)
    rms_norm_silu(x, gamma, 5 ** 0.5, out=buf[:, :, 2:])
    assert torch.equal(buf[:, :, :2], torch.full_like(buf[:, :, :2], 7.0))
    assert torch.allclose(buf[:, :, 2:], want, atol=1e-12, rtol=0)
