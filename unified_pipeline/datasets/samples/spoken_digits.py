"""Spoken digits "zero".."nine" synthesised offline with eSpeak NG, with background noise.

eSpeak NG comes from the `espeakng-loader` wheel (shared library + voice data) and is driven
through ctypes in synchronous mode: a callback collects the int16 samples. Voice, variant,
rate, pitch, pitch range, leading silence, noise colour and SNR are drawn from a seeded RNG.

eSpeak keeps state between utterances inside one process (a function-static pitch-flutter
index that no API resets), so the same utterance sounds slightly different the second time.
The synthesis therefore runs in a fresh child interpreter: from a fresh start the sequence of
utterances is bit-identical, which makes the whole folder a pure function of (seed, per_class).
"""
from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from unified_pipeline.atomic import atomic_dir

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOICES = ("en", "en-us", "en-029", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-gb-x-rp", "en-us-nyc")
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5", "+klatt", "+klatt2")
PER_CLASS = 160
_ESPEAK_SEED = 12345

# espeak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4


def plan(seed: int, per_class: int = PER_CLASS) -> list[dict]:
    """What to say and how: one job per clip, drawn from the seed."""
    rng = np.random.default_rng(seed)
    jobs = []
    for i in range(per_class):
        for word in WORDS:
            jobs.append({
                "word": word,
                "name": f"{word}_{i:04d}.wav",
                "voice": VOICES[rng.integers(len(VOICES))] + VARIANTS[rng.integers(len(VARIANTS))],
                "rate": int(rng.integers(120, 231)),  # words per minute
                "pitch": int(rng.integers(15, 86)),  # 0..100
                "range": int(rng.integers(20, 81)),  # 0..100
            })
    return jobs


class _Espeak:
    """The eSpeak NG library in synchronous mode; one per process."""

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate}) with data path {data.decode()}")
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = callback_type(self._collect)  # kept alive: eSpeak holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        lib.espeak_ng_SetRandSeed(_ESPEAK_SEED)
        self.lib = lib

    def _collect(self, wav, n, _events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, job: dict) -> np.ndarray:
        lib = self.lib
        status = lib.espeak_SetVoiceByName(job["voice"].encode())
        if status != 0:
            raise RuntimeError(f"eSpeak voice {job['voice']!r} not available (status {status})")
        for param, value in ((_RATE, job["rate"]), (_PITCH, job["pitch"]), (_RANGE, job["range"])):
            lib.espeak_SetParameter(param, value, 0)
        text = job["word"].encode() + b"\0"
        self._chunks = []
        status = lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed for {job} (status {status})")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def _child_main() -> None:
    """Read jobs (JSON) on stdin; write the sample rate, then each clip as length + int16 bytes."""
    jobs = json.load(sys.stdin)
    engine = _Espeak()
    out = sys.stdout.buffer
    out.write(struct.pack("<q", engine.sample_rate))
    for job in jobs:
        clip = engine.say(job).astype("<i2")
        out.write(struct.pack("<q", clip.size))
        out.write(clip.tobytes())
    out.flush()


def synthesise(jobs: list[dict]) -> tuple[int, list[np.ndarray]]:
    """Clean int16 utterances for `jobs`, synthesised in a fresh interpreter (see module doc)."""
    package_parent = str(Path(__file__).resolve().parents[3])
    env = dict(os.environ)
    env["PYTHONPATH"] = package_parent + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "unified_pipeline.datasets.samples.spoken_digits"],
        input=json.dumps(jobs).encode(), capture_output=True, env=env, timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"eSpeak NG synthesis failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    buf = proc.stdout
    (sample_rate,) = struct.unpack_from("<q", buf, 0)
    pos, clips = 8, []
    for _ in jobs:
        (n,) = struct.unpack_from("<q", buf, pos)
        pos += 8
        clips.append(np.frombuffer(buf, dtype="<i2", count=n, offset=pos).astype(np.int16))
        pos += 2 * n
    return int(sample_rate), clips


def _coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Noise with a 1/f^alpha spectrum, alpha in [0, 1.5]: from white hiss to rumble."""
    alpha = rng.uniform(0.0, 1.5)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / freqs ** (alpha / 2), n)
    return noise / (noise.std() + 1e-12)


def add_noise(clean: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Place the word after random silence, add noise at a random SNR (5..30 dB), rescale."""
    speech = clean.astype(np.float64) / 32768.0
    lead = int(rng.uniform(0.0, 0.2) * sample_rate)
    tail = int(rng.uniform(0.05, 0.2) * sample_rate)
    signal = np.concatenate([np.zeros(lead), speech, np.zeros(tail)])
    speech_rms = np.sqrt(np.mean(speech ** 2)) if speech.size else 0.0
    snr_db = rng.uniform(5.0, 30.0)
    mixed = signal + _coloured_noise(rng, signal.size) * speech_rms / 10 ** (snr_db / 20)
    peak = np.abs(mixed).max() or 1.0
    mixed *= rng.uniform(0.3, 0.9) / peak
    return np.round(mixed * 32767).astype(np.int16)


def generate_spoken_digits(dest: Path, seed: int = 0, per_class: int = PER_CLASS) -> Path:
    """Write `per_class` noisy clips of each spoken digit under `dest` (kept as is when it exists)."""
    import soundfile as sf

    dest = Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    jobs = plan(seed, per_class)
    sample_rate, clips = synthesise(jobs)
    rng = np.random.default_rng([seed, 1])  # independent of the plan's stream
    with atomic_dir(dest) as tmp:
        for job, clip in zip(jobs, clips):
            if clip.size == 0:
                raise RuntimeError(f"eSpeak NG produced no audio for {job}")
            folder = tmp / job["word"]
            folder.mkdir(exist_ok=True)
            sf.write(folder / job["name"], add_noise(clip, sample_rate, rng), sample_rate, subtype="PCM_16", format="WAV")
    return dest


if __name__ == "__main__":
    _child_main()
