"""Peak memory and time of audio-feature extraction for short vs long audio (random wav2vec2, no download).

Each length runs in its own process so ru_maxrss is that run's peak. Usage:
    python bench/audio_memory.py [--base] [--seconds 30 180]
--base uses wav2vec2-base's shape (95M parameters, random weights); default is a small model.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(seconds: float, base: bool) -> None:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    sys.path.insert(0, str(ROOT))
    from emo_core.audio import AudioSettings, extract_audio_features

    torch.manual_seed(0)
    cfg = Wav2Vec2Config() if base else Wav2Vec2Config(hidden_size=128, num_hidden_layers=4, num_attention_heads=2,
                                                        intermediate_size=256, conv_dim=(64,) * 7,
                                                        num_conv_pos_embedding_groups=4)
    model = Wav2Vec2Model(cfg).eval()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wave = torch.randn(int(seconds * 16000)) * 0.1
    start = time.perf_counter()
    feats = extract_audio_features(model, wave, AudioSettings(fps=25, clip_length=12))
    took = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "frames": feats.num_frames, "time_s": round(took, 2),
                      "peak_rss_mib": round(peak / 1024), "model_rss_mib": round(before / 1024),
                      "features_mib": round(feats.hidden.numel() * 4 / 2 ** 20)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", action="store_true")
    ap.add_argument("--seconds", type=float, nargs="+", default=[30.0, 180.0])
    ap.add_argument("--child", type=float)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.base)
        return
    rows = []
    for s in args.seconds:
        cmd = [sys.executable, __file__, "--child", str(s)] + (["--base"] if args.base else [])
        rows.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()))
    for r in rows:
        print(f"{r['seconds']:7.0f} s audio -> {r['frames']:5d} frames: {r['time_s']:7.2f} s, peak RSS "
              f"{r['peak_rss_mib']} MiB (model loaded: {r['model_rss_mib']} MiB, features {r['features_mib']} MiB)")
    if len(rows) > 1:
        print(f"peak ratio longest/shortest: {rows[-1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.2f} "
              f"for {rows[-1]['seconds'] / rows[0]['seconds']:.0f}x the audio")


if __name__ == "__main__":
    main()
