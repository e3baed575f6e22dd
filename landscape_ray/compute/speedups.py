"""Speed-ups of the evaluator: batch size, matmul precision, BN folding, torch.compile. None changes which points
are computed, and the defaults keep every value within 1e-6 relative of the plain fp32 forward:

    batch = auto_batch_size(model, sample, device)   # data.batch_size: auto; CPU: fits L2, GPU: fits its memory
    set_matmul_precision(device, "tf32")             # eval.precision: TF32 matmuls/convs, cuDNN autotuning
    runner = fold_bn(model, moved={...})             # eval.fold_bn: conv → BN pairs as one conv (BN not moved)
    runner = compiled(runner, True, device)          # eval.compile: torch.compile, Inductor cache kept on disk
    keep_freed_memory()                              # once per evaluating process: glibc keeps activations mapped

`fold_bn` is only a speed-up: when it cannot fold (a model torch.fx cannot trace, a BN without running
statistics) it leaves that part of the model as it is, and says why when folding was asked for explicitly.
"""

from __future__ import annotations

import ctypes
import math
import warnings

import torch
import torch.fx
from torch import nn

# What torch.fx raises for a forward it cannot trace: data-dependent control flow (TraceError), len()/iteration of
# a traced tensor (RuntimeError), Python operations a proxy does not support (TypeError, AttributeError,
# NotImplementedError), and code objects it cannot rebuild (ValueError: transformers' models).
UNTRACEABLE = (torch.fx.proxy.TraceError, RuntimeError, TypeError, AttributeError, NotImplementedError, ValueError)
# On a CPU a batch runs fastest when its largest activation fits a core's L2 cache (1-2 MiB on x86 server cores):
# ResNet-20 on CIFAR (64 KiB per image) takes 0.93 s per 1,000-image point at batch 32 and 1.86 s at 1024 on one
# thread of the dev machine. A GPU wants the largest batch its memory holds instead: the card is busiest (issue 22:
# resnet56 on an H200 ran at 63k img/s at batch 1024 and 174k at 4096 in bf16), and a whole split at a few batches
# keeps the driver's per-batch Python out of the way.
CPU_BATCH_BYTES = 2 * 2**20
# Up to 8192: a narrow model's (an MLP's) batch is bounded by its per-batch Python, not by the cache (issue 25: a
# 64-wide MLP on 3,000 samples costs 1.67 ms a point at 1024, 3 batches, and 1.49 at 8192, one, on one thread).
CPU_BATCH_RANGE = (16, 8192)
GPU_BATCH = 1024  # where nothing can be measured (a custom batch structure)
GPU_BATCH_MAX = 32768
GPU_MEMORY_SHARE = 0.5  # of the free memory: the rest for the allocator's fragments, cuDNN workspaces, other actors
# An inference forward holds a layer's input and output at once, plus a residual branch, the normalized batch and
# the uint8 one: a generous bound on the peak, in units of the largest activation (an estimate, not measured on a
# card here; the evaluator halves the batch if its first forward runs out of memory anyway).
PEAK_ACTIVATIONS = 6


def largest_activation(model: nn.Module, sample: torch.Tensor) -> int:
    """Bytes of the largest output any leaf module produces for `sample` (hooks on one forward)."""
    sizes = [0]

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    hooks = [m.register_forward_hook(record) for m in model.modules() if not any(m.children())]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for hook in hooks:
            hook.remove()
    return max(sizes)


def device_batch(per_sample: int, free: int, samples: int) -> int:
    """The largest power of two whose activations (`PEAK_ACTIVATIONS` × the largest, `per_sample` bytes each) fit
    `GPU_MEMORY_SHARE` of `free` bytes; never above `GPU_BATCH_MAX`, nor above the split (`samples`) rounded up."""
    fits = GPU_MEMORY_SHARE * free / max(1, PEAK_ACTIVATIONS * per_sample)
    whole = 2 ** math.ceil(math.log2(max(1, samples)))  # a bigger batch only pads
    return int(max(1, min(GPU_BATCH_MAX, whole, 2 ** math.floor(math.log2(max(1.0, fits))))))


