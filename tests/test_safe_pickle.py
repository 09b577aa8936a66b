"""Reading the weights of a PyTorch Lightning checkpoint without running anything pickled in it."""

import builtins
import collections
import os
import shlex
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from bioxlstm.convert.common import ConversionError
from bioxlstm.convert.safe_pickle import load_lightning_state_dict

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lightning"


class FakeDictConfig:
    """Stands for omegaconf's DictConfig: a class the loader must never import or call."""

    def __init__(self, content):
        self.__dict__["_content"] = dict(content)
        self.__dict__["_flags"] = {"readonly": None}

    def __getnewargs_ex__(self):  # NEWOBJ_EX under protocol 4+, copyreg.__newobj_ex__ under 2
        return (), {"flags": self._flags}

    def __getstate__(self):
        return dict(self.__dict__)

    def __setstate__(self, state):
        raise AssertionError("the loader ran code of a class named in the checkpoint")


class FakeList(list):
    pass


class FakeDict(dict):
    pass


class EveryOpcode:
    """Pickles as construction, state, list items, dict items and a state setter: each must land on a placeholder."""

    def __reduce__(self):
        return EveryOpcode, (), {"state": 1}, iter([1, 2]), iter({"k": "v"}.items()), _set_state


def _set_state(obj, state):
    raise AssertionError("the loader called a state setter named in the checkpoint")


class RunsShell:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.sentinel))}",)


class RunsPython:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.sentinel)!r}, 'w').close()",)


def weights():
    generator = torch.Generator().manual_seed(0)  # the same values on every call
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = collections.OrderedDict()
    state["model.backbone.embedding.weight"] = torch.randn(12, 8, generator=generator)
    state["model.backbone.norm.weight"] = torch.randn(8, generator=generator).to(torch.bfloat16)
    state["model.backbone.complement_map"] = torch.tensor([0, 1, 2, 3, 7, 6, 5, 4], dtype=torch.int64)
    state["model.head.weight_t"] = base.t()  # a non-contiguous view
    state["model.shared.a"] = base  # shares its storage with the view above and the row below
    state["model.shared.b"] = base[1]
    state["model.step"] = torch.tensor(7)
    state["model.empty"] = torch.zeros(0, 3)
    state._metadata = {"": {"version": 1}}
    return state


def lightning_checkpoint(state_dict, hyper_parameters):
    """A dict shaped like what PyTorch Lightning's ModelCheckpoint writes."""
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 4, "completed": 3}}, "state_dict": {}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val/loss'}": {"best_model_score": torch.tensor(0.25),
                                                                  "dirpath": "checkpoints/test"}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(12, 8)}},
                              "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0]}]}],
        "lr_schedulers": [{"last_epoch": 120, "_last_lr": [1e-3]}],
        "hparams_name": "config",
        "hyper_parameters": hyper_parameters,
    }


def fake_hyper_parameters():
    return FakeDictConfig({"model": FakeDict(d_model=8, num_blocks=2), "slstm_at": FakeList([1]),
                           "dtypes": {torch.float32, torch.bfloat16}, "seed": 0, "everything": EveryOpcode()})


def load(path):
    """The loader, checked to import nothing while it reads (zipfile may load a text codec of the
    standard library the first time it meets a file name, whatever the archive holds)."""
    before = set(sys.modules)
    state = load_lightning_state_dict(path)
    assert {name for name in set(sys.modules) - before if not name.startswith("encodings.")} == set()
    return state


