"""Loading decoder weights from diffusers folders and single-file LDM / BFL / SDXL
checkpoints. Only decoder tensors are ever read: mx.load maps safetensors lazily, and each
tensor is converted (OIHW -> OHWI, dtype) and evaluated on its own as it streams in."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import mlx.core as mx
from mlx.utils import tree_flatten

from .config import QwenImageConfig, VAEConfig, config_from_dict, resolve_config
from .decoder import AutoencoderKLDecoder, StagedDecoder
from .qwen_image import QwenImageDecoder

# Prefixes a VAE's tensors carry inside full pipeline checkpoints.
_CHECKPOINT_PREFIXES = ("first_stage_model.", "vae.")


def _ldm_to_diffusers(key: str, num_up: int) -> Optional[str]:
    """Original LDM / BFL decoder key -> diffusers key (None for non-decoder keys)."""
    if key.startswith(("post_quant_conv.", "bn.")):
        return key
    if not key.startswith("decoder."):
        return None
    k = key[len("decoder.") :]
    k = re.sub(r"^mid\.block_(\d)\.", lambda m: f"mid_block.resnets.{int(m[1]) - 1}.", k)
    k = re.sub(r"^mid\.attn_1\.", "mid_block.attentions.0.", k)
    k = re.sub(r"^up\.(\d+)\.block\.", lambda m: f"up_blocks.{num_up - 1 - int(m[1])}.resnets.", k)
    k = re.sub(r"^up\.(\d+)\.upsample\.", lambda m: f"up_blocks.{num_up - 1 - int(m[1])}.upsamplers.0.", k)
    k = k.replace("nin_shortcut.", "conv_shortcut.")
    k = re.sub(r"^norm_out\.", "conv_norm_out.", k)
    if k.startswith("mid_block.attentions.0."):
        k = (
            k.replace(".norm.", ".group_norm.")
            .replace(".q.", ".to_q.")
            .replace(".k.", ".to_k.")
            .replace(".v.", ".to_v.")
            .replace(".proj_out.", ".to_out.0.")
        )
    return "decoder." + k


# FLUX.2's latent BatchNorm statistics: float32 whatever the decoder's dtype (as diffusers and
# mflux keep them); the BatchNorm's affine and step counter are not used by decoding.
_LATENT_STATS = ("bn.running_mean", "bn.running_var")


# The temporal upsamplers' time convolutions of the Qwen-Image (Wan) decoder: they never
# run on a first (here: the only) frame.
_UNUSED_AT_ONE_FRAME = ".time_conv."


def _is_decoder_key(key: str) -> bool:
    if _UNUSED_AT_ONE_FRAME in key:
        return False
    return key.startswith(("decoder.", "post_quant_conv.")) or key in _LATENT_STATS


def _strip_prefix(keys) -> str:
    for prefix in _CHECKPOINT_PREFIXES:
        if any(k.startswith(prefix + "decoder.") for k in keys):
            return prefix
    return ""


def _convert(name: str, value: mx.array, target_shape, dtype) -> mx.array:
    if value.ndim == 5:
        # a causal 3-D conv [O, C, T, H, W] on one frame with no history: its last temporal slice
        value = value[:, :, -1]
    if len(target_shape) == 1 and value.ndim > 1 and value.size == target_shape[0]:
        value = value.reshape(-1)  # the RMS norms' gamma, stored [C, 1, 1(, 1)]
    if value.ndim == 4 and len(target_shape) == 4:
        value = value.transpose(0, 2, 3, 1)  # OIHW -> OHWI
    elif value.ndim == 4 and len(target_shape) == 2:
        value = value.reshape(value.shape[0], value.shape[1])  # LDM 1x1-conv attention projections
    if tuple(value.shape) != tuple(target_shape):
        raise ValueError(f"weights: {name} has shape {tuple(value.shape)}, the config expects {tuple(target_shape)}")
    return value.astype(dtype)


def load_state(model: StagedDecoder, tensors: Dict[str, mx.array], dtype=mx.bfloat16) -> None:
    """Loads a flat {key: array} (diffusers or LDM/BFL keys, optional checkpoint prefix) into model.

    Decoder entries are popped from `tensors` as they are converted."""
    prefix = _strip_prefix(tensors.keys())
    num_up = len(model.decoder.up_blocks)
    diffusers_style = any(k[len(prefix) :].startswith(("decoder.mid_block.", "decoder.up_blocks.")) for k in tensors)
    expected = dict(tree_flatten(model.parameters()))
    found: Dict[str, mx.array] = {}
    decoder_keys = [k for k in tensors if k.startswith(prefix) and _is_decoder_key(k[len(prefix) :])]
    for key in decoder_keys:
        k = key[len(prefix) :]
        name = k if diffusers_style else _ldm_to_diffusers(k, num_up)
        if name not in expected:
            raise ValueError(f"weights: {key!r} does not fit this config (no parameter {name!r})")
        # pop: the as-stored tensor is freed once converted, never a second full copy
        target = mx.float32 if name in _LATENT_STATS else dtype
        found[name] = _convert(key, tensors.pop(key), expected[name].shape, target)
        mx.eval(found[name])
    if not found:
        raise ValueError("weights: the checkpoint has no VAE decoder tensors (decoder.* / post_quant_conv.*)")
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ValueError(f"weights: {len(missing)} decoder tensors missing, e.g. {missing[:3]}")
    model.load_weights(list(found.items()), strict=True)
    mx.clear_cache()  # the as-stored (e.g. f32) copies were transient: hand their buffers back


def _weights_file(folder: Path) -> Path:
    preferred = folder / "diffusion_pytorch_model.safetensors"
    if preferred.exists():
        return preferred
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"path: no .safetensors weights in {folder}")
    return files[0]


# The diffusers classes whose decoder this module builds.
SUPPORTED_CLASSES = ("AutoencoderKL", "AutoencoderKLFlux2", "AutoencoderKLQwenImage")


def _read_config(cfg_file: Path) -> Union[VAEConfig, QwenImageConfig]:
    if not cfg_file.exists():
        raise FileNotFoundError(f"path: {cfg_file.parent} has no config.json; pass config=")
    try:
        d = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"path: {cfg_file} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"path: {cfg_file} holds a {type(d).__name__}, not a config object")
    cls = d.get("_class_name")
    if cls is not None and cls not in SUPPORTED_CLASSES:
        raise ValueError(f"path: {cfg_file} describes a {cls}; fusedconv decodes {', '.join(SUPPORTED_CLASSES)}")
    try:
        return config_from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"path: {cfg_file} has an unusable config ({e})") from None


def build_decoder(cfg: Union[VAEConfig, QwenImageConfig]) -> StagedDecoder:
    """The decoder of a config, with lazily initialised (unallocated) parameters."""
    return QwenImageDecoder(cfg) if isinstance(cfg, QwenImageConfig) else AutoencoderKLDecoder(cfg)


def load_decoder(
    path: Union[str, Path],
    *,
    config: Union[None, str, Mapping, VAEConfig, QwenImageConfig] = None,
    dtype=mx.bfloat16,
) -> StagedDecoder:
    """Loads a decoder from a diffusers folder (or a pipeline folder with vae/), or from a
    single .safetensors VAE / full checkpoint (then config= a preset name or dict is required)."""
    if dtype not in (mx.float32, mx.float16, mx.bfloat16):
        raise TypeError(f"dtype: {dtype} is not supported; expected mx.float32, mx.float16 or mx.bfloat16")
    path = Path(path)
    cfg = resolve_config(config)
    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").exists() else path
        if cfg is None:
            cfg = _read_config(folder / "config.json")
        weights = _weights_file(folder)
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"path: expected a .safetensors file or a diffusers folder, got {path}")
        if cfg is None:
            raise ValueError("config: a single-file checkpoint needs config= (a preset name or a dict)")
        weights = path
    else:
        raise FileNotFoundError(f"path: {path} does not exist")
    model = build_decoder(cfg)
    load_state(model, mx.load(str(weights)), dtype)
    return model
