"""The pure parts of the frontend support, without ComfyUI: the budget route's validation and numbers
(nodes/routes.py) and the live-view messages (nodes/progress.py). The HTTP side and the browser are in
tests/test_web.py.

The pack's modules use relative imports, so the repository is mounted as the package `packforcing_pack`.
"""
from __future__ import annotations

import base64
import io

from comfy_harness import pack_module

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from packforcing_core.cache.compressor import make_compressor
from packforcing_core.cache.config import CacheConfig, Geometry, plan
from packforcing_core.cache.packed import PackedCache
from packforcing_core.model.checkpoint import save_model
from packforcing_core.model.tiny import random_model, random_prompt, tiny_config
from packforcing_core.sampling.sampler import Generation
from packforcing_core.sampling.schedule import FlowSchedule





routes = pack_module("nodes.routes")
progress = pack_module("nodes.progress")

GPU = lambda free: {"device": "cuda:0", "device_name": "GPU", "free_bytes": free, "total_bytes": 80 * 10 ** 9,
                    "host_free_bytes": 64 * 10 ** 9}
CPU = {"device": "cpu", "device_name": "CPU", "free_bytes": None, "total_bytes": None, "host_free_bytes": 64 * 10 ** 9}
WAN13 = dict(routes.DEFAULT_MODEL, source="default")


def budget(query: dict, memory=CPU, model=WAN13) -> dict:
    return routes.budget(routes.parse_query({k: str(v) for k, v in query.items()}), model, memory)


# ----------------------------------------------------------------------------- route

def test_defaults_are_the_reference_configuration():
    b = budget({}, GPU(70 * 10 ** 9))
    ref = plan(CacheConfig(), Geometry(30, 12, 128, 30, 52, 4), 2, total_frames=20)
    assert b["plan"] == ref
    assert b["attended_tokens"] == 21632 and round(b["device_bytes"] / 1e9, 2) == 3.99   # DESIGN: ~21.6k tokens, ~4 GB
    assert b["host_bytes"] == ref["bank_bytes"] and b["kv_bytes"] == ref["total_bytes"]
    assert b["bounded"] and b["longest"] is None and not b["exceeds_free"]


def test_gpu_warning_and_bank_placement():
    ref = plan(CacheConfig(bank_device="same"), Geometry(30, 12, 128, 30, 52, 4), 2)
    b = budget({"mid_bank": "gpu"}, GPU(ref["device_bytes"]))
    assert b["device_bytes"] == ref["device_bytes"] == ref["total_bytes"] and b["host_bytes"] == 0
    assert not b["exceeds_free"]
    assert budget({"mid_bank": "gpu"}, GPU(ref["device_bytes"] - 1))["exceeds_free"]
    assert not budget({}, CPU)["exceeds_free"]                           # CPU: no warning
    tight = GPU(10 ** 10) | {"host_free_bytes": 10 ** 6}
    assert budget({}, tight)["exceeds_host"]                             # the mid bank waits in host RAM


@pytest.mark.parametrize("free", [3 * 10 ** 9, 80 * 10 ** 9])
def test_full_mode_longest_video_fits_and_one_more_chunk_does_not(free):
    b = budget({"mode": "full", "length": 1917}, GPU(free))
    geo = Geometry(30, 12, 128, 30, 52, 4)
    full = lambda t: plan(CacheConfig(mode="full"), geo, 2, total_frames=t)["device_bytes"]
    longest = b["longest"]["latent_frames"]
    assert longest % 4 == 0 and full(longest) <= free < full(longest + 4)
    assert b["longest"]["frames"] == 4 * longest - 3 and b["longest"]["seconds"] == (4 * longest - 3) / 16
    assert b["kv_bytes"] == full(480) and b["exceeds_free"]             # 2 minutes of full cache: ~138 GB
    assert round(b["kv_bytes"] / 1e9) == 139 and not b["bounded"]


def test_model_sizes_and_dtype_change_the_numbers():
    b = budget({"layers": 40, "heads": 40, "head_dim": 128, "dtype": "fp32", "width": 1280, "height": 720},
               model=routes.resolve_model(routes.parse_query({"layers": "40", "heads": "40", "head_dim": "128"})))
    ref = plan(CacheConfig(), Geometry(40, 40, 128, 45, 80, 4), 4, total_frames=20)
    assert b["plan"] == ref and b["model"]["source"] == "given"


@pytest.mark.parametrize("query, message", [
    ({"mode": "turbo"}, "not one of"), ({"sink_seconds": "x"}, "is not a number"),
    ({"sink_seconds": "0.1"}, "whole number of latent frames"), ({"recent_seconds": "nan"}, "out of range"),
    ({"recent_seconds": "601"}, "out of range"), ({"mode": "none", "recent_seconds": "0"}, "needs at least 0.25 s"),
    ({"width": "833"}, "not a multiple of 16"), ({"height": "5000"}, "out of range"),
    ({"mid_blocks": "1e3"}, "not an integer"), ({"length": "0"}, "out of range"), ({"batch": "65"}, "out of range"),
    ({"heads": "2"}, "give all of"), ({"dit_name": ""}, "file name"), ({"dit_name": "a" * 600}, "file name"),
    ({"junk": "1", "more": "2"}, "unknown parameters junk, more"),
])
def test_bad_parameters_are_refused_with_a_message(query, message):
    with pytest.raises(routes.QueryError, match=message):
        routes.budget(routes.parse_query(query), WAN13, CPU)


