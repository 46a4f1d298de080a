"""The image-to-video pipeline: one call from an image and a prompt to a video (image_to_video.py), with what
the call needs: input checks (inputs.py), the CLIP components (clip.py), CPU offload (offload.py) and the memory
estimate (memory.py); its output record reads like diffusers' BaseOutput (i2vgen/outputs.py). It knows nothing
of diffusers' wider API (i2vgen/compat/) or of the applications (i2vgen/apps/)."""

from i2vgen.pipelines.image_to_video import I2VGenXLPipelineOutput, ImageToVideoPipeline

__all__ = ["ImageToVideoPipeline", "I2VGenXLPipelineOutput"]
