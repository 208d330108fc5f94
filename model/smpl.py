"""SMPL support for the PRSD shape branch: safe model-file reading, 6D rotations, a smplx decoder.

SMPL model files come as ``.npz`` (e.g. written by ``tools/convert_smpl.py``) or as a ``.pkl``.
Official ``.pkl`` files are Python-2 pickles holding chumpy objects and scipy sparse matrices;
they are read here by a restricted unpickler that rebuilds numpy arrays only (no chumpy, no scipy,
no code from the file runs). smplx itself would ``pickle.load`` the file unrestricted, so the
arrays are handed to it as a ready ``data_struct``.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
from typing import Dict, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.weights import PretrainedWeightsError

logger = logging.getLogger(__name__)

NUM_SMPL_JOINTS = 24  # kinematic joints (root + 23)
NUM_BETAS = 10
POSE_6D_DIM = NUM_SMPL_JOINTS * 6  # 144
CAM_DIM = 3
SMPL_VERTICES = 6890

# Arrays smplx's SMPL reads from a model file.
SMPL_REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
# Face keypoints smplx appends to the kinematic joints (vertex ids in the mesh).
FACE_KEYPOINT_NAMES = ("nose", "reye", "leye", "rear", "lear")


# ----------------------------------------------------------------------------- rotations
def rot6d_to_rotmat(rot6d: Tensor) -> Tensor:
    """6D rotation representation (Zhou et al. 2019) -> rotation matrices.

    rot6d (..., 6), read as a row-major 3x2 matrix whose two columns are orthonormalised by
    Gram-Schmidt (the layout of SPIN's mean parameters) -> (..., 3, 3) with columns b1, b2, b1 x b2.
    """
    columns = rot6d.reshape(*rot6d.shape[:-1], 3, 2)
    first, second = columns[..., 0], columns[..., 1]
    b1 = F.normalize(first, dim=-1)
    b2 = F.normalize(second - (b1 * second).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def identity_rot6d(num_joints: int = NUM_SMPL_JOINTS) -> Tensor:
    """(num_joints * 6,) 6D code of identity rotations: columns (1,0,0) and (0,1,0), row-major."""
    return torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]).repeat(num_joints)


# ----------------------------------------------------------------------------- mean parameters
def default_mean_params() -> Dict[str, Tensor]:
    """Built-in starting point of the regressor: identity rotations, zero betas, cam [0.9, 0, 0]
    (SPIN's weak-perspective scale), used when MODEL.PRSD.SMPL_MEAN_PARAMS is empty."""
    return dict(pose=identity_rot6d(), shape=torch.zeros(NUM_BETAS), cam=torch.tensor([0.9, 0.0, 0.0]))


def check_mean_params_file(path: str) -> None:
    """PretrainedWeightsError (what to get, where to put it) when MODEL.PRSD.SMPL_MEAN_PARAMS is missing."""
    if not os.path.isfile(path):
        raise PretrainedWeightsError(
            f"MODEL.PRSD.SMPL_MEAN_PARAMS={path!r} does not exist. Get SPIN's smpl_mean_params.npz (keys pose, "
            "shape, cam; in http://visiondata.cis.upenn.edu/spin/data.tar.gz, fetched by SPIN's fetch_data.sh) "
            f"and put it at {os.path.abspath(path)}; or leave the key empty, or set MODEL.PRSD.LOAD_PRETRAINED False, "
            "for the built-in means.")


def check_smpl_model_file(path: str) -> None:
    """PretrainedWeightsError (what to get, where to put it) when MODEL.PRSD.SMPL_MODEL_PATH is missing."""
    if not os.path.isfile(path):
        raise PretrainedWeightsError(
            f"MODEL.PRSD.SMPL_MODEL_PATH={path!r} does not exist. Get the SMPL model (e.g. "
            "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl from https://smplify.is.tue.mpg.de, licence required), "
            "convert it with `python -m tools.convert_smpl IN.pkl OUT.npz` and put OUT.npz at "
            f"{os.path.abspath(path)} (or point the key at it), or leave the key empty to run PRSD on parameters alone.")


def load_mean_params(path: str) -> Dict[str, Tensor]:
    """SPIN-style ``smpl_mean_params.npz``: pose (144,) 6D, shape (10,), cam (3,) -> float32 tensors."""
    check_mean_params_file(path)
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("pose", "shape", "cam") if k not in data.files]
        if missing:
            raise ValueError(f"{path}: SMPL mean parameters need keys pose, shape, cam; missing {missing}.")
        params = {k: torch.from_numpy(np.asarray(data[k], dtype=np.float32).reshape(-1)) for k in ("pose", "shape", "cam")}
    expected = dict(pose=POSE_6D_DIM, shape=NUM_BETAS, cam=CAM_DIM)
    for key, size in expected.items():
        if params[key].numel() < size:
            raise ValueError(f"{path}: {key} has {params[key].numel()} values, expected {size}.")
        params[key] = params[key][:size]
    return params


# ----------------------------------------------------------------------------- safe pickle reading
class _PickledObjectStub:
    """Stand-in for a chumpy / scipy.sparse object in a pickle: keeps its state, runs no code."""

    qualified_name = "?"

    def __init__(self, *args, **kwargs):
        self.__dict__["init_args"] = args

    def __setstate__(self, state):
        self.__dict__["state"] = state


def _stub_to_array(value, where: str):
    """Plain numpy array of a stub: a chumpy ``Ch`` keeps its array in ``x``; a scipy sparse
    matrix (csc / csr / coo) is densified from its index arrays."""
    if not isinstance(value, _PickledObjectStub):
        return value
    state = value.__dict__.get("state")
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = state[1]  # (slot state, dict state) form
    name = value.qualified_name
    if not isinstance(state, dict):
        raise ValueError(f"{where}: cannot read a {name} object (no attribute state).")
    if name.startswith("scipy.sparse"):
        shape = tuple(int(s) for s in state.get("_shape", state.get("shape")))
        data = np.asarray(state["data"])
        dense = np.zeros(shape, dtype=data.dtype)
        kind = name.rsplit(".", 1)[-1]
        if kind in ("csc_matrix", "csc_array", "csr_matrix", "csr_array"):
            indices, indptr = np.asarray(state["indices"]), np.asarray(state["indptr"])
            outer = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
            rows, cols = (indices, outer) if kind.startswith("csc") else (outer, indices)
        elif kind in ("coo_matrix", "coo_array"):
            rows, cols = np.asarray(state["row"]), np.asarray(state["col"])
        else:
            raise ValueError(f"{where}: unsupported sparse matrix type {name}; convert it to a dense array.")
        np.add.at(dense, (rows, cols), data)  # duplicates sum, as scipy's toarray does
        return dense
    if "x" in state:  # chumpy Ch and its subclasses keep the value in x
        return np.asarray(_stub_to_array(state["x"], where))
    raise ValueError(f"{where}: a {name} object without an array value (keys {sorted(state)[:8]}); "
                     "it is a derived chumpy expression this reader cannot evaluate.")


class _SafeArrayUnpickler(pickle.Unpickler):
    """Allows numpy array reconstruction and plain containers; chumpy and scipy.sparse classes
    become stubs; every other global is refused (the file can not run code)."""

    def __init__(self, file, path: str):
        super().__init__(file, encoding="latin1")  # Python-2 pickles (official SMPL files)
        self._path = path
        self._stubs: Dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(np._core.multiarray, name) if hasattr(np, "_core") else getattr(np.core.multiarray, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        if (module, name) in (("collections", "OrderedDict"), ("__builtin__", "set"), ("builtins", "set")):
            import collections

            return collections.OrderedDict if name == "OrderedDict" else set
        if module.split(".")[0] == "chumpy" or module.startswith("scipy.sparse"):
            qualified = f"{module}.{name}"
            if qualified not in self._stubs:
                self._stubs[qualified] = type(name, (_PickledObjectStub,), {"qualified_name": qualified})
            return self._stubs[qualified]
        raise pickle.UnpicklingError(f"{self._path}: refusing to load global {module}.{name}; the file may only "
                                     "hold numpy arrays (and chumpy / scipy.sparse wrappers of them).")


def read_smpl_pickle(path: str) -> Dict[str, object]:
    """A SMPL ``.pkl`` (official chumpy pickle or a pickle of plain arrays) as a dict of numpy
    arrays (chumpy values unwrapped, sparse matrices densified); non-array entries pass through."""
    with open(path, "rb") as handle:
        loaded = _SafeArrayUnpickler(handle, path).load()
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a pickled dict of SMPL arrays, got {type(loaded).__name__}.")
    return {str(k): _stub_to_array(v, f"{path}[{k!r}]") for k, v in loaded.items()}


def load_smpl_arrays(path: str) -> Dict[str, np.ndarray]:
    """SMPL model arrays from ``.npz`` (no pickled objects allowed) or ``.pkl`` (safe reader)."""
    check_smpl_model_file(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    elif path.endswith(".pkl"):
        arrays = read_smpl_pickle(path)
    else:
        raise ValueError(f"MODEL.PRSD.SMPL_MODEL_PATH={path!r}: expected a .npz or .pkl SMPL model file.")
    missing = [k for k in SMPL_REQUIRED_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: not a SMPL model file, missing arrays {missing} (needs {list(SMPL_REQUIRED_KEYS)}).")
    return arrays


# ----------------------------------------------------------------------------- decoder
class SMPLDecoder(nn.Module):
    """smplx SMPL driven by predicted betas and rotation matrices.

    Returns posed joints: the 24 kinematic joints then the face keypoints (nose, eyes, ears) read
    from mesh vertices. The model arrays are non-persistent buffers: they come from the SMPL file
    (licensed, large) and are never written into checkpoints.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], vertex_ids: Optional[Mapping[str, int]] = None,
                 source: str = "SMPL arrays"):
        """arrays: SMPL_REQUIRED_KEYS (+ optional ``extra_vertex_ids``: 5 vertex ids of nose, right eye,
        left eye, right ear, left ear, for meshes other than SMPL's 6890-vertex one)."""
        super().__init__()
        import smplx
        from smplx.utils import Struct
        from smplx.vertex_ids import vertex_ids as smplx_vertex_ids

        num_vertices = int(np.asarray(arrays["v_template"]).shape[0])
        if vertex_ids is None and "extra_vertex_ids" in arrays:
            vertex_ids = dict(zip(FACE_KEYPOINT_NAMES, (int(i) for i in np.asarray(arrays["extra_vertex_ids"]))))
        if vertex_ids is None:
            if num_vertices != SMPL_VERTICES:
                raise ValueError(f"{source}: the mesh has {num_vertices} vertices, not SMPL's {SMPL_VERTICES}; give the "
                                 f"vertex ids of {FACE_KEYPOINT_NAMES} as an 'extra_vertex_ids' array.")
            vertex_ids = smplx_vertex_ids["smplh"]
        missing = [k for k in FACE_KEYPOINT_NAMES if k not in vertex_ids]
        if missing:
            raise ValueError(f"{source}: vertex ids for {missing} are missing.")
        shapedirs = np.asarray(arrays["shapedirs"])
        if shapedirs.shape[-1] < NUM_BETAS:
            raise ValueError(f"{source}: shapedirs has {shapedirs.shape[-1]} shape components, PRSD needs {NUM_BETAS}.")
        struct = Struct(**{k: np.asarray(arrays[k]) for k in SMPL_REQUIRED_KEYS})
        # smplx prints a note about 10-component models; keep it out of stdout.
        with contextlib.redirect_stdout(io.StringIO()) as note:
            self.smpl = smplx.SMPL(model_path=source, data_struct=struct, num_betas=NUM_BETAS, vertex_ids=vertex_ids,
                                   use_hands=False, use_feet_keypoints=False, create_betas=False,
                                   create_global_orient=False, create_body_pose=False, create_transl=False)
        if note.getvalue().strip():
            logger.debug("smplx: %s", note.getvalue().strip())
        for module in self.smpl.modules():
            for name, buffer in list(module.named_buffers(recurse=False)):
                module.register_buffer(name, buffer, persistent=False)
        parents = self.smpl.parents[:NUM_SMPL_JOINTS].clone()
        self.register_buffer("bone_children", torch.arange(1, NUM_SMPL_JOINTS), persistent=False)
        self.register_buffer("bone_parents", parents[1:], persistent=False)
        self.num_joints = NUM_SMPL_JOINTS + len(FACE_KEYPOINT_NAMES)
        self.num_bones = NUM_SMPL_JOINTS - 1

    def forward(self, betas: Tensor, rotmats: Tensor, return_vertices: bool = False):
        """betas (N, 10), rotmats (N, 24, 3, 3) -> joints (N, 29, 3) [, vertices (N, V, 3)] in fp32
        (outside autocast: skinning in half precision visibly distorts the mesh)."""
        with torch.autocast(device_type=betas.device.type, enabled=False):
            rotmats = rotmats.float()
            output = self.smpl(betas=betas.float(), global_orient=rotmats[:, :1], body_pose=rotmats[:, 1:],
                               pose2rot=False, return_verts=return_vertices)
        return (output.joints, output.vertices) if return_vertices else output.joints

    def bone_lengths(self, joints: Tensor) -> Tensor:
        """joints (..., >=24, 3) -> (..., 23) lengths of the kinematic-tree bones divided by their sum
        (scale-free: a weak-perspective crop carries no absolute size)."""
        bones = joints[..., self.bone_children, :] - joints[..., self.bone_parents, :]
        lengths = bones.norm(dim=-1)
        return lengths / lengths.sum(-1, keepdim=True).clamp_min(1e-8)


def build_smpl_decoder(path: str) -> Optional[SMPLDecoder]:
    """The decoder of MODEL.PRSD.SMPL_MODEL_PATH, ``None`` when the path is empty."""
    if not path:
        return None
    return SMPLDecoder(load_smpl_arrays(path), source=path)
