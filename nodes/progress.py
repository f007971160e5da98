"""Live sampling view: the messages the sampler pushes to the frontend (web/js/live.js) while it runs.

One websocket message `packforcing.progress` (PromptServer.send_sync, to the client that queued the
prompt; nothing polls) at the start of every chunk (after its first forward pass, when the top-k
selection of the chunk is known), after every chunk is committed, and in between at most every
STEP_INTERVAL seconds. Each carries: the chunk i of N of this run and the step, seconds per chunk,
ETA, the K/V bytes the cache holds, the timeline of sink / mid blocks / recent with the mid blocks
the current chunk attends to, and, once a chunk is committed, a preview of it.

Preview: a linear latent -> RGB map of the newest latent frame (ComfyUI's Wan2.1
`latent_rgb_factors`, the same numbers its "latent2rgb" previews use), as a small PNG at latent
resolution (1/8 of the video's; the browser scales it). It costs a 16x3 product on one latent frame
(well under a millisecond), needs no VAE and no GPU time, and is labelled as an approximation in the
UI. A real VAE decode of even one frame would stall the loop (the Wan VAE decodes causally, so one
frame of chunk i needs the feature cache of every frame before it).
"""
from __future__ import annotations

import base64
import io
import time

import torch

EVENT = "packforcing.progress"
STEP_INTERVAL = 0.25          # seconds between two step messages inside a chunk
PREVIEW_MAX_SIDE = 256        # latent previews larger than this (in latent pixels) are downscaled


def _server():
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def latent_rgb_factors():
    """(16, 3) factors and (3,) bias of ComfyUI's Wan2.1 latent format."""
    import comfy.latent_formats
    fmt = comfy.latent_formats.Wan21()
    return torch.tensor(fmt.latent_rgb_factors), torch.tensor(fmt.latent_rgb_factors_bias)


def preview_png(frame: torch.Tensor, factors: torch.Tensor, bias: torch.Tensor) -> str:
    """data: URL of a PNG of one latent frame (16, h, w) in the DiT's (normalised) space."""
    from PIL import Image

    rgb = torch.einsum("chw,cr->hwr", frame.float().cpu(), factors) + bias
    img = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    image = Image.fromarray(img, "RGB")
    if max(image.size) > PREVIEW_MAX_SIDE:
        image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=False, compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class LiveView:
    """Called after every forward pass of the sampler (steps + commit per chunk)."""

    def __init__(self, gen, new_frames: int, node_id: str | None, send=None, clock=time.perf_counter):
        server = _server()
        self.client_id = getattr(server, "client_id", None)
        self.prompt_id = getattr(server, "last_prompt_id", None)
        if send is None and server is not None and self.client_id is not None and node_id is not None:
            send = lambda data: server.send_sync(EVENT, data, self.client_id)
        self.send = send
        self.gen, self.node = gen, node_id
        self.clock = clock
        self.first_chunk = gen.chunk_index
        self.chunks = -(-new_frames // gen.chunk_frames)
        self.total_frames = gen.frames_done + new_frames
        self.passes = len(gen.schedule.steps) + 1
        self.start = clock()
        self.chunk_start = self.start
        self.durations: list[float] = []
        self.last_sent = -1e9
        self.schedule = None
        self.video = None             # the file written as it goes: {"filename", "subfolder", "type"}
        self.factors = None
        if self.send is not None:
            try:
                self.factors = latent_rgb_factors()
            except Exception:  # noqa: BLE001 - no preview outside ComfyUI
                self.factors = None

    def __call__(self, chunk: int, step: int, steps: int) -> None:
        if self.send is None:
            return
        now = self.clock()
        done = step == steps - 1
        if done:
            self.durations.append(now - self.chunk_start)
        elif step > 0 and now - self.last_sent < STEP_INTERVAL:
            return
        msg = self.message(chunk, step, steps, now)
        if done:
            self.chunk_start = now
        try:
            self.send(msg)
        except Exception:  # noqa: BLE001 - a UI message never stops a run
            self.send = None
        self.last_sent = now

    def stopped(self, saved: bool) -> None:
        """After a cancel or an error: what was kept and how to go on (replaces a now stale ETA)."""
        if self.send is None:
            return
        msg = {"node": self.node, "prompt_id": self.prompt_id, "phase": "stopped", "saved": saved,
               "frames_done": self.gen.frames_done, "total_frames": self.total_frames,
               "hint": "turn resume on and queue the same inputs to continue" if saved else
                       "no chunk was finished: nothing to resume"}
        try:
            self.send(msg)
        except Exception:  # noqa: BLE001 - a UI message never hides the error
            pass

    def follow(self, schedule) -> None:
        """Show which prompt of a PromptSchedule is active and where the switches are."""
        self.schedule = schedule if len(schedule.entries) > 1 else None

    def prompts(self, chunk: int) -> dict | None:
        s = self.schedule
        if s is None:
            return None
        first = lambda k: self.gen.start_frames + k * self.gen.chunk_frames      # latent frame of chunk k
        i, w = s.weight(chunk)
        return {"active": i + 1, "count": len(s.entries), "blend": w,
                "switches": [[first(e.start_chunk), n + 2, e.cut] for n, e in enumerate(s.entries[1:])]}

    # ------------------------------------------------------------------ building messages
    def message(self, chunk: int, step: int, steps: int, now: float) -> dict:
        gen, cache = self.gen, self.gen.cache
        done = step == steps - 1
        run_chunk = chunk - self.first_chunk               # 0-based within this run
        passes_done = run_chunk * self.passes + step + 1
        passes_left = self.chunks * self.passes - passes_done
        msg = {
            "node": self.node, "prompt_id": self.prompt_id,
            "phase": "chunk_done" if done else "step",
            "chunk": run_chunk + 1, "chunks": self.chunks, "video_chunk": chunk,
            "step": min(step + 1, steps - 1), "steps": steps - 1,      # denoising steps; the commit is the extra pass
            "frames_done": gen.frames_done, "total_frames": self.total_frames,
            "chunk_frames": gen.chunk_frames,
            "elapsed": now - self.start,
            "sec_per_chunk": self.sec_per_chunk(),
            "eta": self.eta(now, passes_done, passes_left),
            "kv": cache.nbytes() if cache.k is not None else None,
            "timeline": self.timeline(done),
            "prompts": self.prompts(chunk),
            "video": self.video,
        }
        if done and self.factors is not None and gen.latents:
            msg["preview"] = preview_png(gen.latents[-1][0, :, -1], *self.factors)
            msg["preview_frame"] = gen.frames_done - 1              # latent frame shown
            msg["preview_kind"] = "latent2rgb"
        return msg

    def sec_per_chunk(self) -> float | None:
        d = self.durations[1:] or self.durations      # the first chunk also pays for warm-up
        return sum(d[-8:]) / len(d[-8:]) if d else None

    def eta(self, now: float, passes_done: int, passes_left: int) -> float:
        spc = self.sec_per_chunk()
        if spc is not None:
            return spc * passes_left / self.passes
        return (now - self.start) / max(1, passes_done) * passes_left

    def timeline(self, done: bool) -> dict:
        cache = self.gen.cache
        t = cache.timeline()
        t["generating"] = None if done else [cache.frames_done, min(cache.frames_done + self.gen.chunk_frames,
                                                                     self.total_frames)]
        t["mode"] = cache.cfg.mode
        t["top_k"] = cache.cfg.top_k
        return t
