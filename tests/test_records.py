import json

import pytest

from squishednets.errors import CheckpointError
from squishednets.records import Candidate, GenerationRecord, Lineage


def _rec(g):
    return GenerationRecord(generation=g, name="n", path=f"gen_{g:02d}/model", params=1000 - g, size_mb=0.004,
                            macs=10, widths=[1, 2], heldout_top1=0.5, test_top1=0.4, test_top5=0.9,
                            nonzero_params=1000, sparse_bytes=None, wall_s=1.0,
                            candidates=[Candidate(0, 0.5, 0.004, 1000, 10, 3, 1.0)])


def test_lineage_round_trip(tmp_path):
    lin = Lineage({"image_size": 32}, [_rec(0), _rec(1)])
    lin.save(tmp_path)
    assert Lineage.load(tmp_path) == lin
    assert lin.generations[1].selected_by == "heldout"


def test_other_schema_and_unknown_fields_are_refused(tmp_path):
    Lineage({}, [_rec(0)]).save(tmp_path)
    f = tmp_path / "lineage.json"
    d = json.loads(f.read_text())
    f.write_text(json.dumps({**d, "schema_version": 1}))
    with pytest.raises(CheckpointError, match="schema version 1"):
        Lineage.load(tmp_path)
    d["generations"][0]["top1"] = 0.3
    f.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"unknown field\(s\) \['top1'\]"):
        Lineage.load(tmp_path)
