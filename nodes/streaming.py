"""Decode the video while the sampler generates it: for "save video as it goes" and for live playback.

Each committed chunk goes to a worker thread that decodes it with the streaming Wan VAE (or the tiny
decoder) on a CUDA stream of its own, so the decode overlaps the DiT's next chunk, and hands the
frames to the h264 encoder thread of live_player.LiveEncoder. It cuts one fragment per chunk: the
file (when saving) is a fragmented mp4 that plays while it grows and stays playable if the run is
cancelled or killed, and the same fragments feed the browser's live player. Both queues hold at most
two chunks: memory stays flat however long the video.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from contextlib import ExitStack

import torch

import folder_paths

from .common import check_filename_prefix
from .decode import DECODE_CHUNK
from .live_player import LiveEncoder
from .vae_bridge import wan_vae_on_device

log = logging.getLogger("packforcing")


class LiveVideo:
    """filename_prefix: save to output/ (None: don't); playback: live_player.run_key() of the run, to
    feed the live player (None: don't)."""

    def __init__(self, vae, filename_prefix: str | None, width: int, height: int, playback=None):
        self.file = self.subfolder = self.path = None
        if filename_prefix is not None:
            check_filename_prefix(filename_prefix)
            folder, name, counter, self.subfolder, _ = folder_paths.get_save_image_path(
                filename_prefix, folder_paths.get_output_directory(), width, height)
            self.file = f"{name}_{counter:05}_.mp4"
            self.path = os.path.join(folder, self.file)
        self._resources = ExitStack()
        self.decoder = self._resources.enter_context(wan_vae_on_device(vae, tiny_ok=True))
        try:
            self.encoder = LiveEncoder(width, height, self.path, playback, self.ui_file)
        except BaseException:
            self._resources.close()
            raise
        self.latents: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.frames = 0
        self.thread = threading.Thread(target=self._decode, name="packforcing-live-decode", daemon=True)
        self.thread.start()

    @property
    def ui_file(self) -> dict | None:
        if self.file is None:
            return None
        return {"filename": self.file, "subfolder": self.subfolder, "type": "output"}

    def add(self, latent: torch.Tensor) -> None:
        """The next latent frames of the video (B=1, 16, F, h, w), normalised, in order."""
        if self.error is not None:
            raise self.error
        self.latents.put((latent.detach().cpu(), time.perf_counter()))

    def _decode(self) -> None:
        dec = self.decoder.stream_decoder(chunk_size=1)
        param = next(self.decoder.parameters())
        side = torch.cuda.Stream(param.device) if param.device.type == "cuda" else None
        while (item := self.latents.get()) is not None:
            if self.error is not None:
                continue                    # keep draining so add() never blocks forever
            z, committed = item
            try:
                for i in range(0, z.shape[2], DECODE_CHUNK):        # a long start video: a fragment per piece
                    with torch.no_grad(), (torch.cuda.stream(side) if side is not None else ExitStack()):
                        px = dec.decode(z[:1, :, i:i + DECODE_CHUNK].to(param.device, param.dtype))
                        u8 = ((px[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)
                        u8 = u8.cpu()
                    self.encoder.put(u8, committed)
                    self.frames += u8.shape[0]
            except BaseException as e:  # noqa: BLE001 - handed to the caller at the next add()/close()
                self.error = e

    def close(self, quietly: bool = False) -> None:
        """Finish the file and the live feed: everything queued is decoded and encoded, the encoder
        flushed. Also after a cancel or an error (the frames so far stay a playable video). Raises a
        decode/encode error unless `quietly` (then it is logged: the run's own error is the one to report)."""
        if self.thread is None:               # closed already
            return
        error = None
        try:
            self.latents.put(None)
            self.thread.join()
            error = self.encoder.close(stopped=quietly) or self.error
        except BaseException as e:  # noqa: BLE001
            error = error or e
        finally:
            self._resources.close()
            self.thread = None
        where = self.path or "live playback"
        if error is not None and quietly:
            log.warning("PackForcing: the video decoded as it went stopped early (%s): %s", error, where)
        elif error is not None:
            raise error
        log.info("PackForcing: %d frames decoded as the run went (%s)", self.frames, where)
