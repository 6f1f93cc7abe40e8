"""`edge-sel monitor` on a fake Jetson tree, through click's CliRunner."""

import json

from click.testing import CliRunner
from fake_sysfs import orin_nano

from edge_sel.energy import ROOT_ENV
from edge_sel.cli_monitor import monitor


def test_json_samples_report_the_tree_rails_and_temperatures(tmp_path):
    orin_nano(tmp_path)
    result = CliRunner().invoke(monitor, ["--json", "--samples", "3", "--interval", "0.01"],
                                env={ROOT_ENV: str(tmp_path)})
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert {"t", "power_w", "components", "temperatures", "throttled", "source"} <= set(row)
        assert row["source"] == "jetson"
        assert row["power_w"] == 7.0
        assert row["components"] == {"VDD_IN": 7.0, "VDD_CPU_GPU_CV": 2.0, "VDD_SOC": 1.5}
        assert row["temperatures"] == {"cpu-thermal": 45.5, "soc0-thermal": 44.0, "tj-thermal": 46.25}
        assert row["throttled"] is False
    assert rows[0]["t"] < rows[1]["t"] < rows[2]["t"]


def test_table_output(tmp_path):
    orin_nano(tmp_path)
    result = CliRunner().invoke(monitor, ["--samples", "2", "--interval", "0.01", "--meter", "jetson"],
                                env={ROOT_ENV: str(tmp_path)})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "energy source: jetson (integrated)"
    header = next(line for line in lines if "power_W" in line)
    assert "VDD_IN" in header and "throttle" in header
    assert lines[-1].split()[1:3] == ["7.00", "7.00"]
    assert "tj-thermal" in lines[-1]


def test_bad_options_exit_2_with_one_line(tmp_path):
    for args in (["--interval", "0"], ["--samples", "x"], ["--meter", "gpu"], ["--nope"]):
        result = CliRunner().invoke(monitor, args, env={ROOT_ENV: str(tmp_path)})
        assert result.exit_code == 2, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("Error:")
