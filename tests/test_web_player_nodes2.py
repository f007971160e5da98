"""Live playback on the sampler node in Nodes 2.0 mode (Comfy.VueNodes.Enabled): the checks of
tests/test_web_player.py, with the node drawn by the Vue frontend."""
from __future__ import annotations

import pytest

from test_web import page, server  # noqa: F401  (the fixtures)
from test_web_player import check_finished_run_stays_whole, check_live_playback

pytestmark = pytest.mark.browser
COMFY_SERVER_OPTIONS = {"ui_settings": {"Comfy.TutorialCompleted": True, "Comfy.VueNodes.Enabled": True}}


def test_live_playback_while_the_sampler_runs_in_nodes_2_mode(server, page, artifacts_dir):
    assert page.evaluate("() => app.extensionManager.setting.get('Comfy.VueNodes.Enabled')") is True
    check_live_playback(server, page, artifacts_dir, "nodes2")


def test_finished_run_stays_playable_whole_in_nodes_2_mode(server, page, artifacts_dir):
    check_finished_run_stays_whole(server, page, artifacts_dir, "nodes2")
