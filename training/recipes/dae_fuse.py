"""Training of DAE-Fuse in its two phases (§II-C). The trainer's planned steps are split in half.

Phase 1 (eqs. 6-12), reconstruction: L_AE = λ·adv + σ·L_corr + (1 − σ)·(‖x − RD(Φ(x))‖² + 1 − SSIM), with
the correlation-decomposition loss L_corr = CC(high_vis, high_ir)² / (CC(low_vis, low_ir) + 1.01); each
discriminator judges its modality's source (real) against its reconstruction (fake).
Phase 2 (eqs. 13-17), fusion: L_AE = L_text + L_int + adv with L_text = ‖|∇F| − max(|∇vis|, |∇ir|)‖₁ and
L_int = ‖F − max(vis, ir)‖₁; each discriminator judges its source (real) against the fused image (fake).
The paper leaves λ and σ open: λ = 0.1, σ = 0.5 here. Like the paper, it trains on aligned pairs (the
thermal input is the ground-truth aligned image); at evaluation it is fed what the protocol gives it.
The generator's adversarial terms use the non-saturating form −log D(fake) of eqs. 7 and 14.
"""

from __future__ import annotations

import torch

from engines.networks.dae_fuse import Discriminator

from ..losses import feature_correlation, gan_loss, max_fusion, ssim
from .base import Recipe

LAMBDA_ADV, SIGMA = 0.1, 0.5
EPSILON = 1.01


class DAEFuseRecipe(Recipe):
    def __init__(self, network, lr: float):
        super().__init__(network, lr)
        self.d_vis, self.d_ir = Discriminator(), Discriminator()
        self.modules |= {"d_vis": self.d_vis, "d_ir": self.d_ir}
        self.opt_ae = self.adam("autoencoder", network)
        self.opt_d = self.adam("discriminators", self.d_vis, self.d_ir)
        self.phase1_steps = 0
        self.steps_done = 0

    def plan(self, total_steps: int) -> None:
        self.phase1_steps = total_steps // 2

    def state_dict(self) -> dict:
        return super().state_dict() | {"steps_done": self.steps_done, "phase1_steps": self.phase1_steps}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.steps_done, self.phase1_steps = state["steps_done"], state["phase1_steps"]

    def discriminate(self, real_vis, real_ir, fake_vis, fake_ir) -> torch.Tensor:
        d = (
            gan_loss(self.d_vis(real_vis), True)
            + gan_loss(self.d_vis(fake_vis.detach()), False)
            + gan_loss(self.d_ir(real_ir), True)
            + gan_loss(self.d_ir(fake_ir.detach()), False)
        )
        self.step(self.opt_d, d)
        return d

    def train_step(self, batch):
        vis, ir = batch["visible"], batch["aligned"]
        net = self.network
        self.steps_done += 1
        if self.steps_done <= self.phase1_steps:
            (hv, lv), (hi, li) = net.encode(vis), net.encode(ir)
            rec_vis, rec_ir = net.decoder(torch.cat((hv, lv), 1)), net.decoder(torch.cat((hi, li), 1))
            adv = gan_loss(self.d_vis(rec_vis), True) + gan_loss(self.d_ir(rec_ir), True)
            corr = feature_correlation(hv, hi) ** 2 / (feature_correlation(lv, li) + EPSILON)
            content = sum((x - r).pow(2).mean() + 1 - ssim(x, r) for x, r in ((vis, rec_vis), (ir, rec_ir)))
            loss = LAMBDA_ADV * adv + SIGMA * corr + (1 - SIGMA) * content
            self.step(self.opt_ae, loss)
            d = self.discriminate(vis, ir, rec_vis, rec_ir)
            return {
                "loss": loss.item(),
                "phase": 1.0,
                "adv": adv.item(),
                "corr": corr.item(),
                "content": content.item(),
                "d": d.item(),
            }
        fused = net(vis, ir)[0]
        intensity, texture = max_fusion(fused, vis, ir)
        adv = gan_loss(self.d_vis(fused), True) + gan_loss(self.d_ir(fused), True)
        loss = texture + intensity + adv
        self.step(self.opt_ae, loss)
        d = self.discriminate(vis, ir, fused, fused)
        return {
            "loss": loss.item(),
            "phase": 2.0,
            "adv": adv.item(),
            "intensity": intensity.item(),
            "texture": texture.item(),
            "d": d.item(),
        }
