"""The training spec: a model trained with a checkpoint per epoch (`landscape-ray train`, train.py).

    spec = load_spec("jobs/quickstart-train.yaml", model=TrainSpec)    # specfile.py

The defaults are the paper's CIFAR-10 recipe (appendix 9.7); the model and data sections are the run spec's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from landscape_ray.spec.schema import DataSpec, ModelSpec, Strict, default_tokenizer


class OptimizerSpec(Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, description="SGD only")
    nesterov: bool = Field(True, description="SGD only")
    weight_decay: float = Field(5e-4, ge=0)
    milestones: list[int] = Field(
        default_factory=lambda: [150, 225, 275], description="epochs where lr is multiplied by gamma"
    )
    gamma: float = Field(0.1, gt=0)


class TrainSpec(Strict):
    name: str = "train"
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=lambda: DataSpec(splits=["train", "test"]))
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    epochs: int = Field(300, ge=1)
    batch_size: int = Field(128, ge=1)
    augment: bool | None = Field(None, description="random crop (pad 4) + horizontal flip; None = on for cifar10 only")
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    metric: str | None = Field(
        None, description="'package.module:fn' as eval.metric; its loss_sum / count is minimized"
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out: str = Field(
        "runs/train/checkpoints",
        description="folder for model_{epoch}.pt and final.pt (model.arch hf: folders epoch_{epoch} and final)",
    )

    @model_validator(mode="after")
    def _text_needs_a_tokenizer(self):
        default_tokenizer(self.model, self.data)
        return self