def test_repeated_parameters_are_refused():
    with pytest.raises(routes.QueryError, match="more than once"):
        routes.parse_query({"mode": "full"}, getall=lambda k: ["full", "none"])


def test_full_mode_needs_no_recent_frames():
    assert budget({"mode": "full", "recent_seconds": 0})["plan"]["buffer_tokens"] > 0


def test_model_sizes_come_from_the_file_header(tmp_path):
    cfg = tiny_config(dim=256, num_heads=2, num_layers=3)
    path = tmp_path / "tiny.safetensors"
    save_model(random_model(cfg, dtype=torch.bfloat16), str(path))
    m = routes.model_from_file(str(path))
    assert (m["layers"], m["heads"], m["head_dim"], m["patch"], m["source"]) == (3, 2, 128, [2, 2], "file")
    # a Self-Forcing style .pt (generator_ema, `model.` prefixes) is read memory-mapped, weights only
    sd = {f"model.{k}": v for k, v in random_model(tiny_config(dim=256, num_heads=2, num_layers=4)).state_dict().items()}
    pt = tmp_path / "sf.pt"
    torch.save({"generator_ema": sd}, str(pt))
    m = routes.model_from_file(str(pt))
    assert (m["layers"], m["heads"], m["head_dim"], m["source"]) == (4, 2, 128, "file"), m   # head_dim 128: Wan's
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(2)}, str(bad))
    m = routes.model_from_file(str(bad))
    assert m["layers"] == 30 and m["source"].startswith("assumed: bad.safetensors could not be read")


# ----------------------------------------------------------------------------- live view messages

def test_live_view_messages_during_a_generation():
    model = random_model(tiny_config(), seed=3)
    text_kv = model.encode_text(random_prompt(model.cfg, tokens=4))
    cfg = CacheConfig(mode="kv_pool", sink_frames=2, recent_frames=2, mid_blocks=3, top_k=1)
    gen = Generation(model, PackedCache(cfg, make_compressor("kv_pool", model)), 4, 6, seed=0, chunk_frames=2,
                     schedule=FlowSchedule(steps=(1000, 500)))
    sent = []
    now = [0.0]
    clock = lambda: now[0]
    view = progress.LiveView(gen, 12, "7", send=sent.append, clock=clock)
    view.factors = (torch.randn(16, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(3))

    def on_step(chunk, step, steps):
        now[0] += 0.1               # every forward pass takes 0.1 s
        view(chunk, step, steps)

    list(gen.run(text_kv, 12, on_step=on_step))
    done = [m for m in sent if m["phase"] == "chunk_done"]
    steps = [m for m in sent if m["phase"] == "step"]
    assert [m["chunk"] for m in done] == [1, 2, 3, 4, 5, 6] and {m["chunks"] for m in sent} == {6}
    # step messages: the first pass of every chunk (its top-k is known then); the second pass came 0.1 s
    # later, under progress.STEP_INTERVAL, so it was not sent
    assert [(m["chunk"], m["step"]) for m in steps] == [(i, 1) for i in range(1, 7)]
    assert all(m["node"] == "7" and m["steps"] == 2 for m in sent)
    assert done[-1]["eta"] == 0 and done[-1]["frames_done"] == 12 == done[-1]["total_frames"]
    assert done[2]["sec_per_chunk"] == pytest.approx(0.3) and done[2]["eta"] == pytest.approx(0.9)
    t = done[-1]["timeline"]
    assert t["sink"] == [0, 2] and len(t["mid"]) == 3 and len(t["selected"]) == 1 and t["generating"] is None
    first_step = next(m for m in steps if m["chunk"] == 6)
    assert first_step["timeline"]["generating"] == [10, 12]
    assert done[-1]["kv"] == gen.cache.nbytes()
    png = base64.b64decode(done[-1]["preview"].split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).size == (6, 4) and done[-1]["preview_frame"] == 11


def test_live_view_is_silent_without_a_client():
    model = random_model(tiny_config(), seed=3)
    gen = Generation(model, PackedCache(CacheConfig(mode="none", recent_frames=2)), 4, 4, seed=0, chunk_frames=2)
    view = progress.LiveView(gen, 4, "1")          # no ComfyUI server here: nothing to send to
    assert view.send is None
    view(0, 0, 5)                                  # and calling it is harmless


def test_preview_is_the_linear_latent_to_rgb_map():
    factors = torch.zeros(16, 3)
    factors[0, 0] = factors[1, 1] = factors[2, 2] = 1.0
    frame = torch.zeros(16, 2, 3)
    frame[0] = 1.0          # red channel saturates
    frame[1] = -1.0         # green at the bottom
    png = base64.b64decode(progress.preview_png(frame, factors, torch.zeros(3)).split(",", 1)[1])
    img = Image.open(io.BytesIO(png))
    assert img.size == (3, 2) and img.getpixel((0, 0)) == (255, 0, 128)
