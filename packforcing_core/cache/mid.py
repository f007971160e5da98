"""The mid partition of PackedCache: a bank of compressed blocks (on the device, or in pinned host
memory), the dynamic top-k that each chunk attends to, its placement into the attention buffer
(gathered into pinned staging buffers and uploaded asynchronously from a host bank), and the
compression of the oldest recent frames into new blocks."""
from __future__ import annotations

import math

import torch

from ..model.rope import Rotation, grid_positions
from .config import MidBlock


class MidBank:
    """PackedCache's mid bank (a part of the class: it works on the cache's buffers, sizes and blocks)."""

    # ------------------------------------------------------------------ top-k selection
    def select(self) -> list[MidBlock]:
        """Dynamic top-k of the mid bank for the next chunk, returned in temporal order."""
        k = min(self.cfg.top_k, len(self.blocks))
        if k == 0:
            return []
        if self.cfg.selection == "recency" or self.mean_q is None:
            chosen = self.blocks[-k:]
        elif k == len(self.blocks):
            chosen = list(self.blocks)               # every block: no scores needed (and no host sync)
        else:
            scores = self.affinity()
            # Highest score first; among equal scores the newer block wins.
            order = sorted(range(len(self.blocks)), key=lambda i: (-scores[i], -self.blocks[i].index))
            chosen = [self.blocks[i] for i in sorted(order[:k])]
        return chosen

    def affinity(self) -> list[float]:
        """Mean query-key logit between the last committed chunk and each mid block, summed over layers.

        By linearity the mean over all (query, key) pairs of q.k equals mean(q).mean(k)."""
        return self._scores().tolist()

    def _scores(self) -> torch.Tensor:
        mean_k = torch.stack([b.mean_k for b in self.blocks])           # (blocks, layers, heads, d)
        return (mean_k * self.mean_q).sum((1, 2, 3)) / math.sqrt(self.geo.head_dim)

    @property
    def selected(self) -> list[MidBlock]:
        """The mid blocks the current chunk attends, in temporal order. A selection made on the
        device is read back only when asked for (e.g. by the UI), so generation never waits for it."""
        if self._sel_pending is not None:
            self._selected = [self._sel_blocks[i] for i in self._sel_pending.tolist()]
            self._sel_pending = None
        return self._selected

    @selected.setter
    def selected(self, blocks: list[MidBlock]) -> None:
        self._selected, self._sel_pending, self._sel_blocks = list(blocks), None, []

    def _uniform_blocks(self) -> bool:
        """Every block a full block of the same grid (the steady state): then the selection's
        positions and sizes do not depend on which blocks it takes."""
        bf, size = self.cfg.block_frames, self.geo.block_tokens(self.cfg.block_frames)
        return all(b.frames == bf and b.tokens == size for b in self.blocks)

    def _select_on_device(self) -> bool:
        """Top-k by affinity where the scores are (the model's device), when the bank is there too
        and the blocks are uniform: the same blocks as `select()`, with no host sync. Sets the
        pending selection (indices into `self.blocks`, temporal order); False if it does not apply."""
        k = min(self.cfg.top_k, len(self.blocks))
        if (self.cfg.selection != "affinity" or self.mean_q is None or not 0 < k < len(self.blocks)
                or self.bank_k[0].device.type != self.device.type or not self._uniform_blocks()):
            return False
        n = len(self.blocks)
        # newest first, then a stable sort: among equal scores the newer block stays ahead, as in select()
        order = torch.sort(self._scores().flip(0), descending=True, stable=True).indices[:k]
        self._sel_blocks = list(self.blocks)
        self._sel_pending = torch.sort(n - 1 - order).values
        self._selected = []
        return True

    # ------------------------------------------------------------------ placement into the buffer
    def _place_selected(self, pos_sel: list[float] | None) -> int:
        """Copy the selected blocks from the canonical bank into the buffer, rotated to their slots.
        Returns the number of tokens placed."""
        if self._sel_pending is not None:
            return self._place_on_device(pos_sel)
        if not self.selected:
            return 0
        positions = torch.cat([b.offsets + torch.tensor([p, 0.0, 0.0], dtype=torch.float64)
                               for b, p in zip(self.selected, pos_sel)])
        rot = Rotation.at(self._upload(positions), self.geo.head_dim, self.theta).to(self.device)
        idx = torch.cat([torch.arange(b.slot, b.slot + b.tokens) for b in self.selected])
        if self.bank_k[0].device.type == self.device.type:
            idx = self._upload(idx)
        if self._staged is not None:
            self._staged.synchronize()   # the staging buffers are free again once the last upload is done
        a = self._mid_start
        b = a + idx.numel()
        for layer in range(self.geo.layers):
            self.k[layer][:, a:b] = rot(self._fetch(self.bank_k, layer, idx, 0))
            self.v[layer][:, a:b] = self._fetch(self.bank_v, layer, idx, 1)
        if self._staged is not None:
            self._staged.record()
        return idx.numel()

    def _place_on_device(self, pos_sel: list[float] | None) -> int:
        """`_place_selected` for a selection made on the device (uniform blocks, bank on the device):
        the same rows, rotations and order, gathered by device indices."""
        g, bf = self.geo, self.cfg.block_frames
        size, chosen, blocks = g.block_tokens(bf), self._sel_pending, self._sel_blocks
        k = chosen.numel()
        key = None if pos_sel is None else (k, tuple(pos_sel))
        if key is None or self._mid_rot is None or self._mid_rot[0] != key:   # re-packed positions repeat
            if pos_sel is None:       # absolute positions: each block's own first frame
                base = self._upload(torch.tensor([float(b.first_frame) for b in blocks], dtype=torch.float64))[chosen]
            else:
                base = self._upload(torch.tensor(pos_sel, dtype=torch.float64))
            shift = torch.zeros(k, 1, 3, dtype=torch.float64, device=self.device)
            shift[:, 0, 0] = base
            positions = (self._device_offsets(blocks[0]) + shift).reshape(-1, 3)
            self._mid_rot = (key, Rotation.at(positions, g.head_dim, self.theta).to(self.device))
        rot = self._mid_rot[1]
        slots = self._upload(torch.tensor([b.slot for b in blocks]))[chosen]
        idx = (slots[:, None] + torch.arange(size, device=self.device)).flatten()
        a = self._mid_start
        for layer in range(g.layers):
            self.k[layer][:, a:a + k * size] = rot(self.bank_k[layer].index_select(1, idx))
            self.v[layer][:, a:a + k * size] = self.bank_v[layer].index_select(1, idx)
        return k * size

    def _grid(self, frames: int) -> tuple[int, int, int]:
        return frames, self.geo.rows, self.geo.cols

    def _device_offsets(self, block: MidBlock) -> torch.Tensor:
        grid = self._grid(block.frames)
        if grid not in self._offsets:            # e.g. blocks restored from a state file
            self._offsets[grid] = (self._upload(block.offsets), block.offsets)
        return self._offsets[grid][0]

    def _host_offsets(self, offsets: torch.Tensor, frames: int) -> torch.Tensor:
        """A block's offsets in host memory, its own copy. Compressors place coarse tokens by the
        block's grid alone (compressor.coarse_offsets), so the device-to-host copy, a sync, happens
        once per grid."""
        grid = self._grid(frames)
        if grid not in self._offsets:
            self._offsets[grid] = (offsets, offsets.cpu())
        return self._offsets[grid][1].clone()

    def _fetch(self, bank: list[torch.Tensor], layer: int, idx: torch.Tensor, which: int) -> torch.Tensor:
        """Rows `idx` of a bank layer, on the model's device. From host memory they are gathered
        into pinned staging buffers (one per layer and K/V), so the upload is asynchronous."""
        src = bank[layer]
        if src.device.type == self.device.type:
            return src.index_select(1, idx.to(src.device))
        if self._bank_written is not None:
            self._bank_written.synchronize()   # the host bank's last asynchronous writes have landed
        if self._staged is None:
            self._staged = torch.cuda.Event()
        key = (layer, which)
        if key not in self._stage:
            cap = min(self.cfg.top_k, self.cfg.mid_blocks) * self.geo.block_tokens(self.cfg.block_frames)
            self._stage[key] = torch.empty(src.shape[0], cap, *src.shape[2:], dtype=src.dtype, pin_memory=True)
        stage = self._stage[key][:, :idx.numel()]
        torch.index_select(src, 1, idx, out=stage)
        return stage.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ new blocks
    def _compress_oldest(self, n: int, text_kv) -> None:
        """Compress the n oldest recent frames into a new mid block (dropping the oldest if full)."""
        t, a = self._t, self._recent_start
        g = self.geo
        pos = self._upload(torch.tensor(self.recent_pos[:n], dtype=torch.float64))
        fine = grid_positions(n, g.rows, g.cols, device=self.device)
        fine[:, 0] = pos.repeat_interleave(t)  # where these keys are rotated to now
        unrot = Rotation.at(fine, g.head_dim, self.theta).to(self.device).inverse()
        kv = [(unrot(kb[:, a:a + n * t]), vb[:, a:a + n * t]) for kb, vb in zip(self.k, self.v)]
        latent = None if self.pending_latent is None else self.pending_latent[:, :, :n]
        ks, vs, offsets = self.compressor(kv, latent, (n, g.rows, g.cols), text_kv)
        self._add_block(ks, vs, offsets, n)

    def _add_block(self, ks: list[torch.Tensor], vs: list[torch.Tensor], offsets: torch.Tensor, n: int) -> None:
        size = self.geo.block_tokens(self.cfg.block_frames)
        if len(self.blocks) >= self.cfg.mid_blocks:
            freed = self.blocks.pop(0).slot
        else:
            freed = len(self.blocks) * size
        tokens = ks[0].shape[1]
        if tokens > size:
            raise RuntimeError(f"compressor produced {tokens} tokens, the bank slot holds {size}")
        self._write_block(freed, ks, vs)
        self.blocks.append(MidBlock(self.next_block, self.recent_first, n, tokens, self._host_offsets(offsets, n),
                                    self._mean_k(ks), freed))
        self.next_block += 1

    def _write_block(self, slot: int, ks: list[torch.Tensor], vs: list[torch.Tensor]) -> None:
        tokens = ks[0].shape[1]
        to_host = self.bank_k[0].is_pinned() and ks[0].is_cuda    # asynchronous: no sync per layer
        for layer in range(self.geo.layers):
            for bank, src in ((self.bank_k, ks), (self.bank_v, vs)):
                bank[layer][:, slot:slot + tokens].copy_(src[layer], non_blocking=to_host)
        if to_host:
            self._bank_written = torch.cuda.Event()
            self._bank_written.record()

    def _mean_k(self, ks: list[torch.Tensor]) -> torch.Tensor:
        """(layers, heads, head_dim) mean key of a block, for the top-k affinity."""
        return (torch.stack([k.float().mean(1).sum(0) for k in ks]) / self.geo.batch).to(self.device)
