"""tuning.json in a bundle: the per-device drafter settings `edgespec tune` measured best, which
Model.drafter uses when the caller gives none. Plain JSON, validated; a bundle without one
runs with the manifest's defaults."""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgespec.manifest import BundleError, safe_path

TUNING_FILE = "tuning.json"
FORMAT = 1


def load_tuning(bundle_dir: Path) -> dict:
    """{device: {"provider": str, "drafters": {name: {"gamma": int, ...}}}} or {}."""
    if not (Path(bundle_dir) / TUNING_FILE).is_file():
        return {}
    path = safe_path(bundle_dir, TUNING_FILE)  # a symlink out of the bundle is refused
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{TUNING_FILE} is not valid JSON ({e}); delete it or run "
                          "`edgespec tune` again") from None
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(devices,
                                                                                     dict):
        raise BundleError(f"{TUNING_FILE}: expected {{'format': {FORMAT}, 'devices': {{...}}}}; "
                          "delete it or run `edgespec tune` again")
    for device, entry in devices.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("provider"), str) and \
            isinstance(entry.get("drafters"), dict)
        for setting in (entry.get("drafters") or {}).values() if ok else ():
            gamma = setting.get("gamma") if isinstance(setting, dict) else None
            ok = ok and isinstance(gamma, int) and not isinstance(gamma, bool) and \
                1 <= gamma <= 64
        if not ok:
            raise BundleError(f"{TUNING_FILE}: device {device!r} needs a provider and drafters "
                              "with an integer gamma in 1..64; run `edgespec tune` again")
    return devices


def tuned_gamma(tuning: dict, provider: str, drafter: str) -> int | None:
    """The tuned chain length of `drafter` for the device that runs on `provider`."""
    for entry in tuning.values():
        setting = entry["drafters"].get(drafter)
        if entry["provider"] == provider and setting is not None:
            return setting["gamma"]
    return None


def save_tuning(bundle_dir: Path, device: str, provider: str, drafter: str,
                setting: dict) -> Path:
    """Merge one drafter's setting for `device` into tuning.json (written atomically)."""
    devices = load_tuning(bundle_dir)
    entry = devices.setdefault(device, {"provider": provider, "drafters": {}})
    entry["provider"] = provider
    entry["drafters"][drafter] = setting
    path = Path(bundle_dir) / TUNING_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "devices": devices}, indent=2) + "\n")
    os.replace(tmp, path)
    return path
