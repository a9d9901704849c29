"""refimpl's pytest plugin as a user runs it: ``pytest --pyargs refimpl.suite`` in a directory of their own, in a
process of its own (the plugin is registered by the installed package's entry point)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from refimpl.harness import merge_reports
from refimpl.profiles import PROFILES
from refimpl.pytest_plugin import parse_shard, parse_targets, shard_seed

# A mask-kind target that records every geometry it is called with (one line each), computing the oracle's mask:
# which examples a run drew, read back from the file.
RECORDER = textwrap.dedent('''
    import os
    from refimpl import reference

    def mask(H, W, window_size, shift_size, fill=-100.0):
        with open(os.environ["RECORD_TO"], "a") as out:
            out.write(f"{H} {W} {window_size} {shift_size}\\n")
        return reference.shifted_window_mask(H, W, window_size, shift_size, fill)
''')


def _pytest(tmp_path, *args, record="drawn.txt", env=None):
    (tmp_path / "recorder.py").write_text(RECORDER)
    record_path = tmp_path / record
    record_path.unlink(missing_ok=True)
    run_env = {**os.environ, "RECORD_TO": str(record_path), "PYTHONPATH": str(tmp_path), **(env or {})}
    run_env.pop("CI", None)
    command = [sys.executable, "-m", "pytest", "--pyargs", "refimpl.suite", "-p", "no:cacheprovider",
               "--refimpl-target", "shifted_window_mask=recorder:mask", "-k", "mask_equals_its_definition", *args]
    result = subprocess.run(command, cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=300)
    drawn = record_path.read_text().splitlines() if record_path.exists() else []
    return result, drawn


@pytest.mark.parametrize("profile", PROFILES)
def test_every_refimpl_profile_loads_by_its_short_name(tmp_path, profile):
    """``--hypothesis-profile=NAME`` works in a user's directory for each of refimpl's profiles: the plugin registers
    them before Hypothesis loads the profile (an unregistered name is a start-up error)."""
    result, _ = _pytest(tmp_path, f"--hypothesis-profile={profile}", "--collect-only", "-q")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_the_plugin_imports_neither_torch_nor_the_suite():
    code = ("import sys, refimpl.pytest_plugin; heavy = [m for m in ('torch', 'refimpl.suite', 'hypothesis') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shards_draw_different_examples_and_each_shard_replays_its_own(tmp_path):
    """Under the derandomized ci profile, shard 0/2 and 1/2 draw different geometries (the ci profile alone
    would draw the same ones in every shard), and running a shard again draws exactly what it drew before."""
    profile = ["--hypothesis-profile=ci"]
    first, drawn_0 = _pytest(tmp_path, *profile, "--refimpl-shard", "0/2")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    _, drawn_1 = _pytest(tmp_path, *profile, "--refimpl-shard", "1/2")
    _, again_0 = _pytest(tmp_path, *profile, "--refimpl-shard", "0/2")
    assert drawn_0 and drawn_1
    assert drawn_0 != drawn_1
    assert drawn_0 == again_0


def test_hypothesis_seed_is_honoured_under_the_derandomized_profile(tmp_path):
    _, seed_1 = _pytest(tmp_path, "--hypothesis-profile=ci", "--hypothesis-seed=1")
    _, seed_2 = _pytest(tmp_path, "--hypothesis-profile=ci", "--hypothesis-seed=2")
    _, plain = _pytest(tmp_path, "--hypothesis-profile=ci")
    _, plain_again = _pytest(tmp_path, "--hypothesis-profile=ci")
    assert seed_1 != seed_2
    assert plain == plain_again  # derandomized without a seed: the same examples every run


def test_shard_reports_merge_into_one_verdict(tmp_path):
    for index in (0, 1):
        result, _ = _pytest(tmp_path, "--hypothesis-profile=dev", "--refimpl-shard", f"{index}/2",
                            "--refimpl-report", str(tmp_path / f"shard{index}.json"))
        assert result.returncode == 0, result.stdout[-3000:]
    merged_json, merged_md = tmp_path / "merged.json", tmp_path / "merged.md"
    cli = subprocess.run([sys.executable, "-m", "refimpl", "merge", str(tmp_path / "shard0.json"),
                          str(tmp_path / "shard1.json"), "--report", str(merged_json), "--markdown", str(merged_md)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    merged = json.loads(merged_json.read_text())
    assert merged["shards"] == ["0/2", "1/2"]
    (outcome,) = merged["outcomes"]
    assert outcome["status"] == "passed" and outcome["examples"] == 2 * 25
    assert "2 shards merged" in merged_md.read_text()


def test_a_failure_in_any_shard_fails_the_merged_verdict_and_keeps_its_replay_command():
    base = {"kind": "k", "target": "t", "property": "p", "device": "cpu", "dtype": "float32", "seconds": 1.0,
            "detail": "", "replay": "", "examples": 10, "examples_skipped": 0, "missing_modes": []}
    passed = {"shards": ["0/2"], "outcomes": [base]}
    failed = {"shards": ["1/2"], "outcomes": [{**base, "status": "failed", "detail": "AssertionError: x",
                                               "replay": "pytest ... --refimpl-shard 1/2", "examples": 3}]}
    base["status"] = "passed"
    report = merge_reports([passed, failed])
    (outcome,) = report.outcomes
    assert (outcome.status, outcome.replay, outcome.examples) == ("failed", "pytest ... --refimpl-shard 1/2", 13)
    assert report.exit_code == 1 and "replay" in report.markdown()


def test_a_failing_target_fails_with_the_replay_command_and_junit_has_one_case_per_property(tmp_path):
    (tmp_path / "broken.py").write_text("from refimpl import reference\n\ndef mask(H, W, ws, s, fill=-100.0):\n"
                                        "    return reference.shifted_window_mask(H, W, ws, s, fill).T.copy()\n")
    junit = tmp_path / "junit.xml"
    result = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "refimpl.suite", "-p", "no:cacheprovider",
                             "--refimpl-target", "shifted_window_mask=broken:mask", "--hypothesis-profile=dev",
                             f"--junitxml={junit}"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1, result.stdout[-3000:]
    assert "Replay: pytest --pyargs refimpl.suite --refimpl-target shifted_window_mask=broken:mask" in result.stdout
    cases = junit.read_text().count("<testcase ")
    assert cases == 2  # the mask kind's two properties, each its own test case


@pytest.mark.parametrize("value", ["window_attention", "=a:b", "window_attention=nomodule"])
def test_malformed_targets_are_refused_naming_the_value(value):
    with pytest.raises(ValueError, match=f"--refimpl-target must be KIND=MODULE:ATTR .*got {value!r}"):
        parse_targets([value])


@pytest.mark.parametrize("value", ["2/2", "1", "a/b", "-1/3", "0/0"])
def test_malformed_shards_are_refused_naming_the_value(value):
    with pytest.raises(ValueError, match=f"--refimpl-shard must be I/N .*got {value!r}"):
        parse_shard(value)


def test_shard_seeds_differ_per_shard_and_test_and_repeat():
    seeds = {shard_seed(0, (i, 4), test) for i in range(4) for test in ("a", "b")}
    assert len(seeds) == 8 and shard_seed(0, (1, 4), "a") == shard_seed(0, (1, 4), "a")
