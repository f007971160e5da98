"""The decode device through a real ComfyUI server (--cpu): the sampler's "save video as it goes" and
PackForcing Save Video with decode_device = cpu write the frames the default device writes, and a
device this machine does not have is refused with a message naming the input and the choices."""
from __future__ import annotations

import numpy as np
import pytest

from test_comfy_directing import decoded
from test_comfy_e2e import SIZE, basic, error_of, files, server  # noqa: F401  (server: the fixture)


def saving(decode_device: str | None, tag: str) -> dict:
    wf = basic(29, save_video=True, filename_prefix=f"pf_dev/{tag}_live", vae=["5", 0])
    wf["9"] = {"class_type": "PackForcingSaveVideo", "inputs": {"samples": ["6", 0], "vae": ["5", 0], "fps": 16.0,
                                                                "filename_prefix": f"pf_dev/{tag}_after",
                                                                "codec": "h264", "crf": 20}}    # not a copy
    if decode_device is not None:
        wf["6"]["inputs"]["decode_device"] = decode_device
        wf["9"]["inputs"]["decode_device"] = decode_device
    return wf


def videos(server, entry) -> dict[str, np.ndarray]:
    return {("live" if "_live" in p.name else "after"): decoded(p) for p in files(server, entry, ".mp4")}


def test_decode_device_cpu_writes_the_frames_of_the_default_device(server):
    info = server.object_info("PackForcingSampler")["PackForcingSampler"]["input"]["optional"]["decode_device"]
    assert info[1]["options"][:2] == ["default", "cpu"] and info[1]["default"] == "default"
    default = videos(server, server.run(saving(None, "default")))
    on_cpu = videos(server, server.run(saving("cpu", "cpu")))
    assert default.keys() == on_cpu.keys() == {"live", "after"}
    for kind in ("live", "after"):
        assert default[kind].shape == (29, SIZE, SIZE, 3)
        assert np.array_equal(default[kind], on_cpu[kind]), kind


@pytest.mark.parametrize("node", ["6", "9"], ids=["sampler", "save_video"])
def test_a_device_this_machine_lacks_is_refused(server, node):
    wf = saving("cpu", f"bad{node}")
    wf[node]["inputs"]["decode_device"] = "cuda:7"
    message = error_of(server, wf)
    # 0.3.75 leaves V3 combos to the node (its message); 0.33 refuses at queue time ("not in [...]")
    assert "decode_device" in message and "'cuda:7'" in message and "default" in message and "cpu" in message
    assert "is not one of default, cpu" in message or "not in ['default', 'cpu'" in message, message
