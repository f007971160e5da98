"""test_web_steer.py in Nodes 2.0 mode (Comfy.VueNodes.Enabled): steer from the node's controls during a
run, keep the changes, and the kept workflow renders a bit-identical latent."""
from __future__ import annotations

import pytest

from test_web_steer import page, server, steer_and_keep  # noqa: F401  (page, server: the fixtures)

pytestmark = pytest.mark.browser
COMFY_SERVER_OPTIONS = {"ui_settings": {"Comfy.TutorialCompleted": True, "Comfy.VueNodes.Enabled": True}}


def test_steer_from_the_node_and_keep_the_changes_in_nodes_2_mode(server, page, artifacts_dir):
    assert page.evaluate("() => app.extensionManager.setting.get('Comfy.VueNodes.Enabled')") is True
    steer_and_keep(server, page, artifacts_dir, "nodes2")
