"""Decoding on a GPU of its own or a side stream against the plain stream decode. Skipped without
CUDA; the second-GPU case needs two."""
import pytest
import torch

from packforcing_core.vae.decode_worker import DecodeWorker, to_uint8
from packforcing_core.vae.model import WanVAE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def vae_on(device, seed=0):
    torch.manual_seed(seed)
    return WanVAE(dim=32).eval().to(device, torch.bfloat16).channels_last()


def latents(frames=9, seed=1):
    return torch.randn(1, 16, frames, 12, 20, generator=torch.Generator().manual_seed(seed))


def devices():
    out = [("cuda:0", "cuda:0")]
    if torch.cuda.device_count() > 1:
        out.append(("cuda:0", "cuda:1"))
    return out


@pytest.mark.parametrize("source,target", devices())
@pytest.mark.parametrize("on_gpu", [False, True], ids=["host latents", "gpu latents"])
def test_worker_frames_equal_a_direct_decode(source, target, on_gpu):
    """Latents produced on the DiT's GPU (or in host memory) decoded by the worker on its own stream and
    device: the frames of the plain stream decode on that device."""
    vae, z = vae_on(target), latents()
    with torch.no_grad():
        want = to_uint8(vae.stream_decoder(chunk_size=1).decode(z.to(target, torch.bfloat16))[0]).cpu()
    got = []
    worker = DecodeWorker(vae, got.append)
    for part in z.split([1, 4, 4], dim=2):
        worker.put(part.to(source) if on_gpu else part)
    worker.close()
    assert torch.equal(torch.cat(got), want)
