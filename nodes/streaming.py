"""Save the video while the sampler generates it ("save video as it goes" on the sampler).

Each committed chunk goes to a worker thread (packforcing_core's DecodeWorker) that decodes it with the
streaming Wan VAE (or the tiny decoder) on the decode device (ComfyUI's VAE device on a CUDA stream
of its own, or another GPU, or the CPU), so the decode overlaps the DiT's next chunk, and hands the
frames to the h264 encoder thread of PackForcing Save Video. The file is a fragmented mp4 with a
keyframe every second and no encoder look-ahead: every finished second is on disk as a playable
fragment, so the video can be watched while it renders and stays playable if the run is cancelled
or killed. Both queues hold at most two chunks: memory stays flat however long the video.
"""
from __future__ import annotations

import logging
import os
from contextlib import ExitStack

import torch

import folder_paths

from ..packforcing_core.vae.decode_worker import DecodeWorker
from .common import check_filename_prefix
from .decode import EncoderThread, _finish, _open_writer
from .spec import FPS
from .vae_bridge import decoder_on

log = logging.getLogger("packforcing")

FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
LIVE_ENCODER = {"g": str(FPS), "tune": "zerolatency"}     # a fragment per second, frames out at once


class LiveVideo:
    def __init__(self, vae, filename_prefix: str, width: int, height: int, metadata: dict | None = None,
                 decode_device: str | None = None):
        check_filename_prefix(filename_prefix)
        self._resources = ExitStack()
        self.decoder = self._resources.enter_context(decoder_on(vae, decode_device))
        folder, name, counter, self.subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), width, height)
        self.file = f"{name}_{counter:05}_.mp4"
        self.path = os.path.join(folder, self.file)
        self.container, stream = _open_writer(self.path, "h264", FPS, width, height, 19, metadata or {},
                                              FRAGMENTED, LIVE_ENCODER)
        self.stream, self.encoder = stream, EncoderThread(self.container, stream)
        self.worker = DecodeWorker(self.decoder, self.encoder.put, chunk_size=1)
        self.closed = False

    @property
    def ui_file(self) -> dict:
        return {"filename": self.file, "subfolder": self.subfolder, "type": "output"}

    @property
    def frames(self) -> int:
        return self.worker.frames

    def add(self, latent: torch.Tensor) -> None:
        """The next latent frames of the video (B=1, 16, F, h, w), normalised, in order."""
        self.worker.put(latent)

    def close(self, quietly: bool = False) -> None:
        """Finish the file: everything queued is decoded and encoded, the encoder flushed. Also after a
        cancel or an error (the frames so far stay a playable video). Raises a decode/encode error
        unless `quietly` (then it is logged: the run's own error is the one to report)."""
        if self.closed:
            return
        error = None
        try:
            try:
                self.worker.close()
            except BaseException as e:  # noqa: BLE001
                error = e
            error = self.encoder.close() or error
            _finish(self.container, self.stream)
        except BaseException as e:  # noqa: BLE001
            error = error or e
        finally:
            self._resources.close()
            self.closed = True
        if error is not None and quietly:
            log.warning("PackForcing: the video written as it went stopped early (%s): %s", error, self.path)
        elif error is not None:
            raise error
        log.info("PackForcing: %d frames saved to %s", self.frames, self.path)
