# distutils: language = c++
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Compiled inner loops of serving: session-kNN scoring and the blend's top-k.

Each replaces a chain of a few dozen numpy calls on small arrays (whose call
overhead, not their arithmetic, was the cost) with one pass, computing the
same values in the same order (IEEE operations, no fast-math, no FMA), so a
result equals the numpy formulation bit for bit wherever the latter's order
is defined. Where numpy's was not (``argpartition`` among equal values), ties
are broken deterministically, as documented on each function.
"""

from libc.math cimport exp, expf, fabsf, isfinite, sqrtf
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libcpp.algorithm cimport sort
from libcpp.pair cimport pair
from libcpp.vector cimport vector

import numpy as np

cdef extern from "<algorithm>" namespace "std" nogil:
    void nth_element[Iter](Iter first, Iter nth, Iter last) except +
    void push_heap[Iter](Iter first, Iter last) except +
    void pop_heap[Iter](Iter first, Iter last) except +

cdef double DAY_MS = 86400000.0


cdef inline Py_ssize_t _find(const int64_t[::1] sorted_values, int64_t value) noexcept nogil:
    """Index of ``value`` in ascending ``sorted_values``, -1 when absent."""
    cdef Py_ssize_t lo = 0, hi = sorted_values.shape[0], mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_values[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    if lo < sorted_values.shape[0] and sorted_values[lo] == value:
        return lo
    return -1


def knn_index(
    const int64_t[::1] indptr,
    const int32_t[::1] indices,
    const float[::1] positions,
    const int64_t[::1] session_end_ms,
    const int32_t[::1] item_sessions,
):
    """``knn_scores``'s ``records`` and ``item_records`` from the session x item
    CSR matrix (``indptr``, ``indices``, ``positions``), the sessions' end times,
    and the item index's session numbers."""
    cdef Py_ssize_t n = session_end_ms.shape[0], s, j, at, length
    starts_out = np.empty(n + 1, dtype=np.int64)
    cdef int64_t[::1] starts = starts_out
    starts[0] = 0
    for s in range(n):
        starts[s + 1] = starts[s] + 3 + 2 * (indptr[s + 1] - indptr[s])
    records_out = np.empty(starts[n], dtype=np.int32)
    cdef int32_t[::1] records = records_out
    for s in range(n):
        at = starts[s]
        length = indptr[s + 1] - indptr[s]
        records[at] = <int32_t>length
        records[at + 1] = <int32_t><uint32_t>(<uint64_t>session_end_ms[s] & 0xFFFFFFFFu)
        records[at + 2] = <int32_t>(session_end_ms[s] >> 32)
        for j in range(length):
            records[at + 3 + j] = indices[indptr[s] + j]
            (<float*>&records[at + 3 + length + j])[0] = positions[indptr[s] + j]
    item_records_out = np.empty(item_sessions.shape[0], dtype=np.int64)
    cdef int64_t[::1] item_records = item_records_out
    for j in range(item_sessions.shape[0]):
        item_records[j] = starts[item_sessions[j]]
    return records_out, item_records_out


cdef inline float _position(const int32_t[::1] records, Py_ssize_t at) noexcept nogil:
    """A record's position word: a float32 kept as its bits."""
    return (<const float*>&records[at])[0]


cdef inline int64_t _end(const int32_t[::1] records, int64_t at) noexcept nogil:
    """The end time of the session whose record starts at ``at``."""
    return (<int64_t>records[at + 2] << 32) | <int64_t>(<uint32_t>records[at + 1])


