"""The fast paths on a CUDA GPU: CUDA graphs, selection on the device, fp8 matmuls and the tiny
decoder, each against the plain computation. Skipped without CUDA. Run with -s to
see the measured deviations."""
import pytest
import torch

from packforcing_core.cache.compressor import make_compressor
from packforcing_core.cache.config import CacheConfig
from packforcing_core.cache.packed import PackedCache
from packforcing_core.model.dit import WanConfig
from packforcing_core.model.fp8 import Fp8Linear, fp8_unsupported_reason, quantize_rows
from packforcing_core.model.tiny import random_model, random_prompt, tiny_config
from packforcing_core.sampling.sampler import Generation
from packforcing_core.vae.taehv import TinyWanDecoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def wide():
    """Full width, two layers: the real kernels and shapes per layer, at 832x480."""
    return random_model(WanConfig(num_layers=2), seed=0, dtype=torch.bfloat16, device="cuda")


def generate(model, text_kv, chunks=12, seed=0, bank="same"):
    cfg = CacheConfig(mode="kv_pool", sink_frames=4, recent_frames=4, mid_blocks=4, top_k=2, bank_device=bank)
    gen = Generation(model, PackedCache(cfg, make_compressor("kv_pool", model)), 60, 104, seed=seed)
    list(gen.run(text_kv, 4 * chunks))
    return gen.latent()


@pytest.mark.parametrize("compiled", [False, True])
def test_graphed_generation_equals_eager_within_bf16_tolerance(wide, compiled):
    text_kv = wide.encode_text(torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(0)).cuda())
    if compiled:
        wide.compile_blocks()
    wide.graphs = None
    eager = generate(wide, text_kv)
    wide.enable_cuda_graphs()
    graphed = generate(wide, text_kv)
    captures = wide.graphs.captures
    wide.graphs = None
    d = rel(graphed, eager)
    print(f"\ngraphed vs eager (compiled={compiled}): {captures} capture(s), relative L2 {d:.2e}")
    assert captures == 1 and torch.isfinite(graphed).all()
    # measured on an H200: plain forward replayed bit for bit (0.0); compiled blocks 2.3e-3 after 12
    # autoregressive chunks (Inductor's kernels under capture): within bf16's epsilon (7.8e-3)
    assert d < 1e-2


def test_device_selection_on_cuda_equals_the_host_selection_bit_for_bit():
    model = random_model(tiny_config(), seed=7, device="cuda")
    text_kv = model.encode_text(random_prompt(model.cfg, tokens=6, seed=8).cuda())
    cfg = CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=5, top_k=3, bank_device="same")
    out = []
    for device_path in (True, False):
        cache = PackedCache(cfg, make_compressor("kv_pool", model))
        if not device_path:
            cache._select_on_device = lambda: False
        gen = Generation(model, cache, 4, 6, seed=1, chunk_frames=2)
        list(gen.run(text_kv, 24))
        out.append(gen.latent())
    assert torch.equal(out[0], out[1])


@pytest.mark.skipif(torch.cuda.is_available() and fp8_unsupported_reason("cuda") is not None,
                    reason="needs fp8 tensor cores")
