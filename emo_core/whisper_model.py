"""Whisper's audio encoder (EchoMimic v1's audio front end) as a transformers WhisperEncoder, from local files.

Accepted:
- OpenAI's checkpoint format, e.g. EchoMimic's `pretrained_weights/audio_processor/whisper_tiny.pt`:
  {"dims": {...}, "model_state_dict": {...}}, read with torch.load(weights_only=True) (pickle_safety). The config
  comes from `dims`, the encoder keys are renamed to transformers' names (the standard OpenAI -> HF conversion);
  the decoder's keys are not needed and are ignored.
- A Hugging Face folder (config.json with model_type "whisper" + model.safetensors, or pytorch_model.bin), of a
  WhisperModel or WhisperForConditionalGeneration: only its encoder is built and loaded.
- One .safetensors file with a whisper encoder's keys (`encoder.` or `model.encoder.`, transformers' or OpenAI's
  names), as ComfyUI's audio_encoders folder holds single files: the config is read from the tensor shapes.
"""
from __future__ import annotations

import json
import logging
import os
import re

import torch

from .errors import IncompatibleCheckpointError, MissingWeightsError
from .pickle_safety import PICKLE_SUFFIXES, check_pickle_allowed, load_pickle, load_pickle_tensors

log = logging.getLogger(__name__)

WHISPER_FILE = "whisper_tiny.pt"
SOURCE_POSITIONS = 1500  # 30 s of mel frames (3000) after the stride-2 conv: EchoMimic's windows need exactly this
_OPENAI_RENAMES = [  # (pattern, replacement) on encoder keys with the "encoder." prefix removed
    (r"^positional_embedding$", "embed_positions.weight"),
    (r"^blocks\.(\d+)\.attn\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"^blocks\.(\d+)\.attn\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"^blocks\.(\d+)\.attn\.value\.", r"layers.\1.self_attn.v_proj."),
    (r"^blocks\.(\d+)\.attn\.out\.", r"layers.\1.self_attn.out_proj."),
    (r"^blocks\.(\d+)\.attn_ln\.", r"layers.\1.self_attn_layer_norm."),
    (r"^blocks\.(\d+)\.mlp\.0\.", r"layers.\1.fc1."),
    (r"^blocks\.(\d+)\.mlp\.2\.", r"layers.\1.fc2."),
    (r"^blocks\.(\d+)\.mlp_ln\.", r"layers.\1.final_layer_norm."),
    (r"^ln_post\.", "layer_norm."),
]


def is_whisper(path: str) -> bool:
    """Whether an audio-encoder file or folder is whisper (else it is taken for wav2vec2): a pickle file
    (.pt/.pth: OpenAI's format; wav2vec2 files are .safetensors), a folder whose config.json says whisper, or a
    .safetensors file whose keys hold a whisper encoder's first convolution (only the header is read)."""
    if os.path.isdir(path):
        config = _read_config(os.path.join(path, "config.json"))
        return config is not None and config.get("model_type") == "whisper"
    if path.lower().endswith(".safetensors"):
        return _whisper_prefix(_safetensors_keys(path)) is not None
    return path.lower().endswith(PICKLE_SUFFIXES)


def _safetensors_keys(path: str) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except (OSError, ValueError, RuntimeError, SafetensorError):  # unreadable: the wav2vec2 loader says why
        return []


def _whisper_prefix(keys) -> str | None:
    """"model.encoder." / "encoder." where the keys hold a whisper encoder (its conv1 over mel bins), else None."""
    keys = set(keys)
    return next((p for p in ("model.encoder.", "encoder.") if f"{p}conv1.weight" in keys), None)


