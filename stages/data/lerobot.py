"""Aligned datasets as LeRobot v3.0 (CONTRACTS §B, ARCHITECTURE §4).

    write_dataset(out_dir, episodes, fps=20, robot_type="sawyer", vla_meta={...})   # streams episodes
    ds = open_dataset("data/aligned")          # v3.0 (ours or LeRobot-made) and v2.1
    ds.images("observation.images.camera")     # uint8 memmap [N, H, W, 3] from the frame cache
    ds.column("action")                        # float32 [N, D]

The layout lives in `lerobot_format`, writing in `lerobot_write`, reading in `lerobot_read`, the
frame cache in `cache`, statistics in `stats`; this module is the public face.
"""

from __future__ import annotations

from stages.data.lerobot_format import CODEBASE_VERSION, VALID, WEIGHT
from stages.data.lerobot_read import LeRobotDataset, open_dataset
from stages.data.lerobot_write import AlignedEpisode, DatasetWriter, data_digest, write_dataset

__all__ = ["CODEBASE_VERSION", "VALID", "WEIGHT", "AlignedEpisode", "DatasetWriter", "LeRobotDataset", "data_digest", "open_dataset", "write_dataset"]
