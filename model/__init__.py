"""SAS-VPReID model parts. Submodules are imported on first use (``model.build_model`` etc.), so
``import model.memory`` stays light and does not pull in open_clip or smplx."""
from importlib import import_module

_EXPORTS = {
    "build_model": "model.build",
    "SASModel": "model.sas",
    "MultiProxyMemory": "model.memory",
    "MGTM": "model.mgtm",
    "build_mgtm": "model.mgtm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
