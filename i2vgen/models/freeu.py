"""FreeU (Si et al. 2023, "FreeU: Free Lunch in Diffusion U-Net"): re-weighting the UNet's up path at sampling time.

In an up block, each layer concatenates the main ("backbone") features with a skip connection from the down
path. The paper finds the backbone carries the denoising and the skips the high-frequency detail that can
drown it, so in the two lowest-resolution up blocks (index 0 and 1) it
- scales the first half of the backbone channels by b (b1 in block 0, b2 in block 1; b > 1), and
- scales the low frequencies of the skip features by s (s1, s2; s < 1): in the 2D spectrum of each feature map,
  centred with fftshift, the central 2x2 square (threshold 1) is multiplied by s.
Nothing is trained; `I2VGenXLUNet.enable_freeu(s1, s2, b1, b2)` switches it on. Values used for this model:
s1=0.9, s2=0.2, b1=1.2, b2=1.4.
"""

import torch
from torch.fft import fftn, fftshift, ifftn, ifftshift


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scale the (2 threshold)^2 lowest frequencies of each (N, C, H, W) map by `scale`.

    The FFT runs in float32 when H or W is not a power of two, or the input is bfloat16 (as the reference:
    torch's half-precision FFT takes powers of two only), and the result is cast back."""
    _, _, height, width = x.shape
    powers_of_two = height & (height - 1) == 0 and width & (width - 1) == 0
    spectrum = x.float() if not powers_of_two or x.dtype == torch.bfloat16 else x
    spectrum = fftshift(fftn(spectrum, dim=(-2, -1)), dim=(-2, -1))
    mask = torch.ones(spectrum.shape, device=x.device)  # float32, as the reference's: it sets the product's dtype
    row, col = height // 2, width // 2
    mask[..., row - threshold:row + threshold, col - threshold:col + threshold] = scale
    filtered = ifftn(ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return filtered.to(x.dtype)


def apply_freeu(block_index: int, x: torch.Tensor, skip: torch.Tensor, s1: float, s2: float, b1: float,
                b2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(backbone, skip) of up block `block_index`, before they are concatenated; unchanged past block 1."""
    if block_index > 1:
        return x, skip
    b, s = (b1, s1) if block_index == 0 else (b2, s2)
    half = x.shape[1] // 2
    x = torch.cat([x[:, :half] * b, x[:, half:]], dim=1)
    return x, fourier_filter(skip, threshold=1, scale=s)
