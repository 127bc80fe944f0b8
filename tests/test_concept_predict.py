"""`predict` for the concept models, through the registry as the CLI runs it: answers, clear errors."""
from __future__ import annotations

import json

import pytest
import torch
from test_concept_models import _chain_bundle, _job, _spring_bundle

from unified_pipeline import hashing, inference
from unified_pipeline.cli import main
from unified_pipeline.datasets.base import PreprocessConfig, TensorBundle
from unified_pipeline.datasets.memory import KIND as MEMORY
from unified_pipeline.datasets.samples.memory_records import memory_records
from unified_pipeline.errors import ConfigError
from unified_pipeline.models import alpha_deep_model as A
from unified_pipeline.models import causal_reasoning as C
from unified_pipeline.models import environment_simulator as E
from unified_pipeline.models.base import BaseModel
from unified_pipeline.models.registry import MODELS
from unified_pipeline.registry import ModelRegistry

torch.set_num_threads(1)
LINEAGE = {"data_versions": {}, "code_version": "test", "hparams": {}}


def _register(name: str, folder) -> None:
    entry = MODELS[name]
    ModelRegistry().register(name, folder, lineage=LINEAGE, metric=entry.metric,
                             higher_is_better=entry.higher_is_better)


def _predict(name: str, inputs: list[str], top: int = 1) -> dict[str, list[tuple[str, float]]]:
    return dict(inference.predict(name, inputs, top=top))


# -- environment simulator -------------------------------------------------------------------

@pytest.fixture(scope="module")
def spring_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spring")
    bundle = _spring_bundle(episodes=12, steps=20)
    hp = {"epochs": 2, "members": 2, "hidden": 16, "layers": 2, "batch_size": 64, "horizons": [5]}
    E.fit(_job("environment_simulator", {"spring": bundle}, hp, tmp))
    return tmp / "out", bundle


def test_simulator_predict_matches_simulate(home, tmp_path, spring_model):
    folder, bundle = spring_model
    _register("environment_simulator", folder)
    state, actions = bundle.tensors["test/state"][0], bundle.tensors["test/action"][:4]
    query = {"state": state.tolist(), "actions": actions.tolist()}
    path = tmp_path / "query.json"
    path.write_text(json.dumps({**query, "dataset": "spring"}))
    lines = tmp_path / "queries.jsonl"
    lines.write_text(json.dumps(query) + "\n\n" + json.dumps({**query, "actions": actions[:, 0].tolist()}) + "\n")
    inline = json.dumps(query)
    got = _predict("environment_simulator", [inline, str(path), str(lines), inline])
    assert list(got) == [inline, str(path), f"{lines}:1", f"{lines}:3", f"{inline} #2"]

    expected = E.simulate(BaseModel.load(folder), state, actions)
    pairs = got[inline]
    assert [label for label, _ in pairs[:6]] == ["t1 state_0", "t1 state_0 std", "t1 state_1", "t1 state_1 std",
                                                 "t1 reward", "t1 reward std"]
    assert len(pairs) == 4 * 6
    values = torch.tensor([v for _, v in pairs]).view(4, 6)
    assert torch.allclose(values[:, [0, 2]], expected.states, atol=1e-5)
    assert torch.allclose(values[:, [1, 3]], expected.uncertainty, atol=1e-5)
    assert torch.allclose(values[:, 4], expected.rewards, atol=1e-5)
    assert torch.allclose(values[:, 5], expected.reward_std, atol=1e-5) and (values[:, 5] > 0).all()
    assert all(got[k] == pairs for k in got)  # same query in every form, flat 1-D actions included


@pytest.mark.parametrize("query, message", [
    ({"state": [0.0, 0.0]}, "field 'actions' missing"),
    ({"state": [0.0], "actions": [[0.1]]}, "field 'state' has 1 values, expected 2"),
    ({"state": [0.0, 0.0], "actions": [[0.1, 0.2]]}, r"actions\[0\].*has 2 values, expected 1"),
    ({"state": [0.0, "x"], "actions": [[0.1]]}, "field 'state' must be a list of numbers"),
    ({"state": [0.0, 0.0], "actions": [[0.1]], "action": 1}, r"unknown field\(s\) \['action'\]"),
    ({"state": [0.0, 0.0], "actions": [[0.1]], "dataset": "cartpole"}, r"'cartpole' unknown; known: \['spring'\]"),
])
def test_simulator_predict_rejects_bad_queries(home, spring_model, query, message):
    _register("environment_simulator", spring_model[0])
    with pytest.raises(ConfigError, match=message):
        _predict("environment_simulator", [json.dumps(query)])


