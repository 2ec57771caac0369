"""Where a dataset's files are looked for: the user's data folder, its subfolders, then the system's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

#: Where Debian's dataset packages install their files (``dataset-fashion-mnist`` puts
#: the IDX files in ``/usr/share/datasets/fashion-mnist``). Read at each search, so tests
#: can point ``fsl_sage_flwr.data.locations.SYSTEM_DATASET_ROOT`` elsewhere.
SYSTEM_DATASET_ROOT = Path("/usr/share/datasets")


def dataset_folders(name: str, data_dir: Path | None, *, subfolders: Sequence[str] = ()) -> list[Path]:
    """Return the folders searched for dataset ``name``'s files, in order, without repeats.

    ``data_dir`` itself, then its subfolders ``subfolders`` and ``name``, then the same
    subfolders of :data:`SYSTEM_DATASET_ROOT`.

    Parameters
    ----------
    name : str
        The registered dataset name, also the subfolder looked into.
    data_dir : Path or None
        The user's data folder (run config ``data-dir``); ``None`` when none is given.
    subfolders : Sequence[str]
        Other subfolder names the files may sit in, such as an archive's folder
        (``cifar-10-batches-py``), tried before ``name``.

    Returns
    -------
    list[Path]
        The candidate folders, whether they exist or not.
    """
    names = list(dict.fromkeys([*subfolders, name]))
    roots = [data_dir] if data_dir is not None else []
    folders = [*roots, *(root / n for root in roots for n in names), *(SYSTEM_DATASET_ROOT / n for n in names)]
    return list(dict.fromkeys(folders))


def first_folder_holding(folders: Sequence[Path], holds_dataset: Callable[[Path], bool]) -> Path | None:
    """Return the first of ``folders`` for which ``holds_dataset`` is true.

    Parameters
    ----------
    folders : Sequence[Path]
        Candidates, e.g. from :func:`dataset_folders`.
    holds_dataset : Callable[[Path], bool]
        Whether a folder has every file the dataset needs.

    Returns
    -------
    Path or None
        The folder, or ``None`` when none holds the files.
    """
    return next((folder for folder in folders if folder.is_dir() and holds_dataset(folder)), None)


def describe_search(folders: Sequence[Path], data_dir: Path | None) -> str:
    """Say where a search looked, one folder a line, for an error message.

    Parameters
    ----------
    folders : Sequence[Path]
        The folders searched.
    data_dir : Path or None
        The user's data folder; ``None`` adds that none was given.

    Returns
    -------
    str
        ``"any of:\\n  - folder\\n ..."``, with ``" (no data-dir given)"`` before the colon
        when ``data_dir`` is ``None``.
    """
    no_dir = "" if data_dir is not None else " (no data-dir given)"
    places = "".join(f"\n  - {folder}" for folder in folders)
    return f"any of{no_dir}:{places}"
