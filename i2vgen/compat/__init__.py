"""The diffusers-compatible surface: what exists only so that code written for diffusers ports unchanged.

Thin wrappers over the core (i2vgen/models/, i2vgen/pipelines/), which never imports them: `I2VGenXLPipeline`
(pipeline.py: `components`, `from_pipe`, LoRA and FreeU by diffusers' names, the switches that do nothing here)
and the model API aliases (models.py: `num_parameters`, `get_memory_footprint`, the xformers switches).
"""
