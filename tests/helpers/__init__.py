"""Plain helpers of the test suite, one home each (pytest fixtures live in tests/conftest.py).

paths        REPO_ROOT, DEMO_CONFIG, load_bench
data         TINY_DATA, make_tiny_root, make_tiny_cfg, make_query_gallery_halves, FRAME_DAMAGE, damage_frame,
             break_session, find_tracklet_folder, make_aerial_tracklet, make_ground_tracklet
models       TINY_SAS, NO_DROPOUT, NUM_CLASSES, NUM_CAMERAS, make_tiny_sas, make_clips
checkpoints  make_tiny_checkpoint, make_nan_checkpoint
training     make_tiny_opts, make_tiny_trainer
cli          CLI_ENV, run_cli, output_of, assert_ok, assert_clean_failure
files        sha256, snapshot, age_tree, restore_mtime_after
"""
