"""Checkpoint formats load to identical tensors; bad files get clear errors; pickles never run."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from packforcing_core.model.checkpoint import CheckpointError, load_model, save_model
from packforcing_core.model.tiny import random_model, tiny_config


@pytest.fixture(scope="module")
def model():
    # head_dim 128 like Wan, so .pt files (which carry no head count) load with the right heads
    return random_model(tiny_config(dim=256, num_heads=2, text_len=512), seed=1)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def _meta():
    return {"config": json.dumps({"transformer": {"num_heads": 2, "text_dim": 32, "text_len": 512}})}


def test_every_format_loads_to_identical_tensors(model, tmp_path):
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    files = {}
    save_model(model, str(tmp_path / "plain.safetensors"))
    files["plain"] = tmp_path / "plain.safetensors"
    save_file({f"model.diffusion_model.{k}": v for k, v in sd.items()}, str(tmp_path / "comfy.safetensors"),
              metadata=_meta())
    files["comfy"] = tmp_path / "comfy.safetensors"
    # Self-Forcing: EMA preferred over the raw generator; FSDP / compile wrappers stripped.
    noisy = {f"model.{k}": v + 1 for k, v in sd.items()}
    ema = {f"model._fsdp_wrapped_module.{k}" if k.startswith("blocks") else f"_orig_mod.model.{k}": v
           for k, v in sd.items()}
    torch.save({"generator": noisy, "generator_ema": ema}, tmp_path / "sf.pt")
    files["self_forcing_ema"] = tmp_path / "sf.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "sf_gen.pt")
    files["self_forcing_generator"] = tmp_path / "sf_gen.pt"
    for name, path in files.items():
        loaded = load_model(str(path), dtype=torch.float32)
        assert loaded.cfg == model.cfg and _same(loaded, model), name


def test_tiny_pt_without_head_count_is_refused_clearly(tmp_path):
    m = random_model(tiny_config(), seed=0)   # dim 64: heads cannot be inferred from shapes
    torch.save({"generator": {f"model.{k}": v for k, v in m.state_dict().items()}}, tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="num_heads"):
        load_model(str(tmp_path / "t.pt"))


def test_sizes_come_from_shapes(tmp_path):
    m = random_model(tiny_config(dim=96, ffn_dim=160, num_layers=3, num_heads=3, text_dim=24), seed=2)
    save_model(m, str(tmp_path / "m.safetensors"))
    cfg = load_model(str(tmp_path / "m.safetensors"), dtype=torch.float32).cfg
    assert (cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.num_heads, cfg.text_dim) == (96, 160, 3, 3, 24)


def test_wan_1_3b_shapes_detected_without_metadata(tmp_path):
    """The real 1.3B sizes (meta tensors, nothing allocated): 12 heads from head_dim 128."""
    from packforcing_core.model.checkpoint import detect_config
    from packforcing_core.model.dit import CausalWanModel, WanConfig
    with torch.device("meta"):
        sd = CausalWanModel(WanConfig()).state_dict()
    cfg = detect_config(sd)
    assert (cfg.dim, cfg.ffn_dim, cfg.num_heads, cfg.num_layers, cfg.text_dim, cfg.freq_dim) == (1536, 8960, 12, 30, 4096, 256)
    assert sd["blocks.0.modulation"].shape == (1, 6, 1536) and sd["head.modulation"].shape == (1, 2, 1536)
    assert len(sd) == 15 + 30 * 27   # 825 tensors, like the released Wan2.1-T2V-1.3B


@pytest.mark.parametrize("kind,expect", [
    ("sdxl", "SDXL"), ("vae", "VAE"), ("i2v", "image-to-video"), ("vace", "VACE"),
    ("truncated", "truncated"), ("missing", "missing"), ("shape", "shape"), ("nofile", "does not exist"),
])
def test_bad_files_get_clear_errors(model, tmp_path, kind, expect):
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / f"{kind}.safetensors"
    if kind == "sdxl":
        save_file({"input_blocks.0.0.weight": torch.zeros(4, 4)}, str(path))
    elif kind == "vae":
        save_file({"encoder.conv1.weight": torch.zeros(4, 3, 3, 3, 3), "decoder.conv1.weight": torch.zeros(4)}, str(path))
    elif kind == "i2v":
        save_file({**sd, "img_emb.proj.0.weight": torch.zeros(4)}, str(path))
    elif kind == "vace":
        save_file({**sd, "vace_blocks.0.before_proj.weight": torch.zeros(4)}, str(path))
    elif kind == "truncated":
        save_model(model, str(path))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "missing":
        save_file({k: v for k, v in sd.items() if "blocks.1.ffn" not in k}, str(path), metadata=_meta())
    elif kind == "shape":
        save_file({**sd, "blocks.1.ffn.0.weight": torch.zeros(7, 256)}, str(path), metadata=_meta())
    with pytest.raises(CheckpointError) as e:
        load_model(str(path), dtype=torch.float32)
    msg = str(e.value)
    assert expect.lower() in msg.lower() and str(path) in msg
    if kind == "missing":
        assert "blocks.1.ffn.0.weight" in msg


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"generator": {"x": Evil()}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_model(str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_files_are_read_by_content_not_by_extension(model, tmp_path):
    """.sft (ComfyUI lists it), safetensors under a .pt name, and weights-only legacy (non-zip) .pt load."""
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_model(model, str(tmp_path / "m.sft"))
    save_model(model, str(tmp_path / "really_safetensors.pt"))
    torch.save({"generator_ema": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "legacy.pt",
               _use_new_zipfile_serialization=False)
    assert (tmp_path / "legacy.pt").read_bytes()[:2] == b"\x80\x02"      # a pickle, not a zip
    for name in ("m.sft", "really_safetensors.pt", "legacy.pt"):
        loaded = load_model(str(tmp_path / name), dtype=torch.float32)
        assert loaded.cfg == model.cfg and _same(loaded, model), name


def test_legacy_malicious_pickle_is_refused_as_unsafe_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"generator": {"x": Evil()}}, tmp_path / "evil.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as e:
        load_model(str(tmp_path / "evil.pt"))
    assert "unsafe content" in str(e.value) and "mmap" not in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("config,expect", [("{not json", "config' metadata is malformed"),
                                           ('["a list"]', "config' metadata is malformed"),
                                           ('{"transformer": {"num_heads": "many"}}', "config' metadata is malformed"),
                                           ('{"transformer": {"text_len": 0}}', "text_len 0")])
def test_malformed_config_metadata_names_the_file(model, tmp_path, config, expect):
    path = tmp_path / "odd_meta.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"config": config})
    with pytest.raises(CheckpointError) as e:
        load_model(str(path))
    assert expect in str(e.value) and str(path) in str(e.value)


def test_a_folder_or_a_foreign_file_is_named_as_such(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder; give a file"):
        load_model(str(tmp_path))
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="neither a safetensors file nor a PyTorch checkpoint"):
        load_model(str(tmp_path / "notes.pt"))
