from diffusers import Absent


class SchedulerMixin(Absent):
    """diffusers' scheduler base class; i2vgen's schedulers do not share one (see configuration_utils)."""