def assert_same(loaded, expected):
    assert list(loaded) == list(expected)
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert loaded[name].shape == tensor.shape and loaded[name].stride() == tensor.stride(), name
        exact = torch.complex128  # holds every value of these small tests, whatever the dtype
        assert torch.equal(loaded[name].resolve_conj().to(exact), tensor.resolve_conj().to(exact)), name


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])  # torch.save's default is 2
def test_lightning_shaped_checkpoint_gives_exactly_its_tensors(tmp_path, protocol):
    path = tmp_path / "loss.ckpt"
    expected = weights()
    torch.save(lightning_checkpoint(expected, fake_hyper_parameters()), path, pickle_protocol=protocol)
    loaded = load(path)
    assert_same(loaded, expected)
    assert not loaded["model.head.weight_t"].is_contiguous()
    shared = {loaded[name].untyped_storage().data_ptr() for name in ("model.head.weight_t", "model.shared.a", "model.shared.b")}
    assert len(shared) == 1, "tensors that shared a storage when saved share it when loaded"


def test_new_dtypes_and_conjugate_views_survive(tmp_path):
    path = tmp_path / "more.ckpt"
    expected = {"f8": torch.randn(5).to(torch.float8_e4m3fn), "u16": torch.arange(4).to(torch.uint16),
                "conj": torch.randn(3, dtype=torch.complex64).conj()}
    torch.save({"state_dict": expected}, path)
    loaded = load(path)
    assert_same(loaded, expected)
    assert loaded["conj"].is_conj()


@pytest.mark.parametrize("payload", [RunsShell, RunsPython])
def test_pickled_code_never_runs(tmp_path, payload):
    sentinel = tmp_path / "SENTINEL"
    path = tmp_path / "evil.ckpt"
    hyper = {"config": fake_hyper_parameters(), "init": payload(sentinel), "nested": [{"again": payload(sentinel)}]}
    torch.save(lightning_checkpoint(weights(), hyper), path)
    assert_same(load(path), weights())
    assert not sentinel.exists()


def test_the_payload_is_real(tmp_path):
    """The same file does run its payload under an unrestricted torch.load: the test above means something."""
    sentinel = tmp_path / "SENTINEL"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": RunsPython(sentinel)}, path)
    torch.load(path, weights_only=False)
    assert sentinel.exists()


def test_modules_named_in_the_checkpoint_are_never_imported(tmp_path, monkeypatch):
    sentinel = tmp_path / "IMPORTED"
    module = "bioxlstm_safe_pickle_probe"
    (tmp_path / f"{module}.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n\ndef build(*args):\n    return args\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = __import__(module)
    path = tmp_path / "probe.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": probe.build}, path)
    del sys.modules[module]
    sentinel.unlink()
    assert torch.equal(load(path)["w"], torch.ones(2))
    assert not sentinel.exists() and module not in sys.modules


def test_code_in_place_of_a_weight_is_refused_unrun(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2), "b": RunsShell(sentinel)}}, path)
    with pytest.raises(ConversionError, match=r"not tensors \('b': <posix\.system \(not loaded\)>\)"):
        load(path)
    assert not sentinel.exists()


def test_real_omegaconf_dictconfig(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    config = omegaconf.OmegaConf.create({"model": {"d_model": 8, "slstm_at": [1], "name": "${model.d_model}"}, "lr": 1e-3})
    path = tmp_path / "loss.ckpt"
    torch.save(lightning_checkpoint(weights(), config), path)
    assert_same(load(path), weights())


def test_checkpoint_written_by_pytorch_lightning():
    """A checkpoint that PyTorch Lightning itself wrote (see the README next to it)."""
    path = FIXTURES / "tiny.ckpt"
    if not path.exists():
        pytest.skip("no Lightning-written fixture")
    state = load(path)
    assert set(state) == {"model.linear.weight", "model.linear.bias", "model.complement_map"}
    assert state["model.linear.weight"].shape == (3, 4) and state["model.linear.weight"].dtype == torch.float32
    assert torch.equal(state["model.complement_map"], torch.tensor([3, 2, 1, 0]))


@pytest.mark.skipif(not hasattr(torch.serialization, "set_crc32_options"), reason="torch < 2.6 always writes CRCs")
def test_archive_saved_without_checksums(tmp_path):
    path = tmp_path / "no_crc.ckpt"
    was = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"state_dict": weights()}, path)
    finally:
        torch.serialization.set_crc32_options(was)
    assert_same(load(path), weights())


