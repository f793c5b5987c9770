"""LeRobot interop through LeRobot's own `LeRobotDataset` API (format v3.0), in both directions.

Keys are renamed by LeRobot's conventions: `action` ↔ `action`, `state` ↔ `observation.state`, an image key
`<cam>` ↔ `observation.images.<cam>`, any other key `<k>` ↔ `observation.<k>`; `rename` overrides single keys.
Images are exported as video (LeRobot's default encoder, lossy) or as PNG images (lossless) and imported as
uint8 HWC frames. Low-dim arrays round-trip exactly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rtdp.datasets.replay_buffer import ReplayBuffer, ReplayBufferError, _progress, is_image_shape

# Columns LeRobot adds to every dataset; not user data.
LEROBOT_DEFAULT_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def to_lerobot_key(key: str, shape: tuple[int, ...]) -> str:
    """Replay-buffer key → LeRobot feature name."""
    if key == "action" or key.startswith("observation."):
        return key
    if key == "state":
        return "observation.state"
    if is_image_shape((0, *shape)):
        return f"observation.images.{key}"
    return f"observation.{key}"


def from_lerobot_key(name: str) -> str:
    """LeRobot feature name → replay-buffer key (inverse of `to_lerobot_key`)."""
    for prefix in ("observation.images.", "observation.image.", "observation."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def export_lerobot(src: str | Path | ReplayBuffer, out_dir: str | Path, fps: int, use_videos: bool = True,
                   repo_id: str | None = None, task: str | None = None, keys: Iterable[str] | None = None,
                   rename: Mapping[str, str] | None = None, episodes: Iterable[int] | None = None,
                   progress: bool = False) -> Path:
    """Write the buffer's episodes as a LeRobot v3.0 dataset in `out_dir` (must not exist).

    Written to a temporary sibling directory and renamed into place, so a failure leaves nothing behind.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    buf = src if isinstance(src, ReplayBuffer) else ReplayBuffer.open(src, "r")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ReplayBufferError(f"{out_dir}: already exists; LeRobot needs a new directory")
    keys = buf._select_keys(keys)
    rename = dict(rename or {})
    unknown = sorted(set(rename) - set(keys))
    if unknown:
        raise ReplayBufferError(f"{buf._name}: --rename names key(s) {unknown} not in the store "
                                f"(keys: {', '.join(keys)})")
    names = {k: rename.get(k, to_lerobot_key(k, tuple(buf[k].shape[1:]))) for k in keys}
    features: dict[str, dict[str, Any]] = {}
    for key in keys:
        shape = tuple(int(s) for s in buf[key].shape[1:])
        if is_image_shape((0, *shape)):
            features[names[key]] = {"dtype": "video" if use_videos else "image", "shape": shape,
                                    "names": ["height", "width", "channels"]}
        else:
            features[names[key]] = {"dtype": np.dtype(buf[key].dtype).name, "shape": shape or (1,),
                                    "names": None}
    episodes = list(range(buf.n_episodes)) if episodes is None else [int(e) for e in episodes]
    task = task if task is not None else (buf.path.stem if buf.path is not None else "task")
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ds = LeRobotDataset.create(repo_id or f"local/{out_dir.name}", fps=fps, features=features, root=tmp,
                                   use_videos=use_videos, video_backend="pyav")
        with _progress(progress) as bar:
            job = bar.add_task("export episodes", total=len(episodes)) if bar is not None else None
            for n, ep_index in enumerate(episodes):
                ep = buf.get_episode(ep_index, keys)
                frames = {names[k]: _lerobot_frames(v, features[names[k]]) for k, v in ep.items()}
                for t in range(len(next(iter(ep.values())))):
                    ds.add_frame({**{name: arr[t] for name, arr in frames.items()}, "task": task})
                ds.save_episode()
                if bar is not None:
                    bar.update(job, completed=n + 1)
        ds.finalize()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _lerobot_frames(x: np.ndarray, feature: dict[str, Any]) -> np.ndarray:
    """Frames as LeRobot's validator wants them: uint8 images (0..255 floats are cast), (1,) for scalars."""
    if feature["dtype"] in ("video", "image"):
        if x.dtype != np.uint8:
            if x.dtype.kind == "f" and x.max() <= 1.0:
                x = x * 255.0
            x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        return x
    return x.reshape(len(x), *feature["shape"])


