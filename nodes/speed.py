"""Speed nodes (EMO checkpoints): a constant head speed, a keyframed schedule, or one measured from a video."""
from __future__ import annotations

from ..emo_core import speed
from ..emo_core.face import to_uint8_frames
from ..emo_core.face_hallo import detect_landmarks3d
from ..emo_core.errors import InvalidInputError
from . import comfy_services as services
from .handles import SpeedSchedule

SPEED_TIP = "Head rotation speed in radians per second (0 = still, 1 = lively talking)."


class EmoSpeedConstant:
    """The same target head speed for every frame (the paper's inference setting)."""
    CATEGORY = "EMO/speed"
    RETURN_TYPES = ("EMO_SPEED",)
    RETURN_NAMES = ("speed",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"speed": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 6.0, "step": 0.05,
                                                 "tooltip": SPEED_TIP})}}

    def build(self, speed):
        return (SpeedSchedule("constant", float(speed)),)


class EmoSpeedKeyframes:
    """A per-frame speed schedule from keyframes, interpolated linearly between them."""
    CATEGORY = "EMO/speed"
    RETURN_TYPES = ("EMO_SPEED",)
    RETURN_NAMES = ("speed",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"keyframes": ("STRING", {"default": "0:0.3, 50:1.0, 100:0.3", "multiline": False,
                                                      "tooltip": "frame:speed pairs, speed in rad/s; held "
                                                                 "before the first and after the last. Keyframes "
                                                                 "past the video's end still shape the ramp "
                                                                 "towards them; the schedule is cut at the end."})}}

    @classmethod
    def VALIDATE_INPUTS(cls, keyframes):
        try:
            speed.parse_keyframes(keyframes)
        except InvalidInputError as err:
            return str(err)
        return True

    def build(self, keyframes):
        return (SpeedSchedule("keyframes", speed.parse_keyframes(keyframes)),)


class EmoSpeedFromVideo:
    """Head speed measured from a driving video's face landmarks (rotation between frames, smoothed)."""
    CATEGORY = "EMO/speed"
    RETURN_TYPES = ("EMO_SPEED", "FLOAT")
    RETURN_NAMES = ("speed", "mean_speed")
    FUNCTION = "measure"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Frames of the driving video (e.g. from Load Video + Get Video "
                                            "Components)."}),
            "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 0.5,
                              "tooltip": "The driving video's frame rate."}),
            "smoothing": ("INT", {"default": 5, "min": 1, "max": 31, "step": 2,
                                  "tooltip": "Moving-average window in frames against landmark jitter."}),
        }}

    def measure(self, images, fps, smoothing):
        frames = to_uint8_frames(images)
        landmarks = detect_landmarks3d(frames, services.mediapipe_dirs())
        measured = speed.speed_from_landmarks(landmarks, fps, landmark_indices=speed.MEDIAPIPE_RIGID_LANDMARKS,
                                              smoothing=smoothing)
        return (SpeedSchedule("measured", (measured, float(fps))), float(measured.mean()))
