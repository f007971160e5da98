"""PackForcing Sampler: the autoregressive loop of packforcing_core behind a ComfyUI node.

A run generates chunk after chunk against the PackedCache, then writes the whole generation
(cache contents, counters, latents) to a state file and outputs a PACKED_CACHE that refers to it,
so a second sampler can continue the same video, e.g. with a new prompt.

Cancel: ComfyUI's ProgressBar update (once per denoising step) raises on /interrupt. The chunks
finished so far are saved to output/packforcing/resume-<key>.safetensors, where the key hashes
every input of the run; queueing the same inputs with `resume` on continues from there and gives
a result bit-identical to an uninterrupted run.
"""
from __future__ import annotations

from comfy_api.latest import io

from .common import CATEGORY, PackedCacheType, PackForcingModelType
from .generation import run
from .request import check_request
from .spec import static_length_error, video_frames


class PackForcingSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PackForcingSampler",
            display_name="PackForcing Sampler",
            category=CATEGORY,
            description="Generates a video chunk by chunk with a causal Wan2.1 DiT and a bounded PackedCache. "
                        "Feed its cache output to another sampler to continue the same video with a new prompt.",
            inputs=[
                PackForcingModelType.Input("model", tooltip="From Load PackForcing Model or PackForcing Model "
                                                            "from MODEL."),
                io.Conditioning.Input("positive", tooltip="The prompt: CLIPTextEncode with the umt5-xxl text "
                                                          "encoder (CLIPLoader type wan), or Load Prompt Embeddings."),
                PackedCacheType.Input("cache", tooltip="A new PackedCache starts a video; the cache output of "
                                                       "another sampler continues that video."),
                io.Int.Input("width", default=832, min=16, max=4096, step=16,
                             tooltip="Width in pixels, a multiple of 16 (832 for Wan2.1 1.3B)."),
                io.Int.Input("height", default=480, min=16, max=4096, step=16,
                             tooltip="Height in pixels, a multiple of 16 (480 for Wan2.1 1.3B)."),
                io.Int.Input("length", default=77, min=1, max=16 * 3600,
                             tooltip="Video frames this sampler adds, at 16 fps. A new video of T latent frames "
                                     "has 4T-3 frames and T must be a multiple of chunk_frames (chunks of 4: 13, "
                                     "29, 45, 61, 77 ...; 2 minutes = 1917). Continuing adds 4 frames per latent "
                                     "frame (chunks of 4: 16, 32, 48, 64, 80 ...)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed. The noise of chunk i depends only on (seed, i), so a resumed "
                                     "or continued video keeps its earlier chunks bit-identical."),
                io.String.Input("steps", default="1000,750,500,250",
                                tooltip="Denoising timesteps per chunk, warped through the shifted schedule "
                                        "(Self-Forcing DMD: 1000,750,500,250)."),
                io.Float.Input("shift", default=5.0, min=0.01, max=100.0, step=0.01,
                               tooltip="Flow-matching timestep shift (5.0 for the Self-Forcing checkpoints)."),
                io.Int.Input("chunk_frames", default=4, min=1, max=64,
                             tooltip="Latent frames generated per chunk: 4 for PackForcing (the compressor "
                                     "halves time), 3 for stock Self-Forcing."),
                io.Boolean.Input("resume", default=False,
                                 tooltip="Continue from the progress an interrupted run with exactly these inputs "
                                         "saved in output/packforcing (bit-identical to an uninterrupted run). "
                                         "Off: start over."),
                io.Vae.Input("vae", optional=True,
                             tooltip="The Wan2.1 VAE (wan_2.1_vae.safetensors): needed by the cache modes lr "
                                     "and hr_lr, which re-encode history."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The whole video so far (native Wan2.1 "
                                                                     "latent): decode with VAE Decode or the "
                                                                     "PackForcing decoders."),
                     PackedCacheType.Output(display_name="cache", tooltip="The video's cache, to continue it.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, length: int, chunk_frames: int):
        """Lengths that fit no chunking are refused at queue time (both inputs are highlighted: the rule
        binds them). Everything else is checked when the node runs, with one message naming the input."""
        return static_length_error(length, chunk_frames) or True

    @classmethod
    def execute(cls, model, positive, cache, width: int, height: int, length: int, seed: int, steps: str,
                shift: float, chunk_frames: int, resume: bool, vae=None) -> io.NodeOutput:
        req = check_request(cache, positive, width, height, length, seed, steps, shift, chunk_frames)
        latent, spec, timeline = run(model, req, vae, cls.hidden.unique_id, resume)
        ui = {"packforcing": [{"frames": video_frames(spec.frames), "latent_frames": spec.frames, **timeline}]}
        return io.NodeOutput({"samples": latent}, spec, ui=ui)
