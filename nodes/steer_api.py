"""HTTP route for steering a running sampler (nodes/steering.py), on ComfyUI's PromptServer:

    POST /packforcing/steer   {"prompt_id": "...", "node": "6", "action": "change", "chunk": 5,
                               "prompt": {"embeddings": "b.safetensors"} | {"text": "..."} |
                                         {"embeds": [[[...]]]} | {"same": true},
                               "transition": 0, "recache": true, "cut": "none"}
                              {"prompt_id": "...", "node": "6", "action": "pause" | "resume"}
    GET  /packforcing/steer[?prompt_id=...&node=...]     the runs (running and recently ended), their
                              pending and applied changes, and the prompt-embeddings files to pick from

(also under /api/packforcing/steer, like every ComfyUI route, and behind ComfyUI's own middlewares:
a cross-site request is refused the way /prompt refuses it). `node` may be left out when the prompt
runs one sampler; `chunk` (counted from 1, as the live view does) defaults to the next chunk.
Anything wrong gets a 4xx answer {"error": "<field>: <message>", "field": "<field>"} and changes
nothing: 400 a bad value, 404 an unknown prompt or node, 409 a run that ended, a chunk that has begun
or already has a change, 429 a full queue of pending changes. A change is answered 202 with its
record once it waits for its chunk (text is encoded before the answer, so an encoder that does not
fit the run is refused at once).

Embeddings given inline ("embeds") are saved once to output/prompt_embeddings/steer-<hash>.safetensors
and recorded by that name, so the kept workflow loads them with Load Prompt Embeddings.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os

import torch

from ..packforcing_core.sampling.prompt_schedule import CUTS
from ..packforcing_core.sampling.prompts import load_prompt_embeds, save_prompt_embeds
from .embeddings import embedding_files, embeddings_path
from .server_routes import once_on_server
from .spec import InputError
from .steering import Change, Run, SteerError, find, states

log = logging.getLogger("packforcing")

ROUTE = "/packforcing/steer"
FIELDS = ("prompt_id", "node", "action", "chunk", "prompt", "transition", "recache", "cut")
ACTIONS = ("change", "pause", "resume")
SOURCES = ("embeddings", "text", "embeds", "same")
MAX_TEXT = 20_000
MAX_TOKENS, MAX_BATCH = 4096, 64
TEXT_WAIT = 600.0          # seconds a request waits for its text to be encoded (one forward pass, or a re-cache)
# The frontend rewrites these in a CLIPTextEncode text (comments, {a|b} choices) each time it queues a
# prompt, so text holding them would not be encoded the same way by the kept workflow.
DYNAMIC_PROMPT = ("{", "\\", "//", "/*")
EMBEDS_FOLDER = "prompt_embeddings"


def _bad(field: str, message: str, status: int = 400) -> SteerError:
    return SteerError(status, field, message)


def _int(body: dict, name: str, lo: int, hi: int, default):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(name, f"{value!r} is not an integer in [{lo}, {hi}]")
    return value


def parse_body(body) -> dict:
    """The checked fields of a POST body (the prompt still as given)."""
    if not isinstance(body, dict):
        raise _bad("body", "expected a JSON object")
    if unknown := [k for k in body if k not in FIELDS]:
        raise _bad(str(unknown[0]), f"unknown field; known: {', '.join(FIELDS)}")
    pid = body.get("prompt_id")
    if not isinstance(pid, str) or not 0 < len(pid) <= 200:
        raise _bad("prompt_id", "expected the id of the running prompt (a string, as /prompt answered it)")
    node = body.get("node")
    if node is not None and (isinstance(node, bool) or not isinstance(node, (str, int)) or not str(node)):
        raise _bad("node", f"{node!r} is not a node id")
    action = body.get("action", "change")
    if action not in ACTIONS:
        raise _bad("action", f"{action!r} is not one of {', '.join(ACTIONS)}")
    out = {"prompt_id": pid, "node": None if node is None else str(node), "action": action}
    if action != "change":
        if extra := [k for k in body if k not in ("prompt_id", "node", "action")]:
            raise _bad(extra[0], f"not used by action '{action}'")
        return out
    if "prompt" not in body:
        raise _bad("prompt", f"a change needs a prompt: one of {', '.join(SOURCES)}")
    cut = body.get("cut", "none")
    if cut not in CUTS:
        raise _bad("cut", f"{cut!r} is not one of {', '.join(CUTS)}")
    recache = body.get("recache", True)
    if not isinstance(recache, bool):
        raise _bad("recache", f"{recache!r} is not true or false")
    return out | {"chunk": _int(body, "chunk", 1, 10**9, None), "transition": _int(body, "transition", 0, 64, 0),
                  "recache": recache, "cut": cut, "prompt": _prompt(body["prompt"])}


def _prompt(p) -> dict:
    if not isinstance(p, dict) or len(p) != 1 or next(iter(p)) not in SOURCES:
        raise _bad("prompt", f"expected an object with exactly one of {', '.join(SOURCES)}")
    kind, value = next(iter(p.items()))
    field = f"prompt.{kind}"
    if kind == "same" and value is not True:
        raise _bad(field, "expected true (the prompt in effect goes on: a cut or a re-cache without a new prompt)")
    if kind == "embeddings" and (not isinstance(value, str) or not 0 < len(value) <= 512 or "\x00" in value):
        raise _bad(field, "expected a file name as Load Prompt Embeddings lists it")
    if kind == "text":
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise _bad(field, f"expected a string of at most {MAX_TEXT} characters")
        if found := [s for s in DYNAMIC_PROMPT if s in value]:
            raise _bad(field, f"holds {' '.join(repr(s) for s in found)}: the frontend reads these as dynamic-prompt "
                              "syntax ({a|b} choices, // and /* comments, \\ escapes) and would rewrite the text when "
                              "the kept workflow runs; leave them out")
    if kind == "embeds":
        value = _embeds(value)
    return {kind: value}


def _embeds(value) -> torch.Tensor:
    field = "prompt.embeds"
    if not isinstance(value, list):
        raise _bad(field, "expected a nested list (batch, tokens, width) of numbers")
    try:
        t = torch.tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise _bad(field, f"expected a nested list (batch, tokens, width) of numbers, all rows of one length ({e})") \
            from None
    if t.dim() != 3 or not (0 < t.shape[0] <= MAX_BATCH and 0 < t.shape[1] <= MAX_TOKENS and t.shape[2] > 0):
        raise _bad(field, f"has shape {tuple(t.shape)}: expected (batch, tokens, width) with batch 1-{MAX_BATCH} "
                          f"and 1-{MAX_TOKENS} tokens")
    if not bool(torch.isfinite(t).all()):
        raise _bad(field, "holds NaN/inf values")
    return t


def _load_file(name: str) -> torch.Tensor:
    try:
        embeds, _ = load_prompt_embeds(embeddings_path(name))
    except (InputError, ValueError, FileNotFoundError) as e:
        raise _bad("prompt.embeddings", str(e).removeprefix("embeddings: ")) from None
    return embeds.detach().float().cpu()


def _save_inline(embeds: torch.Tensor) -> str:
    """Save inline embeddings under a name from their content; the name Load Prompt Embeddings lists."""
    import folder_paths
    digest = hashlib.sha256(embeds.contiguous().numpy().tobytes() + str(tuple(embeds.shape)).encode()).hexdigest()
    rel = f"{EMBEDS_FOLDER}/steer-{digest[:20]}.safetensors"
    path = os.path.join(folder_paths.get_output_directory(), *rel.split("/"))
    try:
        if not os.path.isfile(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_prompt_embeds(path, embeds)
    except OSError as e:
        raise _bad("prompt.embeds", f"could not save them to {path} ({e})", 507) from None
    return f"{rel} [output]"


async def _resolve(run: Run, prompt: dict) -> tuple[torch.Tensor | None, dict]:
    """(embeddings, how the kept workflow gets them) of a change's prompt."""
    loop = asyncio.get_running_loop()
    kind, value = next(iter(prompt.items()))
    if kind == "same":
        return None, {"same": True}
    if kind == "embeddings":
        return run.check_embeds(await loop.run_in_executor(None, _load_file, value), "prompt.embeddings"), prompt
    if kind == "embeds":
        run.check_embeds(value, "prompt.embeds")
        return value, {"embeddings": await loop.run_in_executor(None, _save_inline, value)}
    try:
        embeds = await asyncio.wait_for(asyncio.wrap_future(run.encode(value)), TEXT_WAIT)
    except asyncio.TimeoutError:
        raise _bad("prompt.text", f"the sampler did not encode it within {TEXT_WAIT:g} s", 503) from None
    return embeds, prompt


