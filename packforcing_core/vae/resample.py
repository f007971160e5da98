"""2x spatial (and temporal) resampling of the Wan2.1 VAE. The decoder's nearest-neighbour upsample
then 3x3 conv is folded into one 2x2 conv at the low resolution (resize-conv folding): no
upsampled input is built."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import CausalConv3d, State, _memory_format


def _frame_conv(x: torch.Tensor, conv: nn.Conv2d, stride: int = 1) -> torch.Tensor:
    """Apply a 2D conv to every frame of (B,C,T,H,W) as a (1,k,k) 3D conv: no (B*T) reshuffle copies."""
    pad = conv.padding[0]
    return F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, stride=(1, stride, stride), padding=(0, pad, pad))


def _fold_taps(w: torch.Tensor, dim: int) -> torch.Tensor:
    """The 3 taps along `dim` of a kernel applied to a nearest-2x-upsampled axis, as 2 taps on the
    original axis per output parity (stacked in front): parity 0 reads (i-1, i, i), parity 1 (i, i, i+1)."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)])


def _upsample_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv(nearest 2x upsample of x), 3x3 conv with padding 1, computed at x's resolution.

    Per output parity (a, b) the 3x3 kernel folds into a 2x2 one (_fold_taps). All four parities are
    one 2x2 conv with 4x the output channels and padding 1; parity (a, b) is that output shifted by
    (a, b). No upsampled input is ever built and the conv does 16 instead of 36 multiply-adds per
    input pixel and channel pair; four strided copies interleave the parities. The folding is a few
    tensor ops on the weight's device: no host round trip in the decode loop.
    """
    w3 = conv.weight.to(torch.promote_types(conv.weight.dtype, torch.float32))  # sum taps unrounded
    k = _fold_taps(_fold_taps(w3, 2), 4).transpose(0, 1).flatten(0, 2)  # (a, b, C_out) x C_in x 2 x 2
    fmt = _memory_format(x)
    k = k.unsqueeze(2).to(x.dtype).contiguous(memory_format=fmt)
    y = F.conv3d(x, k, conv.bias.repeat(4), padding=(0, 1, 1))        # (B, 4 C_out, T, H+1, W+1)
    b, _, t, h, w = x.shape
    c = conv.out_channels
    out = torch.empty((b, c, t, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=fmt)
    o = out.unflatten(4, (w, 2)).unflatten(3, (h, 2))                  # (B, C, T, H, 2, W, 2)
    parts = y.unflatten(1, (2, 2, c))                                  # (B, 2, 2, C, T, H+1, W+1)
    for a in (0, 1):
        for p in (0, 1):
            o[:, :, :, :, a, :, p].copy_(parts[:, a, p, :, :, a:a + h, p:p + w])
    return out


class Resample(nn.Module):
    """2x spatial down/upsampling, optionally with a 2x temporal step (modes as in Wan)."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            # index 0 is the parameter-free upsample, so the conv is "resample.1" as in the file
            self.resample = nn.Sequential(nn.Identity(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            # index 0 is the (0,1,0,1) zero pad applied in forward
            self.resample = nn.Sequential(nn.Identity(), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            # predicts 2 output frames per input frame, stacked on channels
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, state: State) -> torch.Tensor:
        conv = self.resample[1]
        if self.mode == "upsample3d":
            x = self._double_time(x, state)
        if self.mode.startswith("upsample"):
            return _upsample_conv(x, conv)
        x = _frame_conv(F.pad(x, (0, 1, 0, 1)), conv, stride=2)
        return self._halve_time(x, state) if self.mode == "downsample3d" else x

    def _double_time(self, x: torch.Tensor, state: State) -> torch.Tensor:
        """First frame of the video passes unchanged; every later frame becomes 2 frames.

        The frames after the first form their own causal stream for time_conv (it never sees
        frame 0; its padding is zeros), which is how Wan's decoder was trained.
        """
        first = None
        if self not in state:
            state[self] = True
            first, x = x[:, :, :1], x[:, :, 1:]
        if x.shape[2] > 0:
            b, c, t, h, w = x.shape
            y = self.time_conv(x, state).view(b, 2, c, t, h, w)
            # interleave (frame 2i, 2i+1) into a tensor of y's layout: channels-last stays channels-last
            out = torch.empty((b, c, 2 * t, h, w), dtype=y.dtype, device=y.device,
                              memory_format=_memory_format(y.flatten(1, 2)))
            out.unflatten(2, (t, 2)).copy_(y.permute(0, 2, 3, 1, 4, 5))
            x = out
        return x if first is None else torch.cat([first, x], dim=2)

    def _halve_time(self, x: torch.Tensor, state: State) -> torch.Tensor:
        """Output frame 0 is input frame 0; then a stride-2, width-3 conv over the whole stream.

        Frames not yet covered by a full window wait in the state (at most 2), so any split of the
        video into chunks yields the same frames.
        """
        first = None
        pending = state.get(self)
        if pending is None:
            first, pending = x[:, :, :1], x
        else:
            pending = torch.cat([pending, x], dim=2)
        windows = (pending.shape[2] - 1) // 2
        out = self.time_conv(pending[:, :, :2 * windows + 1]) if windows > 0 else pending[:, :, :0]
        state[self] = pending[:, :, 2 * windows:].clone()
        return out if first is None else torch.cat([first, out], dim=2)
