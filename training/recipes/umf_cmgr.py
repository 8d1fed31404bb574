"""Training of UMF-CMGR with the paper's losses (§2.5, eq. 20):
L = L_pst + L_cross + L_GAN + L_reg + L_fus.

- CPSTN (G_A: visible -> IR) trains CycleGAN-style with G_B (IR -> visible) and two PatchGAN
  discriminators (LSGAN objective, as CycleGAN). L_pst (eqs. 8-10): VGG-19 perceptual (λp = 1) and Gram
  style (λs = 100) losses on the two cycles, only when VGG-19 weights are on this machine (training/vgg.py);
  otherwise a message and the rest of the loss. L_cross (eqs. 11-12): L1 content + Charbonnier edge
  (Laplacian) between each source and its cycle reconstruction, λc = λe = 8.
- MRRN (eqs. 13-15): bidirectional similarity between the registered IR and the pseudo-IR (forward) and
  between the pseudo-IR warped by the reverse field and the distorted IR (backward, λrev = 0.2), in
  VGG feature space when available, else on pixels; smoothness λsm = 10.
- DIFN (eqs. 16-19): MS-SSIM to both sources (1) + joint gradient (20) + self-visual-saliency-weighted
  intensity (5).
The registration EPE against the synthetic ground truth is reported, not trained on.
"""

from __future__ import annotations

import torch

from engines.networks.misfit_v import PatchDiscriminator
from engines.networks.umf_cmgr import ResnetGenerator
from engines.networks.warp import warp

from ..losses import (
    charbonnier,
    end_point_error,
    gradient_magnitude,
    laplacian,
    lsgan_loss,
    ms_ssim,
    self_saliency,
    smoothness,
)
from ..vgg import PAPER_WEIGHTS, load_vgg19
from .base import Recipe

LAMBDA_P, LAMBDA_S = 1.0, 100.0
LAMBDA_C = LAMBDA_E = 8.0
LAMBDA_REV, LAMBDA_SM = 0.2, 10.0
LAMBDA_SSIM, LAMBDA_JG, LAMBDA_SVS = 1.0, 20.0, 5.0


def gram(f: torch.Tensor) -> torch.Tensor:
    b, c, h, w = f.shape
    f = f.flatten(2)
    return f @ f.transpose(1, 2) / (c * h * w)


class UMFCMGRRecipe(Recipe):
    def __init__(self, network, lr: float):
        super().__init__(network, lr)
        c = network.config
        self.g_b = ResnetGenerator(c.cpstn_width, c.cpstn_blocks)
        self.d_a, self.d_b = PatchDiscriminator(1, c.cpstn_width), PatchDiscriminator(1, c.cpstn_width)
        self.modules |= {"g_b": self.g_b, "d_a": self.d_a, "d_b": self.d_b}
        self.opt_g = self.adam("generators", network, self.g_b)
        self.opt_d = self.adam("discriminators", self.d_a, self.d_b)
        self.vgg = load_vgg19()
        if self.vgg is None:
            print(
                "umf-cmgr: no VGG-19 weights on this machine (set SKYFUSE_VGG19): training without the "
                "perceptual/style loss, registration similarity on pixels"
            )

    def to(self, device):
        super().to(device)
        if self.vgg is not None:
            self.vgg.to(device)
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x] if self.vgg is None else self.vgg(x)

    def pst(self, source: torch.Tensor, cycled: torch.Tensor) -> torch.Tensor:
        if self.vgg is None:
            return source.new_zeros(())
        loss = source.new_zeros(())
        for w, fs, fc in zip(PAPER_WEIGHTS, self.vgg(source), self.vgg(cycled)):
            loss = (
                loss + LAMBDA_P * (fs - fc).pow(2).mean() + LAMBDA_S * w * (gram(fs) - gram(fc)).pow(2).sum()
            )
        return loss

    def train_step(self, batch):
        net = self.network
        vis, ir, ir_real = batch["visible"], batch["thermal"], batch["aligned"]
        # CPSTN and its cycle partner.
        pseudo = net.cpstn(vis)
        fake_vis = self.g_b(ir_real)
        cyc_vis, cyc_ir = self.g_b(pseudo), net.cpstn(fake_vis)
        l_gan = lsgan_loss(self.d_a(pseudo), True) + lsgan_loss(self.d_b(fake_vis), True)
        l_pst = self.pst(vis, cyc_vis) + self.pst(ir_real, cyc_ir)
        l_cross = LAMBDA_C * ((ir_real - cyc_ir).abs().mean() + (vis - cyc_vis).abs().mean()) + LAMBDA_E * (
            charbonnier(laplacian(ir_real) - laplacian(cyc_ir))
            + charbonnier(laplacian(vis) - laplacian(cyc_vis))
        )
        # MRRN: the pseudo-IR is the fixed image; CPSTN is trained by its own losses only.
        target = pseudo.detach()
        flow = net.mrrn(ir, target)
        registered = warp(ir, flow)
        forward = sum((a - b).abs().mean() for a, b in zip(self.features(registered), self.features(target)))
        backward = sum(
            (a - b).abs().mean() for a, b in zip(self.features(warp(target, -flow)), self.features(ir))
        )
        l_reg = forward + LAMBDA_REV * backward + LAMBDA_SM * smoothness(flow)
        # DIFN on the registered IR.
        reg = registered.detach()
        fused = net.difn(reg, vis)
        l_ssim = (1 - ms_ssim(fused, reg)) + (1 - ms_ssim(fused, vis))
        l_jg = (
            (torch.maximum(gradient_magnitude(reg), gradient_magnitude(vis)) - gradient_magnitude(fused))
            .abs()
            .mean()
        )
        s_ir, s_vis = self_saliency(reg), self_saliency(vis)
        w_ir = s_ir / (s_ir + s_vis + 1e-6)
        l_svs = (w_ir * reg + (1 - w_ir) * vis - fused).abs().mean()
        l_fus = LAMBDA_SSIM * l_ssim + LAMBDA_JG * l_jg + LAMBDA_SVS * l_svs
        loss = l_pst + l_cross + l_gan + l_reg + l_fus
        self.step(self.opt_g, loss)

        l_d = 0.5 * (
            lsgan_loss(self.d_a(ir_real), True)
            + lsgan_loss(self.d_a(pseudo.detach()), False)
            + lsgan_loss(self.d_b(vis), True)
            + lsgan_loss(self.d_b(fake_vis.detach()), False)
        )
        self.step(self.opt_d, l_d)
        epe = end_point_error(flow.detach(), batch["flow"], batch["valid"])
        return {
            "loss": loss.item(),
            "gan": l_gan.item(),
            "cross": l_cross.item(),
            "reg": l_reg.item(),
            "fus": l_fus.item(),
            "d": l_d.item(),
            "epe": epe.item(),
        }
