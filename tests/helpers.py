"""Custom models that Ray actors import by 'tests.helpers:name', the way users plug in their own nets."""

import os
import time

import torch

from landscape_ray.models import DigitsCNN


@torch.fx.wrap
def pause(x, seconds: float, hold: str | None = None):
    """Sleep, wait while the file `hold` exists, then pass `x` on. Wrapped, so that a model traced by torch.fx (to
    fold BN) still calls it."""
    time.sleep(seconds)
    while hold is not None and os.path.exists(hold):
        time.sleep(0.02)
    return x


class SlowCNN(DigitsCNN):
    """The digits CNN (same state_dict, same values) made slow, so a test can act mid-run.

    `hold` names a file: while it exists every forward pass waits, so a test that creates it freezes the run where it
    is, without a race against the points still to compute.
    """

    def __init__(self, delay: float = 0.05, hold: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.delay, self.hold = delay, hold

    def forward(self, x):
        return super().forward(pause(x, self.delay, self.hold))


class CrashingCNN(DigitsCNN):
    """Inside a Ray actor, kills its process on every forward pass away from θ*: a tile that takes down every actor
    it meets.

    At θ* it behaves: in the driver (which runs one batch to check model, data and metric) and while an actor's
    evaluator sizes its batches and checks BN folding.
    """

    def forward(self, x):
        import ray

        weight = next(self.parameters())
        if not hasattr(self, "theta"):
            self.theta = weight.detach().clone()
        in_actor = ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
        if in_actor and not torch.equal(weight, self.theta):
            os._exit(1)
        return super().forward(x)


class SlowStartCNN(DigitsCNN):
    """Inside a Ray actor it takes `delay` seconds to build, so the driver's warmup has time to compute points."""

    def __init__(self, delay: float):
        super().__init__()
        import ray

        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            time.sleep(delay)


def slow_start_cnn(delay: float = 4.0):
    return SlowStartCNN(delay)


def slow_cnn(delay: float = 0.05, hold: str | None = None):
    return SlowCNN(delay, hold)


def crashing_cnn():
    return CrashingCNN()


def not_a_module():
    return 42


class OneSlowCNN(DigitsCNN):
    """The first Ray actor to build it (it claims `marker`) is slow; every other copy is fast."""

    def __init__(self, marker: str, delay: float):
        super().__init__()
        import ray

        self.delay = 0.0
        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                self.delay = delay
            except FileExistsError:
                pass

    def forward(self, x):
        return super().forward(pause(x, self.delay))


def one_slow_cnn(marker: str, delay: float = 0.2):
    return OneSlowCNN(marker, delay)


def linear(inputs: int = 3 * 32 * 32, classes: int = 10):
    """A linear classifier: nearly free per image, so a test can push large data sets through cheaply."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, classes))
