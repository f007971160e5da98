"""Prompt switches on a PackedCache: re-cache the full-resolution history under a new prompt,
re-compress the mid blocks, and scene cuts."""
from __future__ import annotations

import torch

from ..model.dit import attention
from ..model.rope import Rotation, grid_positions


class _HistoryPass:
    """AttentionContext of one re-cache pass: writes the group's K/V into its history slots
    [a, b) and attends to the history up to them."""

    def __init__(self, cache: "PackedCache", a: int, b: int, rope: Rotation):
        self.cache, self.a, self.b, self.rope = cache, a, b, rope
        self.q_mean = torch.zeros(cache.geo.layers, cache.geo.heads, cache.geo.head_dim, device=cache.device)

    @torch.compiler.disable
    def attend(self, layer, q, k, v, q_raw):
        c, a, b = self.cache, self.a, self.b
        self.q_mean[layer] = q_raw.float().mean(1).sum(0) / c.geo.batch
        c.k[layer][:, a:b], c.v[layer][:, a:b] = k, v
        s = c._cur_end
        return attention(q, c.k[layer][:, s:b], c.v[layer][:, s:b])


class PromptSwitches:
    """PackedCache at a prompt switch (a part of the class: it works on the cache's buffers and partitions)."""

    def history_frames(self) -> tuple[list[int], list[float]]:
        """Absolute index and packed position of each full-resolution history frame, in buffer
        order [sink | recent]."""
        sink_pos = [float(j if self.cfg.rope_adjust else self.sink_first + j) for j in range(self.sink_count)]
        frames = list(range(self.sink_first, self.sink_first + self.sink_count))
        frames += list(range(self.recent_first, self.recent_first + self.recent_count))
        return frames, sink_pos + list(self.recent_pos)

    @torch.no_grad()
    def recache(self, model, latents: torch.Tensor, groups: list[int], text_kv) -> None:
        """Recompute the K/V of sink and recent from their clean latents (B, C, F, H, W), in buffer
        order, under `text_kv` (a new prompt): t=0 passes over consecutive groups of `groups` frames,
        each seeing the history before it and itself (block-causal), at the frames' current packed
        positions. Mid blocks are untouched (see `recompress`)."""
        frames, pos = self.history_frames()
        if sum(groups) != len(frames) or latents.shape[2] != len(frames):
            raise ValueError(f"re-cache of {len(frames)} history frames got {latents.shape[2]} latents "
                             f"in groups {groups}")
        g, t = self.geo, self._t
        first = 0
        for n in groups:
            p = torch.tensor(pos[first:first + n], dtype=torch.float64, device=self.device)
            grid = grid_positions(n, g.rows, g.cols, device=self.device)
            grid[:, 0] = p.repeat_interleave(t)
            a = self._cur_end + first * t
            ctx = _HistoryPass(self, a, a + n * t, Rotation.at(grid, g.head_dim, self.theta).to(self.device))
            model(latents[:, :, first:first + n].to(self.device), torch.zeros(g.batch, n, device=self.device),
                  ctx, text_kv)
            self.mean_q = ctx.q_mean
            first += n

    @torch.no_grad()
    def recompress(self, source, text_kv) -> None:
        """Re-build every mid block from its source latents under `text_kv` (modes that compress
        from latents: lr, hr, hr_lr). source(first_frame, frames) -> (B, C, frames, H, W)."""
        g = self.geo
        for blk in self.blocks:
            ks, vs, _ = self.compressor(None, source(blk.first_frame, blk.frames), (blk.frames, g.rows, g.cols),
                                        text_kv)
            self._write_block(blk.slot, ks, vs)
            blk.mean_k = self._mean_k(ks)

    def cut(self, keep_sink: bool) -> None:
        """Scene cut: forget recent and mid (and the sink unless `keep_sink`); the next chunk is
        packed right after what is kept, so positions stay bounded."""
        self.recent_count, self.recent_pos, self.blocks, self.selected = 0, [], [], []
        self.pending_latent, self.mean_q = None, None
        self.recent_first = self.frames_done
        if not keep_sink:
            self.sink_count, self.sink_first = 0, self.frames_done
