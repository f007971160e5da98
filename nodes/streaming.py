"""Save the video while the sampler generates it ("save video as it goes" on the sampler).

Each committed chunk goes to a worker thread that decodes it with the streaming Wan VAE (or the tiny
decoder) on a CUDA stream of its own, so the decode overlaps the DiT's next chunk, and hands the
frames to the h264 encoder thread of PackForcing Save Video. The file is a fragmented mp4 with a
keyframe every second and no encoder look-ahead: every finished second is on disk as a playable
fragment, so the video can be watched while it renders and stays playable if the run is cancelled
or killed. Both queues hold at most two chunks: memory stays flat however long the video.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from contextlib import ExitStack

import torch

import folder_paths

from .common import check_filename_prefix
from .decode import EncoderThread, _finish, _open_writer
from .spec import FPS
from .vae_bridge import wan_vae_on_device

log = logging.getLogger("packforcing")

FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
LIVE_ENCODER = {"g": str(FPS), "tune": "zerolatency"}     # a fragment per second, frames out at once


class LiveVideo:
    def __init__(self, vae, filename_prefix: str, width: int, height: int, metadata: dict | None = None):
        check_filename_prefix(filename_prefix)
        folder, name, counter, self.subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), width, height)
        self.file = f"{name}_{counter:05}_.mp4"
        self.path = os.path.join(folder, self.file)
        self._resources = ExitStack()
        self.decoder = self._resources.enter_context(wan_vae_on_device(vae, tiny_ok=True))
        self.container, stream = _open_writer(self.path, "h264", FPS, width, height, 19, metadata or {},
                                              FRAGMENTED, LIVE_ENCODER)
        self.stream, self.encoder = stream, EncoderThread(self.container, stream)
        self.latents: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.frames = 0
        self.thread = threading.Thread(target=self._decode, name="packforcing-live-decode", daemon=True)
        self.thread.start()

    @property
    def ui_file(self) -> dict:
        return {"filename": self.file, "subfolder": self.subfolder, "type": "output"}

    def add(self, latent: torch.Tensor) -> None:
        """The next latent frames of the video (B=1, 16, F, h, w), normalised, in order."""
        if self.error is not None:
            raise self.error
        self.latents.put(latent.detach().cpu())

    def _decode(self) -> None:
        dec = self.decoder.stream_decoder(chunk_size=1)
        param = next(self.decoder.parameters())
        side = torch.cuda.Stream(param.device) if param.device.type == "cuda" else None
        while (z := self.latents.get()) is not None:
            if self.error is not None:
                continue                    # keep draining so add() never blocks forever
            try:
                with torch.no_grad(), (torch.cuda.stream(side) if side is not None else ExitStack()):
                    px = dec.decode(z[:1].to(param.device, param.dtype))
                    u8 = ((px[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)
                    u8 = u8.cpu()
                self.encoder.put(u8)
                self.frames += u8.shape[0]
            except BaseException as e:  # noqa: BLE001 - handed to the caller at the next add()/close()
                self.error = e

    def close(self, quietly: bool = False) -> None:
        """Finish the file: everything queued is decoded and encoded, the encoder flushed. Also after a
        cancel or an error (the frames so far stay a playable video). Raises a decode/encode error
        unless `quietly` (then it is logged: the run's own error is the one to report)."""
        if self.thread is None:               # closed already
            return
        error = None
        try:
            self.latents.put(None)
            self.thread.join()
            error = self.encoder.close() or self.error
            _finish(self.container, self.stream)
        except BaseException as e:  # noqa: BLE001
            error = error or e
        finally:
            self._resources.close()
            self.thread = None
        if error is not None and quietly:
            log.warning("PackForcing: the video written as it went stopped early (%s): %s", error, self.path)
        elif error is not None:
            raise error
        log.info("PackForcing: %d frames saved to %s", self.frames, self.path)