def free_memory(device: torch.device) -> int:
    """Bytes a new allocation on `device` can take: the driver's free memory plus what torch's cache holds."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def auto_batch_size(model: nn.Module, sample: torch.Tensor | None, device: torch.device, samples: int = 0) -> int:
    """`data.batch_size: auto`. On a CPU the largest power of two in `CPU_BATCH_RANGE` whose largest activation
    fits `CPU_BATCH_BYTES`; on a GPU `device_batch` for its free memory (`samples`: the largest split)."""
    if sample is None:
        return GPU_BATCH
    largest = largest_activation(model, sample)
    if largest == 0:
        return GPU_BATCH
    if device.type == "cuda":
        return device_batch(largest, free_memory(device), samples)
    if device.type != "cpu":
        return GPU_BATCH
    low, high = CPU_BATCH_RANGE
    return int(min(high, max(low, 2 ** math.floor(math.log2(CPU_BATCH_BYTES / largest)))))


def keep_freed_memory() -> None:
    """Make glibc's malloc keep the blocks a forward pass frees (up to 32 MiB) mapped, for the next batch to reuse.

    glibc gives freed memory back to the kernel: a block above its mmap threshold is unmapped when freed, and free
    memory at the top of a heap beyond its trim threshold is trimmed. Both start low (128 KiB) and rise only with the
    largest blocks a process has freed, so a process that receives its payload ready-made (a Ray actor, a spawned
    process) hands each batch's activations back, and the kernel faults in and zeroes their pages again: ResNet-20
    on 1,000 images took 1.1-1.5 s per point with 0.4-1.2 million page faults in 4 points, against 0.90-0.93 s and
    6-8 thousand with this setting (`python -m benchmarks.ceiling`). A process-wide setting, made where a process
    starts evaluating (the actor, the driver's warmup); values are unchanged. Without glibc (macOS, musl) it does
    nothing.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest; bigger blocks are still mapped and unmapped on their own
    mallopt(m_trim_threshold, 256 << 20)  # free memory kept at the top of a heap before it is given back


def set_matmul_precision(device: torch.device, precision: str) -> None:
    """fp32 means IEEE fp32 and deterministic kernels (bit-identical reruns); tf32/bf16 let cuDNN pick the fastest."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.deterministic = precision == "fp32"
        torch.backends.cudnn.benchmark = precision != "fp32"


class FoldedConv(nn.Module):
    """A conv followed by an eval-mode BN, as one conv: w·s, (b − μ)·s + β with s = γ/√(σ² + ε).

    Without affine parameters (`affine=False`) γ = 1 and β = 0. It reads the conv's live weights at every
    call, so the in-place weight updates of each grid point apply; the BN's statistics and affine parameters
    must stay at θ* (folding assumes they do).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x):
        root = torch.sqrt(self.bn.running_var + self.bn.eps)
        scale = self.bn.weight / root if self.bn.weight is not None else torch.reciprocal(root)
        bias = -(self.bn.running_mean * scale)
        if self.bn.bias is not None:
            bias = self.bn.bias + bias
        if self.conv.bias is not None:
            bias = bias + self.conv.bias * scale
        return self.conv._conv_forward(x, self.conv.weight * scale.view(-1, 1, 1, 1), bias)


def fold_bn(model: nn.Module, moved: set[str], quiet: bool = False) -> nn.Module:
    """The model with each conv → BN pair folded into one conv, unless some direction moves that BN.

    Uses torch.fx; a model it cannot trace is returned unchanged, with a warning saying why unless `quiet`.
    """
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):  # nothing to fold (a transformer)
        return model
    try:
        graph = torch.fx.symbolic_trace(model)
    except UNTRACEABLE as err:
        if not quiet:
            warnings.warn(
                f"eval.fold_bn: BN not folded, torch.fx cannot trace {type(model).__name__} "
                f"({type(err).__name__}: {err})",
                stacklevel=2,
            )
        return model
    modules = dict(graph.named_modules())
    for node in list(graph.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or any(n.startswith(f"{node.target}.") for n in moved):
            continue
        conv_node = node.args[0]
        conv = modules.get(conv_node.target) if getattr(conv_node, "op", None) == "call_module" else None
        if not isinstance(conv, nn.Conv2d) or len(conv_node.users) != 1:
            continue
        if bn.running_var is None:  # track_running_stats=False: it normalises with each batch's own statistics
            if not quiet:
                warnings.warn(f"eval.fold_bn: {node.target} not folded, it keeps no running statistics", stacklevel=2)
            continue
        name = f"{conv_node.target.replace('.', '_')}_folded"
        graph.add_submodule(name, FoldedConv(conv, bn))
        with graph.graph.inserting_after(node):
            folded = graph.graph.call_module(name, conv_node.args, conv_node.kwargs)
        node.replace_all_uses_with(folded)
        graph.graph.erase_node(node)
        graph.graph.erase_node(conv_node)
    graph.recompile()
    return graph


def compiled(model: nn.Module, mode: bool | str, device: torch.device):
    """torch.compile; actors keep Inductor's cache in `core.paths.cache_dir`, so restarts and reruns skip compilation.

    Parameters are graph inputs, so the in-place weight updates of each grid point need no recompilation.
    """
    if mode is False:
        return model
    if mode == "max-autotune":
        mode = "max-autotune" if device.type == "cuda" else "max-autotune-no-cudagraphs"
    return torch.compile(model, mode=None if mode in (True, "default") else mode, dynamic=False)
