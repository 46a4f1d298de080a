"""Standard-normal noise, drawn the way the reference draws it (diffusers' `randn_tensor`).

One function for every draw: the initial latents and the eta > 0 noise of a sampler step (from the call's
`generator`) and the VAE posterior sample (torch's global RNG unless a generator is passed). Drawing on
the generator's device and in the same shapes and order as the reference is what makes a seed give the
reference's video.
"""

import torch


def randn_tensor(shape, generator: torch.Generator | list[torch.Generator] | None, device, dtype) -> torch.Tensor:
    """N(0, I) noise of `shape` on `device`. A generator draws on its own device (a CPU generator on the CPU,
    then the noise moves); None draws from torch's global RNG on `device`; a list of generators draws one
    batch row each (a list of one acts as a single generator)."""
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        rows = [randn_tensor((1, *shape[1:]), g, device, dtype) for g in generator]
        return torch.cat(rows)
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)
