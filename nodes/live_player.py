"""Live playback: the video a sampler run decodes as it goes, cut into one fMP4 fragment per chunk and
kept for the browser's Media Source Extensions player (web/js/player.js).

Feed: streaming.LiveVideo decodes each committed chunk on a side CUDA stream and hands its frames to
a LiveEncoder here, which encodes them (h264, no look-ahead, sliced threads: every frame's packet
comes out at once) and cuts a fragment as soon as the chunk's last frame is encoded (fmp4.py). A
fragment goes to
- the run's LiveFeed, in memory, served by nodes/live_routes.py, and announced by a websocket
  message `packforcing.live_video` to the client that queued the prompt, so the page fetches it
  at once (nothing polls);
- the file, when the sampler saves the video as it goes: the file is the init segment and the same
  fragments one after another, so a fragment dropped from memory is read back from it.

Memory: all feeds together keep at most PACKFORCING_LIVE_MB (default 256) MB of fragments; past
that the oldest fragments are dropped, those of finished runs first (the newest run keeps its last
~budget of video; with a saved file nothing is lost, it is read from disk). The fragment index
(a few numbers per fragment) stays, and at most KEEP_RUNS finished runs are remembered.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction

import av
import torch

from .fmp4 import Fmp4Writer
from .spec import FPS

log = logging.getLogger("packforcing")

EVENT = "packforcing.live_video"
KEEP_RUNS = 4                          # finished runs whose feed stays (their fragments may be dropped)
KEY_EVERY = FPS // 2                   # a fragment starts with a keyframe when >= 0.5 s since the last one
CODEC, CRF = "h264", 19         # of the sampler's stream: Save Video with these settings reuses it
ENCODER = {"crf": str(CRF), "tune": "zerolatency", "g": str(4 * FPS), "forced-idr": "1"}


def budget_bytes() -> int:
    try:
        mb = float(os.environ.get("PACKFORCING_LIVE_MB", "256"))
    except ValueError:
        mb = 256.0
    return max(1, int(mb * 2 ** 20))


class FeedError(LookupError):
    """A request for something a feed does not hold: HTTP `status` with this message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Fragment:
    first_frame: int
    frames: int
    key: bool
    size: int
    data: bytes | None             # None once dropped from memory
    offset: int | None             # where it starts in the saved file
    committed: float               # time.perf_counter() when its chunk left the sampler
    stored: float                  # when it could be served


class LiveFeed:
    """One run's video: the init segment and its fragments, in order."""

    def __init__(self, prompt_id: str, node: str, mime: str, width: int, height: int, init: bytes,
                 path: str | None = None, ui_file: dict | None = None):
        self.prompt_id, self.node = prompt_id, node
        self.mime, self.width, self.height, self.init = mime, width, height, init
        self.path, self.ui_file = path, ui_file
        self.fragments: list[Fragment] = []
        self.first_kept = 0                  # fragments before this one are no longer in memory
        self.finished = self.stopped = False
        self.kept_bytes = 0

    @property
    def frames(self) -> int:
        last = self.fragments[-1] if self.fragments else None
        return last.first_frame + last.frames if last else 0

    def manifest(self) -> dict:
        return {"prompt_id": self.prompt_id, "node": self.node, "mime": self.mime, "width": self.width,
                "height": self.height, "fps": FPS, "frames": self.frames, "finished": self.finished,
                "stopped": self.stopped, "first_kept": self.first_available(), "file": self.ui_file,
                "kept_bytes": self.kept_bytes, "budget_bytes": budget_bytes(),
                "fragments": [[f.first_frame, f.frames, int(f.key)] for f in self.fragments]}

    def first_available(self) -> int:
        """Index of the oldest fragment that can still be served (from memory or the file)."""
        return 0 if self.path is not None else self.first_kept

    def drop_oldest(self) -> int:
        """Drop the oldest fragment held in memory; returns the bytes freed (0: none left)."""
        while self.first_kept < len(self.fragments):
            f = self.fragments[self.first_kept]
            self.first_kept += 1
            if f.data is not None:
                f.data = None
                self.kept_bytes -= f.size
                return f.size
        return 0

    def lookup(self, index: int) -> Fragment:
        n = len(self.fragments)
        if index >= n:
            have = f"fragments 0-{n - 1}" if n else "no fragment"
            when = "has" if self.finished else "has so far"
            raise FeedError(404, f"fragment {index} does not exist: prompt {self.prompt_id} node {self.node} "
                                 f"{when} {have}")
        f = self.fragments[index]
        if f.data is None and (self.path is None or f.offset is None):
            raise FeedError(410, f"fragment {index} was dropped from memory to keep it bounded "
                                 f"(PACKFORCING_LIVE_MB={budget_bytes() / 2 ** 20:g}); fragments "
                                 f"{self.first_kept}-{n - 1} are kept")
        return f


