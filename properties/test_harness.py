"""``refimpl verify`` / ``refimpl.harness.verify``: protocol errors exit 2 with the reason, declared capabilities
become skips with the reason, reports come as JSON and Markdown."""

import json

import pytest
import torch

from refimpl.cli import main
from refimpl.harness import ProtocolError, verify
from refimpl.optimized import TemporalModel, WindowAttention
from refimpl.suite import Implementation


class WrongConstructor(torch.nn.Module):
    def __init__(self, dim, heads):
        super().__init__()


class MissingProjection(WindowAttention):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.proj
        self.output = torch.nn.Linear(self.dim, self.dim)


class DropsAFrame(TemporalModel):
    def forward(self, x):
        return super().forward(x)[:, 1:]


def wrong_mask_shape(H, W, window_size, shift_size):
    return torch.zeros(H * W, H * W)


class SpatialFloat32Only(WindowAttention):
    refimpl_capabilities = {"dtypes": ["float32"], "modes": ["masks", "gradients", "training"]}


@pytest.mark.parametrize("kind, target, words", [
    ("window_attention", WrongConstructor, "unexpected keyword argument"),
    ("window_attention", MissingProjection, "lacks AIM's keys ['proj.bias', 'proj.weight']"),
    ("temporal_model", DropsAFrame, "expected (B, T-R+1, out_channels, H, W) = (1, 2, 7, 2, 2)"),
    ("shifted_window_mask", wrong_mask_shape, "expected (nW, N, N) = (4, 4, 4)"),
])
def test_a_target_off_the_protocol_is_refused_with_the_reason(kind, target, words):
    with pytest.raises(ProtocolError, match=f"does not follow the {kind} protocol") as info:
        verify({kind: Implementation(kind, f"test:{target.__name__}", target)}, max_examples=1)
    assert words in str(info.value)


def test_the_command_exits_2_for_protocol_errors_and_bad_arguments(capsys):
    assert main(["verify", "--target", "window_attention=properties_nowhere:X"]) == 2
    assert "cannot import 'properties_nowhere'" in capsys.readouterr().err
    assert main(["verify", "--target", "attention=refimpl.optimized:WindowAttention"]) == 2
    assert main(["verify", "--dtype", "float8"]) == 2


def test_an_attribute_that_fails_to_load_exits_2_with_the_reason(tmp_path, monkeypatch, capsys):
    """A lazy attribute that raises (a peer adapter whose package is not installed) is a load error, exit 2."""
    (tmp_path / "lazy_targets.py").write_text(
        "def __getattr__(name):\n    raise ImportError(f'{name}: the peer package is not installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["verify", "--target", "window_attention=lazy_targets:Adapter"]) == 2
    assert "cannot load lazy_targets:Adapter: ImportError: Adapter: the peer package is not installed" \
        in capsys.readouterr().err


def test_declared_capabilities_become_skips_with_the_reason(tmp_path):
    impl = Implementation("window_attention", "test:SpatialFloat32Only", SpatialFloat32Only)
    report = verify({"window_attention": impl}, devices=["cpu"], max_examples=20,
                    properties=("forward_matches_oracle", "temporal_attention_is_bidirectional_and_offset_biased"))
    status = {(o.property, o.dtype): (o.status, o.detail) for o in report.outcomes}
    assert status[("forward_matches_oracle", "float64")] == ("skipped", "the target declares dtypes ['float32']")
    assert status[("forward_matches_oracle", "float32")][0] == "passed"  # temporal cases skipped, the rest ran
    (run,) = [o for o in report.outcomes if o.property == "forward_matches_oracle" and o.dtype == "float32"]
    assert "temporal" in run.missing_modes and "drawn cases skipped" in run.detail and "temporal" in run.detail
    assert status[("temporal_attention_is_bidirectional_and_offset_biased", "float64")][0] == "skipped"
    data = json.loads(report.json())
    assert data["counts"]["failed"] == 0 and data["counts"]["skipped"] >= 2
    assert "| window_attention | forward_matches_oracle | cpu | float64 | 0 | skipped: the target declares" \
           in report.markdown()


def test_a_failure_report_names_the_case_the_location_and_a_replay_command():
    from refimpl.mutants.window_attention import MaskWindowMajor

    impl = Implementation("window_attention", "refimpl.mutants.window_attention:MaskWindowMajor", MaskWindowMajor)
    report = verify({"window_attention": impl}, devices=["cpu"], dtypes=("float64",), max_examples=50,
                    properties=("forward_matches_oracle",))
    (failure,) = report.failed
    assert "WindowAttentionCase(" in failure.detail and "max abs error" in failure.detail
    assert "largest output error at row" in failure.detail and "first diverging stage" in failure.detail
    target = "window_attention=refimpl.mutants.window_attention:MaskWindowMajor"
    assert failure.replay.startswith(f"refimpl verify --target {target}")
    assert report.exit_code == 1
