"""ComfyUI nodes of PackForcing: a thin adapter over `packforcing_core`.

Kept free of imports on purpose: the pure helpers (`spec.py`) can be imported and tested without
ComfyUI; the node modules are imported by the pack's root `__init__.py` inside ComfyUI.
"""
