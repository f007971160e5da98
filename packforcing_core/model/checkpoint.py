"""Loading causal Wan2.1 T2V DiT checkpoints in the formats found in the wild.

- Self-Forcing family `.pt`: a dict with `generator_ema` and/or `generator` (EMA preferred) whose
  keys carry `model.` and sometimes FSDP / torch.compile / activation-checkpoint wrapper prefixes.
- ComfyUI-repackaged `.safetensors`: Wan2.1 names, sometimes prefixed `model.diffusion_model.`.

Sizes come from tensor shapes (1.3B, 14B and tiny test models load through one path). The head
count cannot be read from shapes: Wan uses head_dim 128; other models carry it as safetensors
metadata `config` = {"transformer": {"num_heads": .., "text_dim": .., "text_len": ..}} (ComfyUI's
convention). `.pt` files are only ever read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import pickle
import re

import torch
from safetensors import SafetensorError, safe_open

from ..io.files import InputPathError, input_file
from .dit import CausalWanModel, WanConfig

WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_orig_mod.", "_checkpoint_wrapped_module.")
MODEL_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")
WAN_HEAD_DIM = 128


class CheckpointError(ValueError):
    """A file that is not what the loader expects; the message names the file and the fix."""


def file_kind(path: str) -> str:
    """What a model file is, from its first bytes (extensions lie: .sft, .ckpt, renamed files):
    'safetensors' (8-byte header length, then JSON), 'zip' (torch.save), 'pickle' (legacy torch.save)."""
    try:
        input_file("model file", path)
    except InputPathError as e:
        raise CheckpointError(str(e)) from None
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":            # pickle protocol >= 2
        return "pickle"
    raise CheckpointError(f"'{path}' is neither a safetensors file nor a PyTorch checkpoint (it starts with "
                          f"{head[:8]!r}): truncated, corrupt or another kind of file; download it again")


def read_tensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) of a safetensors or torch.save file, safely, by content."""
    kind = file_kind(path)
    if kind == "safetensors":
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"'{path}' is not a readable safetensors file (truncated or corrupt? {e}); "
                                  "download it again") from e
    return _pick_state_dict(_torch_load(path, kind), path), {}