def knn_scores(
    const int64_t[::1] live_items,
    const float[::1] live_weight,
    const float[::1] live_position,
    const int64_t[::1] item_indptr,
    const int64_t[::1] item_records,
    const int32_t[::1] records,
    Py_ssize_t sample,
    Py_ssize_t k,
    double recency_decay_days,
    int64_t reference_ms,
    double neighbor_decay,
):
    """Session-kNN scores of a live session: (items ascending int64, float32 scores),
    the items its neighbours reach with a score other than 0.

    ``live_items``: the distinct live items, ascending, with their weight and
    1-based last position in the live session. The index (``knn_index``):
    ``records`` holds each training session, in session order, as its length,
    its end time (two words, low first), its items and their positions (float32
    bits); ``item_records[item_indptr[i]:item_indptr[i + 1]]`` are where item
    ``i``'s indexed sessions start in it. One session is then one place in
    memory, not four (a call reads hundreds of sessions, each a cache miss).

    Candidate sessions are the indexed sessions of the live items; past
    ``sample`` of them, the latest ending ones are kept (equal end times: the
    lower session number). Each candidate's similarity is its summed live-item
    weight over sqrt(live items x its length), decayed by its age when
    ``recency_decay_days`` > 0; the ``k`` most similar (equal similarity: the
    later ending, then the lower session number) with a similarity above 0 vote,
    each adding its similarity (decayed by the distance to its anchor item when
    ``neighbor_decay`` > 0) to its items, the neighbours taken in ascending
    session order."""
    cdef Py_ssize_t n_live = live_items.shape[0]
    cdef Py_ssize_t i, j, s, e, c, n_cand, n_top
    cdef int64_t item, session
    cdef vector[int64_t] gathered
    cdef vector[pair[int64_t, int64_t]] by_end
    cdef vector[int64_t] candidates
    cdef vector[double] sims
    cdef vector[pair[double, pair[int64_t, int64_t]]] ranked
    cdef vector[int64_t] top
    cdef double overlap, sim, age, contribution
    cdef float live_pos, best, anchor, size_term
    cdef Py_ssize_t where
    cdef vector[pair[int64_t, int64_t]] voted
    cdef vector[double] contributions
    cdef vector[int64_t] reached
    cdef vector[double] summed
    cdef double total = 0.0
    # No Python object until the answer is built: other threads run meanwhile.
    with nogil:
        # --- candidate sessions: the distinct sessions of the live items
        for i in range(n_live):
            item = live_items[i]
            for j in range(item_indptr[item], item_indptr[item + 1]):
                gathered.push_back(item_records[j])
        sort(gathered.begin(), gathered.end())
        for i in range(<Py_ssize_t>gathered.size()):
            if i == 0 or gathered[i] != gathered[i - 1]:
                candidates.push_back(gathered[i])
        n_cand = candidates.size()
        if n_cand > sample:
            # The latest ending ``sample``: by (-end, session) ascending.
            for i in range(n_cand):
                by_end.push_back(pair[int64_t, int64_t](-_end(records, candidates[i]), candidates[i]))
            nth_element(by_end.begin(), by_end.begin() + (sample - 1), by_end.end())
            candidates.clear()
            for i in range(sample):
                candidates.push_back(by_end[i].second)
            sort(candidates.begin(), candidates.end())
            n_cand = sample
        # --- similarities
        sims.resize(n_cand)
        for c in range(n_cand):
            session = candidates[c]
            s = session + 3
            e = s + records[session]
            overlap = 0.0
            for j in range(s, e):
                where = _find(live_items, records[j])
                if where >= 0:
                    overlap += <double>live_weight[where]
            size_term = sqrtf(<float>n_live * <float>(e - s))
            sim = overlap / <double>size_term
            if recency_decay_days > 0:
                age = <double>(reference_ms - _end(records, session))
                if age < 0:
                    age = 0.0
                sim = sim * exp(-(age / DAY_MS) / recency_decay_days)
            sims[c] = sim
        # --- the k most similar, above 0, in ascending session order
        if k > n_cand:
            k = n_cand
        if k < n_cand:
            for c in range(n_cand):
                ranked.push_back(
                    pair[double, pair[int64_t, int64_t]](
                        -sims[c],
                        pair[int64_t, int64_t](-_end(records, candidates[c]), c),
                    )
                )
            nth_element(ranked.begin(), ranked.begin() + (k - 1), ranked.end())
            for i in range(k):
                top.push_back(ranked[i].second.second)
            sort(top.begin(), top.end())
        else:
            for c in range(n_cand):
                top.push_back(c)
        # --- votes: (item, vote number) and each vote's contribution, summed per
        # item in vote order (no catalog-sized buffer to clear and scatter into)
        for i in range(<Py_ssize_t>top.size()):
            c = top[i]
            sim = sims[c]
            if not sim > 0:
                continue
            session = candidates[c]
            s = session + 3
            e = s + records[session]
            anchor = 0.0
            if neighbor_decay > 0:
                # The shared item latest in the live session anchors the neighbour.
                best = 0.0
                for j in range(s, e):
                    where = _find(live_items, records[j])
                    live_pos = live_position[where] if where >= 0 else 0.0
                    if live_pos > best:
                        best = live_pos
                        anchor = _position(records, j + (e - s))
            for j in range(s, e):
                contribution = sim
                if neighbor_decay > 0:
                    contribution = contribution * <double>expf(
                        -fabsf(_position(records, j + (e - s)) - anchor) / <float>neighbor_decay
                    )
                voted.push_back(pair[int64_t, int64_t](records[j], contributions.size()))
                contributions.push_back(contribution)
        sort(voted.begin(), voted.end())
        for i in range(<Py_ssize_t>voted.size()):
            total += contributions[voted[i].second]
            if i + 1 == <Py_ssize_t>voted.size() or voted[i + 1].first != voted[i].first:
                if total != 0.0:  # every vote of 0 (a decay that underflowed): not reached
                    reached.push_back(voted[i].first)
                    summed.push_back(total)
                total = 0.0
    n_top = reached.size()
    out_items = np.empty(n_top, dtype=np.int64)
    out_scores = np.empty(n_top, dtype=np.float32)
    cdef int64_t[::1] oi = out_items
    cdef float[::1] os = out_scores
    for i in range(n_top):
        oi[i] = reached[i]
        os[i] = <float>summed[i]
    return out_items, out_scores


