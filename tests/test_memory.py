"""keep_freed_memory: a freed 64 MB block is reused without page faults; every entry point's Hydra config applies it."""

import os
import subprocess
import sys
import textwrap

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from frcnn_lab.config import CONFIG_DIR
from frcnn_lab.runs.memory import KeepFreedMemory, glibc_version

# In a child process: the setting is process-wide and must not leak into the other tests.
CHILD = textwrap.dedent("""
    import ctypes, resource, sys
    from frcnn_lab.runs.memory import KeepFreedMemory

    libc = ctypes.CDLL(None, use_errno=True)
    # Pages of 4 KB whatever the host's transparent huge pages: with THP `always` the block is faulted in 2 MB
    # at a time, and the counts below would be some 500 times smaller with or without the setting.
    PR_SET_THP_DISABLE = 41  # <linux/prctl.h>, Linux 3.15
    if libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0:
        print("prctl", ctypes.get_errno())
        sys.exit()

    KeepFreedMemory(enabled=sys.argv[1] == "true").on_job_start(None, task_function=None)

    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def faults_of_filling(size=64 * 2**20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    print(faults_of_filling(), faults_of_filling())
""")
PAGES = 64 * 2**20 // 4096
MALLOC_HUGE_PAGES = "glibc.malloc.hugetlb=1"
"""glibc >= 2.35 asks for transparent huge pages on all its memory (madvise): on a host whose THP setting is
`madvise` (or `always`) the child's block is then backed by huge pages, as THP `always` does unasked."""


@pytest.mark.skipif(glibc_version() is None, reason="malloc settings apply to glibc only")
@pytest.mark.parametrize("huge_pages", [False, True], ids=["host_thp", "malloc_thp"])
@pytest.mark.parametrize("enabled", [True, False])
def test_freed_block_is_reused_without_page_faults(enabled, huge_pages):
    env = dict(os.environ)
    if huge_pages:
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), MALLOC_HUGE_PAGES]))
    result = subprocess.run([sys.executable, "-c", CHILD, str(enabled).lower()],
                            capture_output=True, text=True, check=True, env=env)
    if result.stdout.startswith("prctl"):
        pytest.skip(f"the child cannot switch transparent huge pages off (prctl errno {result.stdout.split()[1]}): "
                    "its page fault counts would depend on the host's THP setting")
    first, second = map(int, result.stdout.split())
    assert first >= PAGES * 0.9  # a new block: every page faulted in once
    if enabled:
        assert second < PAGES * 0.01  # the same memory again, no page handed back to the kernel
    else:
        assert second >= PAGES * 0.9  # glibc unmapped the block at free: faulted in again


@pytest.mark.parametrize("config_name", ["config", "evaluate", "predict", "serve", "export", "browse"])
def test_every_entry_point_keeps_freed_memory(config_name):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    callback = cfg.hydra.callbacks.keep_freed_memory
    assert callback._target_ == f"{KeepFreedMemory.__module__}.{KeepFreedMemory.__name__}" and callback.enabled
