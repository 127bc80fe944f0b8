from unified_pipeline.assets.model_assets import quality_verdict
from unified_pipeline.models.registry import MODELS


def test_threshold_and_baseline_both_count():
    text = MODELS["text_service"]
    assert quality_verdict(text, {"test": {"accuracy": 0.78}, "baseline": {"accuracy": 0.76}}, 0.7)[0]
    ok, meta = quality_verdict(text, {"test": {"accuracy": 0.75}, "baseline": {"accuracy": 0.76}}, 0.7)
    assert not ok and meta["baseline"] == 0.76
    assert not quality_verdict(text, {"test": {"accuracy": 0.65}}, 0.7)[0]
    assert not quality_verdict(text, {"test": {}}, 0.7)[0]


def test_lower_is_better_metrics():
    causal = MODELS["causal_reasoning_engine"]
    assert quality_verdict(causal, {"test": {"shd_linear": 1.0}}, 3.0)[0]
    assert not quality_verdict(causal, {"test": {"shd_linear": 4.0}}, 3.0)[0]
    assert not quality_verdict(causal, {"test": {"shd_linear": float("nan")}}, 3.0)[0]
