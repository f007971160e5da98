"""Directing a video from ComfyUI: prompt schedules (as native CONDITIONING) and start frames.

A prompt schedule is a CONDITIONING whose entries carry their start time: each "PackForcing Prompt
Schedule" node appends one entry [embeddings, {..., "packforcing_schedule": {...}}] to the schedule it
is given, so the schedule travels on the sampler's ordinary `positive` input. Times count in seconds
from the first frame this sampler generates (after any start frames); a switch takes effect at the
chunk boundary nearest its time (chunks of 4 latent frames = 16 frames = 1 s at 16 fps).

Start frames: an IMAGE (one image, or a clip of 1+4k frames), resized and centre-cropped to the
sampler's size the way ComfyUI's ARVideoI2V does and encoded with the VAE, or a native Wan2.1 LATENT.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..packforcing_core.sampling.prompt_schedule import CUTS, PromptSchedule, ScheduleError, TimedPrompt, timed_schedule
from ..packforcing_core.sampling.start import check_finite, check_start_latent, nearest_clip_lengths
from ..packforcing_core.vae.latents import normalize_latent
from .common import CATEGORY
from .conditioning import prompt_tensor
from .spec import InputError

SCHEDULE_KEY = "packforcing_schedule"


ScheduledPrompt = TimedPrompt        # a prompt of the schedule, timed in seconds (the core's)


def digest_fields(p: TimedPrompt) -> list:
    return [p.seconds, p.transition, p.recache, p.cut]


def scheduled_prompts(positive) -> list[ScheduledPrompt]:
    """The prompts of a sampler's `positive`: one plain CONDITIONING, or a prompt schedule."""
    if not isinstance(positive, (list, tuple)) or not positive:
        raise InputError("positive", "expected a CONDITIONING from CLIPTextEncode, Load Prompt Embeddings or "
                                     "PackForcing Prompt Schedule")
    tagged = [isinstance(e, (list, tuple)) and len(e) > 1 and isinstance(e[1], dict) and SCHEDULE_KEY in e[1]
              for e in positive]
    if len(positive) > 1 and not all(tagged[1:]):
        raise InputError("positive", f"got {len(positive)} conditionings (Conditioning Combine / Concat?): to "
                                     "change the prompt during the video, chain PackForcing Prompt Schedule nodes")
    out = []
    for entry, is_tagged in zip(positive, tagged):
        embeds = prompt_tensor([entry])
        out.append(ScheduledPrompt(embeds, **entry[1][SCHEDULE_KEY]) if is_tagged else ScheduledPrompt(embeds))
    return out


def prompt_schedule(prompts: list[TimedPrompt], first_chunk: int, chunks: int, chunk_frames: int) -> PromptSchedule:
    """The core schedule of a run whose chunks are first_chunk .. first_chunk + chunks - 1: the rules and
    words the CLI shares (packforcing_core timed_schedule)."""
    try:
        return timed_schedule(prompts, chunks, chunk_frames, first_chunk)
    except ScheduleError as e:
        raise InputError("positive", str(e)) from e


# ----------------------------------------------------------------------------- start frames

