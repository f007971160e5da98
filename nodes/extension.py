"""The V3 extension: the list of nodes ComfyUI registers."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .cache_nodes import PackedCacheNode, SetPackedCacheSizes
from .common import register_model_folder
from .decode import PackForcingDecode, PackForcingSaveVideo
from .directing import PackForcingPromptSchedule
from .embeddings import LoadPromptEmbeddings, SavePromptEmbeddings
from .live_routes import register as register_live_routes
from .loaders import LoadPackForcingModel, PackForcingModelFromModel
from .report import PackForcingVideoReport
from .routes import register as register_routes
from .sampler import PackForcingSampler
from .state_files import remove_stale_temporaries
from .steer_api import register as register_steering

NODES: list[type[io.ComfyNode]] = [
    LoadPackForcingModel, PackForcingModelFromModel, PackedCacheNode, SetPackedCacheSizes, PackForcingSampler,
    PackForcingDecode, PackForcingSaveVideo, SavePromptEmbeddings, LoadPromptEmbeddings, PackForcingPromptSchedule,
    PackForcingVideoReport,
]


class PackForcingExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> PackForcingExtension:
    register_model_folder()
    register_routes()          # GET /packforcing/plan: the budget readout of web/js/budget.js
    register_live_routes()     # GET /packforcing/live/...: the live player of web/js/player.js
    register_steering()        # /packforcing/steer: changes to a running sampler (web/js/steer.js)
    remove_stale_temporaries()     # of progress saves killed half-way
    return PackForcingExtension()
