#!/usr/bin/env python3
"""What metagpt-vllm-fix costs: at interpreter start-up, and when MetaGPT's open_llm module is imported.

Standard library only. Run it with the project's environment (it needs MetaGPT 0.7.7 for part 2):

    .venv/bin/python benchmarks/startup.py            # 100 paired start-up runs, 10 paired MetaGPT imports
    .venv/bin/python benchmarks/startup.py --quick    # CI: fewer runs, well under a minute
    .venv/bin/python benchmarks/startup.py --runs 300 --import-runs 20

Method (no timing here is asserted anywhere; these are numbers to read):

1. Start-up, ``python -c pass``, wall time of the whole process (fork/exec included, as a user feels it).
   A ``.pth`` file cannot be switched off in place without editing the user's environment, and
   ``METAGPT_VLLM_FIX=0`` still makes ``site`` read and exec the .pth line. So the honest "without" is a second
   environment: two venvs are created identically from the same base interpreter (``python -m venv
   --without-pip``), and this project's wheel (built from the checkout) is installed into one of them only.
   This is done twice: with fresh, empty venvs ("minimal": the plugin's .pth is the only one, so the cost of
   site's .pth handling itself is counted against it), and with venvs that hold this environment's
   site-packages as hard links, the plugin's own files left out ("metagpt-env": MetaGPT 0.7.7's dependencies and
   their own .pth files, as a user's environment has them).
   Three configurations run in the same loop, in a rotating order so that drift hits all alike:
     bare       venv without the plugin
     plugin     venv with the plugin, switch on (default): the .pth imports the boot module, which installs
                one meta-path finder
     switch=0   venv with the plugin, METAGPT_VLLM_FIX=0: the .pth line runs, the boot module is not imported
   Reported: median and p10-p90 of each, and the median of the per-iteration differences against ``bare``.
2. The patch, in the project's environment: fresh interpreters alternately with the plugin on and with
   ``METAGPT_VLLM_FIX=0``, each timing ``import metagpt.provider.open_llm_api`` in-process (perf_counter);
   the plugin's share is measured directly in the switch=0 interpreters: ``import metagpt_vllm_fix`` right after
   MetaGPT's module (that import applies the patch, the same work the hook does: import the package and wrapt,
   read MetaGPT's version, check the class, wrap the method), and the warm cost of
   ``_activation.module_loaded`` (after ``remove()``), median of many calls.

Targets (reported against, never asserted): start-up adds <= 0.3 ms (ratio <= 1.02); the patch costs <= 1 % of
MetaGPT's own import.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_ADDED_MS = 0.3
TARGET_RATIO = 1.02
TARGET_PATCH_SHARE = 1.0  # percent


def clean_env(**extra: str) -> dict:
    drop = {"METAGPT_VLLM_FIX", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONPROFILEIMPORTTIME", "PYTHONDONTWRITEBYTECODE",
            "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in drop}
    env.update(extra)
    return env


def quantile(values, q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values) -> str:
    low, high = quantile(values, .1), quantile(values, .9)
    return f"median {statistics.median(values):7.2f} ms   p10-p90 {low:6.2f}-{high:6.2f}"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        sys.exit(f"startup.py: `{' '.join(map(str, cmd))}` failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


def build_wheel(workdir: Path) -> Path:
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", "-w",
         workdir / "dist", REPO], env=clean_env())
    (wheel,) = (workdir / "dist").glob("metagpt_vllm_fix-*.whl")
    return wheel


def clone_site_packages(venv: Path) -> bool:
    """Fill ``venv``'s site-packages with hard links to the running environment's, minus this plugin's files."""
    import sysconfig

    source = Path(sysconfig.get_paths()["purelib"])
    skip, skip_dirs = set(), set()
    for dist_info in source.glob("metagpt_vllm_fix-*.dist-info"):
        skip_dirs.add(dist_info.resolve())
        for row in (dist_info / "RECORD").read_text().splitlines():
            if row:
                skip.add((source / row.split(",")[0]).resolve())
    target = Path(run([venv_python(venv), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                      ).stdout.strip())
    try:
        for dirpath, dirnames, filenames in os.walk(source):
            here = Path(dirpath)
            dirnames[:] = [d for d in dirnames if (here / d).resolve() not in skip_dirs]
            (target / here.relative_to(source)).mkdir(parents=True, exist_ok=True)
            for name in filenames:
                if (here / name).resolve() not in skip:
                    os.link(here / name, target / here.relative_to(source) / name)
    except OSError:
        return False
    return True


def make_pair(workdir: Path, wheel: Path, kind: str):
    """Two venvs made identically; the project's wheel installed (without dependencies) into the second only.

    kind "minimal": fresh venvs (nothing in site-packages). kind "metagpt-env": both hold the running
    environment's site-packages (hard links, the plugin's own files left out): MetaGPT 0.7.7's dependencies and
    their .pth files (setuptools' distutils-precedence.pth, ...), as a user's environment has them."""
    bare, plugin = workdir / f"{kind}-bare", workdir / f"{kind}-plugin"
    for venv in (bare, plugin):
        run([sys.executable, "-m", "venv", "--without-pip", venv])
        if kind == "metagpt-env" and not clone_site_packages(venv):
            return None
    # The running interpreter's pip installs into the other venv (pip >= 22.3: --python); compiled, like pip does.
    run([sys.executable, "-m", "pip", "--python", venv_python(plugin), "install", "-q", "--no-deps",
         "--disable-pip-version-check", wheel], env=clean_env())
    for venv, expect in ((bare, False), (plugin, True)):
        probe = run([venv_python(venv), "-c", "import sys; print('_metagpt_vllm_fix_boot' in sys.modules)"],
                    env=clean_env(), cwd=workdir)
        assert probe.stdout.strip() == str(expect), (venv, probe.stdout)
    return venv_python(bare), venv_python(plugin)


def time_process(cmd, env, cwd) -> float:
    start = time.perf_counter_ns()
    subprocess.run(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter_ns() - start) / 1e6


def bench_startup(runs: int, bare: Path, plugin: Path, workdir: Path) -> dict:
    configs = {
        "bare": ([str(bare), "-c", "pass"], clean_env()),
        "plugin": ([str(plugin), "-c", "pass"], clean_env()),
        "switch=0": ([str(plugin), "-c", "pass"], clean_env(METAGPT_VLLM_FIX="0")),
    }
    names = list(configs)
    for name in names * 3:  # warm the page cache and the .pyc files
        time_process(*configs[name], cwd=workdir)
    samples = {name: [] for name in names}
    for i in range(runs):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            samples[name].append(time_process(*configs[name], cwd=workdir))
    return samples


IMPORT_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import metagpt.provider.open_llm_api as mod
t1 = time.perf_counter()
result = {"import_ms": (t1 - t0) * 1e3}
if %(measure_plugin)s:
    t2 = time.perf_counter()
    import metagpt_vllm_fix
    t3 = time.perf_counter()
    from metagpt_vllm_fix import _activation
    from metagpt_vllm_fix.fixes import api_key
    assert api_key.is_patched(mod.OpenLLM)
    result["plugin_cold_ms"] = (t3 - t2) * 1e3
    warm = []
    for _ in range(%(warm_runs)d):
        metagpt_vllm_fix.remove()
        t4 = time.perf_counter()
        _activation.module_loaded(mod)
        warm.append((time.perf_counter() - t4) * 1e3)
    assert api_key.is_patched(mod.OpenLLM)
    result["plugin_warm_ms"] = sorted(warm)[len(warm) // 2]
else:
    from metagpt_vllm_fix.fixes import api_key
    assert api_key.is_patched(mod.OpenLLM)
print(json.dumps(result))
"""


def bench_patch(runs: int, warm_runs: int, workdir: Path) -> dict:
    python = sys.executable
    check = subprocess.run([python, "-c", "import metagpt, importlib.metadata as m; print(m.version('metagpt'))"],
                           capture_output=True, text=True, env=clean_env(), cwd=workdir)
    if check.returncode != 0:
        return {"skipped": f"MetaGPT is not importable with {python}: run this with the project's .venv"}
    env_root = workdir / "metagpt-root"
    env_root.mkdir(exist_ok=True)
    samples = {"with_plugin": [], "switch=0": [], "plugin_cold": [], "plugin_warm": []}
    for i in range(runs):
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            code = IMPORT_PROBE % {"measure_plugin": not on, "warm_runs": warm_runs}
            env = clean_env(METAGPT_PROJECT_ROOT=str(env_root), **({} if on else {"METAGPT_VLLM_FIX": "0"}))
            proc = run([python, "-c", code], env=env, cwd=workdir)
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            samples["with_plugin" if on else "switch=0"].append(out["import_ms"])
            if not on:
                samples["plugin_cold"].append(out["plugin_cold_ms"])
                samples["plugin_warm"].append(out["plugin_warm_ms"])
    samples["metagpt"] = check.stdout.strip()
    return samples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="paired start-up iterations (default 100, >= 30)")
    parser.add_argument("--import-runs", type=int, default=10, help="paired MetaGPT imports (default 10)")
    parser.add_argument("--warm-runs", type=int, default=200, help="warm module_loaded calls per interpreter")
    parser.add_argument("--quick", action="store_true", help="CI mode: 30 start-up runs, 2 paired imports")
    parser.add_argument("--json", metavar="FILE", help="also write the raw samples to FILE")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.import_runs, args.warm_runs = 30, 2, 50

    print(f"metagpt-vllm-fix start-up benchmark: Python {platform.python_version()} ({sys.executable}), "
          f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}")
    workdir = Path(tempfile.mkdtemp(prefix="mvf-bench-"))
    try:
        began = time.monotonic()
        wheel = build_wheel(workdir)
        results = {}
        for kind, title in (("minimal", "two fresh venvs, nothing else installed"),
                            ("metagpt-env", "two venvs holding this environment's site-packages (MetaGPT 0.7.7)")):
            pair = make_pair(workdir, wheel, kind)
            print(f"\n1. python -c pass, {args.runs} paired runs: {title}")
            if pair is None:
                print("   skipped: hard links to this environment are not possible (another file system)")
                continue
            startup = results[kind] = bench_startup(args.runs, *pair, workdir)
            bare = startup["bare"]
            for name in startup:
                print(f"   {name:<9} {spread(startup[name])}")
            for name in ("plugin", "switch=0"):
                diffs = [a - b for a, b in zip(startup[name], bare)]
                added = statistics.median(diffs)
                ratio = statistics.median(startup[name]) / statistics.median(bare)
                verdict = "meets" if added <= TARGET_ADDED_MS and ratio <= TARGET_RATIO else "MISSES"
                print(f"   {name:<9} adds {added:+.3f} ms (paired median; p10-p90 {quantile(diffs, .1):+.2f}.."
                      f"{quantile(diffs, .9):+.2f}), ratio {ratio:.3f}  -> {verdict} the target "
                      f"(<= {TARGET_ADDED_MS} ms, ratio <= {TARGET_RATIO})")

        patch = bench_patch(args.import_runs, args.warm_runs, workdir)
        print(f"\n2. import metagpt.provider.open_llm_api, {args.import_runs} paired fresh interpreters")
        if "skipped" in patch:
            print(f"   skipped: {patch['skipped']}")
        else:
            with_plugin, without = patch["with_plugin"], patch["switch=0"]
            print(f"   MetaGPT {patch['metagpt']}")
            print(f"   with plugin  {spread(with_plugin)}")
            print(f"   switch=0     {spread(without)}")
            print(f"   difference of medians {statistics.median(with_plugin) - statistics.median(without):+.1f} ms "
                  "(noisy: MetaGPT's import varies by more than the patch costs; see the direct figures below)")
            cold, warm = patch["plugin_cold"], patch["plugin_warm"]
            share = statistics.median(cold) / statistics.median(without) * 100
            print(f"   plugin, first time (import metagpt_vllm_fix + wrapt + gate + patch): {spread(cold)}")
            print(f"   plugin, warm _activation.module_loaded (gate + patch):               "
                  f"median {statistics.median(warm):.3f} ms")
            verdict = "meets" if share <= TARGET_PATCH_SHARE else "MISSES"
            print(f"   plugin's share of MetaGPT's import: {share:.2f} %  -> {verdict} the target "
                  f"(<= {TARGET_PATCH_SHARE:g} %)")
        print(f"\n(total {time.monotonic() - began:.0f} s)")
        if args.json:
            Path(args.json).write_text(json.dumps({"startup": results, "patch": patch}, indent=1))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
