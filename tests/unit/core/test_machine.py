from shrinkflow.core import machine


def test_isa_kinds():
    assert machine.isa_kind(["avx2", "fma"]) == "avx2"
    assert machine.isa_kind(["avx2", "avx512f", "avx512_vnni"]) == "avx512_vnni"
    assert machine.isa_kind(["avx2", "avx512f", "amx_int8"]) == "amx"
    assert machine.isa_kind([]) == "baseline"


def test_fingerprint_names_cpu_isa_versions_and_threads():
    fp = machine.fingerprint({"runtime": 1})
    for key in ("cpu_model", "isa", "isa_kind", "cores", "torch", "onnxruntime", "id"):
        assert key in fp, key
    assert fp["threads"] == {"runtime": 1}
    assert machine.fingerprint({"runtime": 1})["id"] == fp["id"]  # stable
    assert machine.fingerprint({"runtime": 2})["id"] != fp["id"]


def test_same_kernels_ignores_the_model_name_not_the_isa():
    a = machine.fingerprint()
    b = {**a, "cpu_model": "another name", "cores": 64}
    assert machine.same_kernels(a, b)
    assert not machine.same_kernels(a, {**a, "isa": ["avx2"]})
    assert not machine.same_kernels(a, {**a, "onnxruntime": "0.0"})
