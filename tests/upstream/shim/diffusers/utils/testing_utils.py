"""The two names of diffusers.utils.testing_utils the scheduler tests use."""

import io
import logging

torch_device = "cpu"


class CaptureLogger:
    """Collects what `logger` writes while active, in `.out`."""

    def __init__(self, logger: logging.Logger):
        self.logger, self.io = logger, io.StringIO()
        self.handler = logging.StreamHandler(self.io)
        self.out = ""

    def __enter__(self):
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.out = self.io.getvalue()