def import_lerobot(root: str | Path, out: str | Path | None, repo_id: str | None = None,
                   rename: Mapping[str, str] | None = None, keys: Iterable[str] | None = None,
                   overwrite: bool = False, progress: bool = False) -> ReplayBuffer:
    """Read a local LeRobot v3.0 dataset into a new replay buffer (zarr at `out`, or in memory if None)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.datasets.video_utils import decode_video_frames

    root = Path(root)
    if not (root / "meta" / "info.json").exists():
        raise ReplayBufferError(f"{root}: not a LeRobot dataset (no meta/info.json)")
    try:
        ds = LeRobotDataset(repo_id or f"local/{root.name}", root=root, video_backend="pyav", return_uint8=True)
    except Exception as err:  # noqa: BLE001 (any failure to load is reported as one line)
        raise ReplayBufferError(f"{root}: LeRobot cannot load it ({type(err).__name__}: {err})") from None
    features = {k: v for k, v in ds.meta.features.items() if k not in LEROBOT_DEFAULT_KEYS}
    rename = dict(rename or {})
    names = {name: rename.get(name, from_lerobot_key(name)) for name in features}
    if keys is not None:
        keys = list(keys)
        missing = [k for k in keys if k not in names.values()]
        if missing:
            raise ReplayBufferError(f"{root}: no feature for key(s) {missing} "
                                    f"(features: {', '.join(sorted(features))})")
        names = {n: k for n, k in names.items() if k in keys}
    video_keys = [n for n in names if features[n]["dtype"] == "video"]
    table_keys = [n for n in names if n not in video_keys]
    hf = ds.hf_dataset.with_format("numpy", columns=["episode_index", *table_keys])
    columns = {"episode_index": np.asarray(hf["episode_index"])}
    for name in table_keys:
        columns[name] = _column(hf, name, features[name])

    if out is not None:
        dst = Path(out)
        tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
        if dst.exists() and not overwrite:
            raise ReplayBufferError(f"{dst}: already exists (pass overwrite=True / --overwrite)")
        buf = ReplayBuffer.create(tmp, overwrite=True)
    else:
        buf = ReplayBuffer.in_memory()
    try:
        with _progress(progress) as bar:
            job = bar.add_task("import episodes", total=ds.meta.total_episodes) if bar is not None else None
            for ep_index in range(ds.meta.total_episodes):
                rows = np.flatnonzero(columns["episode_index"] == ep_index)
                if len(rows) == 0:
                    continue
                episode = {names[n]: columns[n][rows] for n in table_keys}
                meta = ds.meta.episodes[ep_index]
                for name in video_keys:
                    start = float(meta[f"videos/{name}/from_timestamp"])
                    stamps = [start + i / ds.fps for i in range(len(rows))]
                    video = ds.root / ds.meta.get_video_file_path(ep_index, name)
                    frames = decode_video_frames(video, stamps, ds.tolerance_s, "pyav", return_uint8=True)
                    episode[names[name]] = np.ascontiguousarray(frames.numpy().transpose(0, 2, 3, 1))
                buf.add_episode(episode)
                if bar is not None:
                    bar.update(job, completed=ep_index + 1)
        if out is not None:
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(tmp, dst)
            buf = ReplayBuffer.open(dst, "r")
    except BaseException:
        if out is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return buf


def _column(hf: Any, name: str, feature: dict[str, Any]) -> np.ndarray:
    """One parquet column as an [N, *shape] array (images decoded to uint8 HWC)."""
    values = hf[name]
    if feature["dtype"] == "image":
        return np.stack([np.asarray(v, dtype=np.uint8) for v in values])
    arr = np.asarray(values)
    if arr.dtype == object:
        arr = np.stack([np.asarray(v) for v in values])
    shape = tuple(feature["shape"])
    return arr.reshape(len(arr), *shape).astype(np.dtype(feature["dtype"]), copy=False)
