"""DetReIDX(V1): the dataset layout, its frame names, the scanner (with a scan cache), the splits and a
statistics table. Import each name from its module:

* ``names``: frame-name parser (``parse_frame_name``, ``FrameNameInfo``), the 18 ``CAPTURE_POINTS`` and
  the physical ranges of a name's fields, camera keys and ``standard_camera_index``.
* ``frames``: compact frame lists of one tracklet (``FrameNames``, ``FramePaths``).
* ``records``: ``Tracklet`` and ``CaseSplit`` (query + gallery of one case).
* ``scan``: the folder walk and tracklet listing, ``DatasetLayoutError``, ``ScanSummary`` (what the
  scanner understood of the names).
* ``scan_cache``: the ``.npz`` scan cache (``default_scan_cache_dir``, ``missing_frame_message``).
* ``splits``: the validation split laid out like the test cases (``split_cases_from_tracklets``,
  ``split_aerial_to_aerial``).
* ``dataset``: ``DetReIDX`` (registered as ``detreidx``) and its statistics table.
* ``__main__``: ``python -m datasets.detreidx --root DIR`` prints that table.

The case folders, case names and the other protocol rules live in ``utils.protocol``. Names with a
leading underscore are shared between these modules only.

Layout on disk::

    ROOT/train/<PID>/<tracklet>/*.jpg
    ROOT/case1_aerial_to_ground/{query,gallery}/<PID>/<tracklet>/*.jpg
    ROOT/case2_ground_to_aerial/{query,gallery}/<PID>/<tracklet>/*.jpg
    ROOT/case3_aerial_to_aerial/{query,gallery}/<PID>/<tracklet>/*.jpg
"""
