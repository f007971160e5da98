"""The tiny Wan2.1 decoder (TAEHV layout) against an independent frame-by-frame float64 decode.

The key names and shapes below are written out from the published taew2_1 / lighttaew2_1 layout
(the same files ComfyUI's VAELoader loads), independently of packforcing_core.vae.taehv."""
import pytest
import torch
import torch.nn.functional as F

from packforcing_core.vae.latents import denormalize_latent
from packforcing_core.vae.model import WanVAE
from packforcing_core.vae.taehv import TinyDecoderError, TinyWanDecoder, is_tiny_decoder

N = (256, 128, 64, 64)


def published_state_dict(seed=0, latent=16, out=3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(name, c_out, c_in, k=3, bias=True):
        sd[f"{name}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) / (c_in * k * k) ** 0.5
        if bias:
            sd[f"{name}.bias"] = torch.randn(c_out, generator=g) * 0.05

    conv("decoder.1", N[0], latent)
    i = 3
    for stage, grow in zip(range(3), (1, 2, 2)):
        n = N[stage]
        for _ in range(3):
            conv(f"decoder.{i}.conv.0", n, 2 * n)
            conv(f"decoder.{i}.conv.2", n, n)
            conv(f"decoder.{i}.conv.4", n, n)
            i += 1
        conv(f"decoder.{i + 1}.conv", n * grow, n, k=1, bias=False)       # after the upsample at index i
        conv(f"decoder.{i + 2}", N[stage + 1], n, bias=False)
        i += 3
    conv("decoder.22", out, N[3])
    conv("encoder.0", 64, 3)                                               # encoder keys are ignored
    return sd


def reference_decode(sd, z_norm: torch.Tensor) -> torch.Tensor:
    """Frame by frame in float64, each memory block fed its previous input frame (zeros first)."""
    w = {k: v.double() for k, v in sd.items()}
    conv = lambda x, n, bias=True: F.conv2d(x, w[f"{n}.weight"], w.get(f"{n}.bias") if bias else None,
                                            padding=w[f"{n}.weight"].shape[-1] // 2)
    z = denormalize_latent(z_norm.double())
    frames = [torch.tanh(z[:, :, t] / 3) * 3 for t in range(z.shape[2])]
    frames = [F.relu(conv(f, "decoder.1")) for f in frames]
    memory = {}
    i = 3
    for stage, grow in zip(range(3), (1, 2, 2)):
        for _ in range(3):
            out = []
            for f in frames:
                past = memory.get(i, torch.zeros_like(f))
                memory[i] = f
                h = F.relu(conv(torch.cat([f, past], 1), f"decoder.{i}.conv.0"))
                h = F.relu(conv(h, f"decoder.{i}.conv.2"))
                out.append(F.relu(conv(h, f"decoder.{i}.conv.4") + f))
            frames = out
            i += 1
        frames = [F.interpolate(f, scale_factor=2.0, mode="nearest") for f in frames]
        grown = []
        for f in frames:
            g = conv(f, f"decoder.{i + 1}.conv", bias=False)
            grown += list(g.chunk(grow, 1))
        frames = [conv(f, f"decoder.{i + 2}", bias=False) for f in grown]
        i += 3
    frames = [conv(F.relu(f), "decoder.22") for f in frames]
    video = torch.stack(frames, 2)[:, :, 3:]                                # 4T frames, the first 3 dropped
    return (video * 2 - 1).clamp(-1, 1)


@pytest.fixture(scope="module")
def sd():
    return published_state_dict()


def test_decode_equals_independent_frame_by_frame_reference(sd):
    tae = TinyWanDecoder.from_state_dict(sd)
    z = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(1))
    got = tae.decode(z)
    assert got.shape == (1, 3, 9, 32, 48) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference_decode(sd, z), atol=2e-5, rtol=0)


def test_streaming_in_chunks_equals_one_decode(sd):
    tae = TinyWanDecoder.from_state_dict(sd)
    z = torch.randn(2, 16, 5, 4, 6, generator=torch.Generator().manual_seed(2))
    stream = tae.stream_decoder()
    parts = [stream.decode(z[:, :, a:b]) for a, b in ((0, 1), (1, 3), (3, 5))]
    assert [p.shape[2] for p in parts] == [1, 8, 8]
    torch.testing.assert_close(torch.cat(parts, 2), tae.decode(z), atol=1e-5, rtol=0)
    one_by_one = tae.stream_decoder(chunk_size=1)                 # one latent frame per pass: less memory
    torch.testing.assert_close(torch.cat([one_by_one.decode(z[:, :, :2]), one_by_one.decode(z[:, :, 2:])], 2),
                               tae.decode(z), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="reset"):
        stream.decode(z[:1, :, :1])


def test_other_files_are_refused_with_what_they_are(sd):
    assert is_tiny_decoder(sd)
    with pytest.raises(TinyDecoderError, match="Wan2.2"):
        TinyWanDecoder.from_state_dict(published_state_dict(latent=48, out=12), source="'taew2_2'")
    with pytest.raises(TinyDecoderError, match="not a TAEHV"):
        TinyWanDecoder.from_state_dict(WanVAE(dim=8).state_dict(), source="'wan vae'")
    broken = dict(sd)
    del broken["decoder.9.conv.2.weight"]
    with pytest.raises(TinyDecoderError, match="decoder.9.conv.2.weight|9.conv.2.weight"):
        TinyWanDecoder.from_state_dict(broken)
