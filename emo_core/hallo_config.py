"""Translate Hallo's constructor arguments (the `hallo_config` metadata entry) into an EmoNetConfig, and
choose between the families that share Hallo's net.pth layout (Hallo, Hallo2)."""
from __future__ import annotations

import dataclasses
from typing import Any

from .config import (HALLO_LAYOUT, AudioAttentionConfig, EmoNetConfig, FaceLocatorConfig, IdentityConfig,
                     MotionConfig, UNetConfig, WindowProjectionConfig, hallo2_preset, hallo_preset)
from .errors import IncompatibleCheckpointError


def _unet(kwargs: dict[str, Any]) -> UNetConfig:
    to2d = lambda names: tuple(n.replace("3D", "2D") for n in names)  # noqa: E731
    heads = kwargs.get("attention_head_dim", 8)
    if isinstance(heads, (list, tuple)):
        if len(set(heads)) != 1:
            raise IncompatibleCheckpointError(f"per-block head counts {heads} are not supported")
        heads = heads[0]
    return UNetConfig(
        in_channels=kwargs.get("in_channels", 4), out_channels=kwargs.get("out_channels", 4),
        block_out_channels=tuple(kwargs["block_out_channels"]), layers_per_block=kwargs["layers_per_block"],
        down_block_types=to2d(kwargs["down_block_types"]), up_block_types=to2d(kwargs["up_block_types"]),
        attention_heads=heads, cross_attention_dim=kwargs["cross_attention_dim"],
        norm_num_groups=kwargs.get("norm_num_groups", 32), norm_eps=kwargs.get("norm_eps", 1e-5),
    )


def motion_config(d: dict[str, Any], in_plain_blocks: bool) -> MotionConfig:
    """MotionConfig from a 3D UNet's constructor kwargs (AnimateDiff's `motion_module_kwargs` and the
    resolution/placement switches), as Hallo and EchoMimic both write them."""
    mm = d.get("motion_module_kwargs", {})
    return MotionConfig(
        heads=mm.get("num_attention_heads", 8), num_blocks=mm.get("num_transformer_block", 1),
        attention_blocks=len(mm.get("attention_block_types", ("Temporal_Self", "Temporal_Self"))),
        max_len=mm.get("temporal_position_encoding_max_len", 32),
        resolutions=tuple(d.get("motion_module_resolutions", (1, 2, 4, 8))),
        mid_block=d.get("motion_module_mid_block", True),
        decoder_only=d.get("motion_module_decoder_only", False), in_plain_blocks=in_plain_blocks)


def _audio_form(d: dict[str, Any]) -> str:
    names, depths = d.get("stack_enable_blocks_name"), d.get("stack_enable_blocks_depth")
    if not names or not depths:
        return "single"
    levels = len(d["block_out_channels"])
    if set(names) >= {"up", "down", "mid"} and set(depths) >= set(range(levels)):
        return "hierarchical"
    raise IncompatibleCheckpointError(f"Hallo audio attention enabled only for blocks {names} at depths {depths}; "
                                      "only all-or-none is supported")


def _clip_settings(meta: dict[str, Any], max_len: int) -> dict[str, int]:
    """Hallo's data settings (configs/inference/default.yaml: `n_motion_frames`, `n_sample_frames`) when the
    file carries them, top level or under `data`; a variant trained with another count must keep it.
    Absent (Hallo's own net.pth has no metadata at all): the official 2 motion frames of 16-frame clips,
    the clip shortened when the file's temporal positions (`max_len`) cannot hold that many frames."""
    data = {**meta.get("data", {}), **meta}
    out = {}
    for ours, theirs in (("motion_frames", "n_motion_frames"), ("clip_length", "n_sample_frames")):
        if theirs in data:
            value = data[theirs]
            if isinstance(value, bool) or not isinstance(value, int):
                raise IncompatibleCheckpointError(f"hallo_config {theirs} must be an integer, got {value!r}")
            out[ours] = value
    if "clip_length" not in out:
        official = hallo_preset()
        motion = out.get("motion_frames", official.motion_frames)
        out["clip_length"] = max(1, min(official.clip_length, max_len - motion))
    return out


def _family_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """Hallo2's switch (configs/inference/long.yaml `use_mask`, `mask_rate`) when the file carries it."""
    if not meta.get("use_mask"):
        return {}
    rate = meta.get("mask_rate", hallo2_preset().motion_pixel_drop)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise IncompatibleCheckpointError(f"hallo_config mask_rate must be a number, got {rate!r}")
    return {"family": "hallo2", "motion_pixel_drop": float(rate)}


def as_family(config: EmoNetConfig, family: str) -> EmoNetConfig:
    """`config` as `family`: Hallo and Hallo2 share the network and the keys, so one loads as the other
    (Hallo2 adds its pixel drop, Hallo has none); any other change of family is refused."""
    if family == config.family:
        return config
    if not (config.is_hallo_layout and family in HALLO_LAYOUT):
        raise IncompatibleCheckpointError(f"this file holds a '{config.family}' network and cannot load as family "
                                          f"'{family}'; choose family 'auto' or one of {list(HALLO_LAYOUT)} "
                                          "for Hallo-layout files")
    rate = hallo2_preset().motion_pixel_drop if family == "hallo2" else 0.0
    return dataclasses.replace(config, family=family, motion_pixel_drop=rate).validate()


def config_from_hallo(meta: dict[str, Any]) -> EmoNetConfig:
    try:
        d, mm = meta["denoising_unet"], meta["denoising_unet"].get("motion_module_kwargs", {})
        unet = _unet(d)
        if _unet(meta["reference_unet"]) != unet:
            raise IncompatibleCheckpointError("Hallo reference_unet and denoising_unet shapes differ")
        ap, fl, ip = meta["audioproj"], meta["face_locator"], meta.get("imageproj")
        if fl.get("conditioning_embedding_channels", unet.block_out_channels[0]) != unet.block_out_channels[0]:
            raise IncompatibleCheckpointError("face_locator output width differs from the UNet's first block width")
        return hallo_preset(
            unet=unet,
            motion=motion_config(d, in_plain_blocks=False),
            audio_attention=AudioAttentionConfig(form=_audio_form(d), audio_dim=d.get("audio_attention_dim", 768)),
            audio_projection=WindowProjectionConfig(
                window=ap["seq_len"], blocks=ap["blocks"], channels=ap["channels"],
                intermediate_dim=ap["intermediate_dim"], output_dim=ap["output_dim"], tokens=ap["context_tokens"]),
            face_locator=FaceLocatorConfig(conditioning_channels=fl.get("conditioning_channels", 3),
                                           block_out_channels=tuple(fl["block_out_channels"])),
            identity=None if ip is None else IdentityConfig(embedding_dim=ip["clip_embeddings_dim"],
                                                            tokens=ip["clip_extra_context_tokens"]),
            **_clip_settings(meta, mm.get("temporal_position_encoding_max_len", 32)),
            **_family_settings(meta),
        )
    except KeyError as err:
        raise IncompatibleCheckpointError(f"hallo_config metadata lacks {err}") from err
