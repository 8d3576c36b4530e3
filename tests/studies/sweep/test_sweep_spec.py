"""Sweep specs: grids, ranges, zipped dimensions, task ids and seeds, and rejection of bad specs."""

from __future__ import annotations

import copy
import subprocess
import sys
import tomllib

import numpy as np
import pytest

from integrators.validation import ParameterError
from studies.sweep.spec import to_toml
from studies.sweep import parse_spec, plan_tasks, task_seed

BASE = {
    "sweep": {"name": "t", "task": "demo.busy", "root_seed": 3, "seeds": 2},
    "params": {"seconds": 0.0},
    "grid": {"size": [2, 3], "scale": {"start": 0.1, "stop": 0.3, "num": 3}},
}


def spec_with(**changes):
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        table, _, key = path.partition("__")
        if value is _DELETE:
            del data[table][key]
        elif key:
            data.setdefault(table, {})[key] = value
        else:
            data[table] = value
    return data


_DELETE = object()


def test_grid_shape_order_and_ranges():
    spec = parse_spec(BASE)
    assert spec.shape == (2, 3) and spec.n_tasks == 12
    assert spec.axes[1].coords["scale"] == (0.1, 0.2, 0.3)  # inclusive linspace, rounded
    tasks = plan_tasks(spec)
    # C order over (size, scale), replicates innermost
    assert [t.point + (t.replicate,) for t in tasks[:4]] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]
    assert [t.index for t in tasks] == list(range(12))
    assert tasks[5].params == {"seconds": 0.0, "size": 2, "scale": 0.3}