def load_whisper(path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """transformers WhisperEncoder in eval mode, from OpenAI's .pt format, a Hugging Face folder or one .safetensors."""
    if os.path.isdir(path):
        encoder = _from_folder(path)
    elif os.path.isfile(path) and path.lower().endswith(".safetensors"):
        encoder = _from_single_file(path)
    elif os.path.isfile(path):
        encoder = _from_openai(path)
    else:
        raise MissingWeightsError(f"whisper model '{os.path.basename(path)}' not found in "
                                  f"'{os.path.dirname(os.path.abspath(path))}'; put EchoMimic's {WHISPER_FILE} there "
                                  "(or `emo-models fetch --family echomimic` fetches whisper-tiny)")
    encoder.to(device=device, dtype=dtype).eval()
    log.info("loaded whisper encoder from %s (%d layers, width %d)", path, encoder.config.encoder_layers,
             encoder.config.d_model)
    return encoder


def _from_openai(path: str):
    from transformers import WhisperConfig

    name = os.path.basename(path)
    if not path.lower().endswith(PICKLE_SUFFIXES):
        raise IncompatibleCheckpointError(f"'{name}' is not a whisper checkpoint: use OpenAI's .pt file (e.g. "
                                          f"EchoMimic's {WHISPER_FILE}) or a Hugging Face whisper folder")
    data = load_pickle(path)
    if not (isinstance(data, dict) and isinstance(data.get("dims"), dict)
            and isinstance(data.get("model_state_dict"), dict)):
        raise IncompatibleCheckpointError(f"'{name}' is not in OpenAI's whisper format ({{'dims', "
                                          f"'model_state_dict'}}); use EchoMimic's {WHISPER_FILE}")
    dims = data["dims"]
    try:
        state, text = dims["n_audio_state"], dims["n_text_state"]
        # transformers' default token ids (50256/50257) lie outside a small test vocabulary; the decoder is unused.
        last = dims["n_vocab"] - 1
        ids = {k: min(v, last) for k, v in (("pad_token_id", 50256), ("bos_token_id", 50257),
                                             ("eos_token_id", 50256), ("decoder_start_token_id", 50257))}
        config = WhisperConfig(**ids,
            num_mel_bins=dims["n_mels"], max_source_positions=dims["n_audio_ctx"], d_model=state,
            encoder_layers=dims["n_audio_layer"], encoder_attention_heads=dims["n_audio_head"],
            encoder_ffn_dim=4 * state, vocab_size=dims["n_vocab"], max_target_positions=dims["n_text_ctx"],
            decoder_layers=dims["n_text_layer"], decoder_attention_heads=dims["n_text_head"],
            decoder_ffn_dim=4 * text, activation_function="gelu", scale_embedding=False,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    except (KeyError, TypeError) as err:
        raise IncompatibleCheckpointError(f"'{name}' has incomplete whisper dims (missing {err}); use "
                                          f"OpenAI's checkpoint unchanged") from None
    if state != text:
        log.warning("%s: audio width %d differs from text width %d (only the encoder is used)", name, state, text)
    state_dict = {_openai_to_hf(k[len("encoder."):]): v for k, v in data["model_state_dict"].items()
                  if isinstance(k, str) and k.startswith("encoder.")}
    return _build(config, state_dict, name)


def _openai_to_hf(key: str) -> str:
    for pattern, replacement in _OPENAI_RENAMES:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    return key  # conv1/conv2 keep their names


def _from_single_file(path: str):
    from safetensors.torch import load_file

    name = os.path.basename(path)
    state = load_file(path)
    prefix = _whisper_prefix(state)
    if prefix is None:
        raise IncompatibleCheckpointError(f"'{name}' holds no whisper encoder (no encoder.conv1.weight); use "
                                          f"EchoMimic's {WHISPER_FILE} or a Hugging Face whisper folder")
    encoder = {_openai_to_hf(k[len(prefix):]): v for k, v in state.items() if k.startswith(prefix)}
    return _build(_config_from_shapes(encoder, name, _header_heads(path)), encoder, name)


def _header_heads(path: str) -> int | None:
    """The encoder's attention heads where the file's metadata says: OpenAI's `dims` (n_audio_head) or a
    transformers `config` (encoder_attention_heads), as JSON strings."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    for entry, key in (("dims", "n_audio_head"), ("config", "encoder_attention_heads")):
        try:
            heads = json.loads(metadata.get(entry, "{}")).get(key)
        except (ValueError, AttributeError):
            heads = None
        if isinstance(heads, int) and heads > 0:
            return heads
    return None


def _config_from_shapes(state: dict[str, torch.Tensor], name: str, heads: int | None = None):
    """A WhisperConfig for an encoder state dict in transformers' names: widths from conv1 and fc1, the audio
    positions from embed_positions; `heads` None: one head per 64 channels (every released whisper size)."""
    from transformers import WhisperConfig

    try:
        width, mels = state["conv1.weight"].shape[:2]
        positions = state["embed_positions.weight"].shape[0]
        ffn = state["layers.0.fc1.weight"].shape[0]
    except (KeyError, ValueError) as err:
        raise IncompatibleCheckpointError(f"'{name}' is missing whisper encoder key {err}; use EchoMimic's "
                                          f"{WHISPER_FILE} or a Hugging Face whisper folder") from None
    layers = len({k.split(".")[1] for k in state if k.startswith("layers.")})
    return WhisperConfig(num_mel_bins=int(mels), max_source_positions=int(positions), d_model=int(width),
                         encoder_layers=layers, encoder_attention_heads=heads or max(1, int(width) // 64),
                         encoder_ffn_dim=int(ffn), activation_function="gelu", scale_embedding=False,
                         dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def _from_folder(path: str):
    from transformers import WhisperConfig

    config_file = os.path.join(path, "config.json")
    config = _read_config(config_file)
    if config is None:
        raise MissingWeightsError(f"no readable config.json in whisper folder '{path}'; put the Hugging Face "
                                  "folder of a whisper model there")
    if config.get("model_type") != "whisper":
        raise IncompatibleCheckpointError(f"'{path}' holds a {config.get('model_type')!r} model, not whisper")
    state = {}
    for key, value in _folder_tensors(path).items():
        head, sep, tail = key.partition("encoder.")
        if sep and head in ("", "model."):  # WhisperModel or WhisperForConditionalGeneration
            state[tail] = value
    return _build(WhisperConfig.from_pretrained(path, local_files_only=True), state, os.path.basename(path))


def _folder_tensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if files:
        state = {}
        for name in files:  # sharded checkpoints: every shard
            state.update(load_file(os.path.join(path, name)))
        return state
    weights = os.path.join(path, "pytorch_model.bin")
    if not os.path.isfile(weights):
        raise MissingWeightsError(f"no model.safetensors or pytorch_model.bin in whisper folder '{path}'")
    check_pickle_allowed(weights)
    return load_pickle_tensors(weights)


def _build(config, state: dict[str, torch.Tensor], name: str):
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if config.max_source_positions != SOURCE_POSITIONS:
        raise IncompatibleCheckpointError(
            f"'{name}' has {config.max_source_positions} audio positions but EchoMimic's 30-s windows need "
            f"{SOURCE_POSITIONS}; use OpenAI's whisper-tiny checkpoint")
    encoder = WhisperEncoder(config)
    try:
        missing, unexpected = encoder.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise IncompatibleCheckpointError(f"'{name}' does not fit the whisper shape given by its own config "
                                          f"({str(err).splitlines()[0]})") from None
    if missing or unexpected:
        raise IncompatibleCheckpointError(f"'{name}' does not fit a whisper encoder: missing encoder keys "
                                          f"{sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]}")
    return encoder


def _read_config(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None
