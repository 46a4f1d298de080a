"""The old import path, `from i2vgen.pipeline import I2VGenXLPipeline`, kept for code written against it.

The class is the diffusers-compatible pipeline (i2vgen/compat/pipeline.py) over the core one
(i2vgen/pipelines/image_to_video.py); new code imports it as `from i2vgen import I2VGenXLPipeline`.
"""

from i2vgen.compat.pipeline import I2VGenXLPipeline
from i2vgen.pipelines.image_to_video import I2VGenXLPipelineOutput

__all__ = ["I2VGenXLPipeline", "I2VGenXLPipelineOutput"]
