# Sourced by scripts/bootstrap and scripts/bootstrap-vllm: which tool builds an environment, and the operations
# both scripts need (make the venv, install, uninstall), meaning the same under uv and under pip.
#
# BOOTSTRAP_INSTALLER=auto (default): uv when it can be had (see scripts/uv), else pip, as before uv was used.
# BOOTSTRAP_INSTALLER=uv: uv or fail.  BOOTSTRAP_INSTALLER=pip: pip only.
# Either way the venv is made by the interpreter's own `python -m venv` (uv: --without-pip, then the very pip that
# ensurepip would have put there), so both tools leave the same distributions, pip included, for `pip check`, the
# tests and users.

INSTALLER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# installer_choose PROG PY: set INSTALLER (uv or pip) and INSTALLER_DESC, and say which on stdout. PY is an
# interpreter with pip: the pip whose configuration (pip.conf, PIP_*) uv is told about, and that fetches uv if need be.
installer_choose() {
  local prog=$1 py=$2 which sources mode=${BOOTSTRAP_INSTALLER:-auto}
  INSTALLER_PY=$py
  case "$mode" in
    auto|uv|pip) ;;
    *) echo "$prog: BOOTSTRAP_INSTALLER must be auto, uv or pip, not '$mode'" >&2; exit 2 ;;
  esac
  INSTALLER=pip
  INSTALLER_DESC="pip ($("$py" -m pip --version 2>/dev/null | awk '{print $2}'))"
  if [ "$mode" != pip ]; then
    # scripts/uv says on stderr what it does (fetching uv) and, when it cannot, why.
    if which=$(PYTHON="$py" "$INSTALLER_ROOT/scripts/uv" --which) &&
       sources=$(PYTHON="$py" "$INSTALLER_ROOT/scripts/uv" --sources); then
      INSTALLER=uv
      INSTALLER_DESC="uv ${which##* } (${which% *})"
      echo "$prog: installing with $INSTALLER_DESC; from pip's configuration: $sources"
    elif [ "$mode" = uv ]; then
      echo "$prog: BOOTSTRAP_INSTALLER=uv but uv cannot be used (see above)" >&2; exit 1
    else
      echo "$prog: uv cannot be used (see above); installing with $INSTALLER_DESC"
    fi
  else
    echo "$prog: installing with $INSTALLER_DESC (BOOTSTRAP_INSTALLER=pip)"
  fi
}

# installer_venv PY VENV: a fresh venv with pip in it.
installer_venv() {
  local py=$1 venv=$2
  if [ "$INSTALLER" = uv ]; then
    "$py" -m venv --without-pip "$venv"
    installer_install "$venv" "pip==$("$py" -c 'import ensurepip; print(ensurepip.version())')"
  else
    "$py" -m venv "$venv"
  fi
}

# installer_install VENV ARGS...: `pip install ARGS` into VENV (quiet), by the chosen tool.
installer_install() {
  local venv=$1; shift
  if [ "$INSTALLER" = uv ]; then
    PYTHON="$INSTALLER_PY" "$INSTALLER_ROOT/scripts/uv" pip install -q --python "$venv/bin/python" "$@"
  else
    "$venv/bin/python" -m pip --disable-pip-version-check -q install "$@"
  fi
}

# installer_uninstall VENV NAMES...: remove those that are installed; absent ones are no error.
installer_uninstall() {
  local venv=$1; shift
  if [ "$INSTALLER" = uv ]; then
    PYTHON="$INSTALLER_PY" "$INSTALLER_ROOT/scripts/uv" pip uninstall -q --python "$venv/bin/python" "$@" 2>/dev/null \
      || true
  else
    "$venv/bin/python" -m pip --disable-pip-version-check -q uninstall -y "$@" 2>/dev/null || true
  fi
}

# installer_compile PROG VENV: byte-compile VENV's site-packages once, so that no later process compiles it again.
# uv does not compile, and where PYTHONDONTWRITEBYTECODE is set (as on some CI machines) Python never keeps what it
# compiles: measured here, MetaGPT 0.7.7's import then costs 13 CPU-seconds instead of 2.7 in every process, and
# vLLM's server import 22 instead of 9 (twice per server: the API server and its engine). Files that do not compile
# (Python 2 test data inside some packages) are skipped, as pip skips them.
installer_compile() {
  local venv=$2 site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  installer_step "$1" "byte-compiling $venv's packages (once; later imports read the byte-code)" python
  "$venv/bin/python" -m compileall -q -j 0 "$site" >/dev/null 2>&1 || true
}

# installer_step PROG TEXT [TOOL]: the progress line of one step (what, by which tool), with the time so far.
installer_step() { echo "$1: [${SECONDS} s] $2, with ${3:-$INSTALLER}"; }
