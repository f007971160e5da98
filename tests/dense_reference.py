"""An independent, dense, float64 re-implementation of causal Wan2.1 inference, for tests.

It shares nothing with packforcing_core but the weights: its own patchify, Wan's complex RoPE table,
its own modulation, and attention over the WHOLE sequence with an explicit block-causal mask
(a token sees every token of its own chunk and of earlier chunks). Self-Forcing-style AR sampling
is then a loop over chunks that re-runs the whole sequence [clean history at t=0, noisy chunk].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rope_table(head_dim: int, max_pos: int = 1024, theta: float = 10000.0) -> list[torch.Tensor]:
    """Wan's complex tables, one per axis: 22/21/21 pairs for head_dim 128."""
    d = head_dim
    dims = [d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)]
    tables = []
    for ad in dims:
        inv = 1.0 / theta ** (torch.arange(0, ad, 2, dtype=torch.float64) / ad)
        tables.append(torch.polar(torch.ones(max_pos, ad // 2, dtype=torch.float64),
                                  torch.outer(torch.arange(max_pos, dtype=torch.float64), inv)))
    return tables


def apply_rope(x, frames, rows, cols, tables, first_frame=0):
    """x (B, L, heads, d) float64 -> rotated, positions (first_frame + f, r, c)."""
    b, length, n, d = x.shape
    xc = torch.view_as_complex(x.reshape(b, length, n, d // 2, 2).contiguous())
    ft, fh, fw = tables
    f = torch.cat([
        ft[first_frame:first_frame + frames].view(frames, 1, 1, -1).expand(frames, rows, cols, -1),
        fh[:rows].view(1, rows, 1, -1).expand(frames, rows, cols, -1),
        fw[:cols].view(1, 1, cols, -1).expand(frames, rows, cols, -1)], dim=-1).reshape(length, 1, -1)
    return torch.view_as_real(xc * f).flatten(3)


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def lin(sd, name, x):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def sinusoid(t, dim):
    half = dim // 2
    f = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    a = t.double()[..., None] * f
    return torch.cat([a.cos(), a.sin()], -1)


def _forward(sd, cfg, latent, t_frames, self_attention):
    """Wan2.1's DiT on `latent` (B, C, F, H, W) with per-frame timesteps; self_attention(layer, q, k, v)
    gets the un-rotated (B, L, heads, d) q, k, v of the layer and returns its (B, L, heads, d) output."""
    sd = {k: v.double() for k, v in sd.items()}
    b, c, nf, hh, ww = latent.shape
    rows, cols = hh // 2, ww // 2
    heads, dim = cfg.num_heads, cfg.dim
    hd = dim // heads
    x = F.conv3d(latent.double(), sd["patch_embedding.weight"], sd["patch_embedding.bias"], stride=(1, 2, 2))
    x = x.flatten(2).transpose(1, 2)                                     # (B, L, dim)
    per = rows * cols
    e = sinusoid(torch.as_tensor(t_frames, dtype=torch.float64), cfg.freq_dim)
    e = lin(sd, "time_embedding.2", F.silu(lin(sd, "time_embedding.0", e)))   # (F, dim)
    e6 = lin(sd, "time_projection.1", F.silu(e)).view(nf, 6, dim)
    tok_e = lambda m, i: m[:, i].repeat_interleave(per, 0)             # per-token modulation (L, dim)
    ctx = F.pad(CONTEXT["emb"].double(), (0, 0, 0, cfg.text_len - CONTEXT["emb"].shape[1]))
    ctx = lin(sd, "text_embedding.2", F.gelu(lin(sd, "text_embedding.0", ctx), approximate="tanh"))
    ln = lambda z: F.layer_norm(z, (dim,), eps=cfg.eps)
    for i in range(cfg.num_layers):
        p = f"blocks.{i}."
        m = sd[p + "modulation"][0] + e6                                  # (F, 6, dim)
        h = ln(x) * (1 + tok_e(m, 1)) + tok_e(m, 0)
        q = rms(lin(sd, p + "self_attn.q", h), sd[p + "self_attn.norm_q.weight"], cfg.eps).view(b, -1, heads, hd)
        k = rms(lin(sd, p + "self_attn.k", h), sd[p + "self_attn.norm_k.weight"], cfg.eps).view(b, -1, heads, hd)
        v = lin(sd, p + "self_attn.v", h).view(b, -1, heads, hd)
        y = self_attention(i, q, k, v).reshape(b, -1, dim)
        x = x + lin(sd, p + "self_attn.o", y) * tok_e(m, 2)
        h = F.layer_norm(x, (dim,), sd[p + "norm3.weight"], sd[p + "norm3.bias"], cfg.eps)
        q = rms(lin(sd, p + "cross_attn.q", h), sd[p + "cross_attn.norm_q.weight"], cfg.eps).view(b, -1, heads, hd)
        k = rms(lin(sd, p + "cross_attn.k", ctx), sd[p + "cross_attn.norm_k.weight"], cfg.eps).view(1, -1, heads, hd)
        v = lin(sd, p + "cross_attn.v", ctx).view(1, -1, heads, hd)
        y = softmax_attention(q, k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)).reshape(b, -1, dim)
        x = x + lin(sd, p + "cross_attn.o", y)
        h = ln(x) * (1 + tok_e(m, 4)) + tok_e(m, 3)
        y = lin(sd, p + "ffn.2", F.gelu(lin(sd, p + "ffn.0", h), approximate="tanh"))
        x = x + y * tok_e(m, 5)
    hm = sd["head.modulation"][0] + e[:, None]                            # (F, 2, dim)
    x = ln(x) * (1 + tok_e(hm, 1)) + tok_e(hm, 0)
    out = lin(sd, "head.head", x)                                         # (B, L, 16*4)
    out = out.view(b, nf, rows, cols, 1, 2, 2, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return out.reshape(b, c, nf, hh, ww)


def softmax_attention(q, k, v, allowed=None):
    logits = torch.einsum("bqnd,bknd->bnqk", q, k) / math.sqrt(q.shape[-1])
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bnqk,bknd->bqnd", logits.softmax(-1), v)


def dense_forward(sd, cfg, latent, t_frames, chunk_of_frame, first_frame=0):
    """Velocity for every frame of `latent` (B, C, F, H, W); t_frames (F,) timestep of each frame;
    chunk_of_frame (F,) chunk id of each frame: attention over the whole sequence, block-causal."""
    _, _, nf, hh, ww = latent.shape
    rows, cols, hd = hh // 2, ww // 2, cfg.dim // cfg.num_heads
    tables = rope_table(hd, max(1024, first_frame + nf + 1), cfg.rope_theta)
    chunk_tok = torch.as_tensor(chunk_of_frame).repeat_interleave(rows * cols)
    allowed = chunk_tok[None, :] <= chunk_tok[:, None]                   # query row, key column

    def self_attention(layer, q, k, v):
        q, k = (apply_rope(z, nf, rows, cols, tables, first_frame) for z in (q, k))
        return softmax_attention(q, k, v, allowed)

    return _forward(sd, cfg, latent, t_frames, self_attention)


CONTEXT = {}


def set_prompt(emb: torch.Tensor) -> None:
    """The prompt embeddings (1, n, text_dim) the dense forward attends to."""
    CONTEXT["emb"] = emb


def sigma_table_lookup(t: float, shift: float = 5.0) -> float:
    """Sigma of a warped timestep, found in the shifted 1000-entry table like the reference does."""
    sig = 1 - torch.arange(1000, dtype=torch.float64) / 1000
    sig = shift * sig / (1 + (shift - 1) * sig)
    return float(sig[(sig * 1000 - t).abs().argmin()])


def dense_ar_sample(sd, cfg, noise: dict, chunks: int, chunk_frames: int, timesteps, shape_hw):
    """Self-Forcing-style AR sampling, every forward a full-sequence masked one."""
    hh, ww = shape_hw
    clean = torch.zeros(1, cfg.in_dim, 0, hh, ww, dtype=torch.float64)
    for i in range(chunks):
        x = noise[f"chunk.{i}.init"].double()
        for j, t in enumerate(timesteps):
            seq = torch.cat([clean, x], 2)
            nf = seq.shape[2]
            t_frames = [0.0] * clean.shape[2] + [t] * chunk_frames
            chunk_of = [f // chunk_frames for f in range(nf)]
            v = dense_forward(sd, cfg, seq, t_frames, chunk_of)[:, :, -chunk_frames:]
            x0 = x - sigma_table_lookup(t) * v
            if j + 1 < len(timesteps):
                s = sigma_table_lookup(timesteps[j + 1])
                x = (1 - s) * x0 + s * noise[f"chunk.{i}.renoise.{j}"].double()
        clean = torch.cat([clean, x0], 2)
    return clean


def rotate_at(x, positions, head_dim, theta=10000.0):
    """Rotate x (B, L, heads, d) float64 by Wan's RoPE at integer positions (L, 3), via the complex table."""
    tables = rope_table(head_dim, int(positions.max()) + 2, theta)
    f = torch.cat([tables[a][positions[:, a].long()] for a in range(3)], dim=-1)    # (L, d/2)
    b, length, n, d = x.shape
    xc = torch.view_as_complex(x.reshape(b, length, n, d // 2, 2).contiguous())
    return torch.view_as_real(xc * f[:, None]).flatten(3)


def chunk_forward_with_history(sd, cfg, latent, t, first_pos, history):
    """One chunk (B, C, F, H, W) at timestep t, at temporal positions first_pos.., attending to
    `history` (per layer: rotated K, V float64) plus itself. Returns (velocity, per-layer un-rotated
    (k, v) of the chunk)."""
    _, _, nf, hh, ww = latent.shape
    hd = cfg.dim // cfg.num_heads
    pos = torch.stack(torch.meshgrid(torch.arange(nf) + first_pos, torch.arange(hh // 2), torch.arange(ww // 2),
                                     indexing="ij"), -1).reshape(-1, 3)
    kv_out = []

    def self_attention(layer, q, k, v):
        kv_out.append((k, v))
        keys = torch.cat([history[layer][0], rotate_at(k, pos, hd, cfg.rope_theta)], 1)
        vals = torch.cat([history[layer][1], v], 1)
        return softmax_attention(rotate_at(q, pos, hd, cfg.rope_theta), keys, vals)

    out = _forward(sd, cfg, latent, [float(t)] * nf, self_attention)
    return out, kv_out


def sink_window_ar_sample(sd, cfg, noise, chunks, chunk_frames, timesteps, shape_hw, sink, window):
    """AR sampling where each chunk attends to the first `sink` frames and the last `window` frames,
    re-packed to contiguous positions [sink | window | chunk] (every frame's K/V as computed when it
    was committed)."""
    hh, ww = shape_hw
    hd = cfg.dim // cfg.num_heads
    rows, cols = hh // 2, ww // 2
    frames_kv = []                  # per frame: per layer (k, v) un-rotated, float64
    out = []
    for i in range(chunks):
        done = len(frames_kv)
        kept = list(range(min(sink, done))) + [f for f in range(max(sink, done - window), done)]
        pos = torch.stack(torch.meshgrid(torch.arange(len(kept)), torch.arange(rows), torch.arange(cols),
                                         indexing="ij"), -1).reshape(-1, 3)
        history = []
        for layer in range(cfg.num_layers):
            k = torch.cat([frames_kv[f][layer][0] for f in kept], 1) if kept else torch.zeros(1, 0, cfg.num_heads, hd, dtype=torch.float64)
            v = torch.cat([frames_kv[f][layer][1] for f in kept], 1) if kept else k
            history.append((rotate_at(k, pos, hd, cfg.rope_theta) if kept else k, v))
        x = noise[f"chunk.{i}.init"].double()
        for j, t in enumerate(timesteps):
            vel, _ = chunk_forward_with_history(sd, cfg, x, t, len(kept), history)
            x0 = x - sigma_table_lookup(t) * vel
            if j + 1 < len(timesteps):
                s = sigma_table_lookup(timesteps[j + 1])
                x = (1 - s) * x0 + s * noise[f"chunk.{i}.renoise.{j}"].double()
        _, kv = chunk_forward_with_history(sd, cfg, x0, 0.0, len(kept), history)
        per = rows * cols
        for f in range(chunk_frames):
            frames_kv.append([(k[:, f * per:(f + 1) * per], v[:, f * per:(f + 1) * per]) for k, v in kv])
        out.append(x0)
    return torch.cat(out, 2)
