"""Bad inputs and faults through a real ComfyUI server: each gets a clear message that names the input
and says what to do, and nothing half-written is left behind. The tiny models, prompts and workflow
helpers are those of test_comfy_e2e.py."""
from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_harness import ComfyError
from packforcing_core.model.checkpoint import save_model
from packforcing_core.model.tiny import random_model
from packforcing_core.sampling.prompts import save_prompt_embeds
from test_comfy_e2e import DIT, PROMPTS, SLOW_DIT, basic, error_of, latent_of, load_prompt, save_latent, server, \
    tiny_dit_config  # noqa: F401  (server: the fixture)

NAN_DIT, ODD_META_DIT, BAD_HEADER_DIT = "pf_nan.safetensors", "pf_odd_meta.safetensors", "pf_bad_header.safetensors"
NAN_PROMPT = "pf_prompt_nan.safetensors"


@pytest.fixture(scope="module")
def faulty(server):
    """Files a user can end up with: a DiT with NaN weights, one with malformed 'config' metadata, one
    with an unreadable header, prompt embeddings with one NaN."""
    models = server.models_dir / "diffusion_models"
    nan = random_model(tiny_dit_config(), seed=1)
    with torch.no_grad():
        nan.head.head.weight[0, 0] = float("nan")
    save_model(nan, str(models / NAN_DIT))
    sd = {k: v.contiguous() for k, v in random_model(tiny_dit_config(), seed=1).state_dict().items()}
    save_file(sd, str(models / ODD_META_DIT), metadata={"config": '{"transformer": {"num_heads": 1,'})
    (models / BAD_HEADER_DIT).write_bytes((10 ** 6).to_bytes(8, "little") + b'{"x": ' + b"\0" * 64)
    embeds = load_file(str(server.input_dir / PROMPTS[0]))["prompt_embeds"]
    embeds[0, 3, 7] = float("nan")
    save_prompt_embeds(str(server.input_dir / NAN_PROMPT), embeds)
    return server


def continued(wf: dict, **second) -> dict:
    """`wf` plus a second sampler that continues its video (+16 frames) and saves its latent."""
    wf["13"] = {"class_type": "PackForcingSampler", "inputs": dict(wf["6"]["inputs"], cache=["6", 1], length=16)}
    wf["13"]["inputs"].update(second)
    wf["14"] = save_latent(["13", 0], "pf/continued")
    return wf


def bad(case: str) -> tuple[dict, list[str]]:
    wf = basic()
    inputs = lambda node: wf[node]["inputs"]
    if case in ("dtype", "mid_bank", "mode", "selection"):    # combos: ComfyUI 0.3.75 does not check them
        inputs("3" if case == "dtype" else "4")[case] = "bogus"    # (0.33 does, with its own message)
        return wf, [case, "'bogus'", {"dtype": "bf16", "mid_bank": "cpu", "mode": "kv_pool",
                                      "selection": "affinity"}[case]]
    if case in ("codec", "fps", "nul_prefix"):
        wf["5"] = {"class_type": "VAELoader", "inputs": {"vae_name": "pf_tiny_vae.safetensors"}}
        wf["9"] = {"class_type": "PackForcingSaveVideo",
                   "inputs": {"samples": ["6", 0], "vae": ["5", 0], "filename_prefix": "pf_bad/video", "fps": 16.0,
                              "codec": "h264", "crf": 19}}
        key, value, expect = {"codec": ("codec", "bogus", ["codec", "'bogus'", "h264", "vp9"]),
                              "fps": ("fps", math.nan, ["fps: nan is not a frame rate"]),
                              "nul_prefix": ("filename_prefix", "pf_bad/.a\x00b", ["filename_prefix", "NUL"])}[case]
        inputs("9")[key] = value
        return wf, expect
    if case == "nul_prefix_sampler":         # the sampler's own video, written as it goes
        wf["5"] = {"class_type": "VAELoader", "inputs": {"vae_name": "pf_tiny_vae.safetensors"}}
        inputs("6").update(save_video=True, filename_prefix="pf_bad/.s\x00b", vae=["5", 0])
        return wf, ["filename_prefix", "NUL"]
    if case == "shift_nan":
        inputs("6")["shift"] = math.nan
        return wf, ["shift", "finite number > 0"]
    if case == "sink_nan":
        inputs("4")["sink_seconds"] = math.nan
        return wf, ["sink_seconds", "nan s"]
    if case == "prompt_nan":
        wf["2"] = load_prompt(NAN_PROMPT)
        return wf, ["embeddings", "1 NaN/inf values"]
    if case == "chunk_frames_max":
        inputs("6")["chunk_frames"] = 100
        return wf, ["chunk_frames: 100 is out of range [1, 64]"]
    if case == "length_max":
        inputs("6")["length"] = 3999999997
        return wf, ["length: 3999999997 is out of range"]
    if case == "nan_model":
        inputs("3")["dit_name"] = NAN_DIT
        return wf, ["chunk 0", "NaN/inf", "not kept"]
    if case == "odd_metadata":
        inputs("3")["dit_name"] = ODD_META_DIT
        return wf, ["dit_name", ODD_META_DIT, "'config' metadata is malformed"]
    if case == "dtype_change":          # continue with the same DiT loaded in another dtype
        inputs("3")["dtype"] = "fp32"
        wf["11"] = {"class_type": "PackForcingModelLoader", "inputs": {"dit_name": DIT, "dtype": "bf16"}}
        return continued(wf, model=["11", 0]), ["cache", "computing in fp32", "dtype fp32"]
    if case == "huge_sink":     # the sink is sized to the video (5 min), which is still far too big
        inputs("4").update(sink_seconds=600.0, mid_bank="cpu")
        inputs("6").update(width=4096, height=4096, length=4797)
        return wf, ["cache", "1200 latent frames needs", "lower sink / recent seconds"]
    raise AssertionError(case)


