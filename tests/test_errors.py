"""One error family (e5/errors.py): every error raised on purpose is an E5Error, the caller's apart from the
service's, raised where the fault is found and never wrapped again."""

from __future__ import annotations

import pytest

from e5.bulk import BulkError
from e5.devices import DeviceError
from e5.encoder import TooLongError
from e5.finite import NonFiniteError
from e5.errors import E5Error, RequestError, ServiceError
from e5.limits import LimitError
from e5.prompts import UnknownTaskError
from e5.onnx_runtime import OnnxRuntimeError
from e5.registry import UnknownModelError, get_spec
from e5.service import EmbeddingFailed, EmbeddingRequest, EmbeddingService
from e5.settings import Settings, SettingsError
from e5.weights import DownloadError, WeightsError, WeightsNotFoundError

CALLERS = (LimitError, TooLongError, UnknownTaskError, BulkError)
SERVICES = (EmbeddingFailed, DeviceError, OnnxRuntimeError, UnknownModelError, SettingsError, WeightsError,
            WeightsNotFoundError, DownloadError, NonFiniteError)


def test_every_error_belongs_to_one_side_of_the_family():
    assert all(issubclass(error, RequestError) and not issubclass(error, ServiceError) for error in CALLERS)
    assert all(issubclass(error, ServiceError) and not issubclass(error, RequestError) for error in SERVICES)
    assert all(issubclass(error, E5Error) for error in CALLERS + SERVICES)


@pytest.mark.parametrize("request_,raised,message", [
    (EmbeddingRequest(texts=["a\x00b"]), LimitError, "texts[0] has a control character"),
    (EmbeddingRequest(query="q", task="websearch"), UnknownTaskError, "task: unknown preset 'websearch'"),
    (EmbeddingRequest(query="protein " * 600, truncate=False), TooLongError, "query has more than the 512 tokens"),
    (EmbeddingRequest(texts=["a"], long_texts="split"), RequestError, "long_texts must be"),
])
def test_the_service_raises_the_error_where_the_fault_is_found(encoders, request_, raised, message):
    with pytest.raises(raised, match=message.replace("[", r"\[")) as err:
        EmbeddingService(encoders["bert"]).handle(request_)
    assert not isinstance(err.value.__context__, E5Error)  # not a wrapped copy of another of ours


def test_configuration_errors_are_the_services():
    with pytest.raises(ServiceError, match="E5_QUANTIZE must be one of none, int8"):
        Settings.from_env({"E5_QUANTIZE": "int4"})
    with pytest.raises(ServiceError, match="unknown model 'e6-small'"):
        get_spec("e6-small")


def test_the_command_line_reports_any_e5_error_in_one_line(capsys):
    from e5.__main__ import main

    assert main(["embed", "--model", "e6-small", "--query", "q"]) == 2
    assert capsys.readouterr().err.startswith("e5: unknown model 'e6-small'")
