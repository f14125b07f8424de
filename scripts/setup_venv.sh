#!/usr/bin/env bash
# Builds .venv from scratch or brings it up to date: pinned packages, the messages in msg/
# generated into the venv, and panoptic_ros installed in editable mode. `make setup` calls this
# only when one of its inputs changed, so a second run costs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/.venv
distro=${1:-jazzy}  # which ROS 2 wheels: requirements-ros-<distro>.txt
[ -f "requirements-ros-$distro.txt" ] || { echo "no requirements-ros-$distro.txt (jazzy or kilted)" >&2; exit 1; }

# A venv holds one distro's wheels: switching rebuilds it (both sets would share .venv/lib). A venv
# without the marker predates the choice and holds Kilted's.
if [ -d "$venv" ] && [ "$(cat "$venv/ros-distro" 2>/dev/null || echo kilted)" != "$distro" ]; then
    rm -rf "$venv" "$root/build/msgs"
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt \
    -r "requirements-ros-$distro.txt"
echo "$distro" >"$venv/ros-distro"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt

# Messages: rosidl generators from the ROS wheels + Debian's cmake and a C compiler. The
# generated Python goes to its own folder (on sys.path through a .pth file) so that it does not
# shadow the editable source tree; panoptic_ros/__init__.py joins the two (pkgutil.extend_path).
command -v cmake >/dev/null || { echo "cmake is missing: apt-get install cmake g++" >&2; exit 1; }
msgs_py=$venv/msgs-python
mkdir -p "$root/build"
AMENT_PREFIX_PATH=$venv cmake -S "$root" -B "$root/build/msgs" \
    -DCMAKE_PREFIX_PATH="$venv" -DCMAKE_INSTALL_PREFIX="$venv" -DPYTHON_INSTALL_DIR="$msgs_py" \
    -DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF -DPANOPTIC_ROS_INSTALL_PYTHON=OFF \
    >"$root/build/cmake.log" 2>&1 || { cat "$root/build/cmake.log" >&2; exit 1; }
cmake --build "$root/build/msgs" -j2 >>"$root/build/cmake.log" 2>&1 \
    || { tail -50 "$root/build/cmake.log" >&2; exit 1; }
cmake --install "$root/build/msgs" >>"$root/build/cmake.log" 2>&1 \
    || { tail -50 "$root/build/cmake.log" >&2; exit 1; }
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$msgs_py" >"$site/panoptic_ros_msgs.pth"
# Its egg-info would make pip take the messages for an installed panoptic_ros and uninstall them.
rm -rf "$msgs_py"/panoptic_ros-*.egg-info

"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
    -e "$root" --config-settings editable_mode=compat
echo "set-up done: $venv"
