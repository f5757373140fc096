"""Typed configuration of the EMO network.

One network, several checkpoint families: a family is an :class:`EmoNetConfig` (built by
:func:`emo_preset`, :func:`hallo_preset` or read from a checkpoint) plus a key map, never a
second copy of the modules. Defaults follow SD 1.5 and the EMO paper (arXiv 2402.17485, section 3).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidConfigError

SD15_DOWN_BLOCKS = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
SD15_UP_BLOCKS = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
FAMILIES = ("emo", "hallo", "hallo2", "echomimic")
HALLO_LAYOUT = ("hallo", "hallo2")  # families that load Hallo's net.pth layout (same keys, same network)
AUDIO_FORMS = ("single", "hierarchical", "cross_slot")
LONG_VIDEO = ("motion_frames", "context_windows")
REFERENCE_ROWS = ("shared", "cfg_tiled")
FIRST_MOTION = ("zeros", "reference")
MOTION_SOURCES = ("latents", "pixels")
SPEED_ATTENTION = ("per_frame", "across_frames")
REFERENCE_ATTENTION = ("self_concat", "cross")
FACE_ADDED_TO = ("features", "latent")


def _require(ok: bool, name: str, value: Any, what: str) -> None:
    if not ok:
        raise InvalidConfigError(f"config field {name}={value!r} is invalid: {what}")


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the SD 1.5 UNet shared by ReferenceNet and the backbone.

    `attention_heads` is SD's `attention_head_dim`: the number of heads (head width = channels // heads).
    """
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    down_block_types: tuple[str, ...] = SD15_DOWN_BLOCKS
    up_block_types: tuple[str, ...] = SD15_UP_BLOCKS
    attention_heads: int = 8
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5

    def validate(self) -> None:
        n = len(self.block_out_channels)
        _require(n >= 1, "unet.block_out_channels", self.block_out_channels, "need at least one level")
        _require(len(self.down_block_types) == n, "unet.down_block_types", self.down_block_types,
                 f"need one per level ({n})")
        _require(len(self.up_block_types) == n, "unet.up_block_types", self.up_block_types,
                 f"need one per level ({n})")
        for c in self.block_out_channels:
            _require(c % self.norm_num_groups == 0, "unet.block_out_channels", self.block_out_channels,
                     f"every width must divide into norm_num_groups={self.norm_num_groups}")
            _require(c % self.attention_heads == 0, "unet.attention_heads", self.attention_heads,
                     f"must divide every block width {self.block_out_channels}")
        _require(self.layers_per_block >= 1, "unet.layers_per_block", self.layers_per_block, "need >= 1")

    def down_has_attention(self, level: int) -> bool:
        return self.down_block_types[level].startswith("CrossAttn")

    def up_has_attention(self, index: int) -> bool:
        return self.up_block_types[index].startswith("CrossAttn")


@dataclass(frozen=True)
class MotionConfig:
    """AnimateDiff temporal modules (mm_sd_v15 v2 layout).

    `in_plain_blocks`: whether the attention-free down/up blocks apply their motion module. Hallo's
    inference runs the gradient-checkpointed training path, which skips them there (its weights still
    carry the modules), so the Hallo family sets it False.
    """
    heads: int = 8
    num_blocks: int = 1
    attention_blocks: int = 2
    max_len: int = 32
    resolutions: tuple[int, ...] = (1, 2, 4, 8)
    mid_block: bool = True
    decoder_only: bool = False
    norm_num_groups: int = 32
    in_plain_blocks: bool = True

    def validate(self) -> None:
        _require(self.heads >= 1, "motion.heads", self.heads, "need >= 1")
        _require(self.max_len >= 2, "motion.max_len", self.max_len, "need >= 2")
        _require(self.attention_blocks >= 1, "motion.attention_blocks", self.attention_blocks, "need >= 1")


@dataclass(frozen=True)
class AudioAttentionConfig:
    """Audio-attention after each reference-attention.

    `single`: EMO's one cross-attention to the audio tokens. `hierarchical`: Hallo's three
    cross-attentions weighted by full/face/lip masks, zero-convs and motion_scale. `cross_slot`
    (EchoMimic): no audio modules; the spatial transformer's own cross-attention (SD's text slot) takes
    the audio tokens, its output multiplied by `scale` (EchoMimic's audio_feature_ratio, 3.0).
    """
    form: str = "single"
    audio_dim: int = 768
    scale: float = 1.0

    def validate(self) -> None:
        _require(self.form in AUDIO_FORMS, "audio_attention.form", self.form, f"choose one of {AUDIO_FORMS}")
        _require(self.audio_dim >= 1, "audio_attention.audio_dim", self.audio_dim, "need >= 1")


