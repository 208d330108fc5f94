"""The labelled validation split: held-out train identities laid out like the three test cases."""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from datasets.detreidx.records import CaseSplit, Tracklet, _make_case, _sort_tracklets


def split_cases_from_tracklets(tracklets: Sequence[Tracklet], rng: np.random.Generator) -> dict[int, CaseSplit]:
    """Lay out labelled tracklets like the three test cases, each query with a true match.

    Case 1: aerial queries vs ground gallery; case 2: ground queries vs aerial gallery; case 3:
    each identity's aerial tracklets are split per camera (session) into a query half and a
    gallery half, the gallery keeping at least one tracklet of every camera, so that every query
    has a same-identity gallery tracklet with another name (challenge rule) and, when the identity
    was filmed in two sessions, with another camera (Market-1501 rule). Queries without a match are
    dropped; cases left empty are omitted.
    """
    by_pid: dict[int, list[Tracklet]] = defaultdict(list)
    for t in tracklets:
        by_pid[t.pid].append(t)
    queries: dict[int, list[Tracklet]] = {1: [], 2: [], 3: []}
    galleries: dict[int, list[Tracklet]] = {1: [], 2: [], 3: []}
    for pid in sorted(by_pid):
        own = _sort_tracklets(by_pid[pid])
        aerial = [t for t in own if t.view == "aerial"]
        ground = [t for t in own if t.view == "ground"]
        if aerial and ground:
            queries[1] += aerial
            galleries[1] += ground
            queries[2] += ground
            galleries[2] += aerial
        else:
            # Gallery distractors: an identity seen from one view only still belongs in that gallery.
            galleries[1] += ground
            galleries[2] += aerial
        a2a_query, a2a_gallery = split_aerial_to_aerial(aerial, rng)
        queries[3] += a2a_query
        galleries[3] += a2a_gallery
    cases = {}
    for case in (1, 2, 3):
        if queries[case] and galleries[case]:
            cases[case] = _make_case(case, queries[case], galleries[case])
    return cases


def split_aerial_to_aerial(aerial: Sequence, rng: np.random.Generator) -> tuple[list, list]:
    """Split one identity's aerial tracklets into (query, gallery) as described in split_cases_from_tracklets.

    Works on any records with a ``camid`` attribute (the synthetic generator uses it too).
    """
    if len(aerial) < 2:
        return [], list(aerial)
    by_cam: dict[int, list[Tracklet]] = defaultdict(list)
    for t in aerial:
        by_cam[t.camid].append(t)
    query: list = []
    gallery: list = []
    for camid in sorted(by_cam):
        group = [by_cam[camid][i] for i in rng.permutation(len(by_cam[camid]))]
        n_query = len(group) // 2     # at least one per camera stays in the gallery
        query += group[:n_query]
        gallery += group[n_query:]
    if not query and len(by_cam) > 1:
        # Every camera holds one tracklet: the first camera's one becomes the query.
        first = by_cam[min(by_cam)][0]
        query, gallery = [first], [t for t in gallery if t is not first]
    return query, gallery

