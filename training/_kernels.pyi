# Types of the compiled training/_kernels.pyx.
import numpy as np

def knn_scores(
    live_items: np.ndarray,
    live_weight: np.ndarray,
    live_position: np.ndarray,
    item_indptr: np.ndarray,
    item_sessions: np.ndarray,
    session_end_ms: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    positions: np.ndarray,
    n_items: int,
    sample: int,
    k: int,
    recency_decay_days: float,
    reference_ms: int,
    neighbor_decay: float,
) -> tuple[np.ndarray, np.ndarray]: ...
def blend_top_k(
    total: np.ndarray,
    model: np.ndarray,
    model_weight: float,
    tie_breaks: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray] | None: ...
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
