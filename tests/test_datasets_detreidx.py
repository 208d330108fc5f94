"""DetReIDX frame-name parser, scanner, splits, statistics table and bad-input errors."""
import os
import shutil

import numpy as np
import pytest

from datasets import detreidx
from datasets.detreidx import (CASE_FOLDERS, DatasetLayoutError, DetReIDX, natural_sort_key, parse_frame_name,
                               split_cases_from_tracklets)
from tests.datasets_fixtures import make_tiny_root

REAL_OUTDOOR = "0004_23_10_2024_09_18_5.8_10_30_3_2_1_0_0_0_0_5_2_1_0_1_2_S1_000123.jpg"


# ----------------------------------------------------------------------------- parser
def test_parse_pins_real_outdoor_scheme_name():
    info = parse_frame_name(REAL_OUTDOOR)
    assert info.scheme == "outdoor" and info.view == "aerial"
    assert info.height == 5.8 and info.distance == 10 and info.angle == 30
    assert info.session == "S1" and info.pid_token == "0004"
    assert info.aerial_distance == pytest.approx(np.hypot(5.8, 10))


def test_parse_short_outdoor_prefix_as_in_method_md():
    # The example stem of method.md, with the soft-biometric tail cut short.
    info = parse_frame_name("0004_23_10_2024_09_18_5.8_10_30_3_S2_7.jpg")
    assert (info.height, info.distance, info.angle, info.session) == (5.8, 10.0, 30.0, "S2")


def test_parse_nadir_and_folder_path():
    info = parse_frame_name("/data/x/0012_24_10_2024_14_02_120_0_90_1_1_1_0_0_0_0_3_3_3_0_1_1_S2_00001.jpg")
    assert (info.height, info.distance, info.angle, info.session) == (120.0, 0.0, 90.0, "S2")
    assert info.aerial_distance == 120.0


def test_parse_ground_scheme():
    info = parse_frame_name("0004_M_27_172_68_2_45_F_00001.jpg")
    assert info.scheme == "ground" and info.view == "ground"
    assert info.height is None and info.session is None and info.pid_token == "0004"


