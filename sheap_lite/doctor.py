"""`python -m sheap_lite.doctor`: what is installed and found, and how to fix what is not.

One line per check, starting with `ok` or `missing`; indented lines below a check say what to do. The doctor
informs and never fails (exit code 0), and it runs even where torch or the package's own modules do not import.
`--json` prints the same checks as a JSON list.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import sys
import warnings
from pathlib import Path

FLAME_STEPS = [
    "1. register at https://flame.is.tue.mpg.de and accept the FLAME licence",
    "2. download FLAME 2020 (generic_model.pkl) or FLAME 2023",
    "3. put it anywhere, e.g. ~/.cache/sheap_lite/flame/generic_model.pkl or ./data/flame/ (never commit it)",
    "4. export SHEAP_FLAME_PATH=/path/to/generic_model.pkl",
    "5. for the 68 landmarks, put landmark_embedding.npy (from the DECA data or the FLAME website) beside it",
]


def _check(ok: bool, name: str, detail: str, hints: list[str] | None = None) -> dict:
    return {"status": "ok" if ok else "missing", "name": name, "detail": detail, "hints": hints or []}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def check_environment() -> list[dict]:
    """Python, torch, CUDA, gsplat, pytorch3d, anny."""
    checks = [_check(sys.version_info >= (3, 10), "python", f"{platform.python_version()} ({sys.executable})",
                     [] if sys.version_info >= (3, 10) else ["sheap_lite needs Python >= 3.10"])]
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - the doctor reports, it never crashes
        checks.append(_check(False, "torch", _error(exc), ["run `make setup` (installs torch==2.13.0 into .venv)"]))
        return checks
    checks.append(_check(True, "torch", torch.__version__))
    cuda = torch.cuda.is_available()
    if cuda:
        checks.append(_check(True, "cuda", f"CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)}"))
    else:
        checks.append(_check(False, "cuda", "CPU only: the torch renderer backend is used (fine, only slower)"))

    try:
        import gsplat  # the top-level import does not trigger gsplat's CUDA compilation

        checks.append(_check(True, "gsplat", gsplat.__version__))
        nvcc = shutil.which("nvcc") or os.environ.get("CUDA_HOME")
        if cuda and nvcc:
            checks.append(_check(True, "gsplat CUDA", "usable: JIT-compiled with nvcc + ninja on first use "
                                                      "(a few minutes, once); render backend 'auto' picks it"))
        elif cuda:
            checks.append(_check(False, "gsplat CUDA", "CUDA present but nvcc not found: the torch backend is used",
                                 ["install the CUDA toolkit (nvcc) or set CUDA_HOME to compile gsplat's rasteriser"]))
        else:
            checks.append(_check(False, "gsplat CUDA", "needs a CUDA GPU: the torch backend is used"))
    except Exception as exc:  # noqa: BLE001
        checks.append(_check(False, "gsplat", _error(exc),
                             ["pip install gsplat==1.5.3 packaging (gsplat needs `packaging` but does not declare it)"]))

    if importlib.util.find_spec("pytorch3d") is None:
        checks.append(_check(False, "pytorch3d", "not installed (optional: conda-only on Linux; the project's "
                                                 "own rasteriser and distances are used)"))
    else:
        try:
            import pytorch3d

            checks.append(_check(True, "pytorch3d", f"{pytorch3d.__version__} (optional: used for cross-checks)"))
        except Exception as exc:  # noqa: BLE001
            checks.append(_check(False, "pytorch3d", f"installed but does not import: {_error(exc)} (optional)"))

    anny = _version("anny")
    checks.append(_check(anny is not None, "anny", anny or "not installed: the built-in head cannot be built",
                         [] if anny else ["pip install anny==0.6.2 (or `make setup`)"]))
    return checks


def check_head_model() -> list[dict]:
    """Which head model is used and why; the FLAME file and its landmarks; the built-in head's cache. Each file
    is loaded with the loader the code uses, so a damaged one is reported with that loader's message."""
    checks = []
    try:
        from sheap_lite.flame import resolve_flame_path

        flame_path, reason = resolve_flame_path()
    except OSError as exc:  # SHEAP_FLAME_PATH names a missing file or a folder
        value = os.environ.get("SHEAP_FLAME_PATH", "")
        what = "a folder" if isinstance(exc, IsADirectoryError) else "a missing file"
        checks.append(_check(False, "head model", f"cannot load: SHEAP_FLAME_PATH names {what}",
                             ["unset SHEAP_FLAME_PATH to use the built-in head, or fix the path"]))
        checks.append(_check(False, "FLAME file", f"SHEAP_FLAME_PATH={value}: {_error(exc)}", FLAME_STEPS))
        flame_path = None
    except Exception as exc:  # noqa: BLE001
        checks.append(_check(False, "head model", f"cannot check: sheap_lite.flame does not import ({_error(exc)})",
                             ["run `make setup`, then `make doctor` again"]))
        flame_path = None
    else:
        if flame_path is None:
            checks.append(_check(True, "head model", reason))
            checks.append(_check(False, "FLAME file", "none (optional: the built-in head is used instead)",
                                 FLAME_STEPS))
        else:
            checks += _check_flame_file(flame_path, reason)

    try:
        from sheap_lite.head_model import cache_path, load_cached_head

        cache = Path(cache_path())
        if cache.is_file():
            head = load_cached_head(cache)
            checks.append(_check(True, "built-in head cache", f"{cache} ({cache.stat().st_size / 1e6:.1f} MB, "
                                                              f"{head.n_vertices} vertices)"))
        else:
            checks.append(_check(False, "built-in head cache", f"{cache}: missing (built on first use, ~90 s once)"))
    except Exception as exc:  # noqa: BLE001
        checks.append(_check(False, "built-in head cache", f"cannot use: {_error(exc)}",
                             ["delete the file: the built-in head is derived again on first use (~90 s once)"]))
    return checks