cdef bint _finite_range(const float[::1] values, float* lo, float* hi) noexcept nogil:
    """The least and greatest of ``values`` (at least one) into ``lo`` and ``hi``;
    False when one is not finite."""
    cdef Py_ssize_t i
    lo[0] = hi[0] = values[0]
    for i in range(values.shape[0]):
        if not isfinite(values[i]):
            return False
        if values[i] < lo[0]:
            lo[0] = values[i]
        elif values[i] > hi[0]:
            hi[0] = values[i]
    return True


ctypedef pair[double, int64_t] Ranked  # (-score, index): std's max-heap tops the worst kept


cdef inline void _keep(vector[Ranked]& heap, Py_ssize_t k, double score, int64_t index) noexcept nogil:
    """Offers (score, index) to the k best kept in ``heap`` (higher score, then
    lower index, is better)."""
    cdef Ranked entry = Ranked(-score, index)
    if <Py_ssize_t>heap.size() < k:
        heap.push_back(entry)
        push_heap(heap.begin(), heap.end())
    elif entry < heap.front():
        pop_heap(heap.begin(), heap.end())
        heap[heap.size() - 1] = entry
        push_heap(heap.begin(), heap.end())


cdef _ranked(vector[Ranked]& heap):
    """The kept entries, best first: (indices int64, scores float64)."""
    sort(heap.begin(), heap.end())
    cdef Py_ssize_t n = heap.size(), i
    idx = np.empty(n, dtype=np.int64)
    scores = np.empty(n, dtype=np.float64)
    cdef int64_t[::1] oi = idx
    cdef double[::1] os = scores
    for i in range(n):
        oi[i] = heap[i].second
        os[i] = -heap[i].first
    return idx, scores