class Feeds:
    """The feeds of recent runs by (prompt id, node id), under one lock; bounded in bytes and runs."""

    def __init__(self):
        self.lock = threading.Lock()
        self.runs: OrderedDict[tuple[str, str], LiveFeed] = OrderedDict()

    def open(self, feed: LiveFeed) -> None:
        with self.lock:
            self.runs.pop((feed.prompt_id, feed.node), None)
            self.runs[(feed.prompt_id, feed.node)] = feed
            finished = [k for k, f in self.runs.items() if f.finished]
            for k in finished[:max(0, len(finished) - KEEP_RUNS)]:
                del self.runs[k]

    def add(self, feed: LiveFeed, fragment: Fragment) -> int:
        """Append a fragment; returns its index."""
        with self.lock:
            feed.fragments.append(fragment)
            feed.kept_bytes += fragment.size
            self._trim()
            return len(feed.fragments) - 1

    def _trim(self) -> None:
        over = sum(f.kept_bytes for f in self.runs.values()) - budget_bytes()
        for feed in list(self.runs.values()):            # oldest run first; the newest keeps its newest
            while over > 0 and (freed := feed.drop_oldest()):
                over -= freed

    def get(self, prompt_id: str, node: str) -> LiveFeed:
        with self.lock:
            feed = self.runs.get((prompt_id, node))
            if feed is not None:
                return feed
            nodes = [n for p, n in self.runs if p == prompt_id]
        if nodes:
            raise FeedError(404, f"prompt {prompt_id} has no live video of node {node!r} "
                                 f"(it has one of node {', '.join(map(repr, nodes))})")
        raise FeedError(404, f"no live video for prompt {prompt_id!r}: it did not run here with live playback, "
                             f"or it is older than the {KEEP_RUNS} newest runs")

    def read(self, prompt_id: str, node: str, index: int) -> bytes:
        """A fragment's bytes, from memory or from the saved file."""
        feed = self.get(prompt_id, node)
        with self.lock:
            f = feed.lookup(index)
            data, offset, size, path = f.data, f.offset, f.size, feed.path
        if data is not None:
            return data
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(size)
        except OSError as e:
            raise FeedError(410, f"fragment {index} is no longer in memory and its file cannot be read: {e}") from None
        if len(data) != size:
            raise FeedError(410, f"fragment {index} is no longer in memory and its file {path} was changed")
        return data


FEEDS = Feeds()


# ----------------------------------------------------------------------------- the run's side

def _server():
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def run_key(node_id: str | None) -> tuple[str, str, object] | None:
    """(prompt id, node id, send) of the running prompt; send pushes a websocket message to the client
    that queued it (None: no client). None outside a running ComfyUI server."""
    server = _server()
    prompt_id = getattr(server, "last_prompt_id", None)
    if server is None or prompt_id is None or node_id is None:
        return None
    client = getattr(server, "client_id", None)
    send = (lambda data: server.send_sync(EVENT, data, client)) if client is not None else None
    return str(prompt_id), str(node_id), send


WATCHERS: set[str] = set()             # websocket client ids of pages that show the player (POST .../watch)


def watch(client_id: str) -> None:
    """A page showing the player (web/js/player.js), or an API client that wants the fragments."""
    server = _server()
    connected = getattr(server, "sockets", None)
    with FEEDS.lock:
        if connected is not None:                   # forget the clients that went away
            WATCHERS.intersection_update(connected)
        WATCHERS.add(client_id)


def watched(client_id: str | None) -> bool:
    connected = getattr(_server(), "sockets", None)
    with FEEDS.lock:
        return client_id in WATCHERS and (connected is None or client_id in connected)


def playback_for(node_id: str | None, vae) -> tuple[str, str, object] | None:
    """run_key() of a sampler run with live playback on, when the client that queued it shows the
    player: a run nobody watches is not decoded for playback (an API client opts in with watch()).
    Without a VAE none, and the page says why."""
    key = run_key(node_id)
    if key is None or not watched(getattr(_server(), "client_id", None)):
        return None
    if vae is None:
        _send(key[2], {"phase": "unavailable", "prompt_id": key[0], "node": key[1],
                       "reason": "connect a VAE (Wan2.1 VAE or the tiny decoder) to the sampler for live playback"})
        return None
    return key


def _send(send, data: dict) -> None:
    if send is None:
        return
    try:
        send(data)
    except Exception:  # noqa: BLE001 - a UI message never stops a run
        log.debug("PackForcing: live video message not sent", exc_info=True)


def _encoder(width: int, height: int):
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base, ctx.framerate = Fraction(1, FPS), Fraction(FPS, 1)
    ctx.flags |= av.codec.context.Flags.global_header        # SPS / PPS once, for the init segment
    ctx.thread_type = "SLICE"                                # frame threads would hold frames back
    ctx.options = dict(ENCODER)
    ctx.open()
    return ctx


