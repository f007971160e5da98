"""Decoding on a GPU of its own or a side stream, and the decoder's CUDA graphs, against the plain
stream decode. Skipped without CUDA; the second-GPU case needs two. Run with -s to see deviations."""
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


def test_graphed_pieces_equal_eager_pieces_and_capture_once():
    vae, z = vae_on("cuda"), latents(12).to("cuda", torch.bfloat16)
    eager, graphed = vae.stream_decoder(chunk_size=1), vae.stream_decoder(chunk_size=1, graphs=True)
    with torch.no_grad():
        want = torch.cat([eager.decode(z[:, :, i:i + 3]) for i in range(0, 12, 3)], 2)
        got = torch.cat([graphed.decode(z[:, :, i:i + 3]) for i in range(0, 12, 3)], 2)
    assert graphed.piece.captures == 1 and not graphed.piece.failed
    print(f"\ngraphed decoder pieces vs eager: max |diff| {float((got - want).abs().max()):.2e}")
    assert torch.equal(got, want)
    graphed.reset()                       # a new video: eager first pieces, then the same graph shapes again
    with torch.no_grad():
        again = torch.cat([graphed.decode(z[:, :, i:i + 3]) for i in range(0, 12, 3)], 2)
    assert torch.equal(again, want)


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
    worker = DecodeWorker(vae, got.append, graphs=True)
    for part in z.split([1, 4, 4], dim=2):
        worker.put(part.to(source) if on_gpu else part)
    worker.close()
    assert torch.equal(torch.cat(got), want)
