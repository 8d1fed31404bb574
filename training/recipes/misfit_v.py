"""Training of MISFIT-V (§3.2): generator loss L_adv(D_ir) + L_adv(D_vis) + λ_KL·KL + λ_L1·L1 with
λ_KL = 10, λ_L1 = 100, KL and L1 taken to both sources, plus the authors' code's contrastive term on the
cross-attention tokens (temperature 0.2). Each PatchGAN discriminator sees (source, image): real is
(source, source), fake is (source, fused), so the generator is pushed to keep each modality's content.
The generator sees the misaligned pair as is (no registration)."""

from __future__ import annotations

from engines.networks.misfit_v import PatchDiscriminator

from ..losses import gan_loss, info_nce, intensity_kl
from .base import Recipe

LAMBDA_KL, LAMBDA_L1, LAMBDA_NCE = 10.0, 100.0, 1.0
NCE_TEMPERATURE = 0.2


class MisfitVRecipe(Recipe):
    def __init__(self, network, lr: float):
        super().__init__(network, lr)
        width = network.config.width
        self.d_ir, self.d_vis = PatchDiscriminator(2, width), PatchDiscriminator(2, width)
        self.modules |= {"d_ir": self.d_ir, "d_vis": self.d_vis}
        # pix2pix optimiser settings (Adam, beta1 = 0.5).
        self.opt_g = self.adam("generator", network, betas=(0.5, 0.999))
        self.opt_d = self.adam("discriminators", self.d_ir, self.d_vis, betas=(0.5, 0.999))

    def train_step(self, batch):
        vis, ir = batch["visible"], batch["thermal"]
        fused = self.network(vis, ir)[0]
        adv = gan_loss(self.d_ir(ir, fused), True) + gan_loss(self.d_vis(vis, fused), True)
        kl = intensity_kl(vis, fused) + intensity_kl(ir, fused)
        l1 = (fused - vis).abs().mean() + (fused - ir).abs().mean()
        nce = info_nce(*self.network.front.tokens(vis, ir), temperature=NCE_TEMPERATURE)
        loss = adv + LAMBDA_KL * kl + LAMBDA_L1 * l1 + LAMBDA_NCE * nce
        self.step(self.opt_g, loss)

        fake = fused.detach()
        d = 0.5 * (
            gan_loss(self.d_ir(ir, ir), True)
            + gan_loss(self.d_ir(ir, fake), False)
            + gan_loss(self.d_vis(vis, vis), True)
            + gan_loss(self.d_vis(vis, fake), False)
        )
        self.step(self.opt_d, d)
        return {
            "loss": loss.item(),
            "adv": adv.item(),
            "kl": kl.item(),
            "l1": l1.item(),
            "nce": nce.item(),
            "d": d.item(),
        }
