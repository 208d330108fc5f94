"""utils/metrics.py against a plain per-query loop oracle (ties, junk, queries without a match)."""
import math

import numpy as np
import pytest
import torch

from utils.metrics import compute_distance, evaluate_ranking, pool_cases, rank_gallery


def oracle_evaluate(dist, q_pids, g_pids, q_cams, g_cams, q_names, g_names, junk_rule, ap_mode,
                    ranks=(1, 5, 10, 20)):
    """One query at a time, straight from the definitions in the utils/metrics.py docstring."""
    num_q, num_g = len(dist), len(dist[0])
    aps, inps, first_ranks = [], [], []
    for q in range(num_q):
        order = sorted(range(num_g), key=lambda j: (float(dist[q][j]), j))
        kept_is_good = []
        for j in order:
            if junk_rule == "camera":
                junk = g_pids[j] == q_pids[q] and g_cams[j] == q_cams[q]
            else:
                junk = (g_pids[j] == q_pids[q]
                        and int(g_names[j].split("_")[1]) == int(q_names[q].split("_")[1]))
            if not junk:
                kept_is_good.append(g_pids[j] == q_pids[q])
        num_good = sum(kept_is_good)
        if num_good == 0:
            aps.append(math.nan), inps.append(math.nan), first_ranks.append(-1)
            continue
        total, hits, last = 0.0, 0, -1
        for r, good in enumerate(kept_is_good):
            if not good:
                continue
            if ap_mode == "standard":
                total += (hits + 1) / (r + 1)
            else:
                total += ((hits / r if r > 0 else 1.0) + (hits + 1) / (r + 1)) / 2
            hits += 1
            last = r
        aps.append(total / num_good)
        inps.append(num_good / (last + 1))
        first_ranks.append(kept_is_good.index(True))
    valid = [i for i in range(num_q) if not math.isnan(aps[i])]
    out = {"AP": aps, "first": first_ranks, "num_valid": len(valid),
           "mAP": sum(aps[i] for i in valid) / len(valid) if valid else math.nan,
           "mINP": sum(inps[i] for i in valid) / len(valid) if valid else math.nan}
    for k in ranks:
        out[f"R{k}"] = sum(first_ranks[i] < k for i in valid) / len(valid) if valid else math.nan
    return out


def random_problem(seed, num_q=23, num_g=61, tied=True):
    """Few pids (so many matches), tracklet ids that collide across pids and with the queries,
    distances on a coarse grid (many ties) or continuous; some queries have no match at all."""
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(0, 6, num_g)
    q_pids = rng.integers(0, 8, num_q)          # pids 6, 7 never occur in the gallery
    g_cams = rng.integers(0, 3, num_g)
    q_cams = rng.integers(0, 3, num_q)
    g_names = [f"{p:04d}_{rng.integers(0, 12)}" for p in g_pids]
    q_names = [f"{p:04d}_{rng.integers(0, 12)}" for p in q_pids]
    q_names[0] = g_names[3].replace(g_names[3].split("_")[0], f"{q_pids[0]:04d}")  # a shared tracklet id
    if tied:
        dist = rng.integers(0, 5, (num_q, num_g)).astype(np.float32) / 4
        dist[1] = 0.5                           # a fully tied row
    else:
        dist = rng.random((num_q, num_g)).astype(np.float32)
    return dist, q_pids, g_pids, q_cams, g_cams, q_names, g_names


