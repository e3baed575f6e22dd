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
    """Kills its own process on every forward pass: a tile that takes down every actor it meets."""

    def forward(self, x):
        os._exit(1)


def slow_cnn(delay: float = 0.05):
    return SlowCNN(delay)


def crashing_cnn():
    return CrashingCNN()


def not_a_module():
    return 42