@pytest.mark.parametrize(
    "rng, expected",
    [
        ({"start": 0, "stop": 10, "step": 3}, [0, 3, 6, 9]),  # integer arange, stop excluded
        ({"start": 0.0, "stop": 1.0, "step": 0.25}, [0.0, 0.25, 0.5, 0.75]),
        ({"start": 1.0, "stop": 100.0, "num": 3, "scale": "log"}, [1.0, 10.0, 100.0]),
        ({"start": 0.1, "stop": 0.9, "num": 9}, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
    ],
)
def test_range_tables(rng, expected):
    spec = parse_spec(spec_with(grid={"scale": rng}))
    assert list(spec.axes[0].coords["scale"]) == expected


def test_zip_group_is_one_dimension():
    spec = parse_spec(spec_with(grid={"size": [2, 3], "zip": {"pair": {"seconds": [0.0, 0.01, 0.02], "scale": [1, 2, 3]}}}, params={}))
    assert spec.shape == (2, 3)
    assert spec.axes[1].name == "pair" and spec.axes[1].zipped
    # int given for a float default is converted, so 1 and 1.0 are the same task
    assert spec.axes[1].coords["scale"] == (1.0, 2.0, 3.0)


def test_ids_and_seeds_survive_a_larger_sweep():
    small = plan_tasks(parse_spec(spec_with(grid={"scale": [1.0, 2.0]})))
    big = plan_tasks(parse_spec(spec_with(grid={"scale": [0.5, 1.0, 2.0, 4.0]}, sweep__seeds=3)))
    by_key = {(t.params["scale"], t.replicate): (t.task_id, t.seed) for t in big}
    for t in small:
        assert by_key[(t.params["scale"], t.replicate)] == (t.task_id, t.seed)
    # int and float spellings of the same value give the same task
    ints = plan_tasks(parse_spec(spec_with(grid={"scale": [1, 2]})))
    assert [t.task_id for t in ints] == [t.task_id for t in small]


def test_seeds_distinct_in_range_and_keyed_by_root():
    tasks = plan_tasks(parse_spec(spec_with(grid={"scale": list(np.linspace(0.1, 5, 50))}, sweep__seeds=4)))
    seeds = [t.seed for t in tasks]
    assert len(set(seeds)) == len(seeds) == 200
    assert all(0 <= s < 2**63 for s in seeds)
    other = plan_tasks(parse_spec(spec_with(grid={"scale": list(np.linspace(0.1, 5, 50))}, sweep__seeds=4, sweep__root_seed=4)))
    assert [t.task_id for t in other] == [t.task_id for t in tasks]  # ids do not depend on the root seed
    assert not set(t.seed for t in other) & set(seeds)
    # the seed is the SeedSequence child at the id's spawn key: reproducible from (root, id) alone
    t = tasks[17]
    words = np.random.SeedSequence(3, spawn_key=(int(t.task_id[:8], 16), int(t.task_id[8:], 16))).generate_state(2, np.uint32)
    assert t.seed == task_seed(3, t.task_id) == ((int(words[0]) << 32) | int(words[1])) & (2**63 - 1)


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"sweeep": {"name": "x"}}, "sweeep"),  # unknown top-level table
        ({"sweep__seed": 3}, "sweep.seed"),  # unknown key (typo of seeds)
        ({"sweep__root_seed": _DELETE}, "sweep.root_seed"),  # required
        ({"sweep__seeds": "3"}, "sweep.seeds"),  # wrong type
        ({"sweep__seeds": 0}, "sweep.seeds"),
        ({"sweep__task": "no.such.task"}, "sweep.task"),
        ({"sweep__name": "bad name!"}, "sweep.name"),
        ({"params__secnds": 0.1}, "params.secnds"),  # not a parameter of the task
        ({"params__seconds": "fast"}, "params.seconds"),  # wrong type for a float
        ({"params__size": 2.5, "grid": {"scale": [1.0]}}, "params.size"),  # float for an int parameter
        ({"params__size": 2}, "grid.size"),  # set twice: fixed and on the grid
        ({"grid": {}}, "grid"),  # empty grid
        ({"grid": {"size": []}}, "grid.size"),  # empty axis
        ({"grid": {"size": 3}}, "grid.size"),  # not a list or range
        ({"grid": {"size": [1, "a"]}}, "grid.size"),  # mixed types
        ({"grid": {"size": [1, 1]}}, "grid.size"),  # repeated values
        ({"grid": {"size": [[1, 2]]}}, "grid.size[0]"),  # nested list on an axis
        ({"grid": {"scale": {"start": 0, "stop": 1}}}, "grid.scale"),  # neither num nor step
        ({"grid": {"scale": {"start": 0, "stop": 1, "num": 0}}}, "grid.scale.num"),
        ({"grid": {"scale": {"start": 0, "stop": 1, "nun": 3}}}, "grid.scale.nun"),
        ({"grid": {"seconds": [0.1]}}, "grid.seconds"),  # also fixed in [params]
        ({"grid": {"zip": {"p": {"size": [1, 2], "scale": [1.0]}}}}, "grid.zip.p"),  # unequal lengths
        ({"grid": {"seed": [1, 2]}}, "grid.seed"),  # reserved dimension name
    ],
)
def test_bad_specs_name_the_key(changes, key):
    with pytest.raises(ParameterError) as err:
        parse_spec(spec_with(**changes))
    assert err.value.parameter == key


def test_cli_rejects_bad_spec_before_running(tmp_path):
    bad = spec_with(params__secnds=1.0)
    path = tmp_path / "bad.toml"
    path.write_text(to_toml(bad))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "studies.cli", "sweep", "run", str(path), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "params.secnds" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()  # nothing ran, nothing written


def test_to_toml_round_trip():
    data = spec_with(grid={"size": [1, 2], "zip": {"p": {"scale": [0.5, 1e-7], "seconds": [0.0, 1.0]}}}, params={})
    data["sweep"]["description"] = 'quotes " and \\ backslash'
    assert tomllib.loads(to_toml(data)) == data


def test_task_by_import_path_keeps_its_checks():
    spec = parse_spec(spec_with(sweep__task="studies.sweep.tasks:busy"), allow_code_tasks=True)
    assert spec.n_tasks == 12
    with pytest.raises(ParameterError) as err:
        parse_spec(spec_with(sweep__task="studies.sweep.tasks:busy", params__secnds=1.0), allow_code_tasks=True)
    assert err.value.parameter == "params.secnds"
    with pytest.raises(ParameterError) as err:
        parse_spec(spec_with(sweep__task="studies.sweep.tasks:no_such_function"), allow_code_tasks=True)
    assert err.value.parameter == "sweep.task"
