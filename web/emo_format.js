// Text shown on EMO nodes after a run. Pure functions: no ComfyUI imports, no DOM, no side effects on import
// (ComfyUI imports every .js file under web/ as an extension module, this one included).
//
// The ui dicts come from the Python nodes (every ui value is a list):
//   EMO_AudioFeatures -> {"emo_audio": [{duration, frames, fps, clips, clip_length, motion_frames,
//                                         sample_rate, channels}]}
//   EMO_FaceLocator   -> {"images": [...], "emo_face": [{box: [x0, y0, x1, y1], width, height, frames, source}]}
//   EMO_ModelLoader   -> {"emo_model": [{model, family, clip_length, motion_frames, motion_pixel_drop, long_video,
//                                         context_overlap, steps, cfg, fps}]}
// Every function here tolerates missing or odd fields: it leaves that part out, or returns "" / null.

export const AUDIO_KEY = "emo_audio";
export const FACE_KEY = "emo_face";
export const MODEL_KEY = "emo_model";

/** Entries shown at most; a node run over a list of inputs sends one entry per run. */
export const MAX_ENTRIES = 8;

const SEP = " \u00b7 "; // " · "
const TIMES = "\u00d7"; // "×"
const SOURCES = { mediapipe: "MediaPipe", mask: "from mask" };
const FAMILIES = { emo: "EMO", hallo: "Hallo", hallo2: "Hallo2", echomimic: "EchoMimic" };

function isPlainObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function finite(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

/** A finite number >= 0, or null. */
function count(value) {
  const n = finite(value);
  return n !== null && n >= 0 ? n : null;
}

/** At most `digits` decimals, trailing zeros dropped: 25 -> "25", 29.97 -> "29.97", 23.976 -> "23.98". */
export function formatNumber(value, digits = 2) {
  const n = finite(value);
  if (n === null) return "";
  const text = String(Number(n.toFixed(digits)));
  return text === "-0" ? "0" : text;
}

function plural(n, word) {
  return `${formatNumber(n, 0)} ${word}${Math.round(n) === 1 ? "" : "s"}`;
}

/** Every plain-object entry of message[key] (a list, or tolerated: a single object); [] when none. */
export function parseUiEntries(message, key) {
  if (!isPlainObject(message)) return [];
  const value = message[key];
  if (Array.isArray(value)) return value.filter(isPlainObject);
  return isPlainObject(value) ? [value] : [];
}

/** The last entry of message[key] (the newest run), or null when there is none. */
export function parseUiMessage(message, key) {
  const entries = parseUiEntries(message, key);
  return entries.length ? entries[entries.length - 1] : null;
}

/** "12.34 s · 309 frames @ 25 fps · 20 clips of 16 (2 motion)"; "" when nothing usable. */
export function formatAudioInfo(info) {
  if (!isPlainObject(info)) return "";
  const parts = [];
  const duration = count(info.duration);
  if (duration !== null) parts.push(`${duration.toFixed(2)} s`);

  const frames = count(info.frames);
  const fps = count(info.fps);
  const rate = fps !== null && fps > 0 ? `${formatNumber(fps)} fps` : "";
  if (frames !== null) parts.push(rate ? `${plural(frames, "frame")} @ ${rate}` : plural(frames, "frame"));
  else if (rate) parts.push(rate);

  const clips = count(info.clips);
  if (clips !== null) {
    let text = plural(clips, "clip");
    const length = count(info.clip_length);
    if (length !== null && length > 0) text += ` of ${formatNumber(length, 0)}`;
    const motion = count(info.motion_frames);
    if (motion !== null) text += ` (${formatNumber(motion, 0)} motion)`;
    parts.push(text);
  }
  return parts.join(SEP);
}

/** "44.1 kHz stereo" from the source audio's sample rate and channel count; "" when neither is usable. */
export function formatAudioSource(info) {
  if (!isPlainObject(info)) return "";
  const parts = [];
  const rate = count(info.sample_rate);
  if (rate !== null && rate > 0) parts.push(`${formatNumber(rate / 1000, 3)} kHz`);
  const channels = count(info.channels);
  if (channels !== null && channels > 0) {
    const n = Math.round(channels);
    parts.push(n === 1 ? "mono" : n === 2 ? "stereo" : `${n} channels`);
  }
  return parts.join(" ");
}

/** [x0, y0, x1, y1] rounded to integers, or null unless it is a list of four finite numbers. */
function parseBox(box) {
  if (!Array.isArray(box) || box.length !== 4) return null;
  const values = box.map(finite);
  return values.includes(null) ? null : values.map(Math.round);
}

function formatSource(source) {
  if (typeof source !== "string") return "";
  const key = source.trim().toLowerCase();
  if (Object.hasOwn(SOURCES, key)) return SOURCES[key];
  return source.trim().slice(0, 32);
}

/**
 * Two lines, so that a narrow node shows them whole: "face box 120,80 – 392,400 (272×320)" and
 * "image 512×512 · MediaPipe" (the frame count too, for several frames); "" when nothing usable.
 */
export function formatFaceInfo(info) {
  if (!isPlainObject(info)) return "";
  const details = [];
  const box = parseBox(info.box);
  const width = count(info.width);
  const height = count(info.height);
  if (width && height) details.push(`image ${formatNumber(width, 0)}${TIMES}${formatNumber(height, 0)}`);
  const frames = count(info.frames);
  if (frames !== null && frames > 1) details.push(plural(frames, "frame"));
  const source = formatSource(info.source);
  if (source) details.push(source);

  const lines = [];
  if (box) {
    const [x0, y0, x1, y1] = box;
    const size = x1 > x0 && y1 > y0 ? ` (${x1 - x0}${TIMES}${y1 - y0})` : " (empty)";
    lines.push(`face box ${x0},${y0} \u2013 ${x1},${y1}${size}`);
  }
  if (details.length) lines.push(details.join(SEP));
  return lines.join("\n");
}

/**
 * "Hallo2 · clips of 16 (2 motion) · 25% motion pixels dropped\n40 steps, CFG 3.5, 25 fps";
 * EchoMimic: "EchoMimic · windows of 12 (3 overlap)\n6 steps, no CFG, 24 fps"; "" when nothing usable.
 */
export function formatModelInfo(info) {
  if (!isPlainObject(info)) return "";
  const parts = [];
  if (typeof info.family === "string" && info.family.trim()) {
    const key = info.family.trim().toLowerCase();
    parts.push(Object.hasOwn(FAMILIES, key) ? FAMILIES[key] : info.family.trim().slice(0, 32));
  }
  const length = count(info.clip_length);
  if (length !== null && length > 0) {
    if (info.long_video === "context_windows") {
      const overlap = count(info.context_overlap);
      parts.push(`windows of ${formatNumber(length, 0)}` + (overlap !== null ? ` (${formatNumber(overlap, 0)} overlap)` : ""));
    } else {
      const motion = count(info.motion_frames);
      parts.push(`clips of ${formatNumber(length, 0)}` + (motion !== null ? ` (${formatNumber(motion, 0)} motion)` : ""));
    }
  }
  const drop = count(info.motion_pixel_drop);
  if (drop !== null && drop > 0 && drop < 1) parts.push(`${formatNumber(drop * 100, 1)}% motion pixels dropped`);
  // The defaults on a line of their own keep the node about as narrow as the loader's widgets.
  return [parts.join(SEP), formatDefaults(info)].filter(Boolean).join("\n");
}

/** The family's sampling defaults (what steps 0, cfg -1 and fps 0 take): "6 steps, no CFG, 24 fps". */
function formatDefaults(info) {
  const parts = [];
  const steps = count(info.steps);
  if (steps !== null && steps >= 1) parts.push(plural(steps, "step"));
  const cfg = count(info.cfg);
  if (cfg !== null) parts.push(cfg <= 1 ? "no CFG" : `CFG ${formatNumber(cfg, 2)}`);
  const fps = count(info.fps);
  if (fps !== null && fps > 0) parts.push(`${formatNumber(fps, 3)} fps`);
  return parts.join(", ");
}

function describeEach(message, key, formatEntry) {
  const entries = parseUiEntries(message, key);
  const lines = entries.slice(-MAX_ENTRIES).map(formatEntry).filter(Boolean);
  const hidden = entries.length - Math.min(entries.length, MAX_ENTRIES);
  if (hidden > 0 && lines.length) lines.unshift(`\u2026 ${hidden} earlier`);
  return lines.join("\n");
}

/** The audio node's text for one `executed` message: one or two lines per entry; "" when none. */
export function describeAudio(message) {
  return describeEach(message, AUDIO_KEY, (info) =>
    [formatAudioInfo(info), formatAudioSource(info)].filter(Boolean).join("\n"));
}

/** The face-locator node's text for one `executed` message: one or two lines per entry; "" when none. */
export function describeFace(message) {
  return describeEach(message, FACE_KEY, formatFaceInfo);
}

/**
 * The node size after adding a widget: grown to `needed`, never shrunk below what the user set.
 * A size is anything indexable with two finite numbers: an array, a typed array, or the Proxy around one that
 * newer frontends (1.58) hand out as node.size (Array.isArray and ArrayBuffer.isView are false for it, and a
 * typed array's length getter throws through it, so only [0] and [1] are read).
 * Returns null when neither size is usable.
 */
export function fitSize(current, needed) {
  const pair = (s) => s !== null && typeof s === "object" && finite(s[0]) !== null && finite(s[1]) !== null
    ? [s[0], s[1]] : null;
  const a = pair(current);
  const b = pair(needed);
  if (!a && !b) return null;
  if (!a) return b;
  if (!b) return a;
  return [Math.max(a[0], b[0]), Math.max(a[1], b[1])];
}

/** "clip 2 of 5 · step 3/20" from an `emo.progress` message's data; "" when it has no usable clip count. */
export function formatProgress(data) {
  if (!isPlainObject(data)) return "";
  const clip = count(data.clip);
  const clips = count(data.clips);
  if (clip === null || clips === null || clips < 1) return "";
  let text = `clip ${formatNumber(clip, 0)} of ${formatNumber(clips, 0)}`;
  const step = count(data.step);
  const steps = count(data.steps);
  if (step !== null && steps !== null && steps > 0) text += `${SEP}step ${formatNumber(step, 0)}/${formatNumber(steps, 0)}`;
  return text;
}

/** The model loader's text for one `executed` message: one line per entry; "" when none. */
export function describeModel(message) {
  return describeEach(message, MODEL_KEY, formatModelInfo);
}