def rewrite(source: Path, target: Path, edit) -> Path:
    """A copy of a torch archive with its records passed through `edit(name, data) -> data | None`."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            data = edit(name, old.read(name))
            if data is not None:
                new.writestr(name, data)
    return target


def test_big_endian_archive(tmp_path):
    """torch.save on a big-endian machine marks the archive `byteorder: big`; made here by rewriting."""
    expected = {"w": torch.randn(3, 2), "ids": torch.tensor([1, 258, -3]), "h": torch.randn(4).to(torch.bfloat16)}
    torch.save({"state_dict": expected}, tmp_path / "little.ckpt")
    sizes = {str(i): tensor.element_size() for i, tensor in enumerate(expected.values())}

    def to_big_endian(name, data):
        if name.endswith("/byteorder"):
            return b"big"
        key = name.rpartition("/data/")[2] if "/data/" in name else None
        if key in sizes:
            size = sizes[key]
            return b"".join(data[i : i + size][::-1] for i in range(0, len(data), size))
        return data

    path = rewrite(tmp_path / "little.ckpt", tmp_path / "big.ckpt", to_big_endian)
    assert_same(load(path), expected)
    assert_same(torch.load(path, weights_only=True)["state_dict"], expected)  # torch reads the rewrite the same


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.ckpt"
    torch.save(lightning_checkpoint(weights(), fake_hyper_parameters()), path)
    return path


def broken_files(good: Path, tmp: Path):
    truncated = tmp / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp / "notes.ckpt"
    text.write_text("epoch=3 loss=0.25\n")
    plain_zip = tmp / "plain.zip"
    with zipfile.ZipFile(plain_zip, "w") as archive:
        archive.writestr("README.txt", "hello")
    legacy = tmp / "legacy.ckpt"
    torch.save({"state_dict": weights()}, legacy, _use_new_zipfile_serialization=False)
    no_state = tmp / "no_state.ckpt"
    torch.save({"epoch": 1, "hyper_parameters": fake_hyper_parameters()}, no_state)
    not_tensors = tmp / "not_tensors.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1), "n": 3}}, not_tensors)
    not_mapping = tmp / "not_mapping.ckpt"
    torch.save({"state_dict": [torch.ones(1)]}, not_mapping)
    flipped = tmp / "flipped.ckpt"
    data = bytearray(good.read_bytes())
    data[data.find(weights()["model.backbone.embedding.weight"].numpy().tobytes()) + 5] ^= 0xFF
    flipped.write_bytes(data)
    return [
        (truncated, "truncated zip archive"),
        (flipped, "Bad CRC-32"),
        (text, "not a PyTorch checkpoint"),
        (plain_zip, "not a torch.save checkpoint"),
        (legacy, "legacy"),
        (tmp / "absent.ckpt", "no such file"),
        (rewrite(good, tmp / "no_record.ckpt", lambda n, d: None if n.endswith("data/0") else d),
         "no record data/0 in the archive"),
        (rewrite(good, tmp / "short_record.ckpt", lambda n, d: d[:-4] if n.endswith("data/0") else d),
         "storage record data/0 holds"),
        (rewrite(good, tmp / "garbage.ckpt", lambda n, d: b"\x80\x02garbage" if n.endswith("data.pkl") else d),
         "unreadable checkpoint"),
        (no_state, "no state_dict in the checkpoint"),
        (not_tensors, "not tensors \\('n': int\\)"),
        (not_mapping, "not a mapping of names to tensors"),
    ]


def test_bad_files_each_give_one_line_naming_the_file(good, tmp_path):
    for path, message in broken_files(good, tmp_path):
        with pytest.raises(ConversionError, match=message) as caught:
            load_lightning_state_dict(path)
        text = str(caught.value)
        assert text.startswith(f"{path}: ") and "\n" not in text, text
        assert isinstance(caught.value, ValueError)
