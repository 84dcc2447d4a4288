"""Headless OpenGL for MuJoCo: pick a ``MUJOCO_GL`` backend that really renders (EGL, else OSMesa)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

_GL_PROBE = """
import mujoco
xml = '<mujoco><worldbody><light pos="0 0 2"/><geom type="sphere" size=".2" rgba="1 0 0 1"/></worldbody></mujoco>'
model = mujoco.MjModel.from_xml_string(xml)
data = mujoco.MjData(model)
mujoco.mj_forward(model, data)
renderer = mujoco.Renderer(model, 16, 16)
renderer.update_scene(data)
image = renderer.render()
renderer.close()
assert image.shape == (16, 16, 3) and int(image[..., 0].max()) > 0, "blank frame"
"""


def _gl_renders(backend: str, timeout: float = 120.0) -> bool:
    """Whether MuJoCo renders a (non-blank) frame with ``MUJOCO_GL=backend``, tried in a fresh process."""
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        done = subprocess.run([sys.executable, "-c", _GL_PROBE], env=env, capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def ensure_headless_gl() -> str:
    """Set ``MUJOCO_GL`` (if unset) to a backend that renders: ``egl``, else ``osmesa``, else ``disabled``.

    Must run before ``dm_control`` is first imported (it reads the variable at import).  Returns the backend.
    """
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        return chosen
    for backend in ("egl", "osmesa"):
        if _gl_renders(backend):
            chosen = backend
            break
    else:
        chosen = "disabled"
        warnings.warn(
            "MuJoCo cannot render headless: neither EGL nor OSMesa works (install Mesa: `make setup` as root, or "
            "apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6). Pixel observations will fail.",
            RuntimeWarning,
            stacklevel=4,
        )
    os.environ["MUJOCO_GL"] = chosen  # dm_control / gymnasium set PYOPENGL_PLATFORM to match when they load it
    return chosen