@dataclass(frozen=True)
class WindowProjectionConfig:
    """Windowed per-frame features -> tokens: (window x blocks x channels) -> MLP -> tokens x output_dim."""
    window: int = 5
    blocks: int = 12
    channels: int = 768
    intermediate_dim: int = 512
    output_dim: int = 768
    tokens: int = 32

    def validate(self, name: str) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _require(value >= 1, f"{name}.{f.name}", value, "need >= 1")
        _require(self.window % 2 == 1, f"{name}.window", self.window, "must be odd (2m+1 frames)")


@dataclass(frozen=True)
class FaceLocatorConfig:
    """Light conv encoder of the face-region mask; its output width is the UNet's first block width."""
    conditioning_channels: int = 1
    block_out_channels: tuple[int, ...] = (16, 32, 64, 128)

    def validate(self) -> None:
        _require(self.conditioning_channels in (1, 3), "face_locator.conditioning_channels",
                 self.conditioning_channels, "EMO uses 1, Hallo 3")
        _require(len(self.block_out_channels) >= 1, "face_locator.block_out_channels",
                 self.block_out_channels, "need at least one width")


@dataclass(frozen=True)
class IdentityConfig:
    """Hallo's identity tokens: a face embedding projected into the cross-attention slot."""
    embedding_dim: int = 512
    tokens: int = 4


# EMO's speed buckets (section 3.3): centres and radii in rad/s of head rotation.
DEFAULT_SPEED_CENTRES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
DEFAULT_SPEED_RADII = (0.125, 0.125, 0.125, 0.125, 0.25, 0.25, 0.5, 0.5, 1.0)


@dataclass(frozen=True)
class SpeedConfig:
    """EMO speed layers: bucketed head speed, windowed, MLP, cross-attention in temporal modules."""
    centres: tuple[float, ...] = DEFAULT_SPEED_CENTRES
    radii: tuple[float, ...] = DEFAULT_SPEED_RADII
    window: int = 5
    intermediate_dim: int = 256
    output_dim: int = 768
    tokens: int = 4

    def validate(self) -> None:
        _require(len(self.centres) >= 1, "speed.centres", self.centres, "need at least one bucket")
        _require(len(self.radii) == len(self.centres), "speed.radii", self.radii,
                 f"need one radius per centre ({len(self.centres)})")
        _require(all(r > 0 for r in self.radii), "speed.radii", self.radii, "radii must be > 0")
        self.projection().validate("speed")

    def projection(self) -> WindowProjectionConfig:
        return WindowProjectionConfig(window=self.window, blocks=1, channels=len(self.centres),
                                      intermediate_dim=self.intermediate_dim, output_dim=self.output_dim,
                                      tokens=self.tokens)


