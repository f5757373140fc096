"""ComfyUI node classes of the pack: thin adapters over emo_core. Ids are stable forever."""
from .audio import EmoAudioFeatures
from .crop import EmoFaceCrop, EmoPasteBack
from .face import EmoFaceLocator
from .loaders import EmoAudioEncoderLoader, EmoFaceEmbedderLoader, EmoModelLoader
from .reference import EmoReferenceEncode
from .sampler import EmoSampler
from .save_video import EmoSaveVideo
from .speed import EmoSpeedConstant, EmoSpeedFromVideo, EmoSpeedKeyframes

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "EMO_ModelLoader": EmoModelLoader,
    "EMO_AudioEncoderLoader": EmoAudioEncoderLoader,
    "EMO_FaceEmbedderLoader": EmoFaceEmbedderLoader,
    "EMO_ReferenceEncode": EmoReferenceEncode,
    "EMO_AudioFeatures": EmoAudioFeatures,
    "EMO_FaceLocator": EmoFaceLocator,
    "EMO_SpeedConstant": EmoSpeedConstant,
    "EMO_SpeedKeyframes": EmoSpeedKeyframes,
    "EMO_SpeedFromVideo": EmoSpeedFromVideo,
    "EMO_Sampler": EmoSampler,
    "EMO_SaveVideo": EmoSaveVideo,
    "EMO_FaceCrop": EmoFaceCrop,
    "EMO_PasteBack": EmoPasteBack,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "EMO_ModelLoader": "EMO Model Loader",
    "EMO_AudioEncoderLoader": "EMO Audio Encoder Loader",
    "EMO_FaceEmbedderLoader": "EMO Face Embedder Loader",
    "EMO_ReferenceEncode": "EMO Reference Encode",
    "EMO_AudioFeatures": "EMO Audio Features",
    "EMO_FaceLocator": "EMO Face Locator",
    "EMO_SpeedConstant": "EMO Speed (Constant)",
    "EMO_SpeedKeyframes": "EMO Speed (Keyframes)",
    "EMO_SpeedFromVideo": "EMO Speed (From Video)",
    "EMO_Sampler": "EMO Sampler",
    "EMO_SaveVideo": "EMO Save Video (Streaming)",
    "EMO_FaceCrop": "EMO Face Crop",
    "EMO_PasteBack": "EMO Paste Back",
}
