"""timm's and torchvision's Swin window attention under the harness, through the adapters of ``refimpl.peers``.
Skipped (with the reason) where the peers are not installed; the ``peers`` tox environment installs them with
torch pinned."""

import pytest

from refimpl.harness import verify
from refimpl.peers import not_installed

PEERS = {"timm": "refimpl.peers:TimmWindowAttention", "torchvision": "refimpl.peers:TorchvisionWindowAttention"}


@pytest.mark.parametrize("package", PEERS)
def test_peer_passes_every_property_it_supports(package):
    reason = not_installed(package)
    if reason:
        pytest.skip(reason)
    report = verify({"window_attention": PEERS[package]}, devices=["cpu"], dtypes=("float64", "float32"),
                    max_examples=30)
    assert not report.failed, report.failed[0].detail
    skipped = [o for o in report.outcomes if o.status == "skipped"]
    # every skip is a declared lack or the optional flops method, never an unexplained one
    assert all("declares" in o.detail or "no flops(" in o.detail for o in skipped), [o.detail for o in skipped]
