"""PackForcing Sampler: the autoregressive loop of packforcing_core behind a ComfyUI node.

A run generates chunk after chunk against the PackedCache, then writes the whole generation
(cache contents, counters, latents) to a state file and outputs a PACKED_CACHE that refers to it,
so a second sampler can continue the same video, e.g. with a new prompt.

Cancel: the sampler checks ComfyUI's interrupt flag after every forward pass and stops. The chunks
finished so far are saved to output/packforcing/resume-<key>.safetensors, where the key hashes
every input of the run but the prompt schedule's switches; queueing the same inputs with `resume` on
continues from there and gives a result bit-identical to an uninterrupted run. Switches the saved
chunks went through must stay as they were (else the resume is refused, saying what differs);
later ones may change.
"""
from __future__ import annotations

from comfy_api.latest import io

from . import live_player
from .common import CATEGORY, PackedCacheType, PackForcingModelType, check_choice
from .generation import run
from .request import check_request
from .spec import InputError, range_error, static_length_error, video_frames
from .state_files import forget_output, remember_state, state_fingerprint
from .streaming import LiveVideo
from .vae_bridge import DEFAULT_DEVICE, decode_device_input, decode_devices

LENGTH_RANGE = (1, 16 * 3600)       # frames: up to an hour at 16 fps
CHUNK_RANGE = (1, 64)               # latent frames per chunk


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
                                                          "encoder (CLIPLoader type wan), Load Prompt Embeddings, or "
                                                          "a PackForcing Prompt Schedule (prompts that take over "
                                                          "at given seconds)."),
                PackedCacheType.Input("cache", tooltip="A new PackedCache starts a video; the cache output of "
                                                       "another sampler continues that video."),
                io.Int.Input("width", default=832, min=16, max=4096, step=16,
                             tooltip="Width in pixels, a multiple of 16 (832 for Wan2.1 1.3B)."),
                io.Int.Input("height", default=480, min=16, max=4096, step=16,
                             tooltip="Height in pixels, a multiple of 16 (480 for Wan2.1 1.3B)."),
                io.Int.Input("length", default=77, min=LENGTH_RANGE[0], max=LENGTH_RANGE[1],
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
                io.Int.Input("chunk_frames", default=4, min=CHUNK_RANGE[0], max=CHUNK_RANGE[1],
                             tooltip="Latent frames generated per chunk: 4 for PackForcing (the compressor "
                                     "halves time), 3 for stock Self-Forcing, 1 for frame-wise checkpoints "
                                     "(e.g. causal_forcing-framewise)."),
                io.Boolean.Input("resume", default=False,
                                 tooltip="Continue from the progress an interrupted run with these inputs saved in "
                                         "output/packforcing (bit-identical to an uninterrupted run). Prompt "
                                         "switches the saved part went through must be the same; later ones may "
                                         "change. Off: start over."),
                io.Image.Input("start_image", optional=True,
                               tooltip="Begin the video with this image (or a clip of 1+4k frames, e.g. from a "
                                       "video loader or a previous decode): resized and centre-cropped to width x "
                                       "height, VAE-encoded (connect the vae), committed to the cache, and the "
                                       "video continues from it. length then counts the whole video, start "
                                       "included (81 = the image + 5 s)."),
                io.Latent.Input("start_latent", optional=True,
                                tooltip="Begin the video with these Wan2.1 latent frames (VAE Encode, ComfyUI's AR "
                                        "sampler, a saved latent) instead of a start image."),
                io.Boolean.Input("save_video", default=False, optional=True,
                                 tooltip="Write the video to output/ as it is generated (needs the vae): each chunk "
                                         "is decoded and h264-encoded while the next one is sampled, into a "
                                         "fragmented mp4 that plays while it grows and stays playable if the run "
                                         "is cancelled or the disk fills up. The live view links to it; resume "
                                         "rewrites the same file; a PackForcing Save Video of this latent with "
                                         "the same VAE and settings reuses it instead of decoding again."),
                io.String.Input("filename_prefix", default="video/PackForcing", optional=True,
                                tooltip="Path and name prefix of that video in the output folder (use Save "
                                        "Video's prefix: then there is one file)."),
                io.Vae.Input("vae", optional=True,
                             tooltip="The Wan2.1 VAE (wan_2.1_vae.safetensors): needed by the cache modes lr "
                                     "and hr_lr, which re-encode history, and to encode a start image."),
                io.Boolean.Input("live_playback", default=True, optional=True,
                                 tooltip="Play the video on this node while it is generated (needs the vae): each "
                                         "chunk is decoded on a side stream while the next one is sampled and "
                                         "streamed to the page, kept in memory (PACKFORCING_LIVE_MB, default 256) "
                                         "unless save_video writes it to a file too. Off: no decode during the "
                                         "run unless save_video asks for it."),
                io.Clip.Input("clip", optional=True,
                              tooltip="The text encoder of your prompts (CLIPLoader): lets you type the next "
                                      "prompt while the video plays (the steer controls on this node). Not needed "
                                      "otherwise."),
                decode_device_input(),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The whole video so far (native Wan2.1 "
                                                                     "latent): decode with VAE Decode or the "
                                                                     "PackForcing decoders."),
                     PackedCacheType.Output(display_name="cache", tooltip="The video's cache, to continue it.")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def fingerprint_inputs(cls, **inputs):
        """Changes when a state file this node wrote for these widget values is gone, so ComfyUI runs it
        again instead of handing on a PACKED_CACHE that points nowhere (state_files.py)."""
        return state_fingerprint(inputs)

    @classmethod
    def validate_inputs(cls, length: int, chunk_frames: int):
        """Lengths that fit no chunking are refused at queue time (both inputs are highlighted: the rule
        binds them). Everything else is checked when the node runs, with one message naming the input.
        Defining this switches off ComfyUI's own min/max check of these two inputs: range_error does it."""
        if length is None or chunk_frames is None:       # linked from another node: known when it runs
            return True
        return (range_error("length", length, *LENGTH_RANGE) or range_error("chunk_frames", chunk_frames, *CHUNK_RANGE)
                or static_length_error(length, chunk_frames) or True)

    @classmethod
    def execute(cls, model, positive, cache, width: int, height: int, length: int, seed: int, steps: str,
                shift: float, chunk_frames: int, resume: bool, start_image=None, start_latent=None,
                save_video: bool = False, filename_prefix: str = "video/PackForcing", vae=None,
                live_playback: bool = True, clip=None, decode_device: str = DEFAULT_DEVICE) -> io.NodeOutput:
        req = check_request(cache, positive, width, height, length, seed, steps, shift, chunk_frames,
                            start_image, start_latent, vae)
        live = None
        if save_video and vae is None:
            raise InputError("vae", "save_video decodes the video as it goes: connect the Wan2.1 VAE (or the tiny "
                                    "Wan decoder) to the sampler's vae input, or turn save_video off")
        check_choice("decode_device", decode_device, decode_devices())
        playback = live_player.playback_for(cls.hidden.unique_id, vae) if live_playback else None
        if save_video or playback is not None:     # the file, now: its errors come before sampling
            live = LiveVideo(filename_prefix if save_video else None, width, height, playback, decode_device)
        try:
            latent, spec, timeline = run(model, req, vae, cls.hidden.unique_id, resume, live, clip)
        except BaseException:
            if live is not None:
                live.close(quietly=True)    # a file that never got a frame is removed
            raise
        node = (cls.hidden.prompt or {}).get(cls.hidden.unique_id) or {}
        remember_state(spec.state_path, node.get("inputs"))     # what fingerprint_inputs will see of this run
        if timeline["steered"]:         # steered live: the same workflow queued again renders it unsteered
            forget_output(node.get("inputs"))
        ui = {"packforcing": [{"frames": video_frames(spec.frames), "latent_frames": spec.frames, **timeline}]}
        if "video" in timeline:             # shown like Save Video's result
            ui |= {"images": [timeline["video"]], "animated": [True]}
        return io.NodeOutput({"samples": latent}, spec, ui=ui)