def blend_top_k(
    float[::1] total,
    const float[::1] model,
    float model_weight,
    const double[::1] tie_breaks,
    Py_ssize_t k,
):
    """The ``k`` best items of a blend: ``total`` (float32, the session parts
    already added; NaN at the items to leave out) plus ``model_weight`` times
    the model's scores scaled to [0, 1] by their range (float32, as
    ``normalized`` computes them), then the tie-breaks added in float64. Returns
    (indices, float64 scores), best first (equal scores: the lower index), as
    ``top_k(np.add(total + model part, tie_breaks, dtype=float64), k)`` does; or
    None when a model score is not finite (the caller's numpy path handles it).
    An empty ``model`` adds nothing. ``total`` is overwritten."""
    cdef Py_ssize_t n = total.shape[0], i
    cdef float lo = 0, hi = 0, part
    cdef double span = 0, value
    cdef bint use_model = model.shape[0] > 0 and model_weight != 0
    cdef vector[Ranked] heap
    if use_model:
        if not _finite_range(model, &lo, &hi):
            return None
        span = <double>hi - <double>lo
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    heap.reserve(k + 1)
    with nogil:
        for i in range(n):
            if use_model:
                if span > 0:
                    part = <float>((<double>model[i] - <double>lo) / span) * model_weight
                else:
                    part = 0.0 * model_weight
                total[i] = total[i] + part
            value = <double>total[i] + tie_breaks[i]
            if isfinite(value):
                _keep(heap, k, value, i)
    if heap.size() == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    return _ranked(heap)


def blend_normalized(float[::1] total, const float[::1] model, float model_weight):
    """``normalized(total + model_weight * normalized(model))`` in place, as
    ``SessionRecommender.combine`` then ``normalized`` compute it (float32 sums,
    the scalings in float64), without their catalog-sized temporaries: ``total``
    (float32, the session parts already added) gets the model's part added, then
    is scaled to [0, 1] by its range (all 0 when flat). An empty ``model`` or a
    zero weight adds nothing. Returns False, leaving ``total`` as it was, when a
    model score is not finite; False with ``total`` changed when a sum is not
    finite (both for the numpy path to handle)."""
    cdef Py_ssize_t n = total.shape[0], i
    cdef float lo = 0, hi = 0, part
    cdef double span = 0, low
    cdef bint use_model = model.shape[0] > 0 and model_weight != 0, finite
    if n == 0:
        return True
    if use_model:
        if model.shape[0] != n:
            raise ValueError(f"model: {model.shape[0]} scores for {n} items")
        if not _finite_range(model, &lo, &hi):
            return False
        span = <double>hi - <double>lo
    with nogil:
        if use_model:
            for i in range(n):
                if span > 0:
                    part = <float>((<double>model[i] - <double>lo) / span) * model_weight
                else:
                    part = 0.0 * model_weight
                total[i] = total[i] + part
        finite = _finite_range(total, &lo, &hi)
        if finite:
            low = lo
            span = <double>hi - low
            if span > 0:
                for i in range(n):
                    total[i] = <float>((<double>total[i] - low) / span)
            else:
                for i in range(n):
                    total[i] = 0.0
    return finite


def add_normalized(float[::1] total, const int64_t[::1] items, const float[::1] scores, float weight):
    """``total[items] += weight * (scores scaled to [0, 1])`` in float32, the scaling
    as ``SparseScores.normalized`` computes it (by the range over the whole
    catalog, whose other items score 0). Returns False, adding nothing, where
    that scaling does not apply (a score not finite, or below 0 with items left
    out: ``normalized`` of the dense vector handles those)."""
    cdef Py_ssize_t n = items.shape[0], i
    cdef float lo, hi
    cdef double low, span
    if n == 0:
        return True
    if not _finite_range(scores, &lo, &hi):
        return False
    low = lo
    if n < total.shape[0]:  # the catalog-wide range includes the 0s
        if lo < 0:
            return False
        low = 0.0
    if <double>hi <= low:
        return True  # flat: every item scales to 0
    span = <double>hi - low
    for i in range(n):
        total[items[i]] = total[items[i]] + <float>((<double>scores[i] - low) / span) * weight
    return True


def rule_sources(
    const int64_t[::1] indptr,
    const int32_t[::1] indices,
    const float[::1] data,
    const int64_t[::1] sources,
    const int64_t[::1] targets,
):
    """For each of ``targets``, the first of ``sources`` whose row of the rules
    (a CSR matrix: source item -> target item, weight) leads to it with a weight
    above 0; ``len(sources)`` for none. int64."""
    cdef Py_ssize_t n_sources = sources.shape[0], n_targets = targets.shape[0], s, j, t
    cdef int64_t item
    out = np.full(n_targets, n_sources, dtype=np.int64)
    cdef int64_t[::1] found = out
    for s in range(n_sources):
        item = sources[s]
        for j in range(indptr[item], indptr[item + 1]):
            if not data[j] > 0:
                continue
            for t in range(n_targets):  # a page of recommendations: a few dozen
                if targets[t] == indices[j] and found[t] > s:
                    found[t] = s
    return out