def _run_of(pid: str, node: str | None) -> Run:
    found = find(pid, node)
    if isinstance(found, dict):
        raise _bad("prompt_id", f"the run of prompt {pid} (node {found['node']}) has ended ({found['state']}): steer "
                                "a running one", 409)
    return found


async def post(body) -> tuple[int, dict]:
    req = parse_body(body)
    run = _run_of(req["prompt_id"], req["node"])
    if req["action"] != "change":
        return 200, {"state": run.set_paused(req["action"] == "pause")}
    run.precheck(req["chunk"])
    embeds, source = await _resolve(run, req["prompt"])
    record = run.submit(Change(req["chunk"], source, embeds, req["transition"], req["recache"], req["cut"]))
    return 202, {"change": record, "state": run.state()}


def get(query) -> dict:
    if unknown := [k for k in query if k not in ("prompt_id", "node")]:
        raise _bad(unknown[0], "unknown parameter; known: prompt_id, node")
    pid = query.get("prompt_id")
    if pid is None:
        runs = states()
    else:
        found = find(pid, query.get("node"))
        runs = [found if isinstance(found, dict) else found.state()]
    return {"runs": runs, "embeddings": [f for f in embedding_files() if not _is_state_file(f)]}


def _is_state_file(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(("resume-", "state-")) and name.startswith("packforcing/")


@once_on_server
def register(web, server) -> None:
    """Add the route to ComfyUI's PromptServer (nothing outside a running ComfyUI)."""

    async def answer(work):
        try:
            status, body = await work()
        except SteerError as e:
            return web.json_response(e.body(), status=e.status)
        except Exception as e:  # noqa: BLE001 - answer, and keep the details in the log
            log.exception("PackForcing: %s failed", ROUTE)
            return web.json_response({"error": f"internal error: {e}", "field": None}, status=500)
        return web.json_response(body, status=status)

    async def post_route(request):
        async def work():
            try:
                body = await request.json()          # (NaN / Infinity read as floats: refused by name)
            except ValueError as e:
                raise _bad("body", f"not JSON ({e})") from None
            return await post(body)
        return await answer(work)

    async def get_route(request):
        async def work():
            return 200, get(request.rel_url.query)
        return await answer(work)

    server.routes.post(ROUTE)(post_route)
    server.routes.get(ROUTE)(get_route)