@dataclass(frozen=True)
class EmoNetConfig:
    """The whole network: backbone, ReferenceNet, conditioning encoders and clip settings.

    `reference_rows`: how ReferenceNet rows are laid out under classifier-free guidance. `shared`
    (EMO): one pass over [reference, motion frames] serves both CFG halves. `cfg_tiled` (Hallo):
    the rows are tiled twice and the identity token sets tiled over them (see parity README).

    Clip chaining (the sampler's rule): `first_motion` is what stands in for motion frames in the first
    clip, `zeros` (EMO: zero feature maps) or `reference` (Hallo: copies of the reference image).
    `motion_source` is how later clips get theirs from the previous clip's last n frames: `latents`
    (EMO: the generated latents) or `pixels` (Hallo: decoded to pixels and re-encoded by the VAE).
    `guidance_scale`, `default_steps`, `default_fps`: the family's sampling defaults (classifier-free guidance
    scale, denoising steps, video frame rate), which the loader node offers to the sampler and audio nodes.

    `audio_projection` None: the audio tokens are the encoder's features themselves (EchoMimic's whisper
    tokens: a window of feature frames x layers, each one token). `reference_cross_attention` False: the
    ReferenceNet's transformer blocks have no cross-attention at all (EchoMimic).

    `long_video`: how a video longer than one clip is made. `motion_frames` (EMO, Hallo): clip after clip,
    each fed the previous clip's last frames. `context_windows` (EchoMimic): every step denoises the whole
    video in overlapping windows of `clip_length` frames (`context_overlap` shared), shifted by
    `context_shift` frames per step and averaged where they overlap; the initial noise is clamped to
    +-`noise_clamp` when set.

    `motion_pixel_drop` (Hallo2, scripts/inference_long.py `use_mask`/`mask_rate`): the fraction of motion-frame
    pixels set to 0 (in [-1, 1]) before they are VAE-encoded, outside the face-region box; 0 = Hallo.

    Where the EMO paper (section 3) and Hallo's code differ; the defaults are Hallo's (and what native EMO files
    written before these fields existed did), :func:`emo_preset` sets the paper's:
    `speed_attention`: `per_frame` (each frame's tokens attend to that frame's speed tokens) or `across_frames`
    (paper 3.2: every frame attends to the speed tokens of all f frames of the clip).
    `plain_block_motion`: the temporal modules of the attention-free blocks (SD's DownBlock2D/UpBlock2D) also get
    the motion frames: ReferenceNet's resnet outputs at those blocks (paper 3.2: motion features merged at each
    resolution). False: they see the current frames only (their positions start at 0).
    `reference_attention`: `self_concat` (Hallo, AnimateAnyone: the reference tokens join attn1's keys and
    values; attn2 keeps SD's text slot) or `cross` (paper 3.2: SD's cross-attention layers take the ReferenceNet
    features instead of text embeddings; attn1 is plain self-attention, no text slot).
    `face_added_to`: `features` (Hallo: the face locator's output is added after conv_in, at the first block
    width) or `latent` (paper 3.2: added to the noisy latent before the backbone, 4 channels at latent size).
    """
    family: str = "emo"
    unet: UNetConfig = field(default_factory=UNetConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    audio_attention: AudioAttentionConfig = field(default_factory=AudioAttentionConfig)
    audio_projection: WindowProjectionConfig | None = field(default_factory=WindowProjectionConfig)
    face_locator: FaceLocatorConfig = field(default_factory=FaceLocatorConfig)
    identity: IdentityConfig | None = None
    speed: SpeedConfig | None = field(default_factory=SpeedConfig)
    clip_length: int = 12
    motion_frames: int = 4
    reference_rows: str = "shared"
    first_motion: str = "zeros"
    motion_source: str = "latents"
    guidance_scale: float = 3.5
    reference_cross_attention: bool = True
    default_steps: int = 40
    default_fps: float = 25.0
    long_video: str = "motion_frames"
    context_overlap: int = 3
    context_shift: int = 2
    noise_clamp: float | None = None
    motion_pixel_drop: float = 0.0
    speed_attention: str = "per_frame"
    plain_block_motion: bool = False
    reference_attention: str = "self_concat"
    face_added_to: str = "features"

    @property
    def is_hallo_layout(self) -> bool:
        """Hallo's net.pth layout and inference conventions (Hallo and Hallo2 share both)."""
        return self.family in HALLO_LAYOUT

    def validate(self) -> EmoNetConfig:
        _require(self.family in FAMILIES, "family", self.family, f"choose one of {FAMILIES}")
        _require(self.reference_rows in REFERENCE_ROWS, "reference_rows", self.reference_rows,
                 f"choose one of {REFERENCE_ROWS}")
        _require(self.first_motion in FIRST_MOTION, "first_motion", self.first_motion,
                 f"choose one of {FIRST_MOTION}")
        _require(self.motion_source in MOTION_SOURCES, "motion_source", self.motion_source,
                 f"choose one of {MOTION_SOURCES}")
        _require(self.guidance_scale >= 0, "guidance_scale", self.guidance_scale, "need >= 0")
        _require(self.default_steps >= 1, "default_steps", self.default_steps, "need >= 1")
        _require(1 <= self.default_fps <= 240, "default_fps", self.default_fps, "need 1..240")
        _require(0 <= self.motion_pixel_drop < 1, "motion_pixel_drop", self.motion_pixel_drop, "need 0 <= rate < 1")
        _require(self.motion_pixel_drop == 0 or self.motion_source == "pixels", "motion_pixel_drop",
                 self.motion_pixel_drop, "pixels are dropped before re-encoding: needs motion_source='pixels'")
        _require(self.motion_frames <= self.clip_length, "motion_frames", self.motion_frames,
                 f"the motion frames come from one clip: need <= clip_length={self.clip_length}")
        _require(self.clip_length >= 1, "clip_length", self.clip_length, "need >= 1")
        _require(self.motion_frames >= 0, "motion_frames", self.motion_frames, "need >= 0")
        _require(self.clip_length + self.motion_frames <= self.motion.max_len, "clip_length",
                 self.clip_length, f"clip_length + motion_frames must fit motion.max_len={self.motion.max_len}")
        self._validate_audio()
        self._validate_long_video()
        self._validate_paper_choices()
        self.unet.validate()
        self.motion.validate()
        self.audio_attention.validate()
        self.face_locator.validate()
        if self.speed is not None:
            self.speed.validate()
        return self

    def _validate_audio(self) -> None:
        a = self.audio_attention
        if self.audio_projection is not None:
            self.audio_projection.validate("audio_projection")
            _require(self.audio_projection.output_dim == a.audio_dim, "audio_projection.output_dim",
                     self.audio_projection.output_dim, f"must equal audio_attention.audio_dim={a.audio_dim}")
        if a.form == "cross_slot":
            _require(self.unet.cross_attention_dim == a.audio_dim, "unet.cross_attention_dim",
                     self.unet.cross_attention_dim, f"the cross-attention slot takes the audio: must equal "
                     f"audio_attention.audio_dim={a.audio_dim}")
            _require(self.identity is None, "identity", self.identity,
                     "the cross-attention slot carries the audio, so there is no room for identity tokens")

    def _validate_paper_choices(self) -> None:
        _require(self.speed_attention in SPEED_ATTENTION, "speed_attention", self.speed_attention,
                 f"choose one of {SPEED_ATTENTION}")
        _require(self.reference_attention in REFERENCE_ATTENTION, "reference_attention", self.reference_attention,
                 f"choose one of {REFERENCE_ATTENTION}")
        _require(self.face_added_to in FACE_ADDED_TO, "face_added_to", self.face_added_to,
                 f"choose one of {FACE_ADDED_TO}")
        _require(not self.plain_block_motion or self.motion.in_plain_blocks, "plain_block_motion",
                 self.plain_block_motion, "needs motion.in_plain_blocks=True (the modules must run to see them)")
        if self.reference_attention == "cross":  # the text slot is the reference-attention: nothing else fits
            _require(self.identity is None, "identity", self.identity,
                     "reference_attention='cross' has no text slot for identity tokens")
            _require(self.audio_attention.form != "cross_slot", "audio_attention.form", self.audio_attention.form,
                     "reference_attention='cross' has no text slot for the audio")

    def _validate_long_video(self) -> None:
        _require(self.long_video in LONG_VIDEO, "long_video", self.long_video, f"choose one of {LONG_VIDEO}")
        if self.long_video == "context_windows":
            _require(self.motion_frames == 0, "motion_frames", self.motion_frames,
                     "context windows carry no motion frames: need 0")
            _require(0 <= self.context_overlap < self.clip_length, "context_overlap", self.context_overlap,
                     f"need 0 <= overlap < clip_length={self.clip_length}")
        _require(self.noise_clamp is None or self.noise_clamp > 0, "noise_clamp", self.noise_clamp, "need > 0")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EmoNetConfig:
        try:
            data = json.loads(text)
            return _from_dict(cls, data).validate()
        except (TypeError, KeyError, ValueError, AttributeError) as err:
            if isinstance(err, InvalidConfigError):
                raise
            raise InvalidConfigError(f"the stored EMO configuration cannot be read: {err}") from err


_NESTED = {"unet": UNetConfig, "motion": MotionConfig, "audio_attention": AudioAttentionConfig,
           "audio_projection": WindowProjectionConfig, "face_locator": FaceLocatorConfig,
           "identity": IdentityConfig, "speed": SpeedConfig}


def _from_dict(cls, data: dict) -> Any:
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise InvalidConfigError(f"unknown configuration fields {sorted(unknown)} for {cls.__name__}")
    for key, value in data.items():
        if key in _NESTED and cls is EmoNetConfig:
            value = None if value is None else _from_dict(_NESTED[key], value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


# The paper's reading where it is specific (section 3.2; README "EMO preset and the paper"). Not the dataclass
# defaults: a native EMO file written before these fields existed loads with the defaults, its old behaviour.
EMO_PAPER_CHOICES = dict(speed_attention="across_frames", plain_block_motion=True, reference_attention="cross",
                         face_added_to="latent", reference_cross_attention=False)


# What Hallo's and EchoMimic's code do at those places (the dataclass defaults, spelled out in their presets).
HALLO_CODE_CHOICES = dict(speed_attention="per_frame", plain_block_motion=False, reference_attention="self_concat",
                          face_added_to="features")


def emo_preset(**overrides: Any) -> EmoNetConfig:
    """EMO as in the paper: f=12, n=4, single audio attention, 1-channel face locator added to the noisy latent,
    speed layers across the clip's frames, motion frames in every temporal module, reference-attention in
    SD's cross-attention slot and no text cross-attention anywhere."""
    return dataclasses.replace(EmoNetConfig(), **{**EMO_PAPER_CHOICES, **overrides}).validate()


def hallo_preset(**overrides: Any) -> EmoNetConfig:
    """The official Hallo inference configuration (SD 1.5 + configs/inference/default.yaml)."""
    base = EmoNetConfig(
        family="hallo",
        motion=MotionConfig(in_plain_blocks=False),
        audio_attention=AudioAttentionConfig(form="hierarchical", audio_dim=768),
        audio_projection=WindowProjectionConfig(window=5, blocks=12, channels=768, intermediate_dim=512,
                                                output_dim=768, tokens=32),
        face_locator=FaceLocatorConfig(conditioning_channels=3, block_out_channels=(16, 32, 64, 128)),
        identity=IdentityConfig(embedding_dim=512, tokens=4),
        speed=None, clip_length=16, motion_frames=2, reference_rows="cfg_tiled",
        first_motion="reference", motion_source="pixels", guidance_scale=3.5,
        # Hallo's own code where the paper says otherwise (README "EMO preset and the paper"):
        **HALLO_CODE_CHOICES,
    )
    return dataclasses.replace(base, **overrides).validate()


def echomimic_preset(**overrides: Any) -> EmoNetConfig:
    """EchoMimic v1 (configs/inference/inference_v2.yaml + infer_audio2vid.py): whisper-tiny tokens (10 frames x
    5 layers of width 384 per video frame) in the spatial cross-attention x 3.0, no identity tokens, a
    ReferenceNet without cross-attention, a 1-channel face locator, context windows of 12 frames (overlap 3,
    shifted 2 per step), initial noise clamped to +-1.5, DDIM 30 steps at CFG 2.5, 24 fps. The step-distilled
    "acc" weights: the same network, 6 steps without CFG (`echomimic_acc`)."""
    base = EmoNetConfig(
        family="echomimic",
        unet=UNetConfig(cross_attention_dim=384),
        motion=MotionConfig(in_plain_blocks=True),
        audio_attention=AudioAttentionConfig(form="cross_slot", audio_dim=384, scale=3.0),
        audio_projection=None,
        face_locator=FaceLocatorConfig(conditioning_channels=1, block_out_channels=(16, 32, 96, 256)),
        identity=None, speed=None, clip_length=12, motion_frames=0, reference_rows="shared",
        first_motion="zeros", motion_source="latents", guidance_scale=2.5, reference_cross_attention=False,
        default_steps=30, default_fps=24.0, long_video="context_windows", context_overlap=3, context_shift=2,
        noise_clamp=1.5, **HALLO_CODE_CHOICES,  # EchoMimic's code makes the same choices as Hallo's
    )
    return dataclasses.replace(base, **overrides).validate()


def echomimic_acc(config: EmoNetConfig) -> EmoNetConfig:
    """EchoMimic's step-distilled ("acc") weights' sampling defaults on `config`: 6 steps, no CFG
    (infer_audio2vid_acc.py); the network is the same."""
    return dataclasses.replace(config, default_steps=6, guidance_scale=1.0).validate()


def hallo2_preset(**overrides: Any) -> EmoNetConfig:
    """Hallo2 (configs/inference/long.yaml): Hallo's network and settings, 25% of the motion-frame pixels
    dropped outside the face box (`use_mask: true`, `mask_rate: 0.25`)."""
    return hallo_preset(**{"family": "hallo2", "motion_pixel_drop": 0.25, **overrides})
