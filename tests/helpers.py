"""Custom models that Ray actors import by 'tests.helpers:name', the way users plug in their own nets."""
import os
import time

from landscape_ray.models import DigitsCNN


class SlowCNN(DigitsCNN):
    """The digits CNN (same state_dict, same values) made slow, so a test can act mid-run."""

    def __init__(self, delay: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.delay = delay

    def forward(self, x):
        time.sleep(self.delay)
        return super().forward(x)


class CrashingCNN(DigitsCNN):
    """Inside a Ray actor, kills its process on every forward pass: a tile that takes down every actor it meets.

    In the driver (which runs one batch at θ* to check model, data and metric) it behaves.
    """

    def forward(self, x):
        import ray

        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            os._exit(1)
        return super().forward(x)


def slow_cnn(delay: float = 0.05):
    return SlowCNN(delay)


def crashing_cnn():
    return CrashingCNN()


def not_a_module():
    return 42