def test_simulator_predict_rejects_unreadable_inputs(home, tmp_path, spring_model):
    _register("environment_simulator", spring_model[0])
    with pytest.raises(ConfigError, match="neither a JSON object nor an existing"):
        _predict("environment_simulator", [str(tmp_path / "missing.json")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"state": [0, 0], "actions": [[0]]}\n{"state": [0, \n')
    with pytest.raises(ConfigError, match=r"bad.jsonl: line 2 is not valid JSON"):
        _predict("environment_simulator", [str(bad)])


# -- causal reasoning engine -----------------------------------------------------------------

@pytest.fixture(scope="module")
def chain_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    first, _ = _chain_bundle(n=450)
    second, _ = _chain_bundle(n=300, seed=1)
    C.fit(_job("causal_reasoning_engine", {"chain": first, "chain_b": second}, {}, tmp))
    return tmp / "out", first


def test_causal_predict_intervention_and_counterfactual(home, chain_model):
    folder, bundle = chain_model
    _register("causal_reasoning_engine", folder)
    mean = torch.cat([bundle.tensors[f"{s}/x"] for s in ("train", "val", "test")]).double().mean(0).numpy()
    query = "chain: do(X1=7) -> x2, X0"
    (pairs,) = _predict("causal_reasoning_engine", [query]).values()
    got = dict(pairs)
    assert list(got) == ["E[x2 | do(x1=7)]", "E[x2]", "effect on x2", "E[x0 | do(x1=7)]", "E[x0]", "effect on x0"]
    assert got["E[x2]"] == pytest.approx(mean[2], abs=1e-4)
    assert got["effect on x2"] == pytest.approx(-1.2 * (7.0 - mean[1]), abs=0.35)
    assert got["effect on x0"] == pytest.approx(0.0, abs=0.2)  # x0 is a cause of x1, not an effect

    obs = bundle.tensors["test/x"][0].tolist()
    given = ", ".join(f"x{i}={v}" for i, v in enumerate(obs))
    (cf,) = _predict("causal_reasoning_engine", [f"chain: do(x2={obs[2] + 1}) -> x3, x1 given {given}"]).values()
    cf = dict(cf)
    assert cf["x3 observed"] == pytest.approx(obs[3]) and cf["change in x3"] == pytest.approx(0.9, abs=0.15)
    assert cf["change in x1"] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("query, message", [
    ("do(x1=1) -> x2", r"several datasets; start the query with one of \['chain', 'chain_b'\]"),
    ("chain: do(x9=1) -> x2", r"unknown variable 'x9' for dataset 'chain'; valid: \['x0', 'x1', 'x2', 'x3'\]"),
    ("chain: do(x1=1) -> y", r"unknown variable 'y'.*valid: \['x0', 'x1', 'x2', 'x3'\]"),
    ("chain: do(x1=abc) -> x2", "value 'abc' for 'x1' is not a number"),
    ("chain: do() -> x2", "names no variable"),
    ("other: do(x1=1) -> x2", r"no dataset 'other'; known: \['chain', 'chain_b'\]"),
    ("chain: x2 if x1 were 1", "is not a causal query"),
    ("chain: do(x1=1) -> x2 given x0=1, x1=2", r"lacks \['x2', 'x3'\]"),
])
def test_causal_predict_rejects_bad_queries(home, chain_model, query, message):
    _register("causal_reasoning_engine", chain_model[0])
    with pytest.raises(ConfigError, match=message):
        _predict("causal_reasoning_engine", [query])


def test_cli_prints_causal_answer(home, chain_model, capsys):
    _register("causal_reasoning_engine", chain_model[0])
    assert main(["predict", "causal_reasoning_engine", "chain_b: do(x0=2) -> x1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("chain_b: do(x0=2) -> x1\tE[x1 | do(x0=2)] (") and "effect on x1 (" in out
    assert main(["predict", "causal_reasoning_engine", "chain_b: do(q=2) -> x1"]) == 2
    assert "unknown variable 'q'" in capsys.readouterr().err


# -- alpha deep model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def memory_model(tmp_path_factory):
    """Trained on sample records that went through the memory kind and back from disk, as in a run."""
    tmp = tmp_path_factory.mktemp("memory")
    raw = tmp / "memories"
    raw.mkdir()
    records = memory_records(seed=0, n=150)
    (raw / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    manifest = MEMORY.build_manifest(raw, hashing.dataset_version(raw)[1])
    MEMORY.build_tensors(raw, manifest, PreprocessConfig()).save(tmp / "tensors")
    bundle = TensorBundle.load(tmp / "tensors")
    hp = {"epochs": 12, "batch_size": 32, "hidden": 64, "embed_dim": 32, "early_stopping_patience": 0}
    A.fit(_job("alpha_deep_model", {"memories": bundle}, hp, tmp))
    return tmp / "out", records, bundle


def test_alpha_predict_finds_record_and_feedback(home, tmp_path, memory_model):
    folder, records, bundle = memory_model
    _register("alpha_deep_model", folder)
    actions = bundle.meta["action_vocab"]
    test_ids = bundle.sidecars["records"]["test"]
    by_id_all = {r["source_memory_id"]: r for r in records}
    rec = next(r for r in records if r["source_memory_id"] == test_ids[0])
    got = _predict("alpha_deep_model", [json.dumps(rec)], top=3)[json.dumps(rec)]
    assert [label for label, _ in got[3:]] == [f"reward if {rec['action_feedback']['action']}",
                                               f"success if {rec['action_feedback']['action']}"]
    (first, sim), *others = got[:3]
    assert first == rec["source_memory_id"] and sim == pytest.approx(1.0, abs=1e-5)
    assert all(s <= sim for _, s in others) and len({first, *(i for i, _ in others)}) == 3
    # Every held-out record, read from a file as a user would pass it, gets exactly the feedback the
    # model gives its stored int8 code for the action taken (not a fixed or default answer).
    every = tmp_path / "test_records.jsonl"
    every.write_text("\n".join(json.dumps(by_id_all[i]) for i in test_ids) + "\n")
    told = list(_predict("alpha_deep_model", [str(every)], top=1).values())
    model = BaseModel.load(folder)
    test = bundle.split("test")
    want = A.predict_feedback(model, A.quantise(A.encode(model, test)), test["action"])
    assert [label for label, _ in told[0][1:]] == [f"{k} if {by_id_all[test_ids[0]]['action_feedback']['action']}"
                                                  for k in ("reward", "success")]
    torch.testing.assert_close(torch.tensor([[p[1][1], p[2][1]] for p in told]), want.cpu(), atol=1e-5, rtol=0)
    assert want[:, 1].std() > 0.01  # the answers differ from record to record

    # A partial recollection: the first words of the summary and the modalities, nothing else.
    hits = 0
    lines = tmp_path / "partial.jsonl"
    ids = test_ids[:10]
    by_id = {r["source_memory_id"]: r for r in records}
    partial = [{"base_gist": {"summary": " ".join(by_id[i]["base_gist"]["summary"].split()[:5])},
                "modalities": by_id[i]["modalities"]} for i in ids]
    lines.write_text("\n".join(json.dumps(p) for p in partial) + "\n")
    answers = _predict("alpha_deep_model", [str(lines)], top=5)
    assert list(answers) == [f"{lines}:{n}" for n in range(1, 11)]
    for want, pairs in zip(ids, answers.values()):
        hits += want in [label for label, _ in pairs[:5]]
        assert [label for label, _ in pairs[5:]] == [f"{k} if {a}" for a in actions for k in ("reward", "success")]
    assert hits >= 4  # chance: 5 of 150 stored records, 0.3 hits expected in 10


@pytest.mark.parametrize("change, message", [
    (lambda r: r["base_gist"].pop("summary"), "base_gist.summary missing or not a string"),
    (lambda r: r["base_gist"].update(keywords="lamp"), "base_gist.keywords must be a list of strings"),
    (lambda r: r["modalities"].update(audio_features=[0.1]), "modalities.audio_features must be a list of 8 numbers"),
    (lambda r: r["relational_context"].update(relations=[{"subject": "a"}]), "relational_context.relations"),
    (lambda r: r["action_feedback"].update(action="juggle"), r"action 'juggle' is not a known action; valid: \["),
])
def test_alpha_predict_rejects_malformed_records(home, memory_model, change, message):
    folder, records, _ = memory_model
    _register("alpha_deep_model", folder)
    rec = json.loads(json.dumps(records[0]))
    change(rec)
    with pytest.raises(ConfigError, match=message):
        _predict("alpha_deep_model", [json.dumps(rec)])


def test_alpha_bank_holds_every_record(memory_model):
    folder, records, _ = memory_model
    ids = json.loads((folder / A.BANK_IDS).read_text())
    assert sorted(ids) == sorted(r["source_memory_id"] for r in records)
    from safetensors.torch import load_file

    codes = load_file(str(folder / A.BANK_TENSORS))["codes"]
    assert codes.dtype == torch.int8 and codes.shape == (len(records), 32)
