"""Model registry: versions, aliases and promotion, compare, rollback, retention, integrity, CLI."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from unified_pipeline.errors import ConfigError, IntegrityError
from unified_pipeline.registry import (
    ModelRegistry, RegistryError, file_set, warm_start_decision, warm_start_record,
)
from unified_pipeline.registry.cli import add_models_parser, run_models_command

M = "vision_service"


def lineage(**extra):
    base = {"data_versions": {"shapes": "abc123"}, "code_version": "code1", "scenario": "collaborative_training",
            "hparams": {"epochs": 2, "learning_rate": 0.01}, "parent": None, "run_id": "run-1", "seed": 0,
            "device": "cpu", "wall_time_s": 1.5}
    base.update(extra)
    return base


def model_folder(tmp_path: Path, name: str, accuracy: float | None = 0.9, payload: bytes = b"") -> Path:
    folder = tmp_path / "src" / name
    (folder / "plots").mkdir(parents=True)
    (folder / "weights.safetensors").write_bytes(b"weights-" + name.encode() + payload)
    (folder / "config.json").write_text(json.dumps({"architecture": "vision_cnn", "module": "m",
                                                    "config": {"width": 8}, "extra": {"classes": ["a", "b"]}}))
    metrics = {"test": {"accuracy": accuracy, "loss": 1 - accuracy}, "val": {"accuracy": accuracy}} if accuracy else {}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "history.json").write_text("[]")
    (folder / "plots" / "loss.png").write_bytes(b"\x89PNG fake " + name.encode())
    return folder


@pytest.fixture
def reg(tmp_path):
    return ModelRegistry(tmp_path / "registry")


def add(reg, tmp_path, name, accuracy=0.9, **kw):
    kw.setdefault("metric", "accuracy")
    kw.setdefault("lineage", lineage())
    return reg.register(M, model_folder(tmp_path, name, accuracy), **kw)


def test_register_writes_immutable_checksummed_version(reg, tmp_path):
    res = add(reg, tmp_path, "a", fingerprint="fp1", tag="stable")
    v = res.version
    assert (v.number, v.name, v.tag, v.fingerprint) == (1, "vision_service/v1", "stable", "fp1")
    assert v.path == tmp_path / "registry" / M / "v1"
    meta = json.loads((v.path / "version.json").read_text())
    assert meta["model"] == M and meta["version"] == 1 and meta["lineage"]["run_id"] == "run-1"
    assert meta["metrics"]["test"]["accuracy"] == 0.9  # read from the folder's metrics.json
    assert set(meta["files"]) == {"weights.safetensors", "config.json", "metrics.json", "history.json", "plots/loss.png"}
    import hashlib
    for rel, rec in meta["files"].items():
        data = (v.path / rel).read_bytes()
        assert rec == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert meta["size"] == sum(r["size"] for r in meta["files"].values())
    assert all((v.path / rel).stat().st_mode & 0o222 == 0 for rel in meta["files"])  # read-only
    assert res.promoted and "first production" in res.reason
    assert v.aliases == ["latest", "production"]


def test_numbers_are_monotonic_even_after_prune(reg, tmp_path):
    for i in range(4):
        add(reg, tmp_path, f"n{i}", promote_rule="never")
    report = reg.prune(M, keep=1)
    assert report.removed == [f"{M}/v{i}" for i in (1, 2, 3)]
    assert add(reg, tmp_path, "n4").version.number == 5
    assert [v.number for v in reg.list(M)] == [4, 5]
    with pytest.raises(RegistryError, match="v2 does not exist \\(pruned\\)"):
        reg.get(M, "v2")


def test_lineage_and_rule_validation(reg, tmp_path):
    src = model_folder(tmp_path, "x")
    with pytest.raises(ConfigError, match="code_version"):
        reg.register(M, src, lineage={"data_versions": {}, "hparams": {}}, metric="accuracy")
    with pytest.raises(ConfigError, match="needs metric"):
        reg.register(M, src, lineage=lineage())
    with pytest.raises(ConfigError, match="unknown promote_rule"):
        reg.register(M, src, lineage=lineage(), promote_rule="sometimes")
    with pytest.raises(RegistryError, match="invalid model name"):
        reg.register("../evil", src, lineage=lineage(), metric="accuracy")
    assert reg.list() == []


def test_promotion_rules_and_reasons(reg, tmp_path):
    add(reg, tmp_path, "a", 0.962)
    worse = add(reg, tmp_path, "b", 0.951)
    assert not worse.promoted
    assert worse.reason == "test accuracy 0.951 < production v1 0.962"
    assert reg.get(M).number == 1 and reg.get(M, "latest").number == 2
    assert worse.version.aliases == ["latest"]

    equal = add(reg, tmp_path, "c", 0.962, promote_rule="strictly_better")
    assert not equal.promoted and "0.962 = production v1 0.962" in equal.reason
    equal = add(reg, tmp_path, "d", 0.962)  # better_or_equal (default)
    assert equal.promoted and reg.get(M, "production").number == 4

    forced = add(reg, tmp_path, "e", 0.1, promote_rule="always")
    assert forced.promoted and forced.previous_production == f"{M}/v4"
    assert not add(reg, tmp_path, "f", 0.99, promote_rule="never").promoted

    # lower is better: a higher loss is refused and says so
    lossy = add(reg, tmp_path, "g", 0.05, metric="loss", higher_is_better=False)
    assert not lossy.promoted
    assert lossy.reason == "test loss 0.95 > production v5 0.9 (lower is better)"
    better = add(reg, tmp_path, "h", 0.95, metric="loss", higher_is_better=False)
    assert better.promoted

    missing = reg.register(M, model_folder(tmp_path, "i", None), lineage=lineage(), metric="accuracy")
    assert not missing.promoted and missing.reason == "v9 has no test accuracy; production stays v8"
    promotes = [e for e in reg.events(M) if e["event"] == "promote"]
    assert [e["version"] for e in promotes] == [f"{M}/v{n}" for n in (1, 4, 5, 8)]


def test_never_rule_leaves_no_production_and_get_falls_back(reg, tmp_path):
    add(reg, tmp_path, "a", promote_rule="never")
    add(reg, tmp_path, "b", promote_rule="never")
    assert reg.get(M).number == 2  # no production: falls back to latest
    with pytest.raises(RegistryError, match="no production"):
        reg.get(M, "production")
    with pytest.raises(RegistryError, match="bad version reference"):
        reg.get(M, "v0")
    with pytest.raises(RegistryError, match="no versions of model 'audio_service'"):
        reg.get("audio_service")
    assert reg.get(M, 1).number == reg.get(M, "1").number == reg.get(M, "v1").number == 1


def test_find_by_fingerprint_returns_newest(reg, tmp_path):
    add(reg, tmp_path, "a", fingerprint="same")
    add(reg, tmp_path, "b", fingerprint="other")
    add(reg, tmp_path, "c", fingerprint="same")
    assert reg.find_by_fingerprint(M, "same").number == 3
    assert reg.find_by_fingerprint(M, "nope") is None
    assert reg.find_by_fingerprint("audio_service", "same") is None


def test_compare_reports_deltas_and_lineage(reg, tmp_path):
    add(reg, tmp_path, "a", 0.8, fingerprint="f1")
    add(reg, tmp_path, "b", 0.9, fingerprint="f2", lineage=lineage(hparams={"epochs": 5, "learning_rate": 0.01}))
    c = reg.compare(f"{M}/v1", "v2")
    acc = next(m for m in c.metrics if m["key"] == "test.accuracy")
    assert acc["a"] == 0.8 and acc["b"] == 0.9 and acc["delta"] == pytest.approx(0.1)
    changed = {d["key"]: (d["a"], d["b"]) for d in c.lineage}
    assert changed == {"hparams.epochs": (2, 5), "fingerprint": ("f1", "f2")}
    assert "weights.safetensors" in c.files["changed"] and "config.json" not in c.files["changed"]
    text = c.text()
    assert "test.accuracy" in text and "+0.1" in text and "hparams.epochs" in text
    assert c.to_dict()["a"] == f"{M}/v1"


def test_rollback_default_to_and_append_only_log(reg, tmp_path):
    for name, acc in (("a", 0.7), ("b", 0.8), ("c", 0.9)):
        add(reg, tmp_path, name, acc)
    log = tmp_path / "registry" / M / "events.jsonl"
    before = log.read_bytes()
    v = reg.rollback(M, reason="v3 misbehaves", who="alice")
    assert v.number == 2 and reg.get(M).number == 2
    after = log.read_bytes()
    assert after.startswith(before) and after.count(b"\n") == before.count(b"\n") + 1
    event = json.loads(after.splitlines()[-1])
    assert event["event"] == "rollback" and event["who"] == "alice" and event["reason"] == "v3 misbehaves"
    assert (event["from"], event["to"]) == (f"{M}/v3", f"{M}/v2") and event["at"]
    assert reg.rollback(M).number == 1  # walks further back instead of flip-flopping
    with pytest.raises(RegistryError, match="nothing earlier"):
        reg.rollback(M)
    assert reg.rollback(M, to="v3").number == 3
    with pytest.raises(RegistryError, match="already production"):
        reg.rollback(M, to=3)
    assert reg.promote(M, "v1", reason="manual").aliases == ["production"]
    assert reg.rollback(M).number == 3
    assert log.read_bytes().startswith(after)
    assert [e["event"] for e in reg.events(M)][-4:] == ["rollback", "rollback", "promote", "rollback"]


def test_prune_keeps_every_version_that_held_an_alias(reg, tmp_path):
    add(reg, tmp_path, "a", 0.9)                       # v1 production
    add(reg, tmp_path, "b", 0.5)                       # v2
    add(reg, tmp_path, "c", 0.95)                      # v3 production
    add(reg, tmp_path, "d", 0.5)                       # v4
    reg.rollback(M)                                    # production back to v1
    for name in "efg":
        add(reg, tmp_path, name, 0.1)                  # v5..v7 not promoted
    dry = reg.prune(M, keep=2, dry_run=True)
    assert dry.dry_run and dry.removed == [f"{M}/v{n}" for n in (2, 4, 5)] and dry.freed_bytes > 0
    assert len(reg.list(M)) == 7
    report = reg.prune(M, keep=2)
    assert report.removed == dry.removed
    assert report.kept == {f"{M}/v1": "holds alias production", f"{M}/v3": "was production",
                           f"{M}/v6": "among the newest 2", f"{M}/v7": "holds alias latest"}
    assert [v.number for v in reg.list(M)] == [1, 3, 6, 7]
    assert not (tmp_path / "registry" / M / "v2").exists()
    assert not [p for p in (tmp_path / "registry" / M).iterdir() if p.name.endswith(".partial")]
    assert reg.events(M)[-1]["removed"] == report.removed
    assert reg.prune(M, keep=1).removed == [f"{M}/v6"]
    with pytest.raises(ConfigError):
        reg.prune(M, keep=0)


def _tamper(path: Path, data: bytes) -> None:
    path.chmod(0o644)
    path.write_bytes(data)


def test_tampered_files_are_refused(reg, tmp_path):
    v = add(reg, tmp_path, "a").version
    assert reg.model_dir(M) == v.path
    weights = v.path / "weights.safetensors"
    recorded = v.files["weights.safetensors"]["sha256"]
    _tamper(weights, b"evil")
    import hashlib
    with pytest.raises(IntegrityError) as err:
        reg.model_dir(M, "v1")
    msg = str(err.value)
    assert str(weights) in msg and recorded in msg and hashlib.sha256(b"evil").hexdigest() in msg
    weights.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        reg.verify(v)

    w = add(reg, tmp_path, "b").version
    (w.path / "plots" / "extra.png").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="unexpected file .*extra.png"):
        reg.verify(M, 2)
    u = add(reg, tmp_path, "c").version
    record = json.loads((u.path / "version.json").read_text())
    record["files"]["weights.safetensors"]["sha256"] = "0" * 64
    _tamper(u.path / "version.json", json.dumps(record).encode())
    with pytest.raises(IntegrityError, match="version.json: sha256"):
        reg.get(M, 3)


def test_leftovers_of_killed_writers_are_ignored_then_cleaned(reg, tmp_path):
    add(reg, tmp_path, "a")
    mdir = tmp_path / "registry" / M
    (mdir / ".v2.abc.partial").mkdir()
    (mdir / ".v2.abc.partial" / "weights.safetensors").write_bytes(b"half")
    (mdir / "v7").mkdir()  # renamed into place but never indexed
    assert [v.number for v in reg.list(M)] == [1]
    assert add(reg, tmp_path, "b").version.number == 2
    assert sorted(p.name for p in mdir.iterdir() if p.is_dir()) == ["v1", "v2"]


def test_card_describes_the_version(reg, tmp_path):
    add(reg, tmp_path, "a", 0.875, tag="stable", fingerprint="fp")
    card = reg.card(M)
    for needle in (f"{M}/v1", "production", "architecture vision_cnn", "classes      a, b", "shapes: abc123",
                   "test.accuracy", "0.875", "plots/loss.png", "hparam       epochs = 2", "BaseModel.load(folder)",
                   "model_dir('vision_service', 'v1')", "stable"):
        assert needle in card, needle


def test_tag_is_logged(reg, tmp_path):
    add(reg, tmp_path, "a", tag="experimental")
    assert reg.tag(M, 1, "backup", reason="keep", who="bob").tag == "backup"
    assert reg.get(M, 1).tag == "backup"
    assert reg.events(M)[-1] | {"at": None} == {"event": "tag", "version": f"{M}/v1", "from": "experimental",
                                                "to": "backup", "reason": "keep", "who": "bob", "at": None}


def test_warm_start_decision():
    prev = file_set({f"f{i}.png": f"h{i}" for i in range(10)})
    same = set(prev)
    assert warm_start_decision(prev, same) == (True, 0.0)
    one_added = prev | {"new.png:hx"}
    assert warm_start_decision(prev, one_added) == (True, pytest.approx(1 / 11))
    changed = file_set({f"f{i}.png": (f"h{i}" if i > 2 else "zz") for i in range(10)})
    used, frac = warm_start_decision(prev, changed)
    assert not used and frac == pytest.approx(6 / 13)
    assert warm_start_decision(set(), same) == (False, 1.0)
    assert warm_start_record(True, 1 / 11, 0.2, f"{M}/v3")["parent"] == f"{M}/v3"
    with pytest.raises(ValueError):
        warm_start_decision(prev, same, 1.5)


# ---------------------------------------------------------------- CLI
def cli(root: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_models_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["models", "--root", str(root), *argv])


def run(capsys, root, *argv):
    args = cli(root, *argv)
    code = args.func(args)
    assert args.func is run_models_command
    return code, capsys.readouterr().out


def test_cli_commands_json_and_text(reg, tmp_path, capsys):
    root = reg.root
    for name, acc in (("a", 0.8), ("b", 0.9), ("c", 0.7)):
        add(reg, tmp_path, name, acc)
    code, out = run(capsys, root, "list", "--json")
    data = json.loads(out)
    assert code == 0 and [d["name"] for d in data] == [f"{M}/v{n}" for n in (1, 2, 3)]
    assert data[1]["aliases"] == ["production"]
    code, out = run(capsys, root, "list")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["version", "aliases", "tag"] and set(lines[1]) <= {"-", " "}
    assert "vision_service/v2  production" in out and "accuracy=0.9" in out

    assert json.loads(run(capsys, root, "show", M, "v1", "--json")[1])["number"] == 1
    assert "Load in Python" in run(capsys, root, "show", M)[1]
    comp = json.loads(run(capsys, root, "compare", f"{M}/v1", f"{M}/v2", "--json")[1])
    assert comp["b"] == f"{M}/v2" and any(m["key"] == "test.accuracy" for m in comp["metrics"])

    out = json.loads(run(capsys, root, "promote", M, "v3", "--reason", "try it", "--json")[1])
    assert out["aliases"] == ["latest", "production"]
    out = json.loads(run(capsys, root, "rollback", M, "--reason", "worse", "--json")[1])
    assert (out["from"], out["to"]) == (f"{M}/v3", f"{M}/v2")
    code, text = run(capsys, root, "rollback", M, "--to", "v1", "--reason", "audit")
    assert text.strip() == f"production: {M}/v2 -> {M}/v1"

    out = json.loads(run(capsys, root, "prune", M, "--keep", "1", "--dry-run", "--json")[1])
    assert out["dry_run"] and out["removed"] == []  # all three were production once
    code, out = run(capsys, root, "verify", "--json")
    assert code == 0 and [r["ok"] for r in json.loads(out)] == [True] * 3
    events = json.loads(run(capsys, root, "events", M, "--json")[1])
    assert [e["event"] for e in events][-3:] == ["promote", "rollback", "rollback"]

    _tamper(root / M / "v2" / "history.json", b"[1]")
    code, out = run(capsys, root, "verify", M)
    assert code == 1 and "FAILED" in out and "history.json" in out


def test_main_cli_prints_one_line_errors(reg, tmp_path, capsys, monkeypatch):
    from unified_pipeline.cli import main

    monkeypatch.setenv("UNIFIED_HOME", str(tmp_path / "home"))
    assert main(["models", "show", M]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no versions of model 'vision_service'") and "\n" not in err
    add(ModelRegistry(tmp_path / "home" / "registry"), tmp_path, "a")
    assert main(["models", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == f"{M}/v1"
    assert main(["models", "rollback", M]) == 2
    assert "nothing earlier to roll back to" in capsys.readouterr().err


def test_cli_tag_sets_and_removes_a_tag(reg, tmp_path, capsys):
    root = reg.root
    add(reg, tmp_path, "a", tag="experimental")
    add(reg, tmp_path, "b")
    out = json.loads(run(capsys, root, "tag", M, "v1", "stable", "--reason", "passed review", "--json")[1])
    assert (out["name"], out["tag"]) == (f"{M}/v1", "stable")
    assert run(capsys, root, "tag", M, "latest", "backup")[1].strip() == f"{M}/v2: tagged backup"
    assert [v.tag for v in reg.list(M)] == ["stable", "backup"]
    assert run(capsys, root, "tag", M, "v1", "--remove")[1].strip() == f"{M}/v1: tag removed"
    assert reg.get(M, "v1").tag is None
    tags = [(e["version"], e["from"], e["to"]) for e in reg.events(M) if e["event"] == "tag"]
    assert tags == [(f"{M}/v1", "experimental", "stable"), (f"{M}/v2", None, "backup"), (f"{M}/v1", "stable", None)]
    with pytest.raises(ConfigError, match="either a TAG or --remove"):
        run(capsys, root, "tag", M, "v1")
    with pytest.raises(ConfigError, match="either a TAG or --remove"):
        run(capsys, root, "tag", M, "v1", "x", "--remove")
    with pytest.raises(ConfigError, match="up to 32 letters"):
        run(capsys, root, "tag", M, "v1", "no spaces")
    with pytest.raises(RegistryError, match="v9 does not exist"):
        run(capsys, root, "tag", M, "v9", "stable")
