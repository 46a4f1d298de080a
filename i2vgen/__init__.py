"""i2vgen: a readable PyTorch implementation of I2VGen-XL image-to-video diffusion.

Public classes keep the reference's (diffusers') calling conventions, so porting is one import:

    from i2vgen import I2VGenXLPipeline, I2VGenXLUNet, AutoencoderKL, DDIMScheduler

The package has three layers, imports pointing down only (docs/architecture.md, tests/test_layers.py): the core
(models/, schedulers/, pipelines/ over the shared loading, checks, noise, preprocess and video modules), the
diffusers-compatible surface (compat/), and the applications (apps/: the command line, the web app, job files).

Imports are lazy: ``import i2vgen`` stays cheap and pulls in transformers only when the pipeline is used.
"""

import importlib

_EXPORTS = {
    "I2VGenXLUNet": "i2vgen.compat.models",  # the core class (i2vgen.models.unet) plus diffusers' aliases
    "AutoencoderKL": "i2vgen.compat.models",
    "DDIMScheduler": "i2vgen.schedulers.ddim",
    "UniPCMultistepScheduler": "i2vgen.schedulers.unipc",
    "DPMSolverMultistepScheduler": "i2vgen.schedulers.dpm_solver",
    "EulerDiscreteScheduler": "i2vgen.schedulers.euler",
    "PowerUniPCScheduler": "i2vgen.schedulers.fast",
    "fast_scheduler": "i2vgen.schedulers.fast",
    "CacheConfig": "i2vgen.models.cache",  # feature caching across steps (I2VGenXLUNet.enable_cache)
    "I2VGenXLPipeline": "i2vgen.compat.pipeline",  # i2vgen.pipelines.ImageToVideoPipeline plus diffusers' API
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'i2vgen' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
