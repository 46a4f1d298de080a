"""The training objective (VGen's DiffusionDDIM.loss): offset noise, timesteps, and the v-prediction MSE.

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,   v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0   (Salimans & Ho
    2022, section 4), loss = || unet(x_t, t, conditions) - v ||^2.
"""

import torch
import torch.nn.functional as F


def offset_noise(shape, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise plus `strength` times noise that is constant over each frame of each channel
    (shape (B, C, F, 1, 1)), as VGen's DiffusionDDIM.sample_loss: lets the model change a frame's mean."""
    b, c, f = shape[:3]
    return torch.randn(shape, generator=generator) + strength * torch.randn((b, c, f, 1, 1), generator=generator)


def sample_timesteps(batch_size: int, num_train_timesteps: int, generator: torch.Generator,
                     high_noise_fraction: float = 0.0, high_noise_min_timestep: int = 900) -> torch.Tensor:
    """Uniform over 0..T-1; with high_noise_fraction > 0 each row is, with that probability, drawn from
    high_noise_min_timestep..T-1 instead (TrainConfig)."""
    t = torch.randint(num_train_timesteps, (batch_size,), generator=generator)
    if high_noise_fraction > 0:
        if not 0 <= high_noise_min_timestep < num_train_timesteps:
            raise ValueError(f"high_noise_min_timestep must be in [0, {num_train_timesteps}), got {high_noise_min_timestep}")
        high = torch.randint(high_noise_min_timestep, num_train_timesteps, (batch_size,), generator=generator)
        t = torch.where(torch.rand(batch_size, generator=generator) < high_noise_fraction, high, t)
    return t


def velocity_loss(unet, scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  conditions: dict) -> torch.Tensor:
    """MSE between the UNet's output on x_t and the velocity target, for given noise and timesteps."""
    device = next(unet.parameters()).device  # `unet` may be a DDP wrapper
    x0, noise, t = x0.to(device), noise.to(device), t.to(device)
    x_t = scheduler.add_noise(x0, noise, t)
    target = scheduler.get_velocity(x0, noise, t)
    pred = unet(x_t, t, **{k: v.to(device) for k, v in conditions.items()}).sample
    return F.mse_loss(pred.float(), target.float())


def v_prediction_loss(unet, scheduler, x0: torch.Tensor, conditions: dict, noise_offset: float,
                      generator: torch.Generator, high_noise_fraction: float = 0.0,
                      high_noise_min_timestep: int = 900) -> torch.Tensor:
    """`velocity_loss` with offset noise and timesteps (`sample_timesteps`) drawn from `generator`."""
    noise = offset_noise(x0.shape, noise_offset, generator)
    t = sample_timesteps(x0.shape[0], scheduler.config.num_train_timesteps, generator, high_noise_fraction,
                         high_noise_min_timestep)
    return velocity_loss(unet, scheduler, x0, noise, t, conditions)