@pytest.mark.parametrize("name", ["frame_0001.jpg", "img00001.jpg", "00001.jpg", "abc_M_27_172_68_2_45_F_1.jpg"])
def test_parse_unknown_scheme_is_an_error_naming_the_file(name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")) as err:
        parse_frame_name(name)
    assert "UNKNOWN_NAMES_AS_GROUND" in str(err.value)
    info = parse_frame_name(name, unknown_as_ground=True)
    assert info.view == "ground" and info.scheme == "unknown"


def test_natural_sort_orders_unpadded_frame_numbers():
    names = ["a_10.jpg", "a_2.jpg", "a_1.jpg"]
    assert sorted(names, key=natural_sort_key) == ["a_1.jpg", "a_2.jpg", "a_10.jpg"]


# ----------------------------------------------------------------------------- scanner
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_tiny_root(tmp_path_factory.mktemp("detreidx"))


def test_scan_counts_and_metadata(tiny_root):
    ds = DetReIDX(tiny_root)
    assert ds.num_train_pids == 6 and ds.num_cameras == 3
    assert len(ds.train) == 6 * (2 + 2 * 2)
    assert sorted({t.label for t in ds.train}) == list(range(6))
    assert set(ds.cases) == {1, 2, 3}
    for t in ds.train:
        assert t.name.startswith(f"{t.pid:04d}_")
        assert list(t.frames) == sorted(t.frames)
        assert all(os.path.dirname(f) == t.folder for f in t.frames)
        if t.view == "ground":
            assert t.camid == 0 and t.height is None and t.session is None and t.view_id == 0
        else:
            assert t.camid == {"S1": 1, "S2": 2}[t.session] and t.view_id == 1
            assert (t.height, t.distance, t.angle) in detreidx.CAPTURE_POINTS
            assert t.aerial_distance == pytest.approx(np.hypot(t.height, t.distance))
    for case, split in ds.cases.items():
        query_view, gallery_view = detreidx.CASE_VIEWS[case]
        assert split.query and split.gallery and split.has_ground_truth
        assert all(t.view == query_view for t in split.query) and all(t.view == gallery_view for t in split.gallery)
        assert split.query == sorted(split.query, key=lambda t: (t.pid, natural_sort_key(t.name)))
        assert all(t.label == -1 for t in split.query + split.gallery)


def test_validation_split_has_true_matches_in_every_case(tiny_root):
    ds = DetReIDX(tiny_root, val_ids=2, seed=3)
    assert ds.num_train_pids == 4 and len(ds.val_pids) == 2
    assert not ds.val_pids & {t.pid for t in ds.train}
    assert sorted({t.label for t in ds.train}) == list(range(4))
    assert set(ds.val) == {1, 2, 3}
    for split in ds.val.values():
        for q in split.query:
            # Challenge rule (same pid, another tracklet) and Market rule (same pid, another camera).
            assert any(g.pid == q.pid and g.name != q.name for g in split.gallery)
            assert any(g.pid == q.pid and g.camid != q.camid for g in split.gallery)
    again = DetReIDX(tiny_root, val_ids=2, seed=3)
    assert again.val_pids == ds.val_pids and [t.name for t in again.val[3].query] == [t.name for t in ds.val[3].query]


def test_statistics_table_and_cli(tiny_root, capsys):
    ds = DetReIDX(tiny_root, val_ids=1)
    table = ds.statistics_table()
    assert "case3_aerial_to_aerial query" in table and "val case1_aerial_to_ground query" in table
    assert "cameras: 3" in table and "ground" in table
    assert detreidx.main(["--root", tiny_root]) == 0
    out = capsys.readouterr().out
    train_line = next(line for line in out.splitlines() if line.startswith("train"))
    frames = sum(len(t.frames) for t in DetReIDX(tiny_root).train)
    assert train_line.split()[1:4] == ["6", "36", str(frames)]


def test_val_ids_too_large_names_the_key(tiny_root):
    with pytest.raises(DatasetLayoutError, match="DATASETS.VAL_IDS"):
        DetReIDX(tiny_root, val_ids=6)


def test_split_cases_drops_nothing_needed():
    make = lambda pid, name, view, camid: detreidx.Tracklet(("x/1.jpg",), pid, camid, view, name, None, None, None, None, None)
    tracklets = [make(1, "1_1", "ground", 0), make(1, "1_2", "aerial", 1), make(1, "1_3", "aerial", 2),
                 make(2, "2_4", "aerial", 1)]
    cases = split_cases_from_tracklets(tracklets, np.random.default_rng(0))
    assert [t.name for t in cases[1].query] == ["1_2", "1_3"] and [t.name for t in cases[1].gallery] == ["1_1"]
    assert [t.name for t in cases[3].query] == ["1_2"]
    assert sorted(t.name for t in cases[3].gallery) == ["1_3", "2_4"]


# ----------------------------------------------------------------------------- bad input
@pytest.fixture()
def broken_root(tiny_root, tmp_path):
    root = str(tmp_path / "copy")
    shutil.copytree(tiny_root, root)
    return root


def _first_tracklet_folder(root, split="train"):
    pid_dir = os.path.join(root, split, sorted(os.listdir(os.path.join(root, split)))[0])
    return os.path.join(pid_dir, sorted(os.listdir(pid_dir))[0])


def test_missing_root(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(DatasetLayoutError, match="nope.*does not exist.*DATASETS.ROOT_DIR"):
        DetReIDX(missing)


def test_missing_case_folder(broken_root):
    shutil.rmtree(os.path.join(broken_root, CASE_FOLDERS[2]))
    with pytest.raises(DatasetLayoutError, match="case2_ground_to_aerial"):
        DetReIDX(broken_root)


def test_missing_gallery_folder(broken_root):
    shutil.rmtree(os.path.join(broken_root, CASE_FOLDERS[3], "gallery"))
    with pytest.raises(DatasetLayoutError, match=r"case3_aerial_to_aerial.gallery"):
        DetReIDX(broken_root)


def test_train_only_root_has_no_cases(broken_root):
    for folder in CASE_FOLDERS.values():
        shutil.rmtree(os.path.join(broken_root, folder))
    ds = DetReIDX(broken_root)
    assert ds.cases == {} and ds.num_train_pids == 6


def test_non_integer_pid_folder(broken_root):
    os.rename(os.path.join(broken_root, "train", "0001"), os.path.join(broken_root, "train", "person1"))
    with pytest.raises(DatasetLayoutError, match="person1.*not an integer"):
        DetReIDX(broken_root)


def test_empty_tracklet_folder(broken_root):
    folder = _first_tracklet_folder(broken_root)
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))
    with pytest.raises(DatasetLayoutError, match=f"{os.path.basename(folder)}.*no frames"):
        DetReIDX(broken_root)


