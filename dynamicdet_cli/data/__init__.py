"""Data: COCO-format datasets, transforms, and the built-in synthetic shapes set."""

from dynamicdet_cli.data.coco import CocoDataset, collate
from dynamicdet_cli.data.config import DataConfig, load_data_config
from dynamicdet_cli.data.shapes import make_shapes
from dynamicdet_cli.data.transforms import build_transforms

__all__ = ["CocoDataset", "DataConfig", "build_transforms", "collate", "load_data_config", "make_shapes"]