def weighted_history(
    list history,
    dict index,
    const float[::1] type_table,
    const unsigned char[::1] view_table,
    float dwell_bonus,
    float dwell_saturation_ms,
    float skip_below_ms,
    float skip_factor,
    bint boosted,
    int64_t live_since_ms,
    float live_boost,
):
    """A user's item events (``ItemEvent`` tuples: item_id, type, dwell_ms or
    None, ts_ms) weighed as ``EventWeights.weigh`` without recency or time decay,
    events at or after ``live_since_ms`` times ``live_boost`` when ``boosted``,
    and summed per item as ``user_row``: (item numbers by ``index``, -1 unknown;
    types; times; which weigh above 0; the row's item numbers ascending, int32;
    their summed weights, float32). Sums run in float64 in event order."""
    cdef Py_ssize_t n = len(history), i, j, m, n_types = type_table.shape[0]
    cdef int64_t typ, known, number
    cdef float dwell, base, weight
    cdef bint view
    cdef double total
    cdef tuple event
    numbers_out = np.empty(n, dtype=np.int64)
    types_out = np.empty(n, dtype=np.int64)
    ts_out = np.empty(n, dtype=np.int64)
    positive_out = np.empty(n, dtype=np.bool_)
    cdef int64_t[::1] numbers = numbers_out
    cdef int64_t[::1] types = types_out
    cdef int64_t[::1] ts = ts_out
    cdef unsigned char[::1] positive = positive_out.view(np.uint8)
    cdef vector[pair[int64_t, Py_ssize_t]] kept  # (item number, event position)
    cdef vector[float] weights = vector[float](n, 0.0)
    for i in range(n):
        item = history[i]
        if not isinstance(item, tuple) or len(<tuple>item) < 4:
            raise TypeError(f"history[{i}]: not an ItemEvent")
        event = <tuple>item
        found = index.get(event[0])
        numbers[i] = -1 if found is None else <int64_t>found
        typ = <int64_t>event[1]
        types[i] = typ
        dwell = -1.0 if event[2] is None else <float><int64_t>event[2]
        ts[i] = <int64_t>event[3]
        known = typ if typ > 0 else 0
        if known > n_types - 1:
            known = n_types - 1
        view = known == typ and view_table[known] != 0
        base = type_table[known] if known == typ else 0.0
        weight = base
        if view and dwell > 0 and base > 0:
            weight = base + dwell_bonus * (dwell / dwell_saturation_ms if dwell / dwell_saturation_ms < 1.0 else <float>1.0)
        if view and dwell >= 0 and dwell < skip_below_ms:
            weight = weight * skip_factor
        if boosted and ts[i] >= live_since_ms:
            weight = weight * live_boost
        weights[i] = weight
        positive[i] = weight > 0
        if numbers[i] >= 0 and weight > 0:
            kept.push_back(pair[int64_t, Py_ssize_t](numbers[i], i))
    sort(kept.begin(), kept.end())
    m = 0
    for i in range(<Py_ssize_t>kept.size()):
        if i == 0 or kept[i].first != kept[i - 1].first:
            m += 1
    cols_out = np.empty(m, dtype=np.int32)
    data_out = np.empty(m, dtype=np.float32)
    cdef int32_t[::1] cols = cols_out
    cdef float[::1] data = data_out
    j = -1
    total = 0.0
    for i in range(<Py_ssize_t>kept.size()):
        number = kept[i].first
        if i == 0 or number != kept[i - 1].first:
            if j >= 0:
                data[j] = <float>total
            j += 1
            cols[j] = <int32_t>number
            total = 0.0
        total += <double>weights[kept[i].second]
    if j >= 0:
        data[j] = <float>total
    return numbers_out, types_out, ts_out, positive_out, cols_out, data_out
