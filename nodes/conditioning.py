"""A native CONDITIONING's prompt embeddings, checked (shared by the sampler's request, the prompt
schedule and the embeddings file nodes)."""
from __future__ import annotations

import torch

from .spec import InputError


def prompt_tensor(positive) -> torch.Tensor:
    """The (B, n, width) embeddings of a native CONDITIONING [[tensor, dict]]."""
    if not isinstance(positive, (list, tuple)) or not positive or not torch.is_tensor(positive[0][0]):
        raise InputError("positive", "expected a CONDITIONING from CLIPTextEncode or Load Prompt Embeddings")
    if len(positive) > 1:
        raise InputError("positive", f"got {len(positive)} conditionings (Conditioning Combine / Concat?): "
                                     "PackForcing takes one prompt per sampler; chain samplers to change prompts")
    cond = positive[0][0]
    if cond.dim() != 3:
        raise InputError("positive", f"expected prompt embeddings (batch, tokens, width), got {tuple(cond.shape)}")
    cond = cond.detach().float().cpu()
    if not bool(torch.isfinite(cond).all()):
        raise InputError("positive", "the prompt embeddings hold NaN/inf values: encode the prompt again")
    return cond
