"""dynamicdet: DynamicDet (CVPR 2023), one cascaded detector whose average speed is chosen at
inference time. `dynamicdet_cli.load(path)` gives the Python API (api.py), and
`train_detectors` / `train_router` train as the commands do; the `dynamicdet`
command is cli/app.py. Importing the package loads neither torch nor the model code, and
changes nothing process-wide."""

__version__ = "0.1.0"

__all__ = ["DynamicDet", "load", "train_detectors", "train_router", "__version__"]


def __getattr__(name: str):
    # The API on first use, so `import dynamicdet_cli` stays cheap (no torch import).
    if name in ("load", "DynamicDet", "train_detectors", "train_router"):
        from dynamicdet_cli import api
        return getattr(api, name)
    raise AttributeError(f"module 'dynamicdet_cli' has no attribute {name!r}")
