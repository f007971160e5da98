"""Decoding on a device of its own (`generate --decode-device`, vae/decode_worker.py): the frames are
those of the stream decoder run directly, whatever the device and thread; errors come back to the caller."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from packforcing_core.cli.main import main
from packforcing_core.vae.decode_worker import DecodeWorker, device_problem
from packforcing_core.vae.model import WanVAE, load_vae


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("assets")
    assert main(["tiny-assets", "--out", str(out)]) == 0
    return out


def generate(assets, out, *extra):
    argv = ["generate", "--dit", str(assets / "tiny_dit.safetensors"), "--vae", str(assets / "tiny_vae.safetensors"),
            "--prompt-embeds", str(assets / "tiny_prompt.safetensors"), "--width", "32", "--height", "48",
            "--frames", "21", "--chunk-frames", "2", "--sink", "1", "--recent", "2", "--mid-blocks", "2",
            "--top-k", "1", "--device", "cpu", "--out", str(out), *extra]
    assert main(argv) == 0
    return np.load(out / "frames.npy"), load_file(str(out / "latents.safetensors"))["latents"]


def uint8_frames(px: torch.Tensor) -> np.ndarray:
    return ((px[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_decode_device_cpu_gives_the_frames_of_a_direct_decode(assets, tmp_path, dtype):
    default, latents = generate(assets, tmp_path / "default", "--dtype", dtype)
    on_cpu, latents_cpu = generate(assets, tmp_path / "cpu", "--dtype", dtype, "--decode-device", "cpu")
    assert torch.equal(latents, latents_cpu)
    assert default.shape == (21, 48, 32, 3) and np.array_equal(default, on_cpu)
    # independent: one whole-video decode of the saved latents with the VAE file, as the CLI's dtype has it
    vae = load_vae(assets / "tiny_vae.safetensors", dtype=torch.float32 if dtype == "fp32" else torch.bfloat16)
    whole = vae.decode(latents.to(vae.dtype), chunk_size=None)
    assert np.array_equal(on_cpu, uint8_frames(whole))


def test_worker_keeps_order_and_returns_sink_errors():
    torch.manual_seed(0)
    vae = WanVAE(dim=8).eval()
    z = torch.randn(1, 16, 5, 4, 6)
    got = []
    worker = DecodeWorker(vae, got.append)
    for part in z.split([1, 2, 2], dim=2):
        worker.put(part)
    worker.close()
    assert [g.shape[0] for g in got] == [1, 8, 8] and worker.frames == 17
    assert torch.equal(torch.cat(got), torch.from_numpy(uint8_frames(vae.decode(z))))

    def broken(frames):
        raise OSError("disk full")
    worker = DecodeWorker(vae, broken)
    worker.put(z[:, :, :1])
    with pytest.raises(OSError, match="disk full"):
        try:
            for part in z[:, :, 1:].split(1, dim=2):    # the error comes back at a later put or at close
                worker.put(part)
        finally:
            worker.close()
    assert worker.thread is None
    worker.close()                                       # closed already: nothing more to report


def test_device_problem_names_what_to_use():
    assert device_problem("cpu") is None
    assert "is not a device" in device_problem("gpu0")
    assert "cuda:N" in device_problem("mps")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    problem = device_problem(f"cuda:{count}")
    assert problem is not None and ("no usable CUDA GPU" in problem or f"{count} CUDA device" in problem)
