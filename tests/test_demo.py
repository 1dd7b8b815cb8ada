"""The demo's own logic: a fixed, stratified split and the results table (training is exercised
by the text-classification CLI tests; the full demo runs from the README)."""

from sparseforge.demo import FAST, format_table, int8_cpu_flags, split_examples


def test_split_is_stratified_deterministic_and_disjoint():
    examples = [(f"{topic} article {i}", topic) for topic in ("sport", "tech", "business") for i in range(50)]
    train, test = split_examples(examples, seed=42)
    assert split_examples(examples, seed=42) == (train, test)
    assert split_examples(examples, seed=7) != (train, test)
    assert not set(train) & set(test) and len(train) + len(test) == len(examples)
    for topic in ("sport", "tech", "business"):
        assert sum(label == topic for _, label in test) == 10


def test_table_reports_ratios():
    row = dict(pytorch_accuracy=0.9, onnx_accuracy=0.9, onnx_bytes=90e6, onnx_gzip_bytes=80e6,
               throughput_examples_per_s=40.0, encoder_sparsity=0.0, max_abs_diff_onnx_vs_torch=1e-5)  # fmt: skip
    sparse = dict(row, pytorch_accuracy=0.88, onnx_accuracy=0.87, onnx_bytes=24e6, onnx_gzip_bytes=10e6,
                  throughput_examples_per_s=80.0, encoder_sparsity=0.8, max_abs_diff_onnx_vs_torch=0.02)  # fmt: skip
    table = format_table({"dense FP32": row, "sparse INT8": sparse}, FAST, 3.0)
    assert "3.75x smaller" in table and "8.00x smaller" in table and "2.00x" in table
    assert "0.978x" in table and "0.80" in table

    assert "int8 dot-product instructions of this CPU: unknown" in table
    assert "none of avx512_vnni" in format_table({"dense FP32": row, "sparse INT8": sparse}, FAST, 3.0, [])


def test_int8_cpu_flags_read_from_cpuinfo(tmp_path):
    intel = tmp_path / "intel"
    intel.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512bw avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512_vnni\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n")
    amd = tmp_path / "amd"
    amd.write_text("processor\t: 0\nflags\t\t: fpu avx2 vnni_like_name\n")
    assert int8_cpu_flags(intel) == ["avx512_vnni"]
    assert int8_cpu_flags(arm) == ["asimddp", "i8mm"]
    assert int8_cpu_flags(amd) == []
    assert int8_cpu_flags(tmp_path / "missing") is None
