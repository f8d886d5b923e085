"""A node's copy of a DVC-tracked dataset (sweep.data.source: dvc) is not trusted forever: a
file damaged in place, even at the same size, is found by its hash and pulled again."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

DVC = [sys.executable, "-m", "dvc"]


def _pushed(tmp_path: Path) -> tuple[str, Path, dict[str, bytes]]:
    """A dataset folder added to a no-SCM DVC repo and pushed to a local remote."""
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    files = {"images/a.jpg": b"\xff\xd8 a picture " * 40, "images/b.jpg": b"\xff\xd8 b " * 50,
             "labels/a.png": bytes(range(256)) * 4}
    for relative, data in files.items():
        (repo / "mini" / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / "mini" / relative).write_bytes(data)
    for args in (["init", "--no-scm"], ["remote", "add", "-d", "local", str(remote)],
                 ["add", "mini"], ["push"]):
        subprocess.run(DVC + args, cwd=repo, check=True, capture_output=True)
    md5 = yaml.safe_load((repo / "mini.dvc").read_text())["outs"][0]["md5"]
    return md5, remote, files


def test_a_file_damaged_in_a_nodes_cached_dataset_is_found_and_pulled_again(tmp_path, capsys):
    from pipeline.sweep.datasets import pull_locked

    md5, remote, files = _pushed(tmp_path)
    cache = tmp_path / "node-cache"
    folder = pull_locked("mini", md5, {"url": str(remote)}, str(cache), check="node-1")
    assert {r: (folder / r).read_bytes() for r in files} == files

    damaged = folder / "images" / "a.jpg"
    data = bytearray(damaged.read_bytes())
    data[7] ^= 0xFF  # one byte flipped: the same size, so no stat can see it
    damaged.write_bytes(bytes(data))
    # the same use again (another trial on that node, no failure since): sizes only
    pull_locked("mini", md5, {"url": str(remote)}, str(cache), check="node-1")
    assert damaged.read_bytes() != files["images/a.jpg"]
    # a new node, or the first use after a failed attempt: every file hashed
    pull_locked("mini", md5, {"url": str(remote)}, str(cache), check="node-1/ce_seed0/1")
    assert damaged.read_bytes() == files["images/a.jpg"]
    assert {r: (folder / r).read_bytes() for r in files} == files
    said = capsys.readouterr().out
    assert "1 file(s) of mini differ from DVC's manifest" in said and "images/a.jpg" in said
