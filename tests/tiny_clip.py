"""A text encoder ComfyUI's CLIPLoader loads, for tests that type prompts: CLIP-L (type
`stable_diffusion`, 768-wide embeddings of 77 tokens) with seeded random weights. umt5-xxl cannot be
made small: ComfyUI builds the text encoders from fixed configurations, and CLIP-L (123M parameters,
246 MB in fp16) is the smallest one whose tokenizer ships with ComfyUI. The DiT of such tests takes
768-wide text (TEXT_DIM)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

TEXT_DIM = 768
NAME = "pf_tiny_clip_l.safetensors"
LAYERS, WIDTH, FFN, VOCAB, POSITIONS = 12, 768, 3072, 49408, 77


def clip_l_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: (torch.randn(*shape, generator=g) * 0.02).half()
    ones, zeros = (lambda n: torch.ones(n).half()), (lambda n: torch.zeros(n).half())
    sd = {"text_model.embeddings.token_embedding.weight": rand(VOCAB, WIDTH),
          "text_model.embeddings.position_embedding.weight": rand(POSITIONS, WIDTH),
          "text_model.final_layer_norm.weight": ones(WIDTH), "text_model.final_layer_norm.bias": zeros(WIDTH),
          "text_projection.weight": torch.eye(WIDTH).half()}
    for i in range(LAYERS):
        p = f"text_model.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{proj}.weight"], sd[p + f"self_attn.{proj}.bias"] = rand(WIDTH, WIDTH), zeros(WIDTH)
        for norm in ("layer_norm1", "layer_norm2"):
            sd[p + f"{norm}.weight"], sd[p + f"{norm}.bias"] = ones(WIDTH), zeros(WIDTH)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = rand(FFN, WIDTH), zeros(FFN)
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = rand(WIDTH, FFN), zeros(WIDTH)
    return sd


def write_clip(models_dir: Path) -> str:
    """Write the encoder into models/text_encoders/; returns the name CLIPLoader lists."""
    save_file(clip_l_state_dict(), str(models_dir / "text_encoders" / NAME))
    return NAME


def clip_loader() -> dict:
    return {"class_type": "CLIPLoader", "inputs": {"clip_name": NAME, "type": "stable_diffusion", "device": "default"}}
