// Unit tests of web/emo_format.js: the text shown on EMO nodes after a run.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  AUDIO_KEY, FACE_KEY, MAX_ENTRIES, MODEL_KEY, describeAudio, describeFace, describeModel, fitSize, formatAudioInfo,
  formatAudioSource, formatFaceInfo, formatModelInfo, formatNumber, formatProgress, parseUiEntries, parseUiMessage,
} from "../../web/emo_format.js";
import { proxiedSize } from "./fake_comfy.mjs";

const AUDIO = {
  duration: 12.34, frames: 309, fps: 25.0, clips: 20, clip_length: 16, motion_frames: 2,
  sample_rate: 44100, channels: 2,
};
const FACE = { box: [120, 80, 392, 400], width: 512, height: 512, frames: 1, source: "mediapipe" };
const ODD = [undefined, null, 0, 1, "text", true, [], [1, 2], () => 1, NaN, Symbol("s")];

describe("formatNumber", () => {
  test("drops trailing zeros and rounds to the given decimals", () => {
    assert.equal(formatNumber(25.0), "25");
    assert.equal(formatNumber(29.97), "29.97");
    assert.equal(formatNumber(23.976), "23.98");
    assert.equal(formatNumber(44.1, 3), "44.1");
    assert.equal(formatNumber(16.6, 0), "17");
    assert.equal(formatNumber(-0.001), "0");
  });
  test("returns an empty string for non-numbers", () => {
    for (const v of [NaN, Infinity, "25", null, undefined, {}]) assert.equal(formatNumber(v), "");
  });
});

describe("parseUiMessage / parseUiEntries", () => {
  test("returns the last entry of the ui list", () => {
    const first = { ...AUDIO, clips: 1 };
    assert.deepEqual(parseUiMessage({ [AUDIO_KEY]: [first, AUDIO] }, AUDIO_KEY), AUDIO);
    assert.deepEqual(parseUiEntries({ [AUDIO_KEY]: [first, AUDIO] }, AUDIO_KEY), [first, AUDIO]);
  });
  test("tolerates a single object instead of a list", () => {
    assert.deepEqual(parseUiMessage({ [FACE_KEY]: FACE }, FACE_KEY), FACE);
  });
  test("skips entries that are not objects", () => {
    assert.deepEqual(parseUiEntries({ k: [1, null, "x", [], FACE, undefined] }, "k"), [FACE]);
    assert.deepEqual(parseUiMessage({ k: [FACE, 3] }, "k"), FACE);
  });
  test("returns null or [] for a missing key, an empty list and odd messages", () => {
    assert.equal(parseUiMessage({ images: [] }, AUDIO_KEY), null);
    assert.equal(parseUiMessage({ [AUDIO_KEY]: [] }, AUDIO_KEY), null);
    assert.equal(parseUiMessage({ [AUDIO_KEY]: "12 s" }, AUDIO_KEY), null);
    for (const message of ODD) {
      assert.equal(parseUiMessage(message, AUDIO_KEY), null);
      assert.deepEqual(parseUiEntries(message, AUDIO_KEY), []);
    }
  });
  test("does not read inherited properties as ui data", () => {
    assert.equal(parseUiMessage({}, "toString"), null);
  });
});

describe("formatAudioInfo", () => {
  test("formats the full record", () => {
    assert.equal(formatAudioInfo(AUDIO), "12.34 s \u00b7 309 frames @ 25 fps \u00b7 20 clips of 16 (2 motion)");
  });
  test("uses singular words for one frame and one clip", () => {
    assert.equal(formatAudioInfo({ duration: 0.04, frames: 1, fps: 25, clips: 1, clip_length: 12 }),
      "0.04 s \u00b7 1 frame @ 25 fps \u00b7 1 clip of 12");
  });
  test("keeps decimals of fractional frame rates and shows zero motion frames", () => {
    assert.equal(formatAudioInfo({ frames: 300, fps: 29.97, clips: 19, clip_length: 16, motion_frames: 0 }),
      "300 frames @ 29.97 fps \u00b7 19 clips of 16 (0 motion)");
  });
  test("leaves out missing or invalid fields", () => {
    assert.equal(formatAudioInfo({ duration: 3 }), "3.00 s");
    assert.equal(formatAudioInfo({ fps: 25 }), "25 fps");
    assert.equal(formatAudioInfo({ frames: 75, fps: 0 }), "75 frames");
    assert.equal(formatAudioInfo({ clips: 5, clip_length: "16", motion_frames: -1 }), "5 clips");
    assert.equal(formatAudioInfo({ duration: "12.3", frames: null, fps: NaN, clips: -2 }), "");
    assert.equal(formatAudioInfo({ clip_length: 16, motion_frames: 2 }), "");
  });
  test("returns an empty string for odd input", () => {
    for (const v of ODD) assert.equal(formatAudioInfo(v), "");
    assert.equal(formatAudioInfo({}), "");
  });
});

