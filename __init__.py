"""PackForcing for ComfyUI: minute-long autoregressive video with causal Wan2.1 models and a bounded
KV cache (sink / compressed mid / recent). A V3 node pack: ComfyUI calls `comfy_entrypoint`."""
import importlib.util

WEB_DIRECTORY = "./web"

# Outside ComfyUI (e.g. pytest collecting the repository as a package) there is nothing to register.
if importlib.util.find_spec("comfy_api") is not None:
    from .nodes.extension import PackForcingExtension, comfy_entrypoint  # noqa: F401

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint", "PackForcingExtension"]
