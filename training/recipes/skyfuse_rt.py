"""Training of skyfuse-rt: supervised registration (end-point error against the synthetic ground-truth
flow) plus an unsupervised fusion loss in the style of SeAFusion (intensity towards max(visible,
thermal), gradients towards the stronger source gradient), computed against the oracle-registered
thermal image so the fusion target never contains a ghost."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import end_point_error, max_fusion
from .base import Recipe


@dataclass
class SkyfuseRTLossWeights:
    flow: float = 1.0  # EPE in pixels
    affine_flow: float = 0.5  # EPE of the affine stage alone (deep supervision of matches and confidence)
    refined_flow: float = 0.5  # EPE of the refined affine map (deep supervision of the 1/4 matches)
    global_flow: float = 0.25  # EPE of the global shift alone (deep supervision of the matching features)
    intensity: float = 4.0
    texture: float = 10.0


class SkyfuseRTRecipe(Recipe):
    def __init__(self, network, lr: float):
        super().__init__(network, lr)
        self.weights = SkyfuseRTLossWeights()
        self.optimizer = self.adam("network", network)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        w = self.weights
        stages = self.network.estimate(batch["visible"], batch["thermal"])
        fused, _, flow = self.network.render(batch["visible"], batch["thermal"], stages.maps)
        valid = batch["valid"]

        def full(flow8: torch.Tensor) -> torch.Tensor:
            return F.interpolate(flow8, size=flow.shape[2:], mode="bilinear", align_corners=False) * 8.0

        # Where the thermal view has no content the best fused image is the visible one.
        target_ir = batch["aligned"] * valid + batch["visible"] * (1 - valid)
        epe = end_point_error(flow, batch["flow"], valid)
        epe_affine = end_point_error(full(stages.affine), batch["flow"], valid)
        epe_refined = end_point_error(full(stages.refined), batch["flow"], valid)
        epe_global = end_point_error((stages.shift * 8.0).expand_as(flow), batch["flow"], valid)
        intensity, texture = max_fusion(fused, batch["visible"], target_ir)
        loss = (w.flow * epe + w.affine_flow * epe_affine + w.refined_flow * epe_refined
                + w.global_flow * epe_global + w.intensity * intensity + w.texture * texture)
        self.step(self.optimizer, loss)
        return {
            "loss": loss.item(),
            "epe": epe.item(),
            "epe_affine": epe_affine.item(),
            "epe_refined": epe_refined.item(),
            "epe_global": epe_global.item(),
            "intensity": intensity.item(),
            "texture": texture.item(),
        }
