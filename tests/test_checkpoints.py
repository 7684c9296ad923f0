"""`edgespec export ORG/NAME` (issue 19): a model id resolved from the local Hugging Face cache,
laid out exactly as huggingface_hub lays it out (blobs, snapshots of symlinks, refs/main);
never a download. Run as a user runs it: the CLI in a subprocess with HF_HUB_CACHE set."""

import hashlib
import os
import subprocess
import sys

from edgespec.manifest import load_manifest


def fake_cache(cache, repo: str, src) -> None:
    """huggingface_hub's layout: models--ORG--NAME/{blobs/SHA, snapshots/COMMIT/FILE ->
    ../../blobs/SHA, refs/main = COMMIT}."""
    root = cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (root / "blobs").mkdir(parents=True)
    (root / "snapshots" / commit).mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for f in src.iterdir():
        data = f.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        (root / "blobs" / sha).write_bytes(data)
        os.symlink(f"../../blobs/{sha}", root / "snapshots" / commit / f.name)


def export(args, cache):
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "edgespec.cli", "export", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_export_a_model_id_from_the_local_cache(tiny_dirs, tmp_path):
    cache = tmp_path / "hub"
    fake_cache(cache, "tiny-org/tiny-llama", tiny_dirs["llama"])
    r = export(["tiny-org/tiny-llama", "-o", str(tmp_path / "b"), "--max-len", "32"], cache)
    assert r.returncode == 0, r.stderr[-600:]
    assert load_manifest(tmp_path / "b").model.architecture == "llama"


def test_a_missing_id_is_one_line_that_says_where_it_looked(tmp_path):
    cache = tmp_path / "hub"
    cache.mkdir()
    r = export(["nobody/nothing", "-o", str(tmp_path / "b")], cache)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "nor in the local Hugging Face cache" in r.stderr and str(cache) in r.stderr
    assert "never downloads" in r.stderr and not (tmp_path / "b").exists()


def test_an_existing_output_fails_before_torch_loads(tiny_dirs, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    code = ("import sys; from edgespec.cli import main; rc = main(sys.argv[1:]); "
            "print('torch' in sys.modules); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "export", str(tiny_dirs["llama"]), "-o",
                        str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "already exists" in r.stderr
    assert r.stdout.strip() == "False"  # refused before torch was imported


def _refused(r, *words) -> None:
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-600:]
    assert all(w in r.stderr for w in words), r.stderr


def test_a_cache_whose_ref_or_links_lead_outside_is_refused(tiny_dirs, tmp_path):
    """refs/main must hold a commit hash (not a path that climbs out, not an absolute one,
    not a FIFO that blocks the read), and every file of the snapshot must resolve inside the
    model's cache folder (a chat template linked to a private key must not become part of
    every chat prompt)."""
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    out = tmp_path / "b"
    cases = ["climb", "absolute", "fifo", "linked-file", "linked-snapshot", "linked-repo",
             "hard-link"]
    for n, case in enumerate(cases):
        cache = tmp_path / f"hub{n}"
        fake_cache(cache, "tiny-org/tiny-llama", tiny_dirs["llama"])
        root = cache / "models--tiny-org--tiny-llama"
        snapshot = next((root / "snapshots").iterdir())
        if case == "climb":
            (root / "refs" / "main").write_text("../../../..")
        elif case == "absolute":
            (root / "refs" / "main").write_text(str(tiny_dirs["llama"]))
        elif case == "fifo":
            (root / "refs" / "main").unlink()
            os.mkfifo(root / "refs" / "main")
        elif case == "linked-file":
            (snapshot / "chat_template.jinja").symlink_to(secret)
        elif case == "linked-repo":  # the whole model folder a link out of the cache
            moved = tmp_path / f"repo{n}"
            root.rename(moved)
            root.symlink_to(moved, target_is_directory=True)
        elif case == "hard-link":  # a blob that is another name of a file outside
            blob = (snapshot / "config.json").resolve()
            blob.unlink()
            os.link(secret, blob)
        else:
            moved = tmp_path / f"elsewhere{n}"
            snapshot.rename(moved)
            snapshot.symlink_to(moved, target_is_directory=True)
        r = export(["tiny-org/tiny-llama", "-o", str(out), "--max-len", "32"], cache)
        words = {"climb": "refs/main", "absolute": "refs/main", "fifo": "refs/main",
                 "linked-repo": "is a link", "hard-link": "hard links"}.get(case, "outside")
        _refused(r, words)
        assert not out.exists() and "PRIVATE" not in r.stderr


def test_a_checkpoint_folder_linking_outside_is_refused(tiny_dirs, tmp_path):
    """A cloned checkpoint folder whose file links out of it is refused the same way."""
    import shutil

    src = tmp_path / "ckpt"
    shutil.copytree(tiny_dirs["llama"], src)
    secret = tmp_path / "secret.txt"
    secret.write_text("token")
    (src / "chat_template.jinja").symlink_to(secret)
    r = export([str(src), "-o", str(tmp_path / "b"), "--max-len", "32"], tmp_path / "hub")
    _refused(r, "chat_template.jinja", "outside")
    assert not (tmp_path / "b").exists()


def test_export_refuses_an_output_inside_its_checkpoint(tiny_dirs, tmp_path):
    """`export SRC -o SRC --overwrite` replaced the checkpoint it read with the bundle."""
    import shutil

    src = tmp_path / "ckpt"
    shutil.copytree(tiny_dirs["llama"], src)
    for out in (src, src / "out"):
        r = export([str(src), "-o", str(out), "--overwrite"], tmp_path / "hub")
        _refused(r, "checkpoint")
    assert sorted(p.name for p in src.iterdir()) == sorted(
        p.name for p in tiny_dirs["llama"].iterdir())
