"""How much memory a call needs beyond the weights, and how much the device has free: the applications
refuse a video that cannot fit before they spend minutes computing it (apps/estimate.py)."""

import os

import torch


def estimate_activation_bytes(unet_config, vae_config, dtype: torch.dtype, videos: int, num_frames: int,
                              height: int, width: int, guided: bool, sequential_guidance: bool = False) -> int:
    """A lower bound on the memory one call needs beyond the loaded weights, in bytes.

    Counted: the UNet's skip connections, all live at the start of its up path ((layers_per_block + 1)
    feature maps per level, of block_out_channels[l] channels at 1/2**l of the latent size, for the whole
    guidance batch of videos x frames x 2), plus two maps of the widest full-resolution up-path input; and,
    after the UNet, the decoded video in float32 twice (the decoded frames and their [0, 1] copy) plus three
    full-resolution maps of the VAE decoder's widest top level for one frame. Not counted: attention,
    normalisation temporaries, the text and image encoders. Measured peaks are higher (README, "Bad input"),
    so a call this refuses cannot fit."""
    item = torch.empty((), dtype=dtype).element_size()
    channels, per_level = unet_config.block_out_channels, unet_config.layers_per_block + 1
    batch = videos * num_frames * (2 if guided and not sequential_guidance else 1)
    scale = 2 ** (len(vae_config.block_out_channels) - 1)
    pixels = (height // scale) * (width // scale)
    skips = sum(per_level * c * pixels // 4**level for level, c in enumerate(channels))
    widest_up_input = channels[0] + channels[min(1, len(channels) - 1)]
    unet = batch * (skips + 2 * widest_up_input * pixels) * item
    decoder_top = max(vae_config.block_out_channels[:2])
    decode = 2 * videos * num_frames * 3 * height * width * 4 + 3 * decoder_top * height * width * item
    return max(unet, decode)


def available_bytes(device: torch.device) -> int:
    """Memory free on `device` now: the driver's free figure for CUDA, MemAvailable (Linux) or the physical
    memory for the CPU. Other devices: unknown (returns a very large number, so nothing is refused)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return 2**63
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