@pytest.mark.parametrize("junk_rule", ["camera", "tracklet"])
@pytest.mark.parametrize("ap_mode", ["standard", "trapezoid"])
@pytest.mark.parametrize("seed,tied,chunk", [(0, True, 512), (1, True, 4), (2, False, 7), (3, True, 1)])
def test_evaluate_ranking_matches_loop_oracle(junk_rule, ap_mode, seed, tied, chunk):
    dist, q_pids, g_pids, q_cams, g_cams, q_names, g_names = random_problem(seed, tied=tied)
    expected = oracle_evaluate(dist.tolist(), q_pids.tolist(), g_pids.tolist(), q_cams.tolist(),
                               g_cams.tolist(), q_names, g_names, junk_rule, ap_mode)
    got = evaluate_ranking(torch.from_numpy(dist), q_pids, g_pids, q_cams, g_cams, q_names, g_names,
                           junk_rule=junk_rule, ap_mode=ap_mode, chunk=chunk)
    assert 0 < got["num_valid"] < len(q_pids)          # the problem really has invalid queries
    assert got["num_valid"] == expected["num_valid"]
    assert got["num_without_match"] == len(q_pids) - expected["num_valid"]
    np.testing.assert_allclose(got["AP"], np.array(expected["AP"]), rtol=0, atol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(got["first_hit_rank"], expected["first"])
    np.testing.assert_array_equal(got["R1_hit"], np.array(expected["first"]) == 0)
    for key in ("mAP", "mINP", "R1", "R5", "R10", "R20"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    assert got["junk_rule"] == junk_rule and got["ap_mode"] == ap_mode


def test_int64_bin_ids_path_gives_the_same_result(monkeypatch):
    """The path GPUs (and huge CPU chunks) take."""
    import utils.metrics as metrics
    dist, q_pids, g_pids, q_cams, g_cams, q_names, g_names = random_problem(11)
    expected = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, q_names, g_names)
    monkeypatch.setattr(metrics, "_bin_index_dtype", lambda device, num_ids: torch.int64)
    got = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, q_names, g_names)
    np.testing.assert_array_equal(got["AP"], expected["AP"])


def test_numpy_float64_input_and_string_pids_agree_with_tensor_input():
    dist, q_pids, g_pids, q_cams, g_cams, q_names, g_names = random_problem(5)
    a = evaluate_ranking(dist.astype(np.float64), [str(p) for p in q_pids], [str(p) for p in g_pids],
                         q_cams, g_cams, q_names, g_names, chunk=5)
    b = evaluate_ranking(torch.from_numpy(dist), q_pids, g_pids, q_cams, g_cams, q_names, g_names)
    np.testing.assert_array_equal(a["AP"], b["AP"])


def test_large_gallery_with_random_ties_matches_oracle():
    """Many entries per distance bin and rows with both huge and tiny spreads."""
    rng = np.random.default_rng(7)
    num_q, num_g = 6, 900
    dist = np.round(rng.random((num_q, num_g)), 2)
    dist[2] *= 1e-30                                   # tiny span: exercised by the bin scale guard
    dist[3] = 7.0
    dist[4] = np.float32(1000) + rng.integers(0, 3, num_g) * np.float32(6.103515625e-05)  # big offset, tiny span
    dist[5] = -dist[5] * 1e30
    g_pids = rng.integers(0, 20, num_g)
    q_pids = rng.integers(0, 20, num_q)
    cams = rng.integers(0, 2, num_g)
    q_cams = rng.integers(0, 2, num_q)
    names_g = [f"{p}_{i}" for i, p in enumerate(g_pids)]
    names_q = [f"{p}_{num_g + i}" for i, p in enumerate(q_pids)]
    for rule in ("camera", "tracklet"):
        expected = oracle_evaluate(dist.tolist(), q_pids.tolist(), g_pids.tolist(), q_cams.tolist(),
                                   cams.tolist(), names_q, names_g, rule, "trapezoid")
        got = evaluate_ranking(dist, q_pids, g_pids, q_cams, cams, names_q, names_g, junk_rule=rule)
        np.testing.assert_allclose(got["AP"], expected["AP"], atol=1e-12, equal_nan=True)
        np.testing.assert_array_equal(got["first_hit_rank"], expected["first"])


def test_no_valid_query_gives_nan_not_zero():
    dist = np.zeros((2, 3), dtype=np.float32)
    got = evaluate_ranking(dist, [5, 6], [1, 2, 3], q_names=["5_1", "6_1"], g_names=["1_1", "2_1", "3_1"])
    assert got["num_valid"] == 0 and math.isnan(got["mAP"]) and math.isnan(got["R1"])
    assert not got["R1_hit"].any()