@pytest.mark.parametrize("rows", [37, 6240])
def test_fp8_scaled_mm_computes_the_dequantized_product(rows):
    g = torch.Generator(device="cuda").manual_seed(0)
    lin = torch.nn.Linear(1536, 8960, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.normal_(0, 1536 ** -0.5, generator=g)
    x = torch.randn(rows, 1536, device="cuda", generator=g).to(torch.bfloat16)
    y = Fp8Linear(lin)(x)
    qa, sa = quantize_rows(x)
    qw, sw = quantize_rows(lin.weight)
    want = (qa.double() * sa.double()) @ (qw.double() * sw.double()).t() + lin.bias.double()
    exact = x.double() @ lin.weight.double().t() + lin.bias.double()
    print(f"\nfp8 linear, {rows} rows: vs dequantized {rel(y, want):.2e}, vs bf16-exact {rel(y, exact):.2e}")
    assert rel(y, want) < 5e-3 and rel(y, exact) < 6e-2


def test_tiny_decoder_on_cuda_in_bf16_matches_float32_on_the_cpu():
    from test_taehv import published_state_dict
    sd = published_state_dict()
    cpu = TinyWanDecoder.from_state_dict(sd)
    gpu = TinyWanDecoder.from_state_dict(sd, dtype=torch.bfloat16, device="cuda").channels_last()
    z = torch.randn(1, 16, 5, 8, 12, generator=torch.Generator().manual_seed(3))
    stream = gpu.stream_decoder()
    got = torch.cat([stream.decode(z[:, :, :2]), stream.decode(z[:, :, 2:])], 2).cpu()
    d = rel(got, cpu.decode(z))
    print(f"\ntiny decoder bf16 on cuda vs float32 on cpu: {d:.2e}")
    assert d < 3e-2


def norm_silu_float64(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """silu(x / ||x||_channels * gamma * sqrt(C)), written out in float64 (the kernels' reference)."""
    x64 = x.double()
    y = x64 / x64.norm(dim=1, keepdim=True) * gamma.double().view(-1, 1, 1, 1) * x.shape[1] ** 0.5
    return y * torch.sigmoid(y)


@pytest.mark.parametrize("channels,frames", [(96, 1), (384, 3), (1000, 2)])
def test_fused_norm_silu_equals_the_float64_formula(channels, frames):
    """The Triton kernel on a channels-last bf16 activation vs silu(x / ||x|| * gamma * sqrt(C)) in float64."""
    from packforcing_core.vae.kernels import rms_norm_silu
    g = torch.Generator().manual_seed(channels)
    x = torch.randn(1, channels, frames, 30, 52, generator=g) * 3
    gamma = torch.rand(channels, generator=g) + 0.5
    want = norm_silu_float64(x, gamma)
    dev = x.to("cuda", torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
    got = rms_norm_silu(dev, gamma.to("cuda", torch.bfloat16), channels ** 0.5)
    assert got.is_contiguous(memory_format=torch.channels_last_3d)
    d = rel(got.cpu(), want)
    print(f"\nfused norm+silu, {channels} channels: {d:.2e} from float64")
    assert d < 1e-2


def test_fused_norm_silu_into_the_causal_convs_padded_input():
    """The kernel writing into the new-frames slice of a channels-last buffer (what CausalConv3d hands
    it): the cached frames in front are untouched, the slice equals the float64 formula."""
    from packforcing_core.vae.kernels import rms_norm_silu
    g = torch.Generator().manual_seed(5)
    x, gamma = torch.randn(1, 96, 4, 30, 52, generator=g) * 3, torch.rand(96, generator=g) + 0.5
    want = norm_silu_float64(x, gamma)
    buf = torch.full((1, 96, 6, 30, 52), 7.0, device="cuda", dtype=torch.bfloat16)
    buf = buf.contiguous(memory_format=torch.channels_last_3d)
    dev = x.to("cuda", torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
    rms_norm_silu(dev, gamma.to("cuda", torch.bfloat16), 96 ** 0.5, out=buf[:, :, 2:])
    assert bool((buf[:, :, :2] == 7.0).all())
    assert rel(buf[:, :, 2:].cpu(), want) < 1e-2


def test_wan_vae_stream_decode_on_cuda_matches_float32_on_the_cpu():
    """The decoder with its fused norms (channels-last bf16 on CUDA) vs the eager float32 decoder on the CPU."""
    from packforcing_core.vae.model import WanVAE
    torch.manual_seed(0)
    cpu = WanVAE(dim=32).eval()
    gpu = WanVAE(dim=32).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.to("cuda", torch.bfloat16).channels_last()
    z = torch.randn(1, 16, 3, 8, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = cpu.decode(z)
        stream = gpu.stream_decoder(chunk_size=1)
        got = torch.cat([stream.decode(z[:, :, i:i + 1].to("cuda")) for i in range(3)], 2).float().cpu()
    d = rel(got, want)
    print(f"\nWan VAE decode bf16 on cuda (fused norms) vs float32 on cpu: {d:.2e}")
    assert d < 3e-2
