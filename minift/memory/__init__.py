"""The memory ledger: where every byte of a training step goes, predicted from the configuration and
measured in a fresh process.

    spec = RunSpec(model_config("gpt2"), LoraConfig(rank=8), batch_size=4, seq_len=256)
    prediction = predict(spec, measure_gemm_workspace(spec))    # by category and by moment of the step
    print(format_ledger(prediction, measure(spec)))             # predicted beside measured

spec (what a step is) -> ranks (one rank's share under a parallel strategy) -> activations (what autograd saves) -> ledger (the bytes by moment); probes
(peaks), saved (exact live bytes), step (a measured step), workspace (the BLAS's), report (the table).
"""

from minift.memory.spec import DTYPES, PRECISIONS, RunSpec, meta_model, model_config
from minift.memory.activations import Walk
from minift.memory.ranks import RankState, rank_state
from minift.memory.ledger import CATEGORIES, LABELS, HeadMatmuls, Moment, Prediction, predict
from minift.memory.probes import PeakProbe, measure_in_subprocess, peak_rss_bytes, reset_peak_rss, rss_bytes
from minift.memory.saved import SavedTensorMeter, storage_bytes
from minift.memory.step import StepParts, build_minift_step, measure, measure_categories, measure_step
from minift.memory.workspace import measure_gemm_workspace
from minift.memory.ranked import measure_ranks
from minift.memory.report import format_ledger

__all__ = [
    "CATEGORIES", "DTYPES", "LABELS", "PRECISIONS",
    "HeadMatmuls", "Moment", "PeakProbe", "Prediction", "RankState", "RunSpec", "SavedTensorMeter", "StepParts", "Walk",
    "build_minift_step", "format_ledger", "measure", "measure_categories", "measure_gemm_workspace",
    "measure_in_subprocess", "measure_ranks", "measure_step", "meta_model", "model_config", "peak_rss_bytes", "predict", "rank_state",
    "reset_peak_rss", "rss_bytes", "storage_bytes",
]
