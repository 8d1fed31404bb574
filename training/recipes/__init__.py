"""Training recipes: how each network family is trained (its losses, auxiliary networks, optimisers).
One module per family, named like the network in engines/networks."""

from __future__ import annotations

import importlib

from .base import Recipe

# network name -> "module:class" (imported on demand)
RECIPES: dict[str, str] = {
    "skyfuse-rt": "training.recipes.skyfuse_rt:SkyfuseRTRecipe",
    "umf-cmgr": "training.recipes.umf_cmgr:UMFCMGRRecipe",
    "misfit-v": "training.recipes.misfit_v:MisfitVRecipe",
    "dae-fuse": "training.recipes.dae_fuse:DAEFuseRecipe",
}


def recipe_class(name: str) -> type[Recipe]:
    module, cls = RECIPES[name].split(":")
    return getattr(importlib.import_module(module), cls)
