"""providers.botomodels: botocore's loader with its parsed data files cached per user.

The contract: the data a client is built from is botocore's own (the same files, the same
values), whether it came from the cache or from a parse; an edited file is parsed again; a
damaged or unwritable cache changes nothing but the speed; an unknown service gets
botocore's own error."""

from __future__ import annotations

import json
import marshal
import os
from pathlib import Path

import botocore.session
import pytest
from botocore.exceptions import UnknownServiceError
from botocore.loaders import Loader

from providers.botomodels import CachedJSONFileLoader, ModelLoader, cache_dir, use_model_loader


def loader(cache: Path, extra: list[str] | None = None) -> ModelLoader:
    return ModelLoader(extra_search_paths=extra, file_loader=CachedJSONFileLoader(str(cache)))


@pytest.mark.parametrize(
    ("service", "type_name"),
    [("s3", "service-2"), ("s3", "endpoint-rule-set-1"), ("sts", "service-2")],
)
def test_models_equal_botocores_parsed_and_cached(
    tmp_path: Path, service: str, type_name: str
) -> None:
    want = Loader().load_service_model(service, type_name)
    parsed = loader(tmp_path).load_service_model(service, type_name)
    assert list(tmp_path.glob("*.marshal")), "the parse was not cached"
    cached = loader(tmp_path).load_service_model(service, type_name)  # a fresh process's
    assert parsed == want
    assert cached == want


def test_plain_data_files_equal_botocores(tmp_path: Path) -> None:
    for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
        want = Loader().load_data(name)
        assert loader(tmp_path).load_data(name) == want
        assert loader(tmp_path).load_data(name) == want  # from the cache


def _model(path: Path, doc: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "version": "2.0",
                "metadata": {"apiVersion": "2020-01-01", "documentation": doc},
                "operations": {},
                "shapes": {},
            }
        )
    )


def test_an_edited_model_is_parsed_again(tmp_path: Path) -> None:
    models = tmp_path / "models"
    file = models / "syncdtest" / "2020-01-01" / "service-2.json"
    _model(file, "first")
    cache = tmp_path / "cache"
    got = loader(cache, [str(models)]).load_service_model("syncdtest", "service-2")
    assert got["metadata"]["documentation"] == "first"
    _model(file, "second, longer")
    os.utime(file, ns=(1, 1))  # another size and modification time than the cached one
    got = loader(cache, [str(models)]).load_service_model("syncdtest", "service-2")
    assert got["metadata"]["documentation"] == "second, longer"
    # the first version's entry went when the second's was written
    assert len(list(cache.glob("*.marshal"))) == 1


def test_a_damaged_entry_is_parsed_again_and_replaced(tmp_path: Path) -> None:
    want = Loader().load_data("partitions")
    assert loader(tmp_path).load_data("partitions") == want
    (entry,) = [p for p in tmp_path.glob("*.marshal") if p.stat().st_size < 50_000]
    entry.write_bytes(entry.read_bytes()[:100])  # cut short
    assert loader(tmp_path).load_data("partitions") == want
    assert loader(tmp_path).load_data("partitions") == want  # the rewritten entry


def test_a_cache_that_cannot_be_written_changes_nothing(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would be")
    got = loader(blocked / "cache").load_service_model("s3", "service-2")
    assert got == Loader().load_service_model("s3", "service-2")


def test_an_unknown_service_gets_botocores_error(tmp_path: Path) -> None:
    with pytest.raises(UnknownServiceError, match="syncd-no-such-service"):
        loader(tmp_path).load_service_model("syncd-no-such-service", "service-2")


def test_a_session_makes_a_working_client_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    session = botocore.session.Session()
    use_model_loader(session)
    assert isinstance(session.get_component("data_loader"), ModelLoader)
    client = session.create_client(
        "s3", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    url = client.generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": "k"})
    assert url.startswith("https://bkt.s3.amazonaws.com/k?")


def _planted(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A model file, its cache folder holding the entry of its first version, and that
    entry, rewritten to say "planted": what another user would put there to be read."""
    models = tmp_path / "models"
    file = models / "syncdtest" / "2020-01-01" / "service-2.json"
    _model(file, "real")
    cache = tmp_path / "cache"
    loader(cache, [str(models)]).load_service_model("syncdtest", "service-2")
    (entry,) = cache.glob("*.marshal")
    data = marshal.loads(entry.read_bytes())
    data["metadata"]["documentation"] = "planted"
    entry.write_bytes(marshal.dumps(data))
    assert (
        loader(cache, [str(models)]).load_service_model("syncdtest", "service-2")["metadata"][
            "documentation"
        ]
        == "planted"
    )  # an entry of the user's own is read
    return models, cache, entry


def _doc(models: Path, cache: Path) -> str:
    got = loader(cache, [str(models)]).load_service_model("syncdtest", "service-2")
    return got["metadata"]["documentation"]


@pytest.mark.parametrize("open_to_others", ["entry", "folder"])
def test_an_entry_others_could_write_is_not_read(tmp_path: Path, open_to_others: str) -> None:
    models, cache, entry = _planted(tmp_path)
    (entry if open_to_others == "entry" else cache).chmod(0o666 if open_to_others == "entry"
                                                           else 0o777)  # fmt: skip
    assert _doc(models, cache) == "real"


def test_an_entry_reached_through_a_link_is_not_read(tmp_path: Path) -> None:
    models, cache, entry = _planted(tmp_path)
    elsewhere = tmp_path / "elsewhere.marshal"
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere)
    assert _doc(models, cache) == "real"


def test_a_relative_xdg_cache_home_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "cache")
    assert cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "syncd", "botocore")
    monkeypatch.setenv("XDG_CACHE_HOME", "/abs/cache")
    assert cache_dir() == "/abs/cache/syncd/botocore"


def test_a_service_name_with_a_path_in_it_takes_botocores_checks(tmp_path: Path) -> None:
    with pytest.raises(UnknownServiceError):
        loader(tmp_path).load_service_model("../s3", "service-2")
