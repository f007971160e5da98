"""Streaming decode of a Wan2.1 LATENT: to IMAGE, or straight into a video file with bounded memory.

The Wan2.1 VAE is causal in time, so packforcing_core's StreamDecoder decodes a few latent frames
at a time and carries a small feature cache: the frames come out identical to a whole-clip decode
while memory stays that of one chunk.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
from fractions import Fraction

import av
import torch

import comfy.model_management
import comfy.utils
from comfy.cli_args import args
from comfy_api.latest import InputImpl, io, ui

from ..packforcing_core.vae.latents import normalize_latent
from .common import CATEGORY, check_choice, check_filename_prefix, releasing_memory
from .report import write_report_beside
from .spec import FPS, InputError, video_frames
from .vae_bridge import DEFAULT_DEVICE, decode_device_input, decode_devices, decoder_on
from .video_out import create, finished_video, output_video, temporary_name, write_error

log = logging.getLogger("packforcing")

CODECS = {"h264": ("mp4", ("libx264", "h264", "mpeg4")), "vp9": ("webm", ("libvpx-vp9",))}
DECODE_CHUNK = 4          # latent frames per decode pass (16 video frames)


def wan_latent(latent, name: str = "samples") -> torch.Tensor:
    """The normalised (B, 16, T, h, w) latent the Wan VAE stream decodes, from a native LATENT dict."""
    z = latent.get("samples") if isinstance(latent, dict) else None
    if not torch.is_tensor(z) or z.dim() != 5 or z.shape[1] != 16:
        shape = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
        raise InputError(name, f"expected a Wan2.1 video LATENT (batch, 16, frames, h, w), got {shape}")
    return normalize_latent(z.float())


def decoded_chunks(vae, z: torch.Tensor, on_chunk=None, decode_device: str | None = None):
    """Yield (batch index, frames (F, H, W, 3) float in [0, 1] on the VAE's device) chunk by chunk."""
    with decoder_on(vae, decode_device) as wan:          # ComfyUI's VAE device unless decode_device names one
        for b in range(z.shape[0]):
            stream = wan.stream_decoder(chunk_size=1)
            for i in range(0, z.shape[2], DECODE_CHUNK):
                px = stream.decode(z[b:b + 1, :, i:i + DECODE_CHUNK])          # (1, 3, F, H, W) in [-1, 1]
                yield b, ((px[0].permute(1, 2, 3, 0) + 1) / 2).clamp_(0, 1)
                if on_chunk:
                    on_chunk()


def _progress(z: torch.Tensor):
    bar = comfy.utils.ProgressBar(z.shape[0] * -(-z.shape[2] // DECODE_CHUNK))

    def step():
        bar.update(1)
        # the bar's hook checks too, but ComfyUI 0.33 calls it at most every 0.5% of the total
        comfy.model_management.throw_exception_if_processing_interrupted()
    return step


class PackForcingDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PackForcingDecode",
            display_name="PackForcing Decode (streaming)",
            category=CATEGORY,
            description="Decodes a Wan2.1 video LATENT to IMAGE frames chunk by chunk (the VAE's memory stays "
                        "that of one chunk; the frames themselves still fill RAM: for long videos use "
                        "PackForcing Save Video).",
            inputs=[io.Latent.Input("samples", tooltip="A Wan2.1 video latent, e.g. from the PackForcing Sampler."),
                    io.Vae.Input("vae", tooltip="The Wan2.1 VAE (wan_2.1_vae.safetensors from VAELoader), or the tiny "
                                        "Wan2.1 decoder taew2_1 / lighttaew2_1: ~12x faster, lower fidelity.")],
            outputs=[io.Image.Output(display_name="images", tooltip="4T-3 frames for T latent frames.")],
        )

    @classmethod
    def execute(cls, samples, vae) -> io.NodeOutput:
        z = wan_latent(samples)
        out, filled = None, 0
        with releasing_memory():
            for _, frames in decoded_chunks(vae, z, _progress(z)):      # batch items one after the other
                if out is None:
                    out = torch.empty(z.shape[0] * video_frames(z.shape[2]), *frames.shape[1:])
                out[filled:filled + frames.shape[0]] = frames.cpu()
                filled += frames.shape[0]
        return io.NodeOutput(out)


def _open_writer(path: str, codec: str, fps: float, width: int, height: int, crf: int, metadata: dict,
                 container_options: dict | None = None, encoder_options: dict | None = None):
    container_format, encoders = CODECS[codec]
    encoder = next((e for e in encoders if e in av.codecs_available), None)
    if encoder is None:
        raise InputError("codec", f"this PyAV build has none of the encoders {', '.join(encoders)}: choose another codec")
    container = av.open(path, mode="w", format=container_format, options=container_options or {})
    for k, v in metadata.items():
        container.metadata[k] = v
    stream = container.add_stream(encoder, rate=Fraction(round(fps * 1000), 1000))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.thread_type = "AUTO"       # frame + slice threads: the encoder keeps up with the GPU decode
    if encoder in ("libx264", "libvpx-vp9"):
        stream.options = {"crf": str(crf)} | ({"b": "0"} if encoder == "libvpx-vp9" else {}) | \
            (encoder_options if encoder == "libx264" and encoder_options else {})
    return container, stream


def _write(container, stream, frames_u8: torch.Tensor) -> None:
    for img in frames_u8.numpy():
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            container.mux(packet)


class EncoderThread:
    """Encodes chunks on a worker thread while the GPU decodes the next ones. The queue holds at most
    two chunks, so memory stays flat; an encoder error comes back to the caller at the next put/close."""

    def __init__(self, container, stream):
        self.container, self.stream, self.error = container, stream, None
        self.chunks: queue.Queue = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._run, name="packforcing-encoder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (frames := self.chunks.get()) is not None:
            if self.error is None:          # after an error keep draining, so put() never blocks forever
                try:
                    _write(self.container, self.stream, frames)
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    self.error = e

    def put(self, frames_u8: torch.Tensor) -> None:
        if self.error is not None:
            raise self.error
        self.chunks.put(frames_u8)

    def close(self) -> BaseException | None:
        """Wait for everything queued to be encoded (also on cancel, before the file is discarded);
        returns the encoder's error, if any."""
        self.chunks.put(None)
        self.thread.join()
        return self.error


def _finish(container, stream) -> None:
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()


def _close_quietly(container) -> None:
    try:
        container.close()
    except Exception:  # noqa: BLE001 - the encoder may be in any state after an interrupt or a write error
        pass


class PackForcingSaveVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PackForcingSaveVideo",
            display_name="PackForcing Save Video",
            category=CATEGORY,
            description="Decodes a Wan2.1 video LATENT chunk by chunk straight into a video file in the output "
                        "folder: memory stays bounded however long the video. Written under a temporary name "
                        "and renamed when complete; a cancelled save deletes its partial file. When the "
                        "sampler saved this latent as it went (same VAE, 16 fps, h264, crf 19), that file is "
                        "reused: the same prefix is that very file, another prefix a copy; nothing is decoded "
                        "again.",
            inputs=[
                io.Latent.Input("samples", tooltip="A Wan2.1 video latent, e.g. from the PackForcing Sampler."),
                io.Vae.Input("vae", tooltip="The Wan2.1 VAE (wan_2.1_vae.safetensors from VAELoader), or the tiny "
                                        "Wan2.1 decoder taew2_1 / lighttaew2_1: ~12x faster, lower fidelity."),
                io.String.Input("filename_prefix", default="video/PackForcing",
                                tooltip="Path and name prefix in the output folder."),
                io.Float.Input("fps", default=float(FPS), min=1.0, max=120.0, step=1.0,
                               tooltip="Frames per second of the file (Wan2.1 generates 16 fps)."),
                io.Combo.Input("codec", options=list(CODECS), default="h264",
                               tooltip="h264 in .mp4 (plays everywhere; mpeg4 if this PyAV has no h264 encoder) "
                                       "or vp9 in .webm."),
                io.Int.Input("crf", default=19, min=0, max=63,
                             tooltip="Constant rate factor: lower is better quality and a bigger file."),
                io.Boolean.Input("write_report", default=False, optional=True,
                                 tooltip="Also write the video's health report (drift, freezes, flicker, loops) "
                                         "beside it: <name>.report.png / .json / .csv. Chunk boundaries are "
                                         "marked for chunks of 4 latent frames (the sampler's default)."),
                decode_device_input(),
            ],
            outputs=[io.Video.Output(display_name="video", tooltip="The saved file, for other video nodes.")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, samples, vae, filename_prefix: str, fps: float, codec: str, crf: int,
                write_report: bool = False, decode_device: str = DEFAULT_DEVICE) -> io.NodeOutput:
        check_filename_prefix(filename_prefix)
        check_choice("codec", codec, CODECS)
        check_choice("decode_device", decode_device, decode_devices())
        if not 1 <= fps <= 120:             # NaN passes ComfyUI's min/max check
            raise InputError("fps", f"{fps} is not a frame rate from 1 to 120 (Wan2.1 generates {FPS} fps)")
        z = wan_latent(samples)
        stream = finished_video(samples["samples"], vae, fps, codec, crf)
        if stream is not None and stream.prefix == filename_prefix:     # the sampler wrote this very file
            path, file, subfolder = stream.path, stream.file, stream.subfolder
            log.info("PackForcing Save Video: %s, written by the sampler as it went, is this video", path)
        else:
            height, width = z.shape[3] * 8, z.shape[4] * 8
            path, file, subfolder = output_video(filename_prefix, CODECS[codec][0], width, height)
            with releasing_memory():
                cls._write(z, vae, filename_prefix, path, stream.path if stream else None,
                           (codec, fps, width, height, crf), decode_device)
        if write_report:
            write_report_beside(path, fps)          # a failed report is logged; the video stays
        result = ui.SavedResult(file, subfolder, io.FolderType.output)
        return io.NodeOutput(InputImpl.VideoFromFile(path), ui=ui.PreviewVideo([result]))

    @classmethod
    def _write(cls, z: torch.Tensor, vae, prefix: str, path: str, copy_of: str | None, settings: tuple,
               decode_device: str = DEFAULT_DEVICE) -> None:
        """Write `path` through a temporary that is created first (errors before any decoding) and
        renamed when whole: decoded chunk by chunk, or copied from the sampler's finished stream."""
        partial = os.path.join(os.path.dirname(path), temporary_name(os.path.basename(path)))
        create(prefix, partial, for_path=path)
        try:
            if copy_of is not None:
                shutil.copyfile(copy_of, partial)
            else:
                cls._encode(z, vae, partial, settings, decode_device)
            os.replace(partial, path)
        except OSError as e:
            raise write_error(prefix, path, e) from None
        finally:
            if os.path.exists(partial):
                os.remove(partial)
                log.warning("PackForcing Save Video: stopped before the end; the partial file was deleted")

    @classmethod
    def _encode(cls, z: torch.Tensor, vae, partial: str, settings: tuple, decode_device: str = DEFAULT_DEVICE) -> None:
        container, stream = _open_writer(partial, *settings, cls._metadata())
        done, encoder = False, EncoderThread(container, stream)
        try:
            for _, frames in decoded_chunks(vae, z, _progress(z), decode_device):
                encoder.put(frames.mul(255).round_().to(torch.uint8).cpu())
            if error := encoder.close():
                raise error
            _finish(container, stream)
            done = True
        finally:
            if not done:
                encoder.close()
                _close_quietly(container)

    @classmethod
    def _metadata(cls) -> dict:
        return video_metadata(cls.hidden.prompt, cls.hidden.extra_pnginfo)


def video_metadata(prompt, extra_pnginfo) -> dict:
    """The prompt and workflow, as ComfyUI's own savers embed them (unless --disable-metadata)."""
    if args.disable_metadata:
        return {}
    meta = {k: json.dumps(v) for k, v in (extra_pnginfo or {}).items()}
    if prompt is not None:
        meta["prompt"] = json.dumps(prompt)
    return meta