def test_unknown_frame_name(broken_root):
    folder = _first_tracklet_folder(broken_root)
    first = sorted(os.listdir(folder))[0]
    os.rename(os.path.join(folder, first), os.path.join(folder, "frame_0001.jpg"))
    with pytest.raises(DatasetLayoutError, match="frame_0001.jpg.*UNKNOWN_NAMES_AS_GROUND"):
        DetReIDX(broken_root)


def test_unknown_frame_name_as_ground(broken_root):
    folder = _first_tracklet_folder(broken_root)
    for i, name in enumerate(sorted(os.listdir(folder))):
        os.rename(os.path.join(folder, name), os.path.join(folder, f"frame_{i:04d}.jpg"))
    ds = DetReIDX(broken_root, unknown_names_as_ground=True)
    tracklet = next(t for t in ds.train if t.folder == folder)
    assert tracklet.view == "ground" and tracklet.camid == 0


def test_same_tracklet_name_under_two_pids_in_a_case(broken_root):
    query = os.path.join(broken_root, CASE_FOLDERS[1], "query")
    gallery = os.path.join(broken_root, CASE_FOLDERS[1], "gallery")
    pids = sorted(os.listdir(gallery))
    victim = _first_tracklet_folder(broken_root, os.path.join(CASE_FOLDERS[1], "query"))
    other_pid = next(p for p in pids if p != os.path.basename(os.path.dirname(victim)))
    shutil.copytree(victim, os.path.join(gallery, other_pid, os.path.basename(victim)))
    with pytest.raises(DatasetLayoutError, match=f"{os.path.basename(victim)}.*two PIDs.*case1_aerial_to_ground"):
        DetReIDX(broken_root)
    assert os.path.isdir(query)


def test_tracklet_mixing_views_is_an_error(broken_root):
    ds = DetReIDX(broken_root)
    ground = next(t for t in ds.train if t.view == "ground")
    aerial = next(t for t in ds.train if t.view == "aerial")
    shutil.copy(ground.frames[0], aerial.folder)
    with pytest.raises(DatasetLayoutError, match=f"{aerial.name}.*mixes aerial and ground"):
        DetReIDX(broken_root)


def test_case_queries_are_in_submission_row_order_pid_then_name_as_a_string(tmp_path):
    """0024_5453 before 0024_987 (plain string order, the organisers' row order), PID 9 before PID 24."""
    root = tmp_path / "rows"
    for part, names in (("query", ["0024_987", "0024_5453", "0009_12"]), ("gallery", ["0024_1", "0009_3"])):
        for name in names:
            folder = root / CASE_FOLDERS[1] / part / name.split("_")[0] / name
            folder.mkdir(parents=True)
            (folder / f"{name.split('_')[0]}_00001.jpg").write_bytes(b"")
    split = DetReIDX(str(root), cases=[1]).cases[1]
    assert [t.name for t in split.query] == ["0009_12", "0024_5453", "0024_987"]
    assert [t.name for t in split.gallery] == ["0009_3", "0024_1"]
