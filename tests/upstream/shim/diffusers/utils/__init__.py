import logging as _logging


class logging:  # noqa: N801  (diffusers.utils.logging is a module with these names)
    INFO = _logging.INFO
    get_logger = staticmethod(_logging.getLogger)