class LiveEncoder:
    """Encodes each chunk's frames on a worker thread into one fragment, for the live feed and/or the
    file. The queue holds at most two chunks, so memory stays flat; an error comes back to the caller
    at the next put / close."""

    def __init__(self, width: int, height: int, path: str | None = None, playback=None,
                 ui_file: dict | None = None):
        if path is None and playback is None:
            raise ValueError("LiveEncoder needs a file, live playback, or both")
        self.codec = _encoder(width, height)
        self.mp4 = Fmp4Writer(width, height, FPS, bytes(self.codec.extradata))
        init = self.mp4.init_segment()
        self.file = open(path, "wb") if path is not None else None
        self.written = 0
        self.index: list[tuple[int, int]] = []      # (decode time, offset) of the file's fragments: its mfra
        self._write(init)
        self.feed, self.send = None, None
        if playback is not None:
            prompt_id, node, self.send = playback
            self.feed = LiveFeed(prompt_id, node, self.mp4.mime, width, height, init, path, ui_file)
            FEEDS.open(self.feed)
            _send(self.send, {"phase": "start", "prompt_id": prompt_id, "node": node, "mime": self.mp4.mime,
                              "width": width, "height": height, "fps": FPS, "file": ui_file})
        self.frames = 0
        self.last_key = None
        self.error: BaseException | None = None
        self.chunks: queue.Queue = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._run, name="packforcing-live-encoder", daemon=True)
        self.thread.start()

    def put(self, frames_u8: torch.Tensor, committed: float | None = None) -> None:
        """The next frames (F, H, W, 3) uint8 of one chunk; committed: perf_counter when the chunk
        left the sampler (for the latency numbers)."""
        if self.error is not None:
            raise self.error
        self.chunks.put((frames_u8, time.perf_counter() if committed is None else committed))

    def _run(self) -> None:
        while (item := self.chunks.get()) is not None:
            if self.error is None:          # after an error keep draining, so put() never blocks forever
                try:
                    self._fragment(self._encode(item[0]), item[1])
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    self.error = e

    def _encode(self, frames_u8: torch.Tensor | None) -> list[tuple[bytes, bool]]:
        if frames_u8 is None:
            return [(bytes(p), p.is_keyframe) for p in self.codec.encode(None)]
        out = []
        for i, img in enumerate(frames_u8.numpy()):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = self.frames + i
            if i == 0 and (self.last_key is None or self.frames - self.last_key >= KEY_EVERY):
                frame.pict_type = av.video.frame.PictureType.I          # the fragment starts a GOP
                self.last_key = self.frames
            out += [(bytes(p), p.is_keyframe) for p in self.codec.encode(frame)]
        self.frames += frames_u8.shape[0]
        return out

    def _fragment(self, packets: list[tuple[bytes, bool]], committed: float) -> None:
        if not packets:
            return
        first = self.mp4.decode_time // self.mp4.frame_ticks
        data, start = self.mp4.media_segment(packets)
        offset = self.written if self.file is not None else None
        if self.file is not None:
            self.index.append((start, offset))
        self._write(data)
        if self.feed is None:
            return
        f = Fragment(first, len(packets), packets[0][1], len(data), data, offset, committed, time.perf_counter())
        index = FEEDS.add(self.feed, f)
        _send(self.send, {"phase": "fragment", "prompt_id": self.feed.prompt_id, "node": self.feed.node,
                          "index": index, "first_frame": f.first_frame, "frames": f.frames, "key": f.key,
                          "first_kept": self.feed.first_available()})

    def _write(self, data: bytes) -> None:
        if self.file is not None:
            self.file.write(data)
            self.file.flush()               # every fragment on disk at once: the file plays while it grows
            self.written += len(data)

    def close(self, stopped: bool = False) -> BaseException | None:
        """Encode what is queued, flush the encoder, end the file (its fragment index) and the feed.
        Also after a cancel (`stopped`). Returns the encoder's error, if any."""
        self.chunks.put(None)
        self.thread.join()
        try:
            if self.error is None:
                self._fragment(self._encode(None), time.perf_counter())
                if self.file is not None and self.index:
                    self.file.write(self.mp4.mfra(self.index))
        except BaseException as e:  # noqa: BLE001
            self.error = e
        finally:
            if self.file is not None:
                self.file.close()
            if self.feed is not None:
                with FEEDS.lock:
                    self.feed.finished, self.feed.stopped = True, stopped or self.error is not None
                _send(self.send, {"phase": "end", "prompt_id": self.feed.prompt_id, "node": self.feed.node,
                                  "frames": self.feed.frames, "fragments": len(self.feed.fragments),
                                  "stopped": self.feed.stopped, "file": self.feed.ui_file})
        return self.error
