"""Peak host memory of the NODE path for short vs long audio: EMO Audio Features -> EMO Sampler -> EMO Save Video
(Streaming), with wav2vec2-base's shapes (random weights, saved as a Hugging Face folder) and a small EmoNet.

    python bench/node_memory.py                      # 30 s and 600 s of audio, 64 px, 1 step
    python bench/node_memory.py --seconds 30 120 --size 64 --steps 1 --threads 1
    python bench/node_memory.py --until features      # stop after EMO Audio Features (minutes, not half an hour)

--threads 1 on a shared CPU: torch's default thread pool slowed the small network ~25x on a busy 2-core machine.

Each length runs in a fresh process (ru_maxrss is that run's peak). The audio is synthetic 44.1 kHz stereo, as
Load Audio gives a song; the portrait is a 64 px noise image with a drawn face mask (no MediaPipe needed).
Random weights: the figures are about memory, not quality. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_models(folder: Path) -> None:
    """wav2vec2-base shapes (random) as an HF folder, and a small native EMO checkpoint whose audio projection
    takes wav2vec2-base's 12 layers x 768 features."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from conftest import tiny_emo_config
    from emo_core.checkpoint import save_native
    from emo_core.config import WindowProjectionConfig
    from emo_core.network import EmoNet

    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(folder / "audio_encoders" / "wav2vec2-base")
    projection = WindowProjectionConfig(window=5, blocks=12, channels=768, intermediate_dim=16, output_dim=16,
                                        tokens=4)
    (folder / "emo").mkdir(parents=True)
    save_native(EmoNet(tiny_emo_config(audio_projection=projection)).eval(), str(folder / "emo" / "small.safetensors"))


def synthetic_song(samples: int, rate: int, g):
    """(1, 2, samples) float32 stereo: a tone with a 3 Hz envelope plus noise, filled a second at a time so
    making it adds no transient memory to what is measured."""
    import torch

    wave = torch.empty(1, 2, samples)
    for a in range(0, samples, rate):
        t = torch.arange(a, min(a + rate, samples), dtype=torch.float64) / rate
        tone = (0.3 * torch.sin(2 * torch.pi * 220 * t) * torch.sin(2 * torch.pi * 3 * t)).float()
        wave[0, :, a:a + t.shape[0]] = tone + 0.05 * torch.randn(2, t.shape[0], generator=g)
    return wave


def child(seconds: float, size: int, steps: int, models: str, threads: int, until: str = "save") -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)

    os.environ["EMO_MODELS_DIR"] = models
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from comfy_fakes import TinyVAE
    from conftest import load_pack

    nodes = load_pack().NODE_CLASS_MAPPINGS
    marks = {"start": rss_mib()}

    def run(node_id, **kwargs):
        node = nodes[node_id]()
        out = getattr(node, node.FUNCTION)(**kwargs)
        marks[node_id] = rss_mib()
        return out["result"] if isinstance(out, dict) and "result" in out else out

    (model,) = run("EMO_ModelLoader", model_name="small.safetensors", precision="fp32")
    (encoder,) = run("EMO_AudioEncoderLoader", encoder_name="wav2vec2-base")
    vae, g = TinyVAE(), torch.Generator().manual_seed(0)
    image = torch.rand(1, size, size, 3, generator=g)
    mask = torch.zeros(1, size, size)
    mask[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    rate = 44100
    audio = {"waveform": synthetic_song(int(seconds * rate), rate, g), "sample_rate": rate}
    marks["audio loaded"] = rss_mib()
    start = time.perf_counter()
    (reference,) = run("EMO_ReferenceEncode", emo_model=model, vae=vae, image=image)
    feats, frames, fps = run("EMO_AudioFeatures", emo_model=model, audio_encoder=encoder, audio=audio, fps=25.0)
    if until == "features":  # the audio stage alone (where the peak is); the rest is measured by full runs
        return {"seconds": seconds, "frames": frames, "time_s": round(time.perf_counter() - start, 1),
                "peak_rss_mib": round(rss_mib()), "after_mib": {k: round(v) for k, v in marks.items()},
                "mp4_mib": 0, "features_mib": round(feats.features.hidden.numel() * 4 / 2 ** 20), "latents_mib": 0,
                "audio_mib": round(audio["waveform"].numel() * 4 / 2 ** 20)}
    region, _ = run("EMO_FaceLocator", emo_model=model, image=image, expand_ratio=1.2, face_mask=mask)
    graph = {"1": {"class_type": "EMO_Sampler", "inputs": {}},
             "2": {"class_type": "EMO_SaveVideo", "inputs": {"latent": ["1", 0]}}}
    (latent,) = run("EMO_Sampler", emo_model=model, reference=reference, audio_features=feats, face_region=region,
                    seed=1, steps=steps, cfg=3.5, sampler_name="ddim", vae=vae, prompt=graph, unique_id="1")
    ui = run("EMO_SaveVideo", latent=latent, vae=vae, fps=fps, filename_prefix="bench/video", audio=audio)
    took = time.perf_counter() - start
    saved = Path(os.environ["EMO_OUTPUT_DIR"]) / ui["ui"]["images"][0]["subfolder"] / ui["ui"]["images"][0]["filename"]
    return {"seconds": seconds, "frames": frames, "time_s": round(took, 1), "peak_rss_mib": round(rss_mib()),
            "after_mib": {k: round(v) for k, v in marks.items()}, "mp4_mib": round(saved.stat().st_size / 2 ** 20, 2),
            "features_mib": round(feats.features.hidden.numel() * 4 / 2 ** 20),
            "latents_mib": round(latent["samples"].numel() * 4 / 2 ** 20, 1),
            "audio_mib": round(audio["waveform"].numel() * 4 / 2 ** 20)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, nargs="+", default=[30.0, 600.0])
    p.add_argument("--size", type=int, default=64, help="portrait size in pixels (square)")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--until", choices=["save", "features"], default="save",
                   help="run the whole node path, or stop after EMO Audio Features")
    p.add_argument("--child", type=float, help=argparse.SUPPRESS)
    p.add_argument("--models", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.size, args.steps, args.models, args.threads, args.until)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_models(Path(tmp) / "models")
        env = dict(os.environ, EMO_OUTPUT_DIR=str(Path(tmp) / "output"))
        for s in args.seconds:
            cmd = [sys.executable, __file__, "--child", str(s), "--size", str(args.size), "--steps", str(args.steps),
                   "--threads", str(args.threads), "--until", args.until, "--models", str(Path(tmp) / "models")]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if done.returncode != 0:
                sys.exit(f"the {s:g} s run failed:\n{done.stderr[-4000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    for r in rows:
        print(f"{r['seconds']:6.0f} s audio, {r['frames']:6d} frames: {r['time_s']:7.1f} s, peak RSS {r['peak_rss_mib']} "
              f"MiB (input AUDIO {r['audio_mib']} MiB, features {r['features_mib']} MiB, latents {r['latents_mib']} "
              f"MiB, MP4 {r['mp4_mib']} MiB)")
        print("        RSS peak after each step (MiB): " + ", ".join(f"{k} {v}" for k, v in r["after_mib"].items()))
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        own = (last["peak_rss_mib"] - last["audio_mib"]) / (first["peak_rss_mib"] - first["audio_mib"])
        print(f"peak ratio longest/shortest: {last['peak_rss_mib'] / first['peak_rss_mib']:.2f} for "
              f"{last['seconds'] / first['seconds']:.0f}x the audio; {own:.2f} without the input AUDIO itself "
              "(Load Audio's tensor, which ComfyUI holds whatever the pack does)")


if __name__ == "__main__":
    main()