CASES = ["dtype", "mid_bank", "mode", "selection", "codec", "fps", "nul_prefix", "nul_prefix_sampler", "shift_nan",
         "sink_nan", "prompt_nan", "chunk_frames_max", "length_max", "nan_model", "odd_metadata", "dtype_change",
         "huge_sink"]


@pytest.mark.parametrize("case", CASES)
def test_bad_inputs_get_a_message_naming_the_input(faulty, case):
    wf, expect = bad(case)
    message = error_of(faulty, wf)
    print(f"{case}: {message}")
    for part in expect:
        assert part in message, f"{case}: {part!r} not in {message!r}"
    assert "KeyError" not in message and "Traceback" not in message
    if case == "huge_sink":
        assert "mid bank to cpu" not in message      # it is on the cpu already
    if case.startswith("nul_prefix"):     # nothing written, hidden or not
        folder = faulty.output_dir / "pf_bad"
        assert not folder.exists() or not any(folder.iterdir()), list(folder.iterdir())


def test_plan_route_answers_unreadable_headers_and_refuses_underscored_numbers(faulty):
    budget = faulty.get(f"/packforcing/plan?dit_name={BAD_HEADER_DIT}")
    assert budget["model"]["source"].startswith(f"assumed: {BAD_HEADER_DIT} could not be read"), budget["model"]
    for query, message in (("width=6_4", "width: '6_4' is not an integer"),
                           ("sink_seconds=1_0", "sink_seconds: '1_0' is not a number")):
        with pytest.raises(ComfyError) as e:
            faulty.get(f"/packforcing/plan?{query}")
        assert "HTTP 400" in str(e.value) and message in str(e.value), str(e.value)


def interrupted(server, wf: dict) -> None:
    """Queue `wf` and cancel it once its first chunk is kept."""
    with server.ws_messages() as ws:
        prompt_id = server.queue(wf)
        ws.wait_for(lambda m: m.get("type") == "packforcing.progress" and m["data"].get("phase") == "chunk_done",
                    timeout=120)
        server.interrupt()
        ws.wait_done(prompt_id, timeout=60)
        assert ws.of_type("execution_interrupted", prompt_id)
        stopped = [m["data"] for m in ws.of_type("packforcing.progress", prompt_id)
                   if m["data"].get("phase") == "stopped"]
    assert stopped and stopped[-1]["saved"] and "resume on" in stopped[-1]["hint"], stopped   # the UI says so


def test_resume_files_are_checked_against_the_request(faulty):
    """A resume file under this run's key but of another size, or a corrupt one, is refused naming
    `resume` and both values, with the way out (resume off); resume off then works."""
    folder = faulty.output_dir / "packforcing"
    run = lambda size, resume=False: basic(16 * 32 - 3, width=size, height=size, seed=3, resume=resume) | {
        "3": {"class_type": "PackForcingModelLoader", "inputs": {"dit_name": SLOW_DIT, "dtype": "fp32"}}}
    interrupted(faulty, run(128))
    (mine,) = folder.glob("resume-*.safetensors")
    interrupted(faulty, run(64))
    (other,) = set(folder.glob("resume-*.safetensors")) - {mine}
    shutil.copyfile(other, mine)
    message = error_of(faulty, run(128, resume=True))
    for part in ("resume", "width 128 but the file has 64", "height 128 but the file has 64", "turn resume off"):
        assert part in message, message
    mine.write_bytes(b"\0" * 100)
    message = error_of(faulty, run(128, resume=True))
    assert "resume" in message and "corrupt" in message and "turn resume off" in message, message
    entry = faulty.run(run(128))
    assert latent_of(faulty, entry, "8").shape[-2:] == (16, 16)
    other.unlink()
