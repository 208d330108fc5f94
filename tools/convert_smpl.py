"""Convert an official (chumpy-pickled) SMPL ``.pkl`` into a plain ``.npz`` of numpy arrays.

    python -m tools.convert_smpl basicModel_neutral_lbs_10_207_0_v1.0.0.pkl pretrained/smpl_neutral.npz

chumpy is not needed and nothing in the pickle runs: a restricted unpickler (``model.smpl``)
turns chumpy objects into their array values and scipy sparse matrices into dense arrays. The
output holds every numeric / string array of the input (``v_template``, ``shapedirs``,
``posedirs``, ``J_regressor``, ``weights``, ``kintree_table``, ``f``, ...); other entries (dicts of
training info) are dropped and listed. Set ``MODEL.PRSD.SMPL_MODEL_PATH`` to the output.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
from typing import Dict, List, Tuple

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.smpl import SMPL_REQUIRED_KEYS, read_smpl_pickle  # noqa: E402
from utils.fileio import WriteFailure, atomic_write  # noqa: E402


def smpl_pickle_to_arrays(path: str) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """(arrays to save, names of dropped non-array entries) of a SMPL ``.pkl``."""
    loaded = read_smpl_pickle(path)
    arrays: Dict[str, np.ndarray] = {}
    dropped: List[str] = []
    for key, value in loaded.items():
        if isinstance(value, (str, bytes)):
            value = np.asarray(value if isinstance(value, str) else value.decode("latin1"))
        array = np.asarray(value) if isinstance(value, (np.ndarray, np.generic, int, float, list, tuple)) else None
        if array is None or array.dtype == object:
            dropped.append(key)
            continue
        arrays[key] = array
    missing = [k for k in SMPL_REQUIRED_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: not a SMPL model file, missing arrays {missing}.")
    return arrays, dropped


def write_npz_atomic(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """np.savez through utils.fileio.atomic_write: never a half-written file, the mode a plain open
    gives (readable by the group on a shared machine), a full disk reported as one line."""
    def write(temporary: str) -> None:
        with open(temporary, "wb") as output:  # a file object: np.savez would add ".npz" to a name
            np.savez(output, **arrays)

    atomic_write(path, write)


def convert(source: str, target: str) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Convert ``source`` (.pkl) to ``target`` (.npz); returns what was written and what was dropped."""
    if not os.path.isfile(source):
        raise FileNotFoundError(f"SMPL model file not found: {source}")
    if not target.endswith(".npz"):
        raise ValueError(f"The output must be a .npz file, got {target}")
    arrays, dropped = smpl_pickle_to_arrays(source)
    write_npz_atomic(target, arrays)
    return arrays, dropped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="official SMPL .pkl (chumpy pickle) or a pickle of plain arrays")
    parser.add_argument("target", help="output .npz (set MODEL.PRSD.SMPL_MODEL_PATH to it)")
    args = parser.parse_args(argv)
    try:
        arrays, dropped = convert(args.source, args.target)
    except (OSError, ValueError, WriteFailure) as exc:  # a missing or wrong file, a full disk: one line
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (EOFError, pickle.UnpicklingError) as exc:  # an empty, truncated or non-pickle file
        print(f"error: {args.source} is not a readable SMPL pickle ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    for key, array in sorted(arrays.items()):
        print(f"  {key:24s} {str(array.dtype):8s} {tuple(array.shape)}")
    if dropped:
        print(f"dropped non-array entries: {', '.join(sorted(dropped))}")
    print(f"wrote {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