def _check_flame_file(flame_path: Path, reason: str) -> list[dict]:
    """The FLAME file and its landmark embedding, each loaded by flame_io."""
    from .flame_io import LANDMARK_FILES, find_landmark_file, flame_data_from_pkl, load_landmark_embedding

    checks = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a missing landmark file is its own check below
            data = flame_data_from_pkl(flame_path)
        checks.append(_check(True, "head model", f"FLAME: {flame_path} ({reason}; {data.n_vertices} vertices, "
                                                 f"{data.n_shape} shape, {data.n_expression} expression)"))
    except Exception as exc:  # noqa: BLE001
        checks.append(_check(False, "head model", f"FLAME file {flame_path} ({reason}) does not load: {_error(exc)}",
                             ["re-download it (steps below), or unset SHEAP_FLAME_PATH to use the built-in head"]
                             + FLAME_STEPS))
    found = find_landmark_file(flame_path.parent)
    if found is None:
        checks.append(_check(False, "FLAME landmarks", f"no {' or '.join(LANDMARK_FILES)} beside {flame_path.name}",
                             [FLAME_STEPS[-1][3:]]))
        return checks
    try:
        checks.append(_check(True, "FLAME landmarks", f"{found} ({len(load_landmark_embedding(found)[0])} points)"))
    except Exception as exc:  # noqa: BLE001
        checks.append(_check(False, "FLAME landmarks", f"{found} does not load: {_error(exc)}",
                             [FLAME_STEPS[-1][3:]]))
    return checks


def collect() -> list[dict]:
    return check_environment() + check_head_model()


def format_checks(checks: list[dict]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{c['status']:<8}{c['name']:<21}{c['detail']}")
        lines.extend(f"{'':<8}  {hint}" for hint in c["hints"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sheap_lite.doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    args = parser.parse_args(argv)
    checks = collect()
    print(json.dumps(checks, indent=2) if args.json else format_checks(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
