"""Nothing a user can replace is unpickled; names, refs and manifest paths stay inside their roots; presets are validated."""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import tiny_data
from unified_pipeline.datasets import discover, get_kind, undetected
from unified_pipeline.datasets.base import PreprocessConfig, TensorBundle
from unified_pipeline.errors import ConfigError, DatasetError, IntegrityError, PipelineError
from unified_pipeline.hashing import dataset_version
from unified_pipeline.paths import NameError_, check_name, inside
from unified_pipeline.presets import load_preset
from unified_pipeline.registry import ModelRegistry, RegistryError
from unified_pipeline.training.trainer import TrainerConfig

PACKAGE = Path(__file__).resolve().parents[1] / "unified_pipeline"


# ---------------------------------------------------------------- no pickle loading in the source

def _call_args(text: str, start: int) -> str:
    """The argument text of the call whose '(' is at `start` (balanced parentheses)."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1:i]
    return text[start + 1:]


def unsafe_loads(source: str) -> list[str]:
    found = []
    for pattern, is_unsafe in (
        (r"\bc?pickle\.(load|loads|Unpickler)\s*\(", lambda a: True),
        (r"\b(dill|cloudpickle|joblib)\.load\s*\(", lambda a: True),
        (r"\b(pd|pandas)\.read_pickle\s*\(", lambda a: True),
        (r"\btorch\.load\s*\(", lambda a: not re.search(r"weights_only\s*=\s*True", a)),
        (r"\b(np|numpy)\.load\s*\(", lambda a: bool(re.search(r"allow_pickle\s*=\s*True", a))),
        (r"\byaml\.(load|load_all)\s*\(", lambda a: not re.search(r"SafeLoader|CSafeLoader", a)),
        (r"\byaml\.(unsafe_load|full_load)\s*\(", lambda a: True),
    ):
        for m in re.finditer(pattern, source):
            if is_unsafe(_call_args(source, m.end() - 1)):
                found.append(m.group(0))
    return found


def test_scanner_catches_unsafe_calls():
    bad = ("pickle.load(fh)\ntorch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
           "pd.read_pickle(p)\njoblib.load(p)\nyaml.load(s)\nyaml.unsafe_load(s)\n")
    assert len(unsafe_loads(bad)) == 8
    ok = "torch.load(p, map_location='cpu', weights_only=True)\nnp.load(p)\nyaml.load(s, Loader=yaml.SafeLoader)\n"
    assert unsafe_loads(ok) == []


def test_package_source_never_loads_pickles():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    offenders = {str(f.relative_to(PACKAGE)): hits for f in files if (hits := unsafe_loads(f.read_text("utf-8")))}
    assert offenders == {}


# ---------------------------------------------------------------- planted pickles are never unpickled

class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _tiny_text_model(folder: Path) -> Path:
    from unified_pipeline.models.text_transformer import TextTransformer, TextTransformerConfig

    torch.manual_seed(0)
    model = TextTransformer(TextTransformerConfig(vocab_size=6, max_len=8, num_classes=2, d_model=8, n_heads=2,
                                                  n_layers=1, ngram_buckets=0))
    vocab = ["<pad>", "<unk>", "a", "b", "c", "d"]
    model.save(folder, extra={"classes": ["x", "y"], "vocab": vocab, "max_len": 8, "tokenizer": "char"})
    (folder / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5}}))
    return folder


def test_pickles_dropped_into_registry_are_never_unpickled(home, tmp_path):
    from unified_pipeline import inference
    from unified_pipeline.models.base import BaseModel

    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps(_Evil(marker))
    reg = ModelRegistry()
    src = _tiny_text_model(tmp_path / "src")
    version = reg.register("text_service", src, lineage={"data_versions": {}, "code_version": "c", "hparams": {}},
                           metric="accuracy").version
    expected = inference.load_model("text_service")(torch.tensor([[2, 3, 4, 0, 0, 0, 0, 0]]))

    (reg.root / "text_service" / "index.pt").write_bytes(payload)  # beside the index: ignored
    assert [v.number for v in reg.list("text_service")] == [1]
    for name in ("model.pt", "weights.pkl", "checkpoint.pth"):
        (version.path / name).write_bytes(payload)
    with pytest.raises(IntegrityError, match="unexpected file"):
        reg.verify("text_service", 1)
    with pytest.raises(IntegrityError):
        inference.load_model("text_service")
    # Loading the folder directly still only reads safetensors + JSON.
    got = BaseModel.load(version.path)(torch.tensor([[2, 3, 4, 0, 0, 0, 0, 0]]))
    assert torch.equal(got, expected)

    # A pickle posing as the weights file fails to parse instead of executing.
    fake = tmp_path / "fake"
    _tiny_text_model(fake)
    (fake / "weights.safetensors").write_bytes(payload)
    with pytest.raises(SafetensorError, match="deserializing header"):
        BaseModel.load(fake)
    tensors = tmp_path / "tensors"
    TensorBundle({"train/x": torch.zeros(2, 2)}, {"dataset": "d"}).save(tensors)
    (tensors / "tensors.safetensors").write_bytes(payload)
    with pytest.raises(SafetensorError, match="deserializing header"):
        TensorBundle.load(tensors)
    assert not marker.exists()


# ---------------------------------------------------------------- names and paths stay inside their roots

@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "a\\b", "/abs", "Vision", "", "x" * 65, "a\x00b", "a b",
                                  "é", "_x", "1x", None, 5])
def test_check_name_refuses_path_parts(name):
    with pytest.raises(NameError_):
        check_name(name)


def test_inside_refuses_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "out").symlink_to(tmp_path)
    assert inside(root, "sub/../sub") == (root / "sub").resolve()
    for rel in ("..", "../x", "sub/../../x", "/etc/passwd", "out", "out/elsewhere"):
        with pytest.raises(ValueError, match="escapes"):
            inside(root, rel)


def test_dataset_folders_cannot_escape_the_raw_root(home, tmp_path):
    raw = Path(os.environ["UNIFIED_DATA"])
    tiny_data.text(raw)
    outside = tmp_path / "elsewhere"
    tiny_data.text(outside)
    (raw / "linked_text").symlink_to(outside / "tiny_text", target_is_directory=True)
    (raw / "Bad..Name").mkdir()
    (raw / "Bad..Name" / "data.csv").write_text("text,label\nhi,a\n")
    assert [r.name for r in discover()] == ["tiny_text"]
    skipped = undetected()
    assert "outside" in skipped["linked_text"] and "Bad..Name" in skipped
    with pytest.raises((DatasetError, ValueError)):
        discover(strict=True)


def test_files_symlinked_out_of_a_dataset_are_not_read(home, tmp_path):
    raw = Path(os.environ["UNIFIED_DATA"])
    ds = tiny_data.text(raw)
    secret = tmp_path / "secret.csv"
    secret.write_text("text,label\ntop secret,leak\n")
    (ds / "more.csv").symlink_to(secret)
    (ds / "sub").mkdir()
    (ds / "sub" / "up.csv").symlink_to(ds / "data.csv")  # a link that stays inside is fine
    _version, files = dataset_version(ds)
    assert sorted(files) == ["data.csv", "sub/up.csv"]
    manifest = get_kind("text").build_manifest(ds, files)
    assert "top secret" not in set(manifest["text"])


@pytest.mark.parametrize("kind", ["vision", "audio"])
def test_manifest_paths_cannot_escape_the_dataset(home, tmp_path, kind):
    raw = Path(os.environ["UNIFIED_DATA"])
    ds = tiny_data.ALL[kind](raw)
    k = get_kind(kind)
    _version, files = dataset_version(ds)
    manifest = k.build_manifest(ds, files)
    # A real, decodable file outside the dataset: only the path check can refuse it.
    first = manifest["path"].iloc[0]
    escaped = tmp_path / Path(first).name
    escaped.write_bytes((ds / first).read_bytes())
    for bad in (f"../../{escaped.name}", str(escaped), "../../../../../../etc/passwd"):
        tampered = manifest.copy()
        tampered.loc[tampered.index[0], "path"] = bad
        with pytest.raises(DatasetError, match=re.escape(bad)):
            k.build_tensors(ds, tampered, PreprocessConfig(sample_rate=8000, max_audio_seconds=0.2, n_mels=8))


def test_registry_refs_and_names_cannot_escape(tmp_path):
    root = tmp_path / "registry"
    reg = ModelRegistry(root)
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"w")
    lineage = {"data_versions": {}, "code_version": "c", "hparams": {}}
    reg.register("text_service", src, lineage=lineage, metrics={}, promote_rule="never")
    for model in ("../x", "a/b", "..", "/tmp/x", "Text", "text_service/../../x"):
        with pytest.raises((RegistryError, ConfigError)):
            reg.register(model, src, lineage=lineage, metrics={}, promote_rule="never")
        with pytest.raises(RegistryError):
            reg.get(model)
    for ref in ("../v1", "v1/..", "../../x", "v0", "v-1", "/v1", "production/../x", True, 1.5):
        with pytest.raises(RegistryError):
            reg.get("text_service", ref)
    for name in ("text_service/../v1", "../text_service/v1", "text_service/v1/../../x"):
        with pytest.raises(RegistryError):
            reg.resolve(name)
    with pytest.raises(ConfigError):
        reg.register("text_service", src, lineage=lineage, metrics={}, promote_rule="never", tag="../../x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry", "src"]
    assert sorted(p.name for p in root.iterdir()) == ["text_service"]


# ---------------------------------------------------------------- preset values validated before use

def _preset(tmp_path: Path, **changes) -> Path:
    data = {"preset_name": "p", "training_scenarios": {"s": {"epochs": 2, "batch_size": 8}}}
    for dotted, value in changes.items():
        cur = data
        *parents, last = dotted.split("__")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[last] = value
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("change,field", [
    ({"training_scenarios__s__epochs": -1}, "epochs"),
    ({"training_scenarios__s__epochs": 0}, "epochs"),
    ({"training_scenarios__s__epochs": "ten"}, "epochs"),
    ({"training_scenarios__s__epochs": 2.5}, "epochs"),
    ({"training_scenarios__s__batch_size": 10 ** 12}, "batch_size"),
    ({"training_scenarios__s__batch_size": [8]}, "batch_size"),
    ({"training_scenarios__s__learning_rate": -0.1}, "learning_rate"),
    ({"training_scenarios__s__target_models": ["no_such_model"]}, "target_models"),
    ({"training_scenarios__s__target_models": "text_service"}, "target_models"),
    ({"training_scenarios__s__checkpoint_interval": 0}, "checkpoint_interval"),
    ({"training_scenarios": ["s"]}, "training_scenarios"),
    ({"model_specific_presets": {"../evil": {}}}, "model_specific_presets"),
    ({"training_configuration__optimizer": "rmsprop"}, "optimizer"),
    ({"training_configuration__keep_last_checkpoints": 0}, "keep_last_checkpoints"),
    ({"hardware_configuration__slots_per_gpu": 10 ** 6}, "slots_per_gpu"),
    ({"preset_name": None}, "preset_name"),
])
def test_invalid_preset_values_raise_config_error(tmp_path, change, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_preset(_preset(tmp_path, **change))


@pytest.mark.parametrize("override,field", [
    ({"epochs": -3}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"learning_rate": "fast"}, "learning_rate"),
    ({"precision": "fp8"}, "precision"), ({"epochs": 2.5}, "epochs"), ({"grad_clip": -1}, "grad_clip"),
])
def test_model_specific_values_are_checked_before_training(tmp_path, override, field):
    preset = load_preset(_preset(tmp_path, model_specific_presets={"text_service": override}))
    hparams = preset.hparams("s", "text_service")
    with pytest.raises(ConfigError, match=field):
        TrainerConfig.from_hparams(hparams)


def test_preset_path_problems_are_config_errors(tmp_path):
    for path, content in (("bad.json", b"{"), ("latin1.json", b'{"preset_name": "\xe9"}'), ("list.json", b"[1]")):
        (tmp_path / path).write_bytes(content)
        with pytest.raises(ConfigError, match=re.escape(path)):
            load_preset(tmp_path / path)
    with pytest.raises(ConfigError):
        load_preset(tmp_path / "missing.json")
    with pytest.raises(ConfigError):
        load_preset(tmp_path)  # a folder, not a file
    assert issubclass(ConfigError, PipelineError)
