"""The one ONNX Runtime session factory, the timing helper and the CPU flags."""

import numpy as np
import onnxruntime as ort
import torch

from squishednets.export import export_onnx
from squishednets.genome import get_genome
from squishednets.model import build
from squishednets.ort import CPU_FLAGS, cpu_flags, images_per_second, session

AVX512 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni\ncpu MHz\t\t: 2000.0\n"
AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes\nCPU implementer\t: 0x41\n"


def test_cpu_flags_from_cpuinfo():
    assert cpu_flags(AVX512) == {"avx2": True, "avx512f": True, "avx512_vnni": True, "avx_vnni": False, "fma": True}
    assert cpu_flags(AVX2) == {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False, "fma": True}
    assert cpu_flags(ARM) == dict.fromkeys(CPU_FLAGS, False)
    here = cpu_flags()
    assert set(here) == set(CPU_FLAGS) and all(isinstance(v, bool) for v in here.values())


def test_session_options(tmp_path):
    export_onnx(build(get_genome("squeezenet1_1", 3)).eval(), tmp_path / "m.onnx", 40, check=False)
    s = session(tmp_path / "m.onnx", threads=2)
    so = s.get_session_options()
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert s.get_providers() == ["CPUExecutionProvider"]
    assert session(tmp_path / "m.onnx").get_session_options().intra_op_num_threads == 0
    out = s.run(None, {"input": torch.randn(2, 3, 40, 40).numpy()})[0]
    assert out.shape == (2, 3)


class _FakeSession:
    def __init__(self):
        self.calls = 0

    def get_inputs(self):
        return [type("I", (), {"name": "input"})()]

    def run(self, _, feed):
        assert set(feed) == {"input"}
        self.calls += 1


def test_images_per_second_times_runs_after_warmup():
    s = _FakeSession()
    rate = images_per_second(s, np.zeros((32, 3, 8, 8), np.float32), runs=5, warmup=2, min_time=0.0)
    assert s.calls == 7 and rate > 0
