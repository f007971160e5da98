"""A tiny Wan2.1 decoder (TAEHV layout, as taew2_1 / lighttaew2_1) loaded by ComfyUI's own VAELoader
works as the VAE of PackForcing Decode and Save Video, and decodes what ComfyUI's own TAEHV decodes
(VAEDecode): an independent implementation of the same weights. Through a real server on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from test_taehv import published_state_dict

TAE = "pf_taew2_1.safetensors"
LATENT = "pf_random.latent"


@pytest.fixture(scope="module")
def server(comfy_server):
    save_file(published_state_dict(seed=5), str(comfy_server.models_dir / "vae" / TAE))
    raw = torch.randn(1, 16, 4, 4, 6, generator=torch.Generator().manual_seed(6))
    save_file({"latent_tensor": raw, "latent_format_version_0": torch.tensor([])}, str(comfy_server.input_dir / LATENT))
    assert comfy_server.custom_node_loaded(), comfy_server.log_tail()
    return comfy_server


def test_tiny_decoder_vae_decodes_like_comfyuis_own_taehv(server):
    wf = {
        "1": {"class_type": "LoadLatent", "inputs": {"latent": LATENT}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": TAE}},
        "3": {"class_type": "PackForcingDecode", "inputs": {"samples": ["1", 0], "vae": ["2", 0]}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["1", 0], "vae": ["2", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "tae/ours"}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "tae/native"}},
        "7": {"class_type": "PackForcingSaveVideo", "inputs": {"samples": ["1", 0], "vae": ["2", 0],
                                                               "filename_prefix": "tae/video", "fps": 16.0,
                                                               "codec": "h264", "crf": 19}},
    }
    entry = server.run(wf)
    outputs = server.output_files(entry)
    frames = lambda tag: np.stack([np.asarray(Image.open(p)) for p in sorted(outputs)
                                   if p.name.startswith(tag) and p.suffix == ".png"]).astype(int)
    ours, native = frames("ours"), frames("native")
    assert ours.shape == native.shape == (13, 32, 48, 3)          # 4T-3 frames, 8x the latent size
    assert np.abs(ours - native).max() <= 1
    assert ours.std() > 5                                           # a picture, not a constant
    assert any(p.suffix == ".mp4" for p in outputs)