describe("formatAudioSource", () => {
  test("formats sample rate and channels", () => {
    assert.equal(formatAudioSource(AUDIO), "44.1 kHz stereo");
    assert.equal(formatAudioSource({ sample_rate: 16000, channels: 1 }), "16 kHz mono");
    assert.equal(formatAudioSource({ sample_rate: 22050, channels: 6 }), "22.05 kHz 6 channels");
  });
  test("leaves out missing or invalid fields", () => {
    assert.equal(formatAudioSource({ channels: 2 }), "stereo");
    assert.equal(formatAudioSource({ sample_rate: 0, channels: 0 }), "");
    for (const v of ODD) assert.equal(formatAudioSource(v), "");
  });
});

describe("formatFaceInfo", () => {
  test("formats box and size on one line, image and source on the next (a narrow node shows both whole)", () => {
    assert.equal(formatFaceInfo(FACE), "face box 120,80 \u2013 392,400 (272\u00d7320)\nimage 512\u00d7512 \u00b7 MediaPipe");
  });
  test("shows the frame count for several frames and the mask source", () => {
    assert.equal(formatFaceInfo({ ...FACE, frames: 25, source: "mask" }),
      "face box 120,80 \u2013 392,400 (272\u00d7320)\nimage 512\u00d7512 \u00b7 25 frames \u00b7 from mask");
  });
  test("rounds fractional boxes and marks empty ones", () => {
    assert.equal(formatFaceInfo({ box: [10.4, 20.6, 100.5, 200] }), "face box 10,21 \u2013 101,200 (91\u00d7179)");
    assert.equal(formatFaceInfo({ box: [50, 50, 50, 60] }), "face box 50,50 \u2013 50,60 (empty)");
  });
  test("shows other sources as given, trimmed and shortened", () => {
    assert.equal(formatFaceInfo({ source: "  insightface " }), "insightface");
    assert.equal(formatFaceInfo({ source: "x".repeat(100) }).length, 32);
    assert.equal(formatFaceInfo({ source: "MediaPipe" }), "MediaPipe");
    assert.equal(formatFaceInfo({ source: "constructor" }), "constructor");
  });
  test("falls back to the image size without a usable box", () => {
    for (const box of [undefined, [1, 2, 3], [1, 2, 3, "4"], "0,0,1,1", [1, 2, NaN, 4]]) {
      assert.equal(formatFaceInfo({ box, width: 640, height: 480, source: "mask" }),
        "image 640\u00d7480 \u00b7 from mask");
    }
  });
  test("returns an empty string for odd input", () => {
    for (const v of ODD) assert.equal(formatFaceInfo(v), "");
    assert.equal(formatFaceInfo({ width: 0, height: 512, frames: 1, source: 3 }), "");
  });
});

describe("formatModelInfo / describeModel", () => {
  const MODEL = { model: "hallo2/net.pth", family: "hallo2", clip_length: 16, motion_frames: 2, motion_pixel_drop: 0.25 };
  test("the family, its clips and Hallo2's pixel drop", () => {
    assert.equal(formatModelInfo(MODEL), "Hallo2 \u00b7 clips of 16 (2 motion) \u00b7 25% motion pixels dropped");
    assert.equal(formatModelInfo({ ...MODEL, family: "hallo", motion_pixel_drop: 0 }), "Hallo \u00b7 clips of 16 (2 motion)");
    assert.equal(formatModelInfo({ family: "emo", clip_length: 12 }), "EMO \u00b7 clips of 12");
    assert.equal(formatModelInfo({ family: "echomimic" }), "EchoMimic");
    assert.equal(formatModelInfo({ family: "hallo", clip_length: 16, motion_frames: 2, steps: 40, cfg: 3.5, fps: 25 }),
      "Hallo \u00b7 clips of 16 (2 motion)\n40 steps, CFG 3.5, 25 fps");
    assert.equal(describeModel({ [MODEL_KEY]: [{ family: "emo" }, MODEL] }), `EMO\n${formatModelInfo(MODEL)}`);
  });
  test("EchoMimic: context windows and the acc weights' defaults", () => {
    const acc = { family: "echomimic", clip_length: 12, motion_frames: 0, long_video: "context_windows",
      context_overlap: 3, steps: 6, cfg: 1.0, fps: 24 };
    assert.equal(formatModelInfo(acc), "EchoMimic \u00b7 windows of 12 (3 overlap)\n6 steps, no CFG, 24 fps");
    assert.equal(formatModelInfo({ ...acc, steps: 1, cfg: 2.5 }), "EchoMimic \u00b7 windows of 12 (3 overlap)\n1 step, CFG 2.5, 24 fps");
  });
  test("returns an empty string for odd input", () => {
    for (const v of ODD) {
      assert.equal(formatModelInfo(v), "");
      assert.equal(describeModel(v), "");
    }
    assert.equal(formatModelInfo({ family: 3, clip_length: -1, motion_pixel_drop: 2 }), "");
    assert.equal(formatModelInfo({ steps: 0, cfg: -1, fps: "24" }), "");
  });
});

