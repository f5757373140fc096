"""wav2vec2 through transformers' Wav2Vec2Model, loaded from local files only (never the hub).

Accepted: a Hugging Face folder (config.json + weights), or one .safetensors file as ComfyUI's
`models/audio_encoders` holds them (HF key names, optionally prefixed `wav2vec2.`); the architecture
of a single file is read from its tensor shapes.
"""
from __future__ import annotations

import logging
import math
import os

import torch
import torch.nn.functional as F

from .errors import IncompatibleCheckpointError, InvalidInputError, MissingWeightsError
from .pickle_safety import check_pickle_allowed

log = logging.getLogger(__name__)

DEFAULT_MODEL = "wav2vec2-base-960h"
_PREFIX = "wav2vec2."
_IGNORED = ("lm_head.", "quantizer.", "project_q.", "project_hid.", "masked_spec_embed")


def load_wav2vec(path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Local wav2vec2 model in eval mode (no masking, no dropout)."""
    from transformers import Wav2Vec2Model

    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise MissingWeightsError(f"no config.json in wav2vec2 folder '{path}'; put the Hugging Face folder "
                                      f"of {DEFAULT_MODEL} there")
        model = Wav2Vec2Model.from_pretrained(path, local_files_only=True, use_safetensors=_folder_safetensors(path))
    elif os.path.isfile(path):
        model = _from_single_file(path)
    else:
        raise MissingWeightsError(f"wav2vec2 model '{os.path.basename(path)}' not found in "
                                  f"'{os.path.dirname(os.path.abspath(path))}'; download {DEFAULT_MODEL} there "
                                  "(`emo-models fetch --family hallo` does)")
    model.to(device=device, dtype=dtype).eval()
    log.info("loaded wav2vec2 from %s (%d layers, width %d)", path, model.config.num_hidden_layers,
             model.config.hidden_size)
    return model


def _folder_safetensors(path: str) -> bool:
    """True when the Hugging Face folder has safetensors weights; else its pytorch_model.bin is a pickle,
    read only where torch can do that safely (`pickle_safety`)."""
    if any(name.endswith(".safetensors") for name in os.listdir(path)):
        return True
    check_pickle_allowed(os.path.join(path, "pytorch_model.bin"))
    return False


def _from_single_file(path: str):
    from safetensors.torch import load_file
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    if not path.endswith(".safetensors"):
        raise IncompatibleCheckpointError(f"single-file wav2vec2 models must be .safetensors, got '{path}'")
    state = {k[len(_PREFIX):] if k.startswith(_PREFIX) else k: v for k, v in load_file(path).items()}
    state = {k: v for k, v in state.items() if not k.startswith(_IGNORED)}
    config = _infer_config(state, path)
    model = Wav2Vec2Model(config)
    state = _match_weight_norm_names(state, set(model.state_dict()))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise IncompatibleCheckpointError(f"'{path}' does not fit the wav2vec2 shape read from it: {err}") from err
    missing = [k for k in missing if not k.startswith(_IGNORED)]
    if missing or unexpected:
        raise IncompatibleCheckpointError(f"'{path}' does not fit a wav2vec2 model: missing {missing[:5]}, "
                                          f"unexpected {unexpected[:5]}")
    return model


_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def _match_weight_norm_names(state: dict, expected: set) -> dict:
    """The positional conv's weight norm is `weight_g/_v` in older files and `parametrizations.weight.original0/1`
    in newer transformers; rename to whatever this transformers expects."""
    out = {}
    for key, value in state.items():
        for old, new in _WEIGHT_NORM.items():
            if key.endswith(old) and key not in expected and key[: -len(old)] + new in expected:
                key = key[: -len(old)] + new
            elif key.endswith(new) and key not in expected and key[: -len(new)] + old in expected:
                key = key[: -len(new)] + old
        out[key] = value
    return out


def _infer_config(state: dict[str, torch.Tensor], path: str):
    from transformers import Wav2Vec2Config

    try:
        hidden = state["encoder.layers.0.attention.q_proj.weight"].shape[0]
        conv = [state[f"feature_extractor.conv_layers.{i}.conv.weight"] for i in range(7)]
    except KeyError as err:
        raise IncompatibleCheckpointError(f"'{path}' is not a wav2vec2 model (no {err})") from err
    layers = len({k.split(".")[2] for k in state if k.startswith("encoder.layers.")})
    pos = next((v for k, v in state.items() if k.startswith("encoder.pos_conv_embed")
                and k.endswith(("weight_v", "original1"))), None)
    layer_norm = "feature_extractor.conv_layers.1.layer_norm.weight" in state
    return Wav2Vec2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
        intermediate_size=state["encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0],
        conv_dim=tuple(w.shape[0] for w in conv), conv_kernel=tuple(w.shape[-1] for w in conv),
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in state,
        feat_extract_norm="layer" if layer_norm else "group", do_stable_layer_norm=layer_norm,
        num_conv_pos_embeddings=128 if pos is None else pos.shape[-1],
        num_conv_pos_embedding_groups=16 if pos is None else hidden // pos.shape[1],
        apply_spec_augment=False,
    )


@torch.no_grad()
def cnn_features(model, signal: torch.Tensor, chunk_samples: int = 16000 * 30, rows: tuple[int, int] | None = None,
                 stats=None) -> torch.Tensor:
    """wav2vec2 CNN output (T, C) of a 1-D signal, computed in exact chunks; `rows` = (a, b): only those.

    The convolutions are valid (no padding), so output t depends on samples [t*S, t*S + R) only; the
    first layer's GroupNorm (base models) normalises over the whole signal, so its statistics are
    gathered in a first pass (`cnn_stats`, passed in when several row ranges are asked for). Memory is
    bounded by the chunk and the rows asked for, not the audio length.
    """
    p = next(model.parameters())
    layers = model.feature_extractor.conv_layers
    stride, field = _cnn_geometry(layers)
    total = cnn_length(model, signal.numel())
    first, last = rows if rows is not None else (0, total)
    if not 0 <= first <= last <= total:
        raise ValueError(f"CNN rows [{first}, {last}) outside 0..{total}")
    per_chunk = max(1, (chunk_samples - field) // stride + 1)
    if stats is None:
        stats = cnn_stats(model, signal, chunk_samples)
    out = torch.empty(last - first, layers[-1].conv.out_channels)  # filled in place, never held twice
    for a in range(first, last, per_chunk):
        b = min(a + per_chunk, last)
        x = signal[a * stride:(b - 1) * stride + field][None, None].to(p.device, p.dtype)
        for i, layer in enumerate(layers):
            x = _first_layer(layer, x, stats) if i == 0 and stats is not None else layer(x)
        out[a - first:b - first] = x[0].transpose(0, 1)
    return out


def cnn_length(model, samples: int) -> int:
    """Rows of CNN output for `samples` samples; InvalidInputError when the audio is shorter than one row."""
    stride, field = _cnn_geometry(model.feature_extractor.conv_layers)
    total = (samples - field) // stride + 1
    if total < 1:
        raise InvalidInputError(f"audio too short for wav2vec2: {samples} samples, need {field}")
    return total


@torch.no_grad()
def cnn_stats(model, signal: torch.Tensor, chunk_samples: int = 16000 * 30):
    """The first layer's whole-signal GroupNorm statistics (mean, var) for cnn_features, or None when the
    model has no GroupNorm there (large models normalise per position)."""
    layer = model.feature_extractor.conv_layers[0]
    if not isinstance(getattr(layer, "layer_norm", None), torch.nn.GroupNorm):
        return None
    return _first_layer_stats(layer, signal, chunk_samples, next(model.parameters()))


def _cnn_geometry(layers) -> tuple[int, int]:
    """(stride, receptive field) of the whole CNN in samples."""
    return math.prod(layer.conv.stride[0] for layer in layers), _receptive_field(layers)


def _receptive_field(layers) -> int:
    field, jump = 1, 1
    for layer in layers:
        field += (layer.conv.kernel_size[0] - 1) * jump
        jump *= layer.conv.stride[0]
    return field


def _first_layer_stats(layer, signal, chunk_samples, p):
    """Per-group mean and variance of the first conv's output over the whole signal (float64 sums),
    as the model's GroupNorm sees it: every first-layer output, also those later layers do not use."""
    norm, conv = layer.layer_norm, layer.conv
    k, s = conv.kernel_size[0], conv.stride[0]
    total = (signal.numel() - k) // s + 1
    per_chunk = max(1, (chunk_samples - k) // s + 1)
    count, s1, s2 = 0, 0.0, 0.0
    for a in range(0, total, per_chunk):
        b = min(a + per_chunk, total)
        x = conv(signal[a * s:(b - 1) * s + k][None, None].to(p.device, p.dtype))
        g = x.double().reshape(norm.num_groups, -1, x.shape[-1])
        count, s1 = count + g[0].numel(), s1 + g.sum(dim=(1, 2))
        s2 = s2 + g.square_().sum(dim=(1, 2))  # in place: the same squares without a second float64 copy
    mean = s1 / count
    return mean, (s2 / count - mean * mean).clamp_min(0)


def _first_layer(layer, x, stats):
    norm = layer.layer_norm
    mean, var = stats
    y = layer.conv(x)
    g = y.double().reshape(1, norm.num_groups, -1, y.shape[-1])
    # In place (the same arithmetic): the float64 copy is 2x the chunk's first-layer output, the largest
    # tensor of the whole extraction, and out-of-place steps would hold it three times.
    g.sub_(mean[None, :, None, None]).div_(torch.sqrt(var[None, :, None, None] + norm.eps))
    y = g.reshape(y.shape).to(y.dtype)
    del g
    y.mul_(norm.weight[None, :, None]).add_(norm.bias[None, :, None])
    return layer.activation(y)


@torch.no_grad()
def encode_frames(model, cnn: torch.Tensor, frames: int, keep: tuple[int, int] | None = None) -> torch.Tensor:
    """CNN features (T, C) -> hidden states of every encoder layer at `frames` rows (frames, layers, hidden).

    The CNN features are interpolated to `frames` before feature projection and the encoder (Hallo).
    `keep` = (start, stop) returns only those rows (used when encoding a chunk with context).
    """
    p = next(model.parameters())
    x = F.interpolate(cnn.T[None].to(p.device, p.dtype), size=frames, mode="linear", align_corners=True)
    hidden, _ = model.feature_projection(x.transpose(1, 2))
    lo, hi = keep if keep is not None else (0, frames)
    out = torch.empty(hi - lo, len(model.encoder.layers), hidden.shape[-1])
    # Each layer's rows are copied out as soon as it has run: no list (or stack) of every layer's output.
    for i, layer_out in enumerate(_layer_outputs(model.encoder, hidden)):
        out[:, i] = layer_out[0, lo:hi]
    return out


def _layer_outputs(encoder, hidden: torch.Tensor):
    """Yields every transformer layer's output: what `output_hidden_states` reports after the encoder's input
    (Hallo stacks `hidden_states[1:]`), the stable-layer-norm encoder's last one after its final LayerNorm.

    The encoder's steps run here one by one, with no hooks: forward hooks live on the shared model, so two
    calls at once (two ComfyUI workers, one cached encoder) collected each other's layers. transformers 5
    no longer returns hidden states from the encoder itself (only the top-level forward records them), and
    that forward starts from raw audio, not the interpolated CNN features Hallo encodes.
    """
    stable = encoder.config.do_stable_layer_norm
    hidden = hidden + encoder.pos_conv_embed(hidden)
    if not stable:
        hidden = encoder.layer_norm(hidden)
    last = len(encoder.layers) - 1
    for i, layer in enumerate(encoder.layers):  # eval mode: no dropout, no LayerDrop
        out = layer(hidden, attention_mask=None)
        hidden = out[0] if isinstance(out, tuple) else out  # a tuple in transformers 4
        yield encoder.layer_norm(hidden) if stable and i == last else hidden
