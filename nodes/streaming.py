"""The video a sampler run decodes as it goes: saved to a file ("save video as it goes"), played live
in the node (live_player.py), or both from one encode.

Each committed chunk goes to a worker thread that decodes it with the streaming Wan VAE (or the tiny
decoder) on a CUDA stream of its own, so the decode overlaps the DiT's next chunk, and hands the
frames to the h264 encoder thread of live_player.LiveEncoder, which cuts one fragment per chunk. The
file is a fragmented mp4: it plays while it grows and stays playable if the run is cancelled, killed,
or the disk fills up (then it is cut back to its last whole fragment). Both queues hold at most two
chunks: memory stays flat however long the video.

The file is created when the sampler starts, before any sampling, so an output folder that cannot
be written is an error at once. A finished stream is remembered with the LATENT it shows: Save Video
fed that very LATENT with the same settings reuses the file instead of decoding the video again.
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

from .decode import DECODE_CHUNK
from .live_player import LiveEncoder
from .vae_bridge import decoder_on
from .video_out import create, keep_whole_fragments, kept_words, output_video, write_error

log = logging.getLogger("packforcing")


class LiveVideo:
    def __init__(self, filename_prefix: str | None, width: int, height: int, playback=None,
                 decode_device: str | None = None):
        """filename_prefix: save to output/ (None: don't); the (empty) file is created at once, so its
        errors name filename_prefix and the path. playback: live_player.playback_for() of the run, to
        feed the live player (None: don't). decode_device: where the frames are decoded
        (vae_bridge.decoder_on; None: ComfyUI's VAE device). start() begins."""
        self.prefix, self.width, self.height, self.playback = filename_prefix, width, height, playback
        self.decode_device = decode_device
        self.path = self.file = self.subfolder = None
        if filename_prefix is not None:
            self.path, self.file, self.subfolder = output_video(filename_prefix, "mp4", width, height)
            create(filename_prefix, self.path)
        self._resources = ExitStack()
        self.thread: threading.Thread | None = None
        self.closed = False
        self.error: BaseException | None = None
        self.latent_frames = 0          # handed to add()
        self.frames = 0                 # decoded and sent to the encoder

    @property
    def ui_file(self) -> dict | None:
        if self.file is None:
            return None
        return {"filename": self.file, "subfolder": self.subfolder, "type": "output"}

    def rewrite(self, path: str) -> None:
        """Write into `path` instead (resume: the file the interrupted run left), not a new file. It
        keeps its frames until start() writes it again."""
        if path == self.path:
            return
        try:
            with open(path, "r+b"):         # writable? (without emptying it yet)
                pass
        except OSError as e:
            raise write_error(self.prefix, path, e) from None
        os.remove(self.path)
        sub = os.path.relpath(os.path.dirname(path), folder_paths.get_output_directory())
        self.path, self.file = path, os.path.basename(path)
        self.subfolder = "" if sub == "." else sub.replace(os.sep, "/")

    def start(self, vae) -> None:
        self.decoder = self._resources.enter_context(decoder_on(vae, self.decode_device))
        try:
            self.encoder = LiveEncoder(self.width, self.height, self.path, self.playback, self.ui_file)
        except OSError as e:                # the file's header did not fit (a full disk)
            self.closed = True
            self._resources.close()
            raise self._kept_error(e, keep_whole_fragments(self.path)) from None
        self.latents: queue.Queue = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._decode, name="packforcing-live-decode", daemon=True)
        self.thread.start()

    def add(self, latent: torch.Tensor) -> None:
        """The next latent frames of the video (B=1, 16, F, h, w), normalised, in order. A write error
        (a full disk) ends the file at its last whole fragment and raises, naming filename_prefix."""
        if (error := self.error or self.encoder.error) is not None:
            self.close()                    # raises it, with what the file keeps
            raise error
        z = latent.detach().cpu()
        if self.decoder.device.type == "cuda":     # uploaded by the decode thread without a host copy
            z = z.pin_memory()
        self.latents.put((z, time.perf_counter()))
        self.latent_frames += latent.shape[2]

    def catch_up(self, gen) -> None:
        """Add the chunks `gen` committed that never reached add(): a cancel checked right after a
        chunk was kept stops the sampler's loop before it hands the chunk on. Never raises."""
        missing = sum(z.shape[2] for z in gen.latents) - self.latent_frames
        if self.closed or self.thread is None or missing <= 0:
            return
        tail, have = [], 0
        for z in reversed(gen.latents):
            tail.insert(0, z)
            have += z.shape[2]
            if have >= missing:
                break
        try:
            self.add(torch.cat(tail, dim=2)[:, :, -missing:])
        except BaseException as e:  # noqa: BLE001 - the run's own error is the one to report
            log.warning("PackForcing: the last chunk did not reach the video: %s", e)

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
                        px = dec.decode(z[:1, :, i:i + DECODE_CHUNK].to(param.device, param.dtype, non_blocking=True))
                        u8 = ((px[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)
                        u8 = u8.cpu()
                    self.encoder.put(u8, committed)
                    self.frames += u8.shape[0]
            except BaseException as e:  # noqa: BLE001 - handed to the caller at the next add()/close()
                self.error = e

    def close(self, quietly: bool = False) -> None:
        """Finish the file and the live feed: everything queued is decoded and encoded, the encoder
        flushed. Also after a cancel or an error (the frames so far stay a playable video). A write
        error (a full disk) cuts the file back to its last whole fragment (none: no file) and is raised
        naming filename_prefix, the path and what was kept; other errors as they are. `quietly`: logged
        instead (the run's own error is the one to report)."""
        if self.closed:
            return
        self.closed, started = True, self.thread is not None
        error = self._finish(stopped=quietly)
        if self.path is not None and (error is not None or not started):
            kept = keep_whole_fragments(self.path)      # a file never started is removed
            if isinstance(error, OSError):
                error = self._kept_error(error, kept)
        where = self.path or "live playback"
        if error is not None and quietly:
            log.warning("PackForcing: the video decoded as it went stopped early (%s): %s", where, error)
        elif error is not None:
            raise error
        elif started:
            log.info("PackForcing: %d frames decoded as the run went (%s)", self.frames, where)

    def _finish(self, stopped: bool) -> BaseException | None:
        if self.thread is None:
            self._resources.close()
            return None
        error = None
        try:
            self.latents.put(None)
            self.thread.join()
            error = self.encoder.close(stopped=stopped) or self.error
        except BaseException as e:  # noqa: BLE001
            error = error or e
        finally:
            self._resources.close()
        return error

    def _kept_error(self, error: OSError, kept: int) -> Exception:
        what = (f"The video keeps its first {kept_words(kept)}, playable" if kept else
                "No whole chunk of the video was written, so no file is left")
        return write_error(self.prefix, self.path, error, what)