def read_shapes(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Like read_tensors, without reading the weights: meta tensors from a safetensors header, or a
    memory-mapped zip checkpoint. A legacy pickle must be read whole, so it is refused here."""
    kind = file_kind(path)
    if kind == "pickle":
        raise CheckpointError(f"'{path}' is a legacy (non-zip) PyTorch checkpoint: its sizes are known only "
                              "once it is loaded")
    if kind == "zip":
        return read_tensors(path)     # memory-mapped: no tensor data is read
    try:
        header = _safetensors_header(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"'{path}' has an unreadable safetensors header (truncated or corrupt? {e})") from e
    meta = header.pop("__metadata__", None) or {}
    return {k: torch.empty(v["shape"], dtype=_ST_DTYPES.get(v["dtype"], torch.uint8), device="meta")
            for k, v in header.items()}, meta


_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
MAX_HEADER = 100 * 2 ** 20


def _safetensors_header(path: str) -> dict:
    """The JSON header of a safetensors file, read as bytes: no memory map of the whole file (a 14B
    model's 28 GB map can fail where memory is tight, and only the sizes are wanted here)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= MAX_HEADER:
            raise ValueError(f"header length {n}")
        header = json.loads(f.read(n))
        size = f.seek(0, os.SEEK_END)
    end = 0
    for name, v in header.items():
        if name != "__metadata__":
            begin, stop = v["data_offsets"]
            if not isinstance(v["dtype"], str) or not 0 <= begin <= stop or any(d < 0 for d in v["shape"]):
                raise ValueError(f"tensor {name}: {v}")
            end = max(end, stop)
    if 8 + n + end > size:
        raise ValueError(f"the header describes {8 + n + end} bytes but the file has {size}")
    return header


def _torch_load(path: str, kind: str):
    """torch.load(weights_only=True): memory-mapped when the file allows it (zip), else read whole."""
    try:
        if kind == "zip":
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise CheckpointError(f"'{path}' is not a readable PyTorch checkpoint (truncated or corrupt? {e})") from e
        raise CheckpointError(f"'{path}' has unsafe content: Python objects beyond plain tensors, which could run "
                              "code when loaded; refused. Use a .safetensors file or a weights-only .pt") from e
    except Exception as e:  # zip/EOF errors of truncated files
        raise CheckpointError(f"'{path}' is not a readable PyTorch checkpoint (truncated or corrupt? {e})") from e


def _pick_state_dict(obj, path: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("generator_ema", "generator", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointError(f"'{path}' holds no state dict (expected a dict of tensors or a Self-Forcing "
                          "checkpoint with 'generator_ema' / 'generator')")


def strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes anywhere in a name and one leading model prefix."""
    out = {}
    for name, t in sd.items():
        for p in WRAPPER_PREFIXES:
            name = name.replace(p, "")
        for p in MODEL_PREFIXES:
            if name.startswith(p):
                name = name[len(p):]
                break
        out[name] = t
    return out


def _identify_foreign(keys: set[str]) -> str | None:
    """A short description of what a non-Wan-T2V file is, if recognisable."""
    has = lambda pat: any(re.match(pat, k) for k in keys)
    if has(r"(input_blocks|down_blocks|conditioner)\."):
        return "a Stable Diffusion / SDXL UNet"
    if has(r"(encoder|decoder)\.(conv1|conv_in|downsamples|upsamples|mid)") or "conv1.weight" in keys and has(r"decoder\."):
        return "a VAE"
    if has(r"(shared|encoder\.block)\.") or "token_embedding.weight" in keys:
        return "a text encoder"
    if has(r"vace_"):
        return "a Wan VACE checkpoint"
    if has(r"img_emb\.|blocks\.\d+\.cross_attn\.k_img"):
        return "a Wan image-to-video checkpoint"
    return None


def detect_config(sd: dict[str, torch.Tensor], meta: dict[str, str] | None = None,
                  source: str = "checkpoint") -> WanConfig:
    """Model sizes from tensor shapes (and the head count from metadata when present)."""
    keys = set(sd)
    foreign = _identify_foreign(keys)
    if foreign:
        raise CheckpointError(f"'{source}' looks like {foreign}, not a Wan2.1 text-to-video DiT. "
                              "Load a causal Wan2.1 T2V checkpoint (e.g. Self-Forcing, CausalForcing, LongLive)")
    needed = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
              "blocks.0.ffn.0.weight", "head.head.weight")
    missing = [k for k in needed if k not in keys]
    if missing:
        raise CheckpointError(f"'{source}' is not a Wan2.1 DiT: missing {', '.join(missing)} "
                              f"(found {len(keys)} tensors, e.g. {', '.join(sorted(keys)[:3]) or 'none'})")
    pe = sd["patch_embedding.weight"]
    dim, in_dim, patch = pe.shape[0], pe.shape[1], tuple(pe.shape[2:])
    if in_dim != 16:
        kind = "an image-to-video model (36 input channels)" if in_dim == 36 else f"{in_dim} latent channels"
        raise CheckpointError(f"'{source}' has {kind}; the pack needs a Wan2.1 text-to-video DiT on the "
                              "16-channel Wan2.1 VAE latent")
    extra = _transformer_meta(meta, source)
    heads = extra.get("num_heads", dim // WAN_HEAD_DIM)
    if heads < 1 and "num_heads" not in extra:
        raise CheckpointError(f"'{source}': dim {dim} is not a multiple of Wan's head size {WAN_HEAD_DIM} and the "
                              "file has no 'config' metadata giving num_heads")
    if heads < 1 or dim % heads:
        raise CheckpointError(f"'{source}': dim {dim} is not divisible by num_heads {heads}")
    layers = 1 + max(int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k)))
    return WanConfig(
        dim=dim, ffn_dim=sd["blocks.0.ffn.0.weight"].shape[0], num_heads=heads, num_layers=layers,
        in_dim=in_dim, out_dim=sd["head.head.weight"].shape[0] // (patch[0] * patch[1] * patch[2]),
        text_dim=sd["text_embedding.0.weight"].shape[1], text_len=extra.get("text_len", 512),
        freq_dim=sd["time_embedding.0.weight"].shape[1], patch=patch,
        cross_attn_norm="blocks.0.norm3.weight" in keys)


def _transformer_meta(meta: dict | None, source: str) -> dict:
    """The optional 'config' metadata {"transformer": {"num_heads": .., "text_len": ..}}, checked."""
    text = (meta or {}).get("config") or "{}"
    try:
        extra = json.loads(text).get("transformer") or {}
        out = {k: int(extra[k]) for k in ("num_heads", "text_len") if k in extra}
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"'{source}': its 'config' metadata is malformed ({type(e).__name__}: {e}; starts "
                              f"{text[:60]!r}): the file was edited or damaged; download it again") from e
    if out.get("text_len", 1) < 1:
        raise CheckpointError(f"'{source}': its 'config' metadata gives text_len {out['text_len']}, expected >= 1")
    return out


def model_from_state_dict(sd: dict[str, torch.Tensor], meta=None, source: str = "checkpoint",
                          device="cpu", dtype=torch.bfloat16) -> CausalWanModel:
    sd = strip_prefixes(sd)
    cfg = detect_config(sd, meta, source)
    with torch.device("meta"):
        model = CausalWanModel(cfg)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"'{source}' does not match a Wan2.1 T2V DiT of dim {cfg.dim}, {cfg.num_layers} layers: "
            f"missing {len(missing)} tensors {missing[:8]}, unexpected {len(unexpected)} {unexpected[:8]}")
    for name, ref in model.state_dict().items():
        if tuple(sd[name].shape) != tuple(ref.shape):
            raise CheckpointError(f"'{source}': tensor {name} has shape {tuple(sd[name].shape)}, "
                                  f"expected {tuple(ref.shape)} (truncated or mixed checkpoint?)")
    model.load_state_dict(sd, assign=True)
    return model.to(device).set_compute_dtype(dtype)


def load_model(path: str, device="cpu", dtype=torch.bfloat16) -> CausalWanModel:
    """Load a causal Wan2.1 T2V DiT from any supported file."""
    sd, meta = read_tensors(path)
    return model_from_state_dict(sd, meta, source=path, device=device, dtype=dtype)


def save_model(model: CausalWanModel, path: str) -> None:
    """Write a model as plain-named safetensors with the head count in ComfyUI's metadata."""
    from safetensors.torch import save_file
    cfg = model.cfg
    meta = {"config": json.dumps({"transformer": {"num_heads": cfg.num_heads, "text_dim": cfg.text_dim,
                                                  "text_len": cfg.text_len}})}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata=meta)
