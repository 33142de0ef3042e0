# Types of the compiled training/_kernels.pyx.
import numpy as np

def knn_scores(
    live_items: np.ndarray,
    live_weight: np.ndarray,
    live_position: np.ndarray,
    item_indptr: np.ndarray,
    item_records: np.ndarray,
    records: np.ndarray,
    sample: int,
    k: int,
    recency_decay_days: float,
    reference_ms: int,
    neighbor_decay: float,
) -> tuple[np.ndarray, np.ndarray]: ...
def knn_index(
    indptr: np.ndarray,
    indices: np.ndarray,
    positions: np.ndarray,
    session_end_ms: np.ndarray,
    item_sessions: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]: ...
def blend_top_k(
    total: np.ndarray,
    model: np.ndarray,
    model_weight: float,
    tie_breaks: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray] | None: ...
def blend_normalized(total: np.ndarray, model: np.ndarray, model_weight: float) -> bool: ...
def add_normalized(
    total: np.ndarray, items: np.ndarray, scores: np.ndarray, weight: float
) -> bool: ...
def rule_sources(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    sources: np.ndarray,
    targets: np.ndarray,
) -> np.ndarray: ...
def weighted_history(
    history: list[object],
    index: dict[str, int],
    type_table: np.ndarray,
    view_table: np.ndarray,
    dwell_bonus: float,
    dwell_saturation_ms: float,
    skip_below_ms: float,
    skip_factor: float,
    boosted: bool,
    live_since_ms: int,
    live_boost: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