describe("describeAudio / describeFace", () => {
  test("one or two lines per entry from a full executed message", () => {
    assert.equal(describeAudio({ [AUDIO_KEY]: [AUDIO] }),
      "12.34 s \u00b7 309 frames @ 25 fps \u00b7 20 clips of 16 (2 motion)\n44.1 kHz stereo");
    assert.equal(describeFace({ images: [{ filename: "a.png", subfolder: "", type: "temp" }], [FACE_KEY]: [FACE] }),
      formatFaceInfo(FACE));
  });
  test("shows every entry of a list run, at most MAX_ENTRIES, newest last", () => {
    const entries = Array.from({ length: MAX_ENTRIES + 3 }, (_, i) => ({ duration: i }));
    const lines = describeAudio({ [AUDIO_KEY]: entries }).split("\n");
    assert.equal(lines.length, MAX_ENTRIES + 1);
    assert.equal(lines[0], "\u2026 3 earlier");
    assert.equal(lines.at(-1), `${MAX_ENTRIES + 2}.00 s`);
  });
  test("skips entries with nothing to show", () => {
    assert.equal(describeFace({ [FACE_KEY]: [{}, FACE, { box: "?" }] }), formatFaceInfo(FACE));
  });
  test("returns an empty string when the message has no EMO data", () => {
    for (const message of [...ODD, {}, { images: [] }, { [AUDIO_KEY]: [] }]) {
      assert.equal(describeAudio(message), "");
      assert.equal(describeFace(message), "");
    }
  });
});

describe("fitSize", () => {
  test("grows to the needed size and never shrinks the current one", () => {
    assert.deepEqual(fitSize([300, 100], [400, 180]), [400, 180]);
    assert.deepEqual(fitSize([500, 300], [400, 180]), [500, 300]);
    assert.deepEqual(fitSize([500, 100], [400, 180]), [500, 180]);
  });
  test("accepts typed arrays, as LiteGraph keeps node sizes", () => {
    assert.deepEqual(fitSize(new Float32Array([300, 100]), [310, 90]), [310, 100]);
  });
  test("accepts the Proxy that frontend 1.58 hands out as node.size, and never shrinks it", () => {
    assert.deepEqual(fitSize(proxiedSize(300, 212), [212, 100]), [300, 212]);
    assert.deepEqual(fitSize([212, 100], proxiedSize(300, 90)), [300, 100]);
  });
  test("ignores strings, short lists and non-finite entries", () => {
    assert.deepEqual(fitSize("30", [1, 2]), [1, 2]);
    assert.deepEqual(fitSize([5], [1, 2]), [1, 2]);
    assert.deepEqual(fitSize({ 0: 1, 1: Infinity }, [1, 2]), [1, 2]);
  });
  test("falls back to whichever size is usable", () => {
    assert.deepEqual(fitSize(undefined, [400, 180]), [400, 180]);
    assert.deepEqual(fitSize([300, 100], [NaN, 1]), [300, 100]);
    assert.equal(fitSize(null, "x"), null);
  });
});

describe("formatProgress", () => {
  test("clip i of N and the step", () => {
    assert.equal(formatProgress({ clip: 2, clips: 5, step: 3, steps: 20 }), "clip 2 of 5 \u00b7 step 3/20");
  });
  test("the clip alone when the step is missing or odd", () => {
    assert.equal(formatProgress({ clip: 1, clips: 1 }), "clip 1 of 1");
    assert.equal(formatProgress({ clip: 1, clips: 4, step: "3", steps: 0 }), "clip 1 of 4");
  });
  test("nothing without a usable clip count", () => {
    for (const data of [null, undefined, "x", [], {}, { clip: 1 }, { clip: 1, clips: 0 }, { clip: -1, clips: 3 }]) {
      assert.equal(formatProgress(data), "", JSON.stringify(data));
    }
  });
});
