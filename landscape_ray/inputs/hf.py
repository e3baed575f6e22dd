"""Hugging Face folders as `save_pretrained` writes them: config, weights and tokenizer, read without running code.

    config = hf_config("runs/tiny-gpt2")                     # a PretrainedConfig
    model = load_hf("runs/tiny-gpt2", dtype="float32")       # the model with the folder's weights, in eval mode
    tied_names(model)                                        # {"lm_head.weight": "transformer.wte.weight"}
    tokenizer = load_tokenizer("runs/tiny-gpt2")
    max_positions(config)                                    # 1024: the longest sequence the model takes

Nothing is downloaded (`local_files_only`), custom code (`auto_map`) is refused, never run, and pickled weights
(`pytorch_model.bin`) are read only when trusted (`model.trust_checkpoint`). User errors are one line naming the field.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import torch
from torch import nn

from landscape_ray.core.errors import SpecError
from landscape_ray.inputs.checkpoints import UNREADABLE

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HF_ERRORS = (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError)  # transformers on bad files
# (one file, shard index, pickled) in the order transformers prefers them
FORMATS = (
    ("model.safetensors", "model.safetensors.index.json", False),
    ("pytorch_model.bin", "pytorch_model.bin.index.json", True),
)


def _first(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _folder(path: str, field: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise SpecError(f"{field}: not a folder: {path} (expected a folder as save_pretrained writes it)")
    return folder


def hf_config(path: str, field: str = "model.path"):
    """The folder's config, refused (one line) when it needs code from outside transformers."""
    import transformers
    from transformers import AutoConfig

    file = _folder(path, field) / "config.json"
    if not file.is_file():
        raise SpecError(f"{field}: {path} has no config.json (expected a folder as save_pretrained writes it)")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        auto_map, model_type = "auto_map" in raw, raw.get("model_type")
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, AttributeError) as err:
        raise SpecError(f"{field}: {file} is not a JSON object: {_first(err)}") from None
    # AutoConfig falls back silently to the built-in class of a known model_type; custom code is refused either way
    if auto_map:
        raise SpecError(f"{field}: {file} needs remote code (auto_map), which is never run")
    if not isinstance(model_type, str) or model_type not in transformers.CONFIG_MAPPING:
        raise SpecError(
            f"{field}: {file} has model_type {model_type!r}, unknown to transformers {transformers.__version__}: "
            "it needs remote code, which is never run"
        )
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except HF_ERRORS as err:
        raise SpecError(f"{field}: cannot read {file}: {_first(err)}") from err


def build_hf(path: str, dtype: str = "float32", field: str = "model.path", initialise: bool = True) -> nn.Module:
    """The model of the folder's config with freshly initialised weights (no weights read), in eval mode.
    `initialise=False`: the weights are left as allocated, for a caller that loads every entry of its state_dict
    next (an actor: drawing a billion random numbers first would take it longer than the loading)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.initialization import no_init_weights

    config = hf_config(path, field)
    if dtype == "auto":  # the config's dtype (or torch_dtype, which transformers reads into it); float32 if none
        dtype = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    if dtype not in DTYPES:
        raise SpecError(f"model.dtype: expected one of float32, bfloat16, float16, auto; got {dtype!r}")
    classifier = any(name.endswith("ForSequenceClassification") for name in config.architectures or [])
    auto = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    # eager attention: deterministic on CPU, as a plain loop; fork_rng: the initialisation leaves the caller's RNG be
    try:
        with torch.random.fork_rng(devices=[]), contextlib.nullcontext() if initialise else no_init_weights():
            model = auto.from_config(config, dtype=DTYPES[dtype], attn_implementation="eager")
        if not initialise:  # skipping the initialisation also skips the tying of lm_head to the embedding
            model.tie_weights()
    except HF_ERRORS as err:
        raise SpecError(f"{field}: cannot build {auto.__name__} from {path}/config.json: {_first(err)}") from err
    return model.eval()


def _shards(folder: Path, index: str, field: str) -> list[Path]:
    """The shard files listed in the `weight_map` of an index, each a plain file name inside `folder`."""
    file = folder / index
    try:
        weight_map = json.loads(file.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise SpecError(f"{field}: {file} is not a shard index with a weight_map: {_first(err)}") from None
    for name in names:  # a shard named "../x" or "/x" would read a file outside the folder the user named
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or "\\" in name:
            raise SpecError(f"{field}: {file} names a shard outside its folder: {name!r}")
    return [folder / name for name in names]


def _read_weights(file: Path, pickled: bool, field: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:  # a missing shard is an OSError, as a damaged one
        state = torch.load(file, weights_only=False, map_location="cpu") if pickled else load_file(file, device="cpu")
    except (SafetensorError, *UNREADABLE) as err:
        raise SpecError(f"{field}: cannot read {file}: {_first(err)}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SpecError(f"{field}: {file} holds no state_dict (a dict of tensors)")
    return state


def holds_weights(path: str) -> bool:
    """Whether the folder has weights (any of FORMATS), or only a config to build a model from."""
    return any((Path(path) / name).is_file() for single, index, _ in FORMATS for name in (single, index))


def read_hf_state(path: str, trust: bool = False, field: str = "model.path") -> dict[str, torch.Tensor]:
    """The folder's weights: safetensors (one file or shards), or with `trust` a pickled pytorch_model.bin."""
    folder = _folder(path, field)
    for single, index, pickled in FORMATS:
        if not (folder / single).is_file() and not (folder / index).is_file():
            continue
        files = [folder / single] if (folder / single).is_file() else _shards(folder, index, field)
        if pickled and not trust:
            raise SpecError(
                f"{field}: {files[0]} is a pickle, which can run arbitrary code; "
                "if you trust it, pass --trust-checkpoint (model.trust_checkpoint=true)"
            )
        return {k: v for file in files for k, v in _read_weights(file, pickled, field).items()}
    raise SpecError(f"{field}: {path} holds no weights (model.safetensors, its shard index, or pytorch_model.bin)")


