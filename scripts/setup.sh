#!/usr/bin/env bash
# Creates or updates the project's virtual environment (.venv) on a Debian machine with Python 3.11:
# installs the Debian packages for headless rendering and open3d when missing, the pinned CPU torch,
# then the project itself (editable) with its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv
STAMP=$VENV/.installed

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo

missing_packages() {  # the Debian packages among "$@" that are not installed
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

# Debian packages: EGL + Mesa for MuJoCo's headless rendering (MUJOCO_GL=egl), OSMesa as a fallback,
# libusb for open3d. Installed only when one is missing (needs root).
missing=($(missing_packages libegl1 libgl1 libgles2 libegl-mesa0 libgl1-mesa-dri libosmesa6 libusb-1.0-0))
if [ ${#missing[@]} -gt 0 ]; then
    echo "[setup] installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ROS 1 from Debian's own packages (bookworm), for `mfp control --robot ros`, `mfp ros-sim` and the ROS tests.
# Skip with MFP_NO_ROS=1. On a developer's machine a failed install is not fatal: without ROS only the ROS
# commands and tests are unavailable (they say so). In CI (CI=true, as .ci/run sets) it is: the ROS tests must
# run there, not be skipped; MFP_NO_ROS=1 opts out on purpose (the ROS tests then skip).
ros_required() {
    [ "${MFP_NO_ROS:-0}" != "1" ] && case "${CI:-}" in 1|true|TRUE|True|yes) true ;; *) false ;; esac
}
ROS_PACKAGES=(ros-core python3-rospy python3-std-msgs python3-sensor-msgs python3-geometry-msgs python3-rosbag)
if [ "${MFP_NO_ROS:-0}" != "1" ]; then
    missing=($(missing_packages "${ROS_PACKAGES[@]}"))
    if [ ${#missing[@]} -gt 0 ]; then
        echo "[setup] installing ROS 1 Debian packages: ${missing[*]}"
        if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" \
                >/dev/null; }; then
            if ros_required; then
                echo "[setup] ERROR: could not install ROS 1 (${missing[*]}), and CI needs it for the ROS tests" \
                     "(set MFP_NO_ROS=1 to run CI without ROS on purpose)" >&2
                exit 1
            fi
            echo "[setup] WARNING: could not install ROS 1 (${missing[*]}); continuing without it"
        fi
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi

# rospy and the message packages live in Debian's dist-packages: appended after the venv's own site-packages
# (a .pth line), so the venv's packages keep priority and nothing of Debian's shadows them. Done on every run:
# ROS may have been installed after the venv was made.
link_ros() {
    if [ -d /usr/lib/python3/dist-packages/rospy ]; then
        SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        echo "/usr/lib/python3/dist-packages" > "$SITE/zz_debian_ros.pth"
    fi
}

# In CI, ROS must be usable from the venv, not only installed.
check_ros() {
    if ros_required && ! { command -v roscore >/dev/null 2>&1 && "$VENV/bin/python" -c "import rospy" 2>/dev/null; }; then
        echo "[setup] ERROR: ROS 1 is not usable (roscore on PATH, rospy importable from $VENV), and CI needs it" \
             "for the ROS tests (set MFP_NO_ROS=1 to run CI without ROS on purpose)" >&2
        exit 1
    fi
}

link_ros
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt scripts/setup.sh ]; then
    check_ros
    exit 0
fi
echo "[setup] installing Python packages into $VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# The CPU build of torch first: a looser requirement asked for first would pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[test]"
link_ros
check_ros
touch "$STAMP"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, mujoco, metaworld; print("torch", torch.__version__, "mujoco", mujoco.__version__, "metaworld", metaworld.__version__ if hasattr(metaworld, "__version__") else "3.1.1")')"
