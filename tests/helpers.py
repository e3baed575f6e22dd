"""Custom models that Ray actors import by 'tests.helpers:name', the way users plug in their own nets."""

import os
import time
from pathlib import Path

import torch

from landscape_ray.inputs.models import DigitsCNN


def in_actor() -> bool:
    """Whether this code runs inside a Ray actor (and not in the driver, which runs a probe batch)."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


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
        weight = next(self.parameters())
        if not hasattr(self, "theta"):
            self.theta = weight.detach().clone()
        if in_actor() and not torch.equal(weight, self.theta):
            os._exit(1)
        return super().forward(x)


class SlowStartCNN(DigitsCNN):
    """Inside a Ray actor it takes `delay` seconds to build, so the driver's warmup has time to compute points."""

    def __init__(self, delay: float):
        super().__init__()
        if in_actor():
            time.sleep(delay)


def slow_start_cnn(delay: float = 4.0):
    return SlowStartCNN(delay)


def slow_cnn(delay: float = 0.05, hold: str | None = None):
    return SlowCNN(delay, hold)


def crashing_cnn():
    return CrashingCNN()


def not_a_module():
    return 42


class RendezvousCNN(DigitsCNN):
    """Inside a Ray actor, its first forward pass waits (up to a minute) until `actors` copies have been built, then
    every pass sleeps `delay`, or `slow` in the first copy built when `slow` is given. No actor can finish the job
    before the others are up, however loaded the machine. In the driver (its probe batch) it behaves."""

    def __init__(self, folder: str, actors: int = 2, delay: float = 0.1, slow: float | None = None):
        super().__init__()
        self.folder, self.actors, self.delay, self.met = Path(folder), actors, 0.0, True
        if in_actor():
            self.folder.mkdir(parents=True, exist_ok=True)
            self.delay, self.met = delay, False
            if slow is not None:
                try:  # the first copy claims the marker
                    os.close(os.open(self.folder / "slow", os.O_CREAT | os.O_EXCL))
                    self.delay = slow
                except FileExistsError:
                    pass
            (self.folder / f"{os.getpid()}.up").touch()

    def forward(self, x):
        deadline = time.time() + 60
        while not self.met and len(list(self.folder.glob("*.up"))) < self.actors and time.time() < deadline:
            time.sleep(0.05)
        self.met = True
        return super().forward(pause(x, self.delay))


def rendezvous_cnn(folder: str, actors: int = 2, delay: float = 0.1, slow: float | None = None):
    return RendezvousCNN(folder, actors, delay, slow)


def linear(inputs: int = 3 * 32 * 32, classes: int = 10):
    """A linear classifier: nearly free per image, so a test can push large data sets through cheaply."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, classes))