def test_bad_inputs_raise_clear_errors():
    dist = np.zeros((1, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="TEST.JUNK_RULE"):
        evaluate_ranking(dist, [1], [1, 2], junk_rule="market")
    with pytest.raises(ValueError, match="pid"):
        evaluate_ranking(dist, [1], [1, 2], q_names=["a"], g_names=["1_1", "2_1"])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ranking(np.array([[np.nan, 1.0]]), [1], [1, 2], q_names=["1_0"], g_names=["1_1", "2_1"])
    with pytest.raises(ValueError, match="camids"):
        evaluate_ranking(dist, [1], [1, 2], junk_rule="camera")
    with pytest.raises(ValueError, match="'0004_x'"):
        evaluate_ranking(dist, [4], [4, 2], q_names=["0004_x"], g_names=["4_1", "2_1"])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_compute_distance_matches_direct_formula(metric):
    gen = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(9, 5, generator=gen), torch.randn(13, 5, generator=gen)
    got = compute_distance(qf, gf, metric=metric, chunk=4)
    q, g = qf.double().numpy(), gf.double().numpy()
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        expected = 1 - q @ g.T
    else:
        expected = np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))
    assert got.dtype == torch.float32 and got.shape == (9, 13)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="TEST.DISTANCE"):
        compute_distance(qf, gf, metric="manhattan")


def test_rank_gallery_is_a_stable_argsort():
    dist, *_ = random_problem(3)
    expected = np.argsort(dist, axis=1, kind="stable")
    np.testing.assert_array_equal(rank_gallery(torch.from_numpy(dist), chunk=5), expected)
    np.testing.assert_array_equal(rank_gallery(dist, topk=4), expected[:, :4])


def oracle_pool(per_case):
    """The rule as a plain loop: mAP-3 = mean of per-query AP over the queries (with a true match) of all
    cases pooled; the mean over cases = mean of each case's own mAP, over the cases with such a query."""
    pooled_ap, pooled_hit, case_map, case_r1, cases = [], [], [], [], []
    for case in sorted(per_case):
        aps, hits = [], []
        for ap, hit in zip(per_case[case]["AP"], per_case[case]["R1_hit"]):
            if not math.isnan(ap):
                aps.append(float(ap))
                hits.append(1.0 if hit else 0.0)
        pooled_ap += aps
        pooled_hit += hits
        if aps:
            case_map.append(sum(aps) / len(aps))
            case_r1.append(sum(hits) / len(hits))
            cases.append(case)
    mean = lambda values: sum(values) / len(values) if values else math.nan  # noqa: E731
    return {"mAP-3": mean(pooled_ap), "R1-3": mean(pooled_hit), "mAP_mean_over_cases": mean(case_map),
            "R1_mean_over_cases": mean(case_r1), "num_valid": len(pooled_ap), "cases": cases}


@pytest.mark.parametrize("seed", range(20))
def test_pool_cases_matches_the_loop_oracle(seed):
    """Cases of different sizes (so pooling and the mean over cases differ), queries without a true match,
    empty cases and cases where no query has a match."""
    rng = np.random.default_rng(seed)
    per_case = {}
    for case in rng.choice([1, 2, 3], size=int(rng.integers(1, 4)), replace=False):
        size = int(rng.integers(0, 12))
        ap = rng.random(size)
        ap[rng.random(size) < rng.choice([0.0, 0.3, 1.0])] = np.nan
        per_case[int(case)] = {"AP": ap, "R1_hit": rng.random(size) < 0.5}
    got, expected = pool_cases(per_case), oracle_pool(per_case)
    assert got["num_valid"] == expected["num_valid"] and got["cases"] == expected["cases"]
    for key in ("mAP-3", "R1-3", "mAP_mean_over_cases", "R1_mean_over_cases"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12, nan_ok=True), key


def test_pool_cases_weighs_a_case_by_its_queries():
    case_a = {"AP": np.array([1.0, 0.5, np.nan]), "R1_hit": np.array([True, False, False])}
    case_b = {"AP": np.array([0.0]), "R1_hit": np.array([False])}
    summary = pool_cases({3: case_b, 1: case_a})
    assert summary["mAP-3"] == pytest.approx(0.5)
    assert summary["mAP_mean_over_cases"] == pytest.approx(0.375)
    assert summary["R1-3"] == pytest.approx(1 / 3) and summary["R1_mean_over_cases"] == pytest.approx(0.25)
    assert summary["num_valid"] == 3 and summary["cases"] == [1, 3]
    with pytest.raises(ValueError, match="one of each per query"):
        pool_cases({1: {"AP": np.array([0.5]), "R1_hit": np.array([True, False])}})