def start_latent(image, latent, vae, width: int, height: int, batch: int) -> torch.Tensor | None:
    """The start frames as normalised latents (B, 16, S, height/8, width/8) on the CPU, or None."""
    if image is not None and latent is not None:
        raise InputError("start_image", "connect a start image or a start latent, not both")
    if image is not None:
        return _encode_start_image(image, vae, width, height)
    if latent is None:
        return None
    samples = latent.get("samples") if isinstance(latent, dict) else None
    want = f"(batch, 16, frames, {height // 8}, {width // 8})"
    if not torch.is_tensor(samples) or samples.dim() != 5 or samples.shape[1] != 16 \
            or tuple(samples.shape[3:]) != (height // 8, width // 8):
        shape = tuple(samples.shape) if torch.is_tensor(samples) else type(samples).__name__
        raise InputError("start_latent", f"has shape {shape}; a {width}x{height} Wan2.1 video latent is {want}: "
                                         "encode the start at this sampler's width and height (or set them to "
                                         "the latent's)")
    if samples.shape[0] != batch:
        raise InputError("start_latent", f"has batch {samples.shape[0]}, the prompt batch {batch}")
    try:
        return check_start_latent(normalize_latent(samples.float().cpu()), "the latent")
    except ValueError as e:
        raise InputError("start_latent", str(e)) from None


def _finite(name: str, x: torch.Tensor, what: str) -> torch.Tensor:
    try:
        return check_finite(x, what)
    except ValueError as e:
        raise InputError(name, str(e)) from None


def _encode_start_image(image: torch.Tensor, vae, width: int, height: int) -> torch.Tensor:
    import comfy.utils
    if vae is None:
        raise InputError("vae", "a start image is VAE-encoded: connect the Wan2.1 VAE (wan_2.1_vae.safetensors) "
                                "to the sampler's vae input")
    if not torch.is_tensor(image) or image.dim() != 4 or image.shape[-1] < 3:
        raise InputError("start_image", "expected an IMAGE (frames, height, width, channels)")
    _finite("start_image", image[..., :3], "the image")
    frames = image.shape[0]
    if (frames - 1) % 4:
        raise InputError("start_image", f"a start clip has 1+4k frames (Wan's VAE encodes 4 frames per latent "
                                        f"frame after the first); got {frames}: use {nearest_clip_lengths(frames)} "
                                        "frames (e.g. with a frame-count option of the video loader)")
    pixels = comfy.utils.common_upscale(image[..., :3].movedim(-1, 1), width, height, "bilinear", "center")
    try:
        raw = vae.encode(pixels.movedim(1, -1))
    except Exception as e:
        raise InputError("vae", f"could not encode the start image ({e}): use the Wan2.1 VAE") from e
    if raw.dim() != 5 or raw.shape[1] != 16:
        raise InputError("vae", f"encoded the start image to shape {tuple(raw.shape)}, not a Wan2.1 video latent: "
                                "use the Wan2.1 VAE (wan_2.1_vae.safetensors)")
    return _finite("vae", normalize_latent(raw.float().cpu()), "the VAE encoding of the start image")


# ----------------------------------------------------------------------------- the node

class PackForcingPromptSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PackForcingPromptSchedule",
            display_name="PackForcing Prompt Schedule",
            category=CATEGORY,
            description="Adds a prompt that takes over at a time of the video. Chain these nodes (schedule -> "
                        "schedule) and feed the last one to the sampler's positive input. The first prompt starts "
                        "at 0 s.",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The prompt (CLIPTextEncode, umt5-xxl)."),
                io.Float.Input("start_seconds", default=0.0, min=0.0, max=36000.0, step=0.25,
                               tooltip="When this prompt takes over, in seconds from the first frame the sampler "
                                       "generates; rounded to the nearest chunk boundary (1 s with chunks of 4)."),
                io.Int.Input("transition_chunks", default=0, min=0, max=64,
                             tooltip="Blend the prompt embeddings in from the previous prompt over this many "
                                     "chunks (0: switch at once)."),
                io.Boolean.Input("recache", default=True,
                                 tooltip="KV re-cache once the prompt is fully in: recompute the cached history "
                                         "under the new prompt so the old one does not linger (LongLive)."),
                io.Combo.Input("cut", options=list(CUTS), default="none",
                               tooltip="Scene cut at this switch: 'sink' keeps only the sink (the identity anchor), "
                                       "'all' starts a new shot with no history."),
                io.Conditioning.Input("schedule", optional=True,
                                      tooltip="The schedule so far (a previous Prompt Schedule node). A plain "
                                              "CONDITIONING here counts as the first prompt, at 0 s."),
            ],
            outputs=[io.Conditioning.Output(display_name="schedule")],
        )

    @classmethod
    def execute(cls, conditioning, start_seconds: float, transition_chunks: int, recache: bool, cut: str,
                schedule=None) -> io.NodeOutput:
        if cut not in CUTS:
            raise InputError("cut", f"'{cut}' unknown; choose one of {', '.join(CUTS)}")
        if not 0 <= start_seconds < float("inf"):
            raise InputError("start_seconds", f"{start_seconds}: use a number of seconds >= 0")
        before = scheduled_prompts(schedule) if schedule is not None else []
        if not before and start_seconds != 0:
            raise InputError("start_seconds", f"{start_seconds} s: the first prompt of a schedule starts at 0 s "
                                              "(connect the schedule so far to the schedule input)")
        if before and start_seconds <= before[-1].seconds:
            raise InputError("start_seconds", f"{start_seconds} s is not after the previous prompt's "
                                              f"{before[-1].seconds} s: order the schedule by time")
        embeds = prompt_tensor([conditioning[0]] if isinstance(conditioning, (list, tuple)) and conditioning
                               else conditioning)
        entry = {"seconds": float(start_seconds), "transition": int(transition_chunks), "recache": bool(recache),
                 "cut": cut}
        entries = [[p.embeds, {SCHEDULE_KEY: {"seconds": p.seconds, "transition": p.transition,
                                              "recache": p.recache, "cut": p.cut}}] for p in before]
        return io.NodeOutput(entries + [[embeds, {SCHEDULE_KEY: entry}]])
