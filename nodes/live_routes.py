"""HTTP routes of live playback (web/js/player.js), on ComfyUI's PromptServer, so they pass through
whatever access control ComfyUI applies to its own routes (also under /api/, like every route):

    GET /packforcing/live/{prompt_id}/{node}/manifest   JSON: codec, size, frames, the fragment index
    GET /packforcing/live/{prompt_id}/{node}/init.mp4   the init segment (ftyp + moov)
    GET /packforcing/live/{prompt_id}/{node}/{i}.m4s    fragment i (moof + mdat), 0-based

    POST /packforcing/live/watch  {"client_id": "<websocket client id>"}   this client shows the player

A feed is bound to the prompt that ran and the sampler node that made it (live_player.FEEDS). A run
is decoded for playback only when the client that queued it watches (the page's player registers
itself; an API client that wants the fragments posts its id), so nobody pays for a decode nobody sees.

ComfyUI started with --disable-api-nodes sends a Content-Security-Policy whose media sources are
'self' only, and browsers check a MediaSource's blob: URL against it, so the player could not play.
The pack adds `media-src 'self' blob:` to that policy (nothing else changes: no other origin).
Answers: 400 for a malformed id or part, 404 for an unknown prompt / node or a fragment that does
not exist (yet), 410 for a fragment dropped from memory to keep it bounded; each with
{"error": message}. `answer` is a plain function, testable without a server.
"""
from __future__ import annotations

import asyncio
import logging
import re

from .live_player import FEEDS, FeedError, watch
from .server_routes import once_on_server

log = logging.getLogger("packforcing")

ROUTE = "/packforcing/live/{prompt_id}/{node}/{part}"
WATCH = "/packforcing/live/watch"
ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")        # prompt ids are UUIDs; node ids "12" or "5:12" in subgraphs
FRAGMENT = re.compile(r"(0|[1-9][0-9]{0,8})\.m4s")
IMMUTABLE = {"Cache-Control": "private, max-age=86400, immutable"}     # a fragment of a prompt never changes


def answer(prompt_id: str, node: str, part: str) -> tuple[int, dict | bytes, dict]:
    """(HTTP status, JSON dict or bytes, headers) for a request of the route."""
    try:
        for name, value in (("prompt id", prompt_id), ("node id", node)):
            if not ID.fullmatch(value):
                raise FeedError(400, f"{name} {value[:140]!r} is malformed: expected 1-128 letters, digits, "
                                     "'.', '_', ':' or '-'")
        if part == "manifest":
            feed = FEEDS.get(prompt_id, node)
            with FEEDS.lock:
                return 200, feed.manifest(), {"Cache-Control": "no-store"}
        if part == "init.mp4":
            return 200, FEEDS.get(prompt_id, node).init, IMMUTABLE
        match = FRAGMENT.fullmatch(part)
        if match is None:
            raise FeedError(400, f"{part[:140]!r} is not 'manifest', 'init.mp4' or '<fragment index>.m4s' "
                                 "(a whole number from 0, no leading zeros)")
        return 200, FEEDS.read(prompt_id, node, int(match.group(1))), IMMUTABLE
    except FeedError as e:
        return e.status, {"error": str(e)}, {"Cache-Control": "no-store"}


@once_on_server
def register(web, server) -> None:
    """Add the route to ComfyUI's PromptServer (once; nothing outside a running ComfyUI)."""
    server.routes.get(ROUTE)(make_handler(web))
    server.routes.post(WATCH)(make_watch_handler(web))
    try:
        server.app.middlewares.insert(0, media_from_blobs(web))      # outermost: sees ComfyUI's header
    except RuntimeError:          # the app was already frozen (started): the player then needs no CSP
        log.warning("PackForcing: could not allow blob: media in ComfyUI's Content-Security-Policy; "
                    "live playback fails if ComfyUI runs with --disable-api-nodes")


def media_from_blobs(web):
    """Middleware: a Content-Security-Policy without media-src also allows blob: media (the player's
    MediaSource), besides 'self'."""
    @web.middleware
    async def allow_media_source(request, handler):
        response = await handler(request)
        csp = response.headers.get("Content-Security-Policy")
        if csp and "media-src" not in csp:
            response.headers["Content-Security-Policy"] = csp.rstrip().rstrip(";") + "; media-src 'self' blob:;"
        return response
    return allow_media_source


def make_handler(web):
    """The aiohttp handler (also for a bare aiohttp app, e.g. the benchmark's)."""
    async def live_route(request):
        m = request.match_info
        try:
            status, body, headers = await asyncio.get_running_loop().run_in_executor(
                None, answer, m["prompt_id"], m["node"], m["part"])      # a dropped fragment is read from disk
        except Exception as e:  # noqa: BLE001 - answer, and keep the details in the log
            log.exception("PackForcing: %s failed", ROUTE)
            return web.json_response({"error": f"internal error: {e}"}, status=500)
        if isinstance(body, dict):
            return web.json_response(body, status=status, headers=headers)
        return web.Response(body=body, status=status, content_type="video/mp4", headers=headers)
    return live_route


def watch_answer(body) -> tuple[int, dict]:
    """(HTTP status, JSON) for POST /packforcing/live/watch."""
    client = body.get("client_id") if isinstance(body, dict) else None
    if not isinstance(client, str) or not ID.fullmatch(client):
        return 400, {"error": "client_id: expected the websocket client id (1-128 letters, digits, '.', '_', ':' "
                              "or '-') in a JSON object {\"client_id\": ...}"}
    watch(client)
    return 200, {"watching": client}


def make_watch_handler(web):
    async def watch_route(request):
        try:
            body = await request.json()
        except ValueError:
            body = None
        status, answer_ = watch_answer(body)
        return web.json_response(answer_, status=status)
    return watch_route
