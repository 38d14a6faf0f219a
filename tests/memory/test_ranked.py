"""Each rank's measured peak on 2 CPU ranks under torchrun, against the ledger's per-rank prediction."""

import pytest

from minift.memory import RunSpec, measure_ranks, model_config, predict


# zero3: the strategy with the most moving parts (sharded state, gathered root and blocks, reduce-scatter);
# zero1: DDP's buckets with half of AdamW's moments (4.3 MiB of a ~21 MiB peak: unsharded, it would miss by 20%)
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["zero3", "zero1"])
def test_each_ranks_measured_peak_is_predicted_within_10_percent(strategy):
    spec = RunSpec(model_config("tiny-m"), optimizer="adamw", loss="fused", strategy=strategy, ranks=2, batch_size=2, seq_len=64)
    predicted = predict(spec).peak.total
    measured = measure_ranks(spec)
    assert len(measured["ranks"]) == 2
    for rank in measured["ranks"]:
        # 10%: the issue's bar. The ledger counts the tensors; it leaves out FSDP2's flat copy of the local
        # shards that an all-gather reads and gloo's per-call staging, a few hundred KiB on this model
        assert abs(predicted - rank["peak"]) <= 0.10 * rank["peak"], (predicted, rank["peak"])
