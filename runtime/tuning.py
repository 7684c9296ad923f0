"""tuning.json in a bundle: the per-device drafter settings `edgespec tune` measured best, which
Model.drafter uses when the caller gives none. Plain JSON, validated; a bundle without one
runs with the manifest's defaults."""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgespec.bundle_paths import bundle_file, read_json
from edgespec.drafter_options import INT_OPTIONS, check_tree, fits_heads, valid_int
from edgespec.errors import BundleError
from edgespec.files import atomic_open

TUNING_FILE = "tuning.json"
FORMAT = 1
MAX_BYTES = 1 << 20  # a real tuning.json is a few kB


def load_tuning(bundle_dir: Path) -> dict:
    """{device: {"provider": str, "drafters": {name: {"gamma": int, ...}}}} or {}."""
    if not os.path.lexists(Path(bundle_dir) / TUNING_FILE):
        return {}
    path = bundle_file(bundle_dir, TUNING_FILE)  # a symlink out of the bundle is refused
    data = read_json(path, MAX_BYTES, TUNING_FILE, "delete it or run `edgespec tune` again")
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(devices,
                                                                                     dict):
        raise BundleError(f"{TUNING_FILE}: expected {{'format': {FORMAT}, 'devices': {{...}}}}; "
                          "delete it or run `edgespec tune` again")
    for device, entry in devices.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("provider"), str) and \
            isinstance(entry.get("drafters"), dict)
        for setting in (entry.get("drafters") or {}).values() if ok else ():
            ok = ok and isinstance(setting, dict) and _valid(setting)
        if not ok:
            raise BundleError(f"{TUNING_FILE}: device {str(device)[:40]!r} needs a provider and "
                              "drafters with a gamma (1..64), a tree_size (1..1024) or a Medusa "
                              "tree, and measured rates in [1e-6, 1e9]; run `edgespec tune` "
                              "again")
        auto = entry.get("auto")
        choice = auto.get("drafter") if isinstance(auto, dict) else None
        if auto is not None and not (isinstance(auto, dict) and _rate(auto.get("speedup"))
                                     and isinstance(choice, str)
                                     and (choice == "none" or choice in entry["drafters"])):
            raise BundleError(f"{TUNING_FILE}: device {str(device)[:40]!r}: 'auto' must name "
                              "'none' or one of its tuned drafters, with a speedup in [1e-6, "
                              "1e9]; run `edgespec tune --drafter auto` again")
    return devices


_KEYS = {"gamma": "gamma", "tree_width": "tree_width", "tree_size": "tree_size", "min_n": "min_n"}


def check_tuning_fits(devices: dict, manifest) -> None:
    """Every tuned drafter (and auto choice) is one of the bundle's, and a tuned Medusa tree
    fits its graph's heads x top-k: else the first run with it would fail, blaming no file."""
    for device, entry in devices.items():
        auto = (entry.get("auto") or {}).get("drafter")
        for name in [*entry["drafters"], *([auto] if auto not in (None, "none") else [])]:
            spec = manifest.drafters.get(name)
            if spec is None:
                raise BundleError(f"{TUNING_FILE}: device {str(device)[:40]!r} names drafter "
                                  f"{name[:40]!r}, which the bundle lacks; run `edgespec tune` "
                                  "again")
            tree = entry["drafters"].get(name, {}).get("tree")
            if tree is not None and spec.kind == "medusa":
                heads, _, top_k = next(t.shape for t in spec.graph.outputs
                                       if t.name == "topk_ids")
                if not fits_heads(tree, heads, top_k):
                    raise BundleError(f"{TUNING_FILE}: the {name!r} tree does not fit its "
                                      f"graph's {heads} heads x top-{top_k}; run `edgespec "
                                      "tune` again")


def _rate(value, optional: bool = False) -> bool:
    """A measured speed or speedup: a number (JSON's, not a bool) in [1e-6, 1e9], so that a
    ratio of two of them is finite."""
    if value is None:
        return optional
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        1e-6 <= value <= 1e9


def _valid(setting: dict) -> bool:
    """One drafter's setting: ints in the manifest options' ranges, a tree of rank paths,
    positive measured rates."""
    if not any(k in setting for k in (*_KEYS, "tree")):
        return False
    if not all(_rate(setting.get(k), optional=True)
               for k in ("measured_tok_s", "measured_plain_tok_s")):
        return False
    if any(setting.get(k) is not None and not valid_int(option, setting[k])
           for k, option in _KEYS.items()):
        return False
    if "tree" in setting:
        try:
            check_tree(setting["tree"], TUNING_FILE, INT_OPTIONS["top_k"][1])
        except BundleError:
            return False
    return True


def tuned_setting(tuning: dict, provider: str, drafter: str, raw: bool = False) -> dict:
    """Model.drafter keyword arguments `edgespec tune` stored for `drafter` on the device that
    runs on `provider` ({} if none): a chain (gamma, tree_width 1), a node budget or a tree.
    raw: the stored entry as it is (with its measured rates)."""
    for entry in tuning.values():
        setting = entry["drafters"].get(drafter)
        if entry["provider"] == provider and setting is not None:
            return dict(setting) if raw else setting_kwargs(setting)
    return {}


def setting_kwargs(setting: dict) -> dict:
    """A stored setting as Model.drafter keyword arguments (a tuned gamma alone is a chain)."""
    kwargs = {k: setting[k] for k in (*_KEYS, "tree") if k in setting}
    if "gamma" in kwargs and not {"tree", "tree_size"} & kwargs.keys():
        kwargs.setdefault("tree_width", 1)
    return kwargs


def auto_choice(tuning: dict, provider: str) -> dict | None:
    """The 'auto' entry `edgespec tune --drafter auto` stored for `provider`: {"drafter": name or
    "none", "speedup": measured ratio to plain decoding, ...}, or None if never tuned."""
    for entry in tuning.values():
        if entry["provider"] == provider and entry.get("auto") is not None:
            return entry["auto"]
    return None


def save_tuning(bundle_dir: Path, device: str, provider: str, drafter: str,
                setting: dict | None) -> Path:
    """Merge one drafter's setting for `device` into tuning.json (written atomically). A None
    setting removes the drafter's entry (it lost to plain decoding), and the device's auto
    choice with it if it named that drafter."""
    def change(entry):
        if setting is not None:
            entry["drafters"][drafter] = setting
        else:
            entry["drafters"].pop(drafter, None)
            if (entry.get("auto") or {}).get("drafter") == drafter:
                del entry["auto"]
    return _update(bundle_dir, device, provider, change)


def save_auto(bundle_dir: Path, device: str, provider: str, auto: dict) -> Path:
    """Store the device's auto choice ({"drafter": a tuned drafter or "none", ...})."""
    return _update(bundle_dir, device, provider, lambda entry: entry.__setitem__("auto", auto))


def _update(bundle_dir: Path, device: str, provider: str, change) -> Path:
    devices = load_tuning(bundle_dir)
    entry = devices.setdefault(device, {"provider": provider, "drafters": {}})
    entry["provider"] = provider
    change(entry)
    path = Path(bundle_dir) / TUNING_FILE
    with atomic_open(path) as fh:
        fh.write(json.dumps({"format": FORMAT, "devices": devices}, indent=2) + "\n")
    return path
