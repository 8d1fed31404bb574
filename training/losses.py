"""Loss terms shared by the networks' training recipes (torch). Images are (B, 1, H, W) in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def _ssim_terms(a: torch.Tensor, b: torch.Tensor, size: int = 11, sigma: float = 1.5):
    """(mean SSIM, mean contrast-structure term) with a Gaussian window, data range 1 (Wang et al. 2004)."""
    window = _gaussian_window(size, sigma, a.device, a.dtype).expand(a.shape[1], 1, size, size)

    def blur(x):
        return F.conv2d(x, window, groups=a.shape[1])

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return (luminance * cs).mean(), cs.mean()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _ssim_terms(a, b)[0]


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Multi-scale SSIM (Wang et al. 2003) over as many of the 5 scales as the image size allows; the
    weights of the scales used are renormalised. Contrast terms are clamped positive for the powers."""
    scales = max(1, min(len(MS_SSIM_WEIGHTS), int(torch.log2(torch.tensor(min(a.shape[-2:]) / 11.0))) + 1))
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], device=a.device)
    weights = weights / weights.sum()
    value = torch.ones((), device=a.device)
    for i in range(scales):
        full, cs = _ssim_terms(a, b)
        last = i == scales - 1
        value = value * (full if last else cs).clamp(min=1e-6) ** weights[i]
        if not last:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    return value


def sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype)
    kernels = torch.stack((kx, kx.t())).unsqueeze(1)
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
    return g[:, :1], g[:, 1:]


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    gx, gy = sobel(x)
    return gx.abs() + gy.abs()


def laplacian(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device, dtype=x.dtype)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.view(1, 1, 3, 3))


def charbonnier(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt(x * x + eps * eps).mean()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def end_point_error(flow: torch.Tensor, true_flow: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean flow error (pixels) over the valid pixels; flows (B, 2, H, W), valid (B, 1, H, W)."""
    return masked_mean(torch.linalg.vector_norm(flow - true_flow, dim=1, keepdim=True), valid)


def smoothness(flow: torch.Tensor) -> torch.Tensor:
    """Mean absolute first difference of a flow field (the usual L1 smoothness prior)."""
    dx = (flow[..., :, 1:] - flow[..., :, :-1]).abs().mean()
    dy = (flow[..., 1:, :] - flow[..., :-1, :]).abs().mean()
    return dx + dy


def max_fusion(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(intensity, texture) losses of SeAFusion / DAE-Fuse phase 2: |F - max(a, b)|_1 and
    | |∇F| - max(|∇a|, |∇b|) |_1."""
    intensity = (fused - torch.maximum(a, b)).abs().mean()
    texture = (
        (gradient_magnitude(fused) - torch.maximum(gradient_magnitude(a), gradient_magnitude(b))).abs().mean()
    )
    return intensity, texture


def gan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross-entropy on discriminator logits (the log D / log(1 - D) objective)."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def intensity_kl(source: torch.Tensor, fused: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KL(source || fused) between the images read as distributions over pixels (intensities normalised to
    sum 1 per image), MISFIT-V's KL term."""
    p = source.flatten(1) + eps
    q = fused.flatten(1) + eps
    p, q = p / p.sum(dim=1, keepdim=True), q / q.sum(dim=1, keepdim=True)
    return (p * (p.log() - q.log())).sum(dim=1).mean()


def lsgan_loss(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN objective (CycleGAN's default)."""
    return ((prediction - (1.0 if real else 0.0)) ** 2).mean()


def feature_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean over channels of the Pearson correlation of two (B, C, H, W) feature maps."""
    a = a.flatten(2) - a.flatten(2).mean(-1, keepdim=True)
    b = b.flatten(2) - b.flatten(2).mean(-1, keepdim=True)
    return ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)).mean()


def self_saliency(x: torch.Tensor) -> torch.Tensor:
    """Self visual saliency (Ghosh et al.): S(p) = sum_q |I(p) - I(q)| over the image, via the 256-level
    histogram; normalised by the pixel count. No gradient (used as a weight map)."""
    with torch.no_grad():
        levels = (x.clamp(0, 1) * 255).round().long()
        grey = torch.arange(256, device=x.device, dtype=x.dtype)
        distance = (grey[:, None] - grey[None, :]).abs()
        maps = []
        for item in levels:
            hist = torch.bincount(item.flatten(), minlength=256).to(x.dtype)
            maps.append((distance @ hist)[item] / item.numel())
        return torch.stack(maps)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.2, samples: int = 256) -> torch.Tensor:
    """Contrastive loss between two (B, C, H, W) token maps: the token of `b` at the same position is the
    positive for each token of `a`, the other sampled positions are negatives."""
    a, b = F.normalize(a.flatten(2), dim=1), F.normalize(b.flatten(2), dim=1)
    n = a.shape[-1]
    idx = torch.randperm(n, device=a.device)[: min(samples, n)]
    a, b = a[..., idx], b[..., idx]
    logits = torch.einsum("bci,bcj->bij", a, b) / temperature
    target = torch.arange(logits.shape[-1], device=a.device).expand(logits.shape[0], -1)
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())