def tied_names(model: nn.Module) -> dict[str, str]:
    """{name: earlier name} for each state_dict entry that shares its storage with an earlier one."""
    first, tied = {}, {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.numel() == 0 or tensor.data_ptr() == 0:  # empty or meta tensors have no storage to share
            continue
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if first.setdefault(key, name) != name:
            tied[name] = first[key]
    return tied


def _misfit(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """What keeps `state` from loading into `model`: missing (and untied) or unexpected names, shapes, tied values."""
    own, tied = model.state_dict(), tied_names(model)  # tied: name -> the first name of its group
    held = {tied.get(k, k) for k in state if k in own}
    # transformers' own patterns of names a file may lack or hold in excess (buffers of older versions)
    allowed = lambda attr, name: any(re.search(p, name) for p in getattr(model, attr, None) or [])
    problems = []
    for n in own:
        if tied.get(n, n) not in held and not allowed("_keys_to_ignore_on_load_missing", n):
            problems.append(f"missing {n}")
    for k, v in state.items():
        if k not in own and not allowed("_keys_to_ignore_on_load_unexpected", k):
            problems.append(f"unexpected {k}")
        elif k in own and v.shape != own[k].shape:
            problems.append(f"{k} {list(v.shape)} is {list(own[k].shape)} in the model")
        elif k in tied and tied[k] in state and not torch.equal(v, state[tied[k]]):
            problems.append(f"{k} and {tied[k]} are tied but differ")
    return problems


def fitting_state(path: str, model: nn.Module, trust: bool = False, field: str = "model.path") -> dict:
    """The weights of the folder at `path`, by `model`'s state_dict names, checked to fit it (one line if not)."""
    state = read_hf_state(path, trust, field)
    own, prefix = model.state_dict(), getattr(model, "base_model_prefix", "")
    # weights saved from the base model (GPT-2's own files: "h.0..." for "transformer.h.0...")
    state = {f"{prefix}.{k}" if k not in own and f"{prefix}.{k}" in own else k: v for k, v in state.items()}
    problems = _misfit(model, state)
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise SpecError(f"{field}: the weights in {path} do not fit the model: {'; '.join(problems[:8])}{more}")
    return state


def load_hf(path: str, dtype: str = "float32", trust: bool = False, field: str = "model.path") -> nn.Module:
    """The folder's model with its weights, in eval mode; one line when the weights do not fit the config."""
    model = build_hf(path, dtype, field, initialise=False)  # every entry is loaded next (fitting_state checks)
    model.load_state_dict(fitting_state(path, model, trust, field), strict=False)
    model.tie_weights()  # the tied names share one tensor again, whichever of them the file held
    return model.eval()


def max_positions(config) -> int | None:
    """The longest sequence the model takes, as its config says, or None when it says nothing."""
    values = [getattr(config, name, None) for name in ("max_position_embeddings", "n_positions", "n_ctx")]
    return next((v for v in values if isinstance(v, int)), None)


def load_tokenizer(path: str, field: str = "model.path"):
    """The folder's tokenizer (transformers' AutoTokenizer, local files only, no custom code)."""
    from transformers import AutoTokenizer

    folder = _folder(path, field)
    files = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
    if not any((folder / name).is_file() for name in files):
        raise SpecError(f"{field}: {path} has no tokenizer ({', '.join(files)})")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except HF_ERRORS as err:
        raise SpecError(f"{field}: cannot load the tokenizer of {path}: {_first(err)}") from err
