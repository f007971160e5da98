"""Adding the pack's HTTP routes to ComfyUI's PromptServer, once, and only inside a running ComfyUI."""
from __future__ import annotations


def prompt_server():
    """(aiohttp.web, ComfyUI's PromptServer) in a running ComfyUI; None elsewhere."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return None
    server = getattr(PromptServer, "instance", None)
    return None if server is None else (web, server)


def once_on_server(add):
    """register(): add(web, server) the first time it is called inside a running ComfyUI."""
    done = False

    def register() -> None:
        nonlocal done
        if done or (found := prompt_server()) is None:
            return
        add(*found)
        done = True
    return register
